"""Parameter counts and analytic FLOPs of a model spec, without allocating any weights."""

import dataclasses
import math

import flax.linen as nn
import jax

from maepp.models.layers import swiglu_hidden
from maepp.models.mae import MaskedAutoencoder, init_params
from maepp.models.spec import ModelSpec


def abstract_params(spec: ModelSpec):
    """Parameter shapes (jax.ShapeDtypeStruct tree, unboxed) via eval_shape: no memory used.
    Always in the per-block layout (blocks_0, blocks_1, ...), whatever spec.scan_layers says."""
    model = MaskedAutoencoder(dataclasses.replace(spec, scan_layers=False))
    return nn.meta.unbox(jax.eval_shape(lambda rng: init_params(model, rng), jax.random.key(0)))


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def parameter_counts(spec: ModelSpec) -> dict:
    """{"encoder": n, "decoder": n, "groups": {name: n}} with groups in the order data flows.

    Encoder params = every trainable parameter outside the decoder (docs/reference.md#sizes):
    patch embedding, CLS token, blocks, final norm. Position tables are not parameters.
    Repeated blocks are summed into one group, e.g. "encoder/blocks (12)".
    """
    params = abstract_params(spec)
    groups = {name: count(params[name]) for name in ("patch_embed", "cls_token") if name in params}
    for part in ("encoder", "decoder"):
        blocks = [name for name in params[part] if name.startswith("blocks_")]
        groups[f"{part}/blocks ({len(blocks)})"] = sum(count(params[part][b]) for b in blocks)
        for name, sub in params[part].items():
            if not name.startswith("blocks_"):
                groups[f"{part}/{name}"] = count(sub)
    decoder = count(params["decoder"])
    return dict(encoder=count(params) - decoder, decoder=decoder, groups=groups)


def _block_forward_flops(block_type: str, n: int, width: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one block over n tokens of one example."""
    attention = 2 * n * width * 3 * width + 2 * 2 * n * n * width + 2 * n * width * width
    if block_type == "vit":
        return attention + 2 * 2 * n * width * 4 * width
    half_ffn = 2 * 2 * n * width * 4 * width
    swiglu = 3 * 2 * n * width * swiglu_hidden(width)
    return half_ffn + attention + swiglu


def forward_flops(spec: ModelSpec) -> dict:
    """Analytic forward FLOPs per example, split by stage.

    Counted: every matrix multiply as 2*m*n*k (patch embedding of the visible patches, q/k/v,
    scores, attention-weighted values, output projections, FFN/SwiGLU, decoder embedding and
    prediction head), over the sequence lengths the model really runs: CLS + visible tokens in
    the encoder and the decoder embedding (mask tokens join after it), CLS + all tokens in the
    decoder blocks and head. Not counted: LayerNorm, softmax, activations,
    additions, gathers (together well under 1% at base size).
    """
    cls = int(spec.use_cls_token)
    n_enc, n_dec = spec.n_visible + cls, spec.n_tokens + cls
    return dict(
        patch_embed=2 * spec.n_visible * spec.patch_dim * spec.encoder.width,
        encoder=spec.encoder.depth * _block_forward_flops(spec.block_type, n_enc, spec.encoder.width),
        decoder_embed=2 * n_enc * spec.encoder.width * spec.decoder.width,
        decoder=spec.decoder.depth * _block_forward_flops(spec.block_type, n_dec, spec.decoder.width),
        decoder_pred=2 * n_dec * spec.decoder.width * spec.patch_dim,
    )


def train_flops_per_example(spec: ModelSpec) -> int:
    """Forward + backward: backward costs two forwards (gradients w.r.t. inputs and weights)."""
    return 3 * sum(forward_flops(spec).values())
