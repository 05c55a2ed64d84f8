"""Importing released PyTorch weights: mapping, layouts, round trip, clear errors."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from maepp.models.blocks import MacaronBlock
from maepp.weights import release as convert
from maepp.weights import store
from tests.helpers import model_and_params, run_module, spec_for


def _random_params(spec, seed=0):
    """Params with every leaf random, so that a swapped or transposed tensor cannot go unnoticed."""
    _, params = model_and_params(spec, seed)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(treedef, [rng.standard_normal(leaf.shape).astype(np.float32) for leaf in leaves])


@pytest.mark.parametrize("block_type", ["macaron_swiglu", "vit"])
def test_round_trip_params_state_dict_params(block_type):
    spec = spec_for(block_type=block_type)
    params = _random_params(spec)
    state_dict = convert.params_to_state_dict(params, spec)
    assert state_dict["patch_embed.proj.weight"].shape == (spec.encoder.width, 1, 4, 16)
    assert state_dict["encoder.blocks.0.attn.qkv_layer.weight"].shape == (3 * spec.encoder.width, spec.encoder.width)
    back = convert.state_dict_to_params(state_dict, spec, ln3_from="norm3")
    jax.tree.map(np.testing.assert_array_equal, back, params)


def test_a_separate_ln3_model_imports_ln3_from_the_released_norm2():
    spec = spec_for(separate_norm3=True)
    state_dict = convert.params_to_state_dict(_random_params(spec), spec)
    params = convert.state_dict_to_params(state_dict, spec)
    block = params["encoder"]["blocks_1"]
    np.testing.assert_array_equal(block["norm3"]["scale"], state_dict["encoder.blocks.1.norm2.weight"])
    np.testing.assert_array_equal(block["norm3"]["bias"], state_dict["encoder.blocks.1.norm2.bias"])


def test_missing_key_is_a_clear_error():
    spec = spec_for()
    state_dict = convert.params_to_state_dict(_random_params(spec), spec)
    del state_dict["encoder.blocks.1.ffn2.linear2.weight"]
    with pytest.raises(convert.StateDictMismatch, match=r"missing keys \(1\): encoder.blocks.1.ffn2.linear2.weight"):
        convert.state_dict_to_params(state_dict, spec)


def test_extra_and_misshaped_keys_are_listed():
    spec = spec_for()
    state_dict = convert.params_to_state_dict(_random_params(spec), spec)
    state_dict["head.weight"] = np.zeros((10, 64), np.float32)
    state_dict["decoder.decoder_pred.bias"] = np.zeros((65,), np.float32)
    with pytest.raises(convert.StateDictMismatch) as error:
        convert.state_dict_to_params(state_dict, spec)
    assert "unexpected keys (1): head.weight" in str(error.value)
    assert "decoder.decoder_pred.bias: expected (64,), found (65,)" in str(error.value)


def test_a_different_position_table_is_refused():
    spec = spec_for()
    state_dict = convert.params_to_state_dict(_random_params(spec), spec)
    state_dict["encoder.pos_embed"] = state_dict["encoder.pos_embed"][:, :, ::-1].copy()
    with pytest.raises(convert.StateDictMismatch, match="position layout"):
        convert.state_dict_to_params(state_dict, spec)


def _released_block_forward(torch, sd, prefix, x, heads):
    """The released Transformer++ block (docs/reference.md#model), written with torch ops on state-dict tensors.

    Note `norm2` where LN3 stands, as in the release.
    """
    F = torch.nn.functional

    def lin(name, h):
        return F.linear(h, sd[f"{prefix}.{name}.weight"], sd[f"{prefix}.{name}.bias"])

    def ln(name, h):
        return F.layer_norm(h, h.shape[-1:], sd[f"{prefix}.{name}.weight"], sd[f"{prefix}.{name}.bias"], eps=1e-6)

    x = x + 0.5 * lin("ffn1.layer2", F.silu(lin("ffn1.layer1", ln("norm1", x))))
    b, n, c = x.shape
    qkv = lin("attn.qkv_layer", ln("norm2", x)).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = torch.softmax((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5, dim=-1)
    x = x + lin("attn.proj_layer", (attn @ v).transpose(1, 2).reshape(b, n, c))
    h = ln("norm2", x)
    swiglu = F.silu(lin("ffn2.linear2", h)) * lin("ffn2.linear1", h)
    return x + lin("ffn2.project", ln("ffn2.ln", swiglu))


@pytest.mark.parametrize("separate_norm3", [False, True])
def test_imported_block_computes_what_the_released_block_computes(separate_norm3):
    torch = pytest.importorskip("torch")
    spec = spec_for(separate_norm3=separate_norm3)
    state_dict = convert.params_to_state_dict(_random_params(spec, seed=1), spec)
    # Scaled weights keep activations moderate; the fixed position tables stay as they are.
    state_dict = {k: v if "pos_embed" in k else 0.2 * v for k, v in state_dict.items()}
    params = convert.state_dict_to_params(state_dict, spec)  # separate LN3 <- norm2, the released behaviour
    x = np.random.default_rng(0).standard_normal((2, 11, spec.encoder.width)).astype(np.float32)
    block = MacaronBlock(heads=spec.encoder.heads, separate_norm3=separate_norm3)
    ours = block.apply({"params": params["encoder"]["blocks_0"]}, x, np.zeros((2, 11)))
    sd = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    theirs = _released_block_forward(torch, sd, "encoder.blocks.0", torch.from_numpy(x), spec.encoder.heads).numpy()
    # float32 torch against XLA: other GEMM orders
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-5, rtol=1e-4)


def test_a_block_trained_under_the_release_switch_exports_to_what_the_release_computes():
    """maepp's default block, with every weight moved as training would (norm2 learning from both
    paths), exported as it is: the released block computes maepp's outputs from that state dict."""
    torch = pytest.importorskip("torch")
    spec = spec_for()
    params = jax.tree.map(lambda p: 0.2 * p, _random_params(spec, seed=2))
    x = np.random.default_rng(3).standard_normal((2, 7, spec.encoder.width)).astype(np.float32)
    ours = MacaronBlock(heads=spec.encoder.heads).apply({"params": params["decoder"]["blocks_0"]}, x, np.zeros((2, 7)))
    sd = {k: torch.from_numpy(v) for k, v in convert.params_to_state_dict(params, spec).items()}
    theirs = _released_block_forward(torch, sd, "decoder.decoder_blocks.0", torch.from_numpy(x), spec.decoder.heads)
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=2e-5, rtol=1e-4)  # as above


@pytest.mark.e2e
def test_cli_imports_a_pth_file_and_exports_it_back(tmp_path, repo_root):
    torch = pytest.importorskip("torch")
    spec = spec_for()
    params = _random_params(spec)
    state_dict = convert.params_to_state_dict(params, spec)
    pth = tmp_path / "released.pth"
    # As the release saves it: wrapped under "model", with other training state beside it.
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state_dict.items()}, "epoch": 99}, pth)
    out = tmp_path / "imported"
    run_module(
        repo_root,
        "maepp.weights.convert",
        "--torch-checkpoint",
        str(pth),
        "--config",
        "configs/audiomaepp.py:micro",
        "--output",
        str(out),
        "--ln3-from",
        "norm3",
    )
    loaded, loaded_config = store.load(out)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    assert loaded_config.model.encoder.width == spec.encoder.width
    back = tmp_path / "back.pth"
    run_module(repo_root, "maepp.weights.convert", "--params", str(out), "--output-torch", str(back))
    reloaded = convert.load_torch_state_dict(back)
    assert set(reloaded) == set(state_dict)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(reloaded[key], value)


@pytest.mark.e2e
def test_cli_names_the_missing_key(tmp_path, repo_root):
    torch = pytest.importorskip("torch")
    spec = spec_for()
    state_dict = convert.params_to_state_dict(_random_params(spec), spec)
    del state_dict["cls_token"]
    pth = tmp_path / "broken.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, pth)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maepp.weights.convert",
            "--torch-checkpoint",
            str(pth),
            "--config",
            "configs/audiomaepp.py:micro",
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "missing keys (1): cls_token" in result.stderr
    assert not (tmp_path / "out" / "config.json").exists()
