"""Behaviour of the masked autoencoder: masking, patches, positions, loss, dtypes, switches."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maepp.config_checks import check_model
from maepp.configs import audiomaepp
from maepp.models import MASKING_RNG, MaskedAutoencoder, init_params, reconstruction_loss
from maepp.models.blocks import MacaronBlock
from maepp.models.counts import forward_flops
from maepp.models.layers import attention, padded_attention
from maepp.models.patches import patchify, random_mask, unpatchify
from maepp.models.position import sincos_1d, sincos_2d_table
from tests.helpers import model_and_params, spec_for


def _apply(model, params, x, seed):
    # jit: compiling the micro model is much faster than running its many small ops eagerly.
    return jax.jit(lambda p, x: model.apply({"params": p}, x, rngs={MASKING_RNG: jax.random.key(seed)}))(params, x)


def _batch(batch=4, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, 200, 80))


def test_visible_count_is_exact():
    keep, restore, mask = random_mask(jax.random.key(0), 16, 250, 0.8)
    assert keep.shape == (16, 50)
    np.testing.assert_array_equal(mask.sum(axis=1), np.full(16, 200.0))
    # The kept tokens are exactly the unmasked ones, each once.
    for b in range(16):
        assert sorted(np.asarray(keep[b]).tolist()) == np.flatnonzero(np.asarray(mask[b]) == 0).tolist()
    # restore_ids inverts the shuffle: position of each token in [visible..., masked...].
    assert np.all(np.sort(np.asarray(restore), axis=1) == np.arange(250))


@pytest.mark.parametrize("ratio,visible", [(0.65, 87), (0.8, 50), (0.85, 37), (0.95, 12), (0.75, 62)])
def test_visible_count_follows_the_release(ratio, visible):
    """The release keeps int(L * (100 - 100 r) / 100) tokens: 87 at 0.65, where round() gives 88."""
    _, _, mask = random_mask(jax.random.key(1), 2, 250, ratio)
    assert int((1 - mask[0]).sum()) == visible


@pytest.mark.parametrize(
    "ratio,message",
    [
        (0.0, "must be a finite number in (0.0, 1.0)"),
        (1.0, "must be a finite number in (0.0, 1.0)"),
        (0.999, "leaves 0 of 250 tokens visible"),
    ],
)
def test_a_mask_ratio_that_leaves_nothing_to_see_or_predict_is_refused(ratio, message):
    model = audiomaepp.model_config("micro")
    model.mask_ratio = ratio
    with pytest.raises(ValueError, match=re.escape(f"config.model.mask_ratio={ratio!r}: {message}")):
        check_model(model)


def test_masks_differ_across_examples_and_rngs():
    _, _, mask_a = random_mask(jax.random.key(0), 8, 250, 0.8)
    _, _, mask_b = random_mask(jax.random.key(1), 8, 250, 0.8)
    assert len({tuple(np.asarray(m).tolist()) for m in mask_a}) == 8
    assert not np.array_equal(mask_a, mask_b)
    _, _, mask_again = random_mask(jax.random.key(0), 8, 250, 0.8)
    np.testing.assert_array_equal(mask_a, mask_again)


def test_loss_ignores_predictions_at_visible_positions():
    spec = spec_for()
    model, params = model_and_params(spec)
    x = _batch()
    out = _apply(model, params, x, seed=3)
    patches = patchify(x, spec.patch_size)
    visible = (out["mask"] == 0)[..., None]
    garbage = out["pred"] + 1e3 * visible  # wreck every visible prediction
    loss = reconstruction_loss(out["pred"], patches, out["mask"], norm_pix_loss=False)
    np.testing.assert_allclose(loss, out["loss"], rtol=1e-6)  # float32 means in another order
    np.testing.assert_allclose(reconstruction_loss(garbage, patches, out["mask"], False), loss, rtol=1e-6)  # same
    # ...while one masked prediction does move it.
    masked_pos = int(np.flatnonzero(np.asarray(out["mask"][0]))[0])
    nudged = out["pred"].at[0, masked_pos].add(1.0)
    assert reconstruction_loss(nudged, patches, out["mask"], False) > loss


def test_loss_gradient_reaches_only_masked_patches_of_the_target():
    spec = spec_for()
    x = _batch(2)
    patches = patchify(x, spec.patch_size)
    pred = jnp.zeros_like(patches)
    _, _, mask = random_mask(jax.random.key(0), 2, 250, 0.8)
    grad = jax.grad(lambda p: reconstruction_loss(p, patches, mask, False))(pred)
    per_token = np.abs(np.asarray(grad)).sum(-1)
    assert np.all(per_token[np.asarray(mask) == 0] == 0)
    assert np.all(per_token[np.asarray(mask) == 1] > 0)


def test_norm_pix_loss_normalises_each_target_patch():
    spec = spec_for()
    patches = patchify(_batch(2), spec.patch_size) * 5.0 + 3.0
    mask = jnp.ones(patches.shape[:2])
    mean = patches.mean(-1, keepdims=True)
    std = jnp.sqrt(patches.var(-1, keepdims=True) + 1e-6)
    normalised = (patches - mean) / std
    assert float(reconstruction_loss(normalised, patches, mask, norm_pix_loss=True)) < 1e-10
    assert float(reconstruction_loss(normalised, patches, mask, norm_pix_loss=False)) > 1.0


def test_patchify_unpatchify_invert_each_other():
    x = _batch(3)
    patches = patchify(x, (4, 16))
    assert patches.shape == (3, 250, 64)
    np.testing.assert_array_equal(unpatchify(patches, (200, 80), (4, 16)), x)


def test_token_order_is_time_major_and_patches_are_time_by_freq():
    # value = 1000 * time_frame + mel_bin identifies where each value came from.
    x = (1000 * jnp.arange(200)[:, None] + jnp.arange(80)[None, :]).astype(jnp.float32)[None]
    patches = np.asarray(patchify(x, (4, 16)))[0]
    for t, f in [(0, 0), (0, 4), (1, 0), (49, 4), (17, 3)]:
        token = t * 5 + f
        expected = [1000 * (4 * t + i) + 16 * f + j for i in range(4) for j in range(16)]
        assert patches[token].tolist() == expected


def test_position_tables_are_not_parameters():
    spec = spec_for()
    _, params = model_and_params(spec)
    table = sincos_2d_table(spec.encoder.width, spec.grid, spec.use_cls_token)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        assert "pos" not in name
        assert leaf.shape[-2:] != table.shape, name


def test_encoder_position_table_layout():
    width = 64
    table = sincos_2d_table(width, (50, 5), cls_token=True)
    assert table.shape == (251, width)
    np.testing.assert_array_equal(table[0], 0)  # CLS row
    for t, f in [(0, 0), (3, 2), (49, 4)]:
        row = table[1 + t * 5 + f]
        # float32 sin and cos of the same angles: a few ulps
        np.testing.assert_allclose(row[: width // 2], sincos_1d(width // 2, np.array([f]))[0], atol=1e-6)
        np.testing.assert_allclose(row[width // 2 :], sincos_1d(width // 2, np.array([t]))[0], atol=1e-6)


def test_every_parameter_has_logical_axis_names():
    spec = spec_for()
    model = MaskedAutoencoder(spec)
    boxed = init_params(model, jax.random.key(0))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim
    names = {n for leaf in leaves for n in leaf.names if n}
    assert {"embed", "mlp", "heads", "kv"} <= names


def test_jitted_bfloat16_grad_step_runs():
    """float32 steps run in every sharding and training test; bfloat16 compute only here."""
    from maepp import optim
    from maepp.train_step import create_state, make_train_step
    from tests.helpers import CONFIG_FILES

    config = CONFIG_FILES["macaron_swiglu"].get_config("micro")
    config.model.dtype = "bfloat16"
    model = MaskedAutoencoder(spec_for(dtype="bfloat16"))
    optimizer = optim.optimizer(config)
    state = create_state(model, optimizer, jax.random.key(0))
    before = jax.tree.map(np.asarray, state.params)
    step = jax.jit(make_train_step(model, optimizer))
    x = _batch(config.batch_size)
    losses = []
    for i in range(3):
        state, metrics = step(state, x, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses))
    assert int(state.step) == 3
    for leaf in jax.tree.leaves(state.params):
        assert leaf.dtype == jnp.float32  # master weights stay float32
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.params, before)
    moved = {"/".join(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(moved)}
    unused = {name for name in moved if "/norm3/" in name}  # the release's norm3: in the weights, never applied
    assert unused and all(moved[name] == 0 for name in unused)
    assert min(v for name, v in moved.items() if name not in unused) > 0  # every other parameter learned


def test_bfloat16_computes_in_bfloat16():
    spec = spec_for(dtype="bfloat16")
    model, params = model_and_params(spec)
    hlo = jax.jit(lambda p, x: _apply(model, p, x, 0)["loss"]).lower(params, _batch(2)).as_text()
    assert "bf16" in hlo
    f32_out = _apply(*model_and_params(spec_for()), _batch(2), 0)["loss"]
    bf16_out = _apply(model, params, _batch(2), 0)["loss"]
    assert abs(float(f32_out) - float(bf16_out)) < 0.05 * float(f32_out)


def test_encode_sees_every_token_without_masking():
    spec = spec_for()
    model, params = model_and_params(spec)
    x = _batch(2)
    features = model.apply({"params": params}, x, method=MaskedAutoencoder.encode)
    assert features.shape == (2, 250, spec.encoder.width)
    again = model.apply({"params": params}, x, method=MaskedAutoencoder.encode)
    np.testing.assert_array_equal(features, again)  # no randomness


@pytest.mark.parametrize(
    "overrides",
    [
        dict(block_type="vit"),
        {"encoder.use_rope": True},
        {"decoder.use_rope": True},
        dict(use_cls_token=False),
        dict(mask_ratio=0.5),
        {"decoder.width": 96, "decoder.depth": 2, "decoder.heads": 3},
        dict(input_size=(96, 64), patch_size=(8, 16)),
    ],
)
def test_ablation_switches_build_and_change_the_model(overrides):
    block_type = overrides.get("block_type", "macaron_swiglu")
    rest = {k: v for k, v in overrides.items() if k != "block_type"}
    spec = spec_for(block_type=block_type, **rest)
    model, params = model_and_params(spec)
    x = jax.random.normal(jax.random.key(0), (2, *spec.input_size))
    out = _apply(model, params, x, seed=0)
    assert out["pred"].shape == (2, spec.n_tokens, spec.patch_dim)
    assert int(out["mask"].sum()) == 2 * (spec.n_tokens - spec.n_visible)
    assert np.isfinite(float(out["loss"]))
    assert ("cls_token" in params) == spec.use_cls_token
    if spec.input_size == (200, 80):
        assert _base_loss() != float(out["loss"])


@functools.cache
def _base_loss():
    """The default micro model's loss on the ablation test's input, computed once per worker."""
    model, params = model_and_params(spec_for())
    return float(_apply(model, params, jax.random.normal(jax.random.key(0), (2, 200, 80)), seed=0)["loss"])


@pytest.mark.parametrize("tokens,head_dim", [(51, 64), (251, 48)])  # base encoder, base decoder
def test_attention_padded_for_cudnn_equals_plain_attention(tokens, head_dim):
    """The padding cuDNN needs (to a multiple of 64, masked by sequence lengths) changes nothing,
    forward or backward; checked through the same masking with XLA's implementation."""
    q, k, v, cotangent = (jax.random.normal(jax.random.key(i), (3, tokens, 4, head_dim)) for i in range(4))

    def value_and_grads(fn):
        @jax.jit  # op by op, the backward pass of the padded version alone takes seconds
        def run(q, k, v, cotangent):
            out, pullback = jax.vjp(fn, q, k, v)
            return out, pullback(cotangent)

        return run(q, k, v, cotangent)

    plain, plain_grads = value_and_grads(lambda q, k, v: attention(q, k, v, "xla"))
    padded, padded_grads = value_and_grads(lambda q, k, v: padded_attention(q, k, v, "xla"))
    assert padded.shape == plain.shape
    np.testing.assert_allclose(padded, plain, atol=1e-6)  # padding changes the softmax sums' order
    for a, b in zip(padded_grads, plain_grads):
        np.testing.assert_allclose(a, b, atol=1e-6)  # as above
    # "auto" is XLA's on a CPU (cuDNN's needs a GPU and bfloat16).
    forward = lambda implementation: jax.jit(lambda q, k, v: attention(q, k, v, implementation))(q, k, v)
    np.testing.assert_array_equal(forward("auto"), forward("xla"))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(attention="flash"), "config.model.attention='flash': use one of ('auto', 'xla', 'cudnn')"),
        (dict(attention="cudnn"), "needs config.model.dtype='bfloat16'"),
        (dict(remat="sometimes"), "config.model.remat='sometimes': use one of"),
    ],
)
def test_model_settings_are_checked(overrides, message):
    model = audiomaepp.model_config("micro")
    model.update(overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        check_model(model)


@pytest.mark.parametrize("separate_norm3", [False, True])
def test_norm3_is_used_only_when_separate(separate_norm3):
    """The release's block applies LN2 on the SwiGLU path too; its norm3 exists but does nothing."""
    block = MacaronBlock(2, separate_norm3=separate_norm3)
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    params = block.init(jax.random.key(1), x, jnp.zeros((2, 5)))["params"]
    assert set(params["norm3"]) == {"scale", "bias"}  # in the weights either way (release layout)
    moved = {**params, "norm3": jax.tree.map(lambda p: p + 0.5, params["norm3"])}
    changed = not np.allclose(
        block.apply({"params": params}, x, jnp.zeros((2, 5))), block.apply({"params": moved}, x, jnp.zeros((2, 5)))
    )
    assert changed == separate_norm3


def test_rope_uses_true_token_positions():
    """With RoPE, the encoder output of a token depends on where it sits on the grid."""
    spec = spec_for(**{"encoder.use_rope": True})
    model, params = model_and_params(spec)
    x = _batch(1)
    swapped = x.at[:, 0:4].set(x[:, 4:8]).at[:, 4:8].set(x[:, 0:4])  # swap time patches 0 and 1
    a = model.apply({"params": params}, x, method=MaskedAutoencoder.encode)
    b = model.apply({"params": params}, swapped, method=MaskedAutoencoder.encode)
    assert not np.allclose(a[0, 0:5], b[0, 5:10], atol=1e-4)  # far above float32 rounding: a real difference


@pytest.mark.parametrize("block_type", ["macaron_swiglu", "vit"])
def test_analytic_flops_agree_with_xla(block_type):
    # Wider than micro, so matmuls dominate as they do at real sizes.
    wide = {"encoder.width": 256, "encoder.heads": 4, "decoder.width": 256, "decoder.heads": 4}
    spec = spec_for(block_type=block_type, **wide)
    model, params = model_and_params(spec)
    compiled = jax.jit(lambda p, x: _apply(model, p, x, 0)["loss"]).lower(params, _batch(1)).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    analytic = sum(forward_flops(spec).values())
    # XLA also counts elementwise work (LayerNorm, softmax, erf) that the analytic count leaves
    # out, and simplifies some of what it counts: agreement within 5% either way.
    assert abs(analysis["flops"] / analytic - 1) < 0.05


def test_a_non_finite_step_leaves_the_state_untouched():
    from maepp import optim
    from maepp.train_step import create_state, make_train_step
    from tests.helpers import CONFIG_FILES

    config = CONFIG_FILES["macaron_swiglu"].get_config("micro")
    model = MaskedAutoencoder(spec_for())
    optimizer = optim.optimizer(config)
    state = create_state(model, optimizer, jax.random.key(0))
    step = jax.jit(make_train_step(model, optimizer))
    state, metrics = step(state, _batch(4), jax.random.key(0))
    assert int(metrics["skipped"]) == 0
    poisoned = _batch(4).at[1, 17, 3].set(jnp.nan)
    after, metrics = step(state, poisoned, jax.random.key(1))
    assert int(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["loss"]))
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), (after.params, after.opt_state), (state.params, state.opt_state)
    )
    assert all(jax.tree.leaves(same))
    assert int(after.step) == int(state.step) + 1
