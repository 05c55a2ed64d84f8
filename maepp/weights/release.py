"""PyTorch state dicts of the released AudioMAE++ / MAE <-> maepp parameters.

The library behind `python -m maepp.weights.convert`. State-dict names and layouts are those of
docs/reference.md#the-releases-weights,
"Official PyTorch state-dict names": PyTorch Linear weights are [out, in]; qkv's output is laid
out (3, heads, head_dim); in SwiGLU linear1 is the value path and linear2 the gate.

The released block applies LN2 where LN3 stands (norm3 is in the weights but unused), and so does
maepp's by default (config.model.separate_norm3 False): then every tensor maps as it is, both
ways. A separate-LN3 model takes LN3 from norm2 on import, which reproduces the released forward
pass; ln3_from="norm3" takes norm3 as stored (state dicts written by maepp's own export).
"""

import dataclasses
import math
import pickle
import re
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np

from maepp.models import layer_stack
from maepp.models.counts import abstract_params
from maepp.models.position import sincos_1d_table, sincos_2d_table
from maepp.models.spec import ModelSpec

# Our block child -> the released block's child, per block type.
_BLOCK_NAMES = {
    "macaron_swiglu": {
        "norm1": "norm1",
        "ffn1/layer1": "ffn1.layer1",
        "ffn1/layer2": "ffn1.layer2",
        "norm2": "norm2",
        "attn/qkv": "attn.qkv_layer",
        "attn/proj": "attn.proj_layer",
        "norm3": "norm3",
        "ffn2/value": "ffn2.linear1",
        "ffn2/gate": "ffn2.linear2",
        "ffn2/ln": "ffn2.ln",
        "ffn2/project": "ffn2.project",
    },
    "vit": {
        "norm1": "norm1",
        "attn/qkv": "attn.qkv_layer",
        "attn/proj": "attn.proj_layer",
        "norm2": "norm2",
        "mlp/layer1": "mlp.layer1",
        "mlp/layer2": "mlp.layer2",
    },
}
_POSITION_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Entry:
    """One state-dict tensor and the maepp parameter it becomes."""

    torch_key: str
    path: tuple  # path in the maepp params tree
    shape: tuple  # maepp shape
    torch_shape: tuple
    to_maepp: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


def _entries_for_module(torch_prefix: str, path: tuple, leaves: dict, n_in_dims: int = 1):
    """Entries of one Linear (kernel + bias) or LayerNorm (scale + bias) module."""
    if "scale" in leaves:  # LayerNorm: weight/bias -> scale/bias, same shapes
        for ours, theirs in (("scale", "weight"), ("bias", "bias")):
            shape = tuple(leaves[ours].shape)
            yield Entry(f"{torch_prefix}.{theirs}", (*path, ours), shape, shape, np.asarray, np.asarray)
        return
    kernel = tuple(leaves["kernel"].shape)
    n_in, n_out = math.prod(kernel[:n_in_dims]), math.prod(kernel[n_in_dims:])
    yield Entry(
        f"{torch_prefix}.weight",
        (*path, "kernel"),
        kernel,
        (n_out, n_in),
        lambda w, k=kernel: w.T.reshape(k),
        lambda k, s=(n_out, n_in): k.reshape(s[1], s[0]).T,
    )
    bias = tuple(leaves["bias"].shape)
    yield Entry(
        f"{torch_prefix}.bias",
        (*path, "bias"),
        bias,
        (n_out,),
        lambda b, s=bias: b.reshape(s),
        lambda b, n=n_out: b.reshape(n),
    )


def _lookup(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def mapping(spec: ModelSpec) -> list:
    """Every trainable tensor of the released model, with its maepp counterpart."""
    params = abstract_params(spec)
    entries = []
    width, (pt, pf) = spec.encoder.width, spec.patch_size
    patch_kernel = tuple(params["patch_embed"]["kernel"].shape)  # [pt * pf, D]
    entries.append(
        Entry(
            "patch_embed.proj.weight",
            ("patch_embed", "kernel"),
            patch_kernel,
            (width, 1, pt, pf),
            lambda w: w.reshape(width, pt * pf).T,
            lambda k: k.T.reshape(width, 1, pt, pf),
        )
    )
    entries.append(Entry("patch_embed.proj.bias", ("patch_embed", "bias"), (width,), (width,), np.asarray, np.asarray))
    for token, path in (("cls_token", ("cls_token",)), ("decoder.mask_token", ("decoder", "mask_token"))):
        if path[-1] in _lookup(params, path[:-1]):
            shape = tuple(_lookup(params, path).shape)
            entries.append(Entry(token, path, shape, shape, np.asarray, np.asarray))
    for part, torch_blocks, depth in (
        ("encoder", "encoder.blocks", spec.encoder.depth),
        ("decoder", "decoder.decoder_blocks", spec.decoder.depth),
    ):
        for i in range(depth):
            for ours, theirs in _BLOCK_NAMES[spec.block_type].items():
                path = (part, f"blocks_{i}", *tuple(ours.split("/")))
                n_in = 2 if ours == "attn/proj" else 1  # proj kernel is [heads, head_dim, D]
                entries += _entries_for_module(f"{torch_blocks}.{i}.{theirs}", path, _lookup(params, path), n_in)
    for ours, theirs in (
        (("encoder", "encoder_norm"), "encoder.encoder_norm"),
        (("decoder", "decoder_embed"), "decoder.decoder_embed"),
        (("decoder", "decoder_norm"), "decoder.decoder_norm"),
        (("decoder", "decoder_pred"), "decoder.decoder_pred"),
    ):
        entries += _entries_for_module(theirs, ours, _lookup(params, ours))
    return entries


def _position_tables(spec: ModelSpec) -> dict:
    """The fixed tables the release stores as buffers, [1, rows, width]."""
    return {
        "encoder.pos_embed": sincos_2d_table(spec.encoder.width, spec.grid, spec.use_cls_token)[None],
        "decoder.decoder_pos_embed": sincos_1d_table(spec.decoder.width, spec.n_tokens, spec.use_cls_token)[None],
    }


def _ignorable(key: str, spec: ModelSpec) -> bool:
    """Buffers we recompute: RoPE frequency tables of the RoPE ablation models."""
    return (spec.encoder.use_rope or spec.decoder.use_rope) and key.endswith("rope.freqs")


class StateDictMismatch(ValueError):
    pass


def state_dict_to_params(state_dict: dict, spec: ModelSpec, ln3_from: str | None = None) -> dict:
    """{name: array} of the released model -> maepp params (nested dict of float32 numpy).

    ln3_from: where maepp's norm3 comes from. By default "norm3" (as stored) for the release's
    block (spec.separate_norm3 False), which computes exactly what the release computes; "norm2"
    for a separate-LN3 model, which then reproduces the release's forward pass.
    """
    ln3_from = ln3_from or ("norm2" if spec.separate_norm3 else "norm3")
    if ln3_from not in ("norm2", "norm3"):
        raise ValueError(f"ln3_from must be 'norm2' or 'norm3', got {ln3_from!r}")
    state_dict = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
    entries = mapping(spec)
    tables = _position_tables(spec)
    expected = {e.torch_key for e in entries} | set(tables)
    missing = sorted(expected - set(state_dict))
    extra = sorted(k for k in set(state_dict) - expected if not _ignorable(k, spec))
    misshaped = [
        f"{e.torch_key}: expected {e.torch_shape}, found {tuple(state_dict[e.torch_key].shape)}"
        for e in entries
        if e.torch_key in state_dict and tuple(state_dict[e.torch_key].shape) != e.torch_shape
    ]
    misshaped += [
        f"{k}: expected {t.shape}, found {tuple(state_dict[k].shape)}"
        for k, t in tables.items()
        if k in state_dict and state_dict[k].shape != t.shape
    ]
    if missing or extra or misshaped:
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected keys ({len(extra)}): {', '.join(extra)}")
        if misshaped:
            problems.append(f"wrong shapes ({len(misshaped)}): {'; '.join(misshaped)}")
        raise StateDictMismatch(
            "the state dict does not match the config's model "
            f"({spec.block_type}, width {spec.encoder.width}, depth {spec.encoder.depth}, decoder {spec.decoder.width}x"
            f"{spec.decoder.depth}); check --config picks the checkpoint's size.\n" + "\n".join(problems)
        )
    for key, table in tables.items():
        diff = float(np.max(np.abs(state_dict[key] - table)))
        if diff > _POSITION_TOLERANCE:
            raise StateDictMismatch(
                f"{key} differs from maepp's fixed sin-cos table by up to {diff:.3g}: the checkpoint was "
                "trained with another position layout, and its embeddings would be wrong here"
            )
    params = {}
    for e in entries:
        torch_key = e.torch_key
        if ln3_from == "norm2" and ".norm3." in torch_key:
            torch_key = torch_key.replace(".norm3.", ".norm2.")
        node = params
        for key in e.path[:-1]:
            node = node.setdefault(key, {})
        node[e.path[-1]] = np.ascontiguousarray(e.to_maepp(state_dict[torch_key]), np.float32)
    return jax.tree.map(np.asarray, layer_stack.to_layout(params, spec.scan_layers))


def params_to_state_dict(params: dict, spec: ModelSpec) -> dict:
    """maepp params (either layout) -> {name: float32 numpy} loadable by the released PyTorch model."""
    params = layer_stack.to_layout(nn.meta.unbox(params), False)
    state_dict = {
        e.torch_key: np.asarray(e.to_torch(np.asarray(_lookup(params, e.path))), np.float32) for e in mapping(spec)
    }
    state_dict.update(_position_tables(spec))
    return state_dict


class InertRecord:
    """Stands in for the objects a release trainer pickles beside its weights (its argparse
    arguments, an ml_collections config): their state is kept as data, no code of theirs runs."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state


# What the release's trainer saves beside "model" ({'model': ..., 'args': Namespace(...), ...}).
# torch's weights_only unpickler still refuses every other global.
TRAINER_GLOBALS = (
    "argparse.Namespace",
    "ml_collections.config_dict.config_dict.ConfigDict",
    "ml_collections.config_dict.config_dict.FieldReference",
)


class UnsafeCheckpoint(ValueError):
    pass


def load_torch_state_dict(path) -> dict:
    """Reads a .pth file (weights only) -> {name: numpy}; unwraps {"model": state_dict} and DDP's 'module.'."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading PyTorch checkpoints needs the torch extra: pip install -e .[torch]") from e
    try:
        with torch.serialization.safe_globals([(InertRecord, name) for name in TRAINER_GLOBALS]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        raise UnsafeCheckpoint(
            f"{path} asks to run {refused.group(1) if refused else 'code'} when loaded, which is neither weights nor "
            "a known trainer record; refusing it (only tensors, containers and argparse / ml_collections configs load)"
        ) from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"{path} holds no state dict (found {type(checkpoint).__name__})")
    if all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module.") :]: v for k, v in checkpoint.items()}
    return {k: v.detach().float().numpy() for k, v in checkpoint.items()}


def save_torch_state_dict(state_dict: dict, path):
    import torch

    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, path)
