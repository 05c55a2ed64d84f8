"""maepp.models.swiglu_norm: the fused SwiGLU-LayerNorm kernels (run here in Pallas's
interpreter) compute what XLA's ops do, values and every gradient, and plug into the model
without changing its parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maepp.models import MASKING_RNG, MaskedAutoencoder, init_params, swiglu_norm
from maepp.models.layers import LAYER_NORM_EPS, SwiGLU
from tests.helpers import assert_trees_equal, leaves, spec_for


def _reference(g, v, gate_bias, value_bias, scale, bias):
    """The XLA path's arithmetic, in float32."""
    p = jax.nn.silu(g.astype(jnp.float32) + gate_bias) * (v.astype(jnp.float32) + value_bias)
    mean = p.mean(-1, keepdims=True)
    var = ((p - mean) ** 2).mean(-1, keepdims=True)
    return ((p - mean) / jnp.sqrt(var + LAYER_NORM_EPS) * scale + bias).astype(g.dtype)


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 2e-5), (jnp.bfloat16, 2e-2)], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("tiling", [None, swiglu_norm.Tiling(tile_rows=4, program_rows=32)], ids=["default", "8_steps"])
def test_kernels_match_xla_values_and_gradients(dtype, tolerance, tiling):
    keys = jax.random.split(jax.random.key(0), 7)
    g, v = (jax.random.normal(k, (2, 96, 256)).astype(dtype) for k in keys[:2])
    gate_bias, value_bias, scale, bias = (0.5 * jax.random.normal(k, (256,)) for k in keys[2:6])
    scale = scale + 1.0
    cotangent = jax.random.normal(keys[6], g.shape)
    args = (g, v, gate_bias, value_bias, scale, bias)

    def fused(*a):
        return swiglu_norm.swiglu_norm(*a, LAYER_NORM_EPS, tiling)

    def pullback(f):
        return jax.jit(jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) * cotangent), argnums=range(6)))(*args)

    y, expected = jax.jit(fused)(*args), _reference(*args)
    # bfloat16 output: one rounding step of values of order 1.
    atol = 4 * tolerance if dtype == jnp.bfloat16 else tolerance
    np.testing.assert_allclose(np.float32(y), np.float32(expected), atol=atol)
    names = ("g", "v", "gate_bias", "value_bias", "scale", "bias")
    for name, got, want in zip(names, pullback(fused), pullback(_reference)):
        got, want = np.float32(got), np.float32(want)
        assert np.abs(got - want).max() <= tolerance * np.abs(want).max(), name


def test_tiling_fits_the_base_model_and_refuses_what_triton_cannot_tile():
    # Base at batch 512: decoder 512 x 251 rows of 1024, encoder 512 x 51 rows of 2048.
    assert swiglu_norm.tiling(512 * 251, 1024) == swiglu_norm.Tiling(tile_rows=8, program_rows=128, num_stages=3)
    assert swiglu_norm.tiling(512 * 51, 2048) == swiglu_norm.Tiling(tile_rows=4, program_rows=32, num_stages=3)
    assert swiglu_norm.tiling(51, 1024).tile_rows == 1  # odd rows: one per tile
    assert swiglu_norm.tiling(512 * 51, 1365) is None  # large's decoder: not a power of two
    assert not swiglu_norm.applies((4, 51, 2730))
    with pytest.raises(ValueError, match="does not divide 192 rows"):
        swiglu_norm.swiglu_norm(
            *(jnp.zeros((192, 256)),) * 2,
            *(jnp.zeros(256),) * 4,
            LAYER_NORM_EPS,
            swiglu_norm.Tiling(tile_rows=4, program_rows=128),
        )


def test_the_swiglu_module_with_the_kernels_has_the_same_parameters_outputs_and_gradients():
    x = jax.random.normal(jax.random.key(1), (2, 51, 96))  # hidden int(8 * 96 / 3) = 256
    modules = {name: SwiGLU(jnp.float32, name) for name in ("xla", "pallas")}
    params = {name: m.init(jax.random.key(0), x)["params"] for name, m in modules.items()}
    assert_trees_equal(params["pallas"], params["xla"])

    def loss(name):
        return lambda p, x: jnp.sum(jnp.sin(modules[name].apply({"params": p}, x)))

    assert "pallas_call" in str(jax.make_jaxpr(loss("pallas"))(params["xla"], x))
    (value, grads), (fused_value, fused_grads) = (
        jax.jit(jax.value_and_grad(loss(name), argnums=(0, 1)))(params["xla"], x) for name in ("xla", "pallas")
    )
    # float32 kernels against XLA's ops: other summation orders in LN_h's statistics and the matmuls
    assert float(fused_value) == pytest.approx(float(value), abs=1e-4)
    for got, want in zip(leaves(fused_grads), leaves(grads), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_config_model_swiglu_norm_reaches_every_macaron_block():
    widths = {"encoder.width": 96, "decoder.width": 48}  # SwiGLU hidden 256 and 128: powers of two
    batch = jax.ShapeDtypeStruct((4, 200, 80), jnp.float32)
    for setting in ("pallas", "xla"):
        spec = spec_for(**widths, swiglu_norm=setting)
        model = MaskedAutoencoder(spec)
        params = jax.eval_shape(lambda model=model: nn.meta.unbox(init_params(model, jax.random.key(0))))
        loss = lambda p, b, model=model: model.apply({"params": p}, b, rngs={MASKING_RNG: jax.random.key(3)})["loss"]
        calls = str(jax.make_jaxpr(jax.grad(loss))(params, batch)).count("pallas_call")
        # Each block's forward and backward kernel.
        assert calls == (2 * (spec.encoder.depth + spec.decoder.depth) if setting == "pallas" else 0), setting
