"""SwiGLU's gate, product and inner LayerNorm as one Pallas kernel each way (Triton, on GPUs).

    y = LN( SiLU(g + gate_bias) * (v + value_bias) ) * scale + bias      g, v [N, H]: the gate's and
                                                                         value's matrix products
Left to XLA, this part of a Macaron block is a chain of fusions that write the product, read it
back for the statistics, read it again to normalise, and in the backward pass read and write each
[N, H] tensor two or three times more (docs/performance.md). Here the forward pass reads g and v
once and writes y and two statistics per row; the backward pass reads dy, g and v once, writes dg
and dv, and sums the four parameter gradients over its rows as it goes. The gate's and value's
bias gradients come out of the same pass, so their matrix products are taken without bias.

Arithmetic is float32 inside the kernels whatever the input dtype. The statistics are the
centred ones, (p - mean)^2, where flax's LayerNorm takes E[p^2] - E[p]^2: equal to float32
rounding. Off a GPU the kernels run in Pallas's interpreter, which is how the tests check them.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


class Tiling(NamedTuple):
    """How the kernels split [N, H]: tiles of tile_rows x H; in the backward pass each program
    walks program_rows rows tile by tile, summing the parameter gradients as it goes."""

    tile_rows: int
    program_rows: int
    num_warps: int = 8
    num_stages: int = 1  # Triton's software pipelining of the backward pass's loop: 1 is none


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def tiling(
    rows: int, hidden: int, tile_elements: int = 8192, programs: int = 512, num_warps: int = 8, num_stages: int = 3
) -> Tiling | None:
    """A Tiling for g, v [rows, hidden], or None where the kernels do not apply.

    Triton's blocks have power-of-two sides, so the hidden width must be one (base: 2048 in the
    encoder, 1024 in the decoder), and the tile is halved until it divides the rows. Tiles hold about
    tile_elements values; the backward pass gets at least `programs` programs where the rows
    allow. The defaults are the fastest of the sweep on an H200, kernels alone (docs/performance.md,
    run 4); `python -m maepp.tools.bench swiglu_norm` times others.
    """
    if not _is_power_of_two(hidden) or hidden > tile_elements:
        return None
    tile_rows = tile_elements // hidden
    while rows % tile_rows:  # ends at 1 at the latest
        tile_rows //= 2
    program_rows = tile_rows
    while program_rows * 2 <= rows // programs and rows % (program_rows * 2) == 0:
        program_rows *= 2
    return Tiling(tile_rows, program_rows, num_warps, num_stages)


def _gated(g, v, gate_bias, value_bias):
    """float32 gate, its sigmoid, value and product for one tile."""
    gate = g.astype(jnp.float32) + gate_bias[None, :]
    value = v.astype(jnp.float32) + value_bias[None, :]
    sigmoid = 1.0 / (1.0 + jnp.exp(-gate))
    return gate, sigmoid, value, gate * sigmoid * value


def _forward_kernel(
    g_ref, v_ref, gate_bias_ref, value_bias_ref, scale_ref, bias_ref, y_ref, mean_ref, rstd_ref, *, eps: float
):
    _, _, _, p = _gated(g_ref[...], v_ref[...], gate_bias_ref[...], value_bias_ref[...])  # [tile, H]
    mean = jnp.mean(p, axis=1)
    centred = p - mean[:, None]
    rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=1) + eps)
    y = centred * rstd[:, None] * scale_ref[...][None, :] + bias_ref[...][None, :]
    y_ref[...] = y.astype(y_ref.dtype)
    mean_ref[...] = mean
    rstd_ref[...] = rstd


def _backward_kernel(
    dy_ref,
    g_ref,
    v_ref,
    gate_bias_ref,
    value_bias_ref,
    scale_ref,
    mean_ref,
    rstd_ref,
    dg_ref,
    dv_ref,
    d_scale_ref,
    d_bias_ref,
    d_gate_bias_ref,
    d_value_bias_ref,
    *,
    tile: int,
):
    gate_bias, value_bias, scale = gate_bias_ref[...], value_bias_ref[...], scale_ref[...]
    hidden = scale.shape[0]

    def step(i, sums):
        rows = pl.ds(i * tile, tile)
        gate, sigmoid, value, p = _gated(g_ref[rows, :], v_ref[rows, :], gate_bias, value_bias)
        dy = dy_ref[rows, :].astype(jnp.float32)
        rstd = rstd_ref[rows][:, None]
        normed = (p - mean_ref[rows][:, None]) * rstd
        d_normed = dy * scale[None, :]
        dp = rstd * (
            d_normed - jnp.mean(d_normed, axis=1)[:, None] - normed * jnp.mean(d_normed * normed, axis=1)[:, None]
        )
        dv = dp * gate * sigmoid
        dg = dp * value * sigmoid * (1.0 + gate * (1.0 - sigmoid))  # SiLU'(x) = s (1 + x (1 - s))
        dg_ref[rows, :] = dg.astype(dg_ref.dtype)
        dv_ref[rows, :] = dv.astype(dv_ref.dtype)
        return tuple(total + jnp.sum(t, axis=0) for total, t in zip(sums, (dy * normed, dy, dg, dv)))

    zeros = jnp.zeros((hidden,), jnp.float32)
    sums = jax.lax.fori_loop(0, dy_ref.shape[0] // tile, step, (zeros,) * 4)
    for ref, total in zip((d_scale_ref, d_bias_ref, d_gate_bias_ref, d_value_bias_ref), sums):
        ref[...] = total[None, :]


def _compiler_params(t: Tiling):
    return plgpu.CompilerParams(num_warps=t.num_warps, num_stages=t.num_stages)


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


def _forward(g, v, gate_bias, value_bias, scale, bias, eps: float, t: Tiling):
    rows, hidden = g.shape
    tile = t.tile_rows
    rows_block = pl.BlockSpec((tile, hidden), lambda i: (i, 0))
    vector = pl.BlockSpec((hidden,), lambda i: (0,))
    statistic = pl.BlockSpec((tile,), lambda i: (i,))
    y, mean, rstd = pl.pallas_call(
        functools.partial(_forward_kernel, eps=eps),
        out_shape=(
            jax.ShapeDtypeStruct(g.shape, g.dtype),
            jax.ShapeDtypeStruct((rows,), jnp.float32),
            jax.ShapeDtypeStruct((rows,), jnp.float32),
        ),
        grid=(rows // tile,),
        in_specs=(rows_block, rows_block, vector, vector, vector, vector),
        out_specs=(rows_block, statistic, statistic),
        compiler_params=_compiler_params(t),
        interpret=_interpret(),
        name="swiglu_norm_forward",
    )(g, v, gate_bias, value_bias, scale, bias)
    return y, mean, rstd


def _backward(dy, g, v, gate_bias, value_bias, scale, mean, rstd, t: Tiling):
    rows, hidden = g.shape
    programs = rows // t.program_rows
    rows_block = pl.BlockSpec((t.program_rows, hidden), lambda i: (i, 0))
    vector = pl.BlockSpec((hidden,), lambda i: (0,))
    statistic = pl.BlockSpec((t.program_rows,), lambda i: (i,))
    partial = pl.BlockSpec((1, hidden), lambda i: (i, 0))
    partial_shape = jax.ShapeDtypeStruct((programs, hidden), jnp.float32)
    dg, dv, *partials = pl.pallas_call(
        functools.partial(_backward_kernel, tile=t.tile_rows),
        out_shape=(jax.ShapeDtypeStruct(g.shape, g.dtype),) * 2 + (partial_shape,) * 4,
        grid=(programs,),
        in_specs=(rows_block, rows_block, rows_block, vector, vector, vector, statistic, statistic),
        out_specs=(rows_block, rows_block) + (partial,) * 4,
        compiler_params=_compiler_params(t),
        interpret=_interpret(),
        name="swiglu_norm_backward",
    )(dy, g, v, gate_bias, value_bias, scale, mean, rstd)
    return dg, dv, *(p.sum(axis=0) for p in partials)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _swiglu_norm_2d(g, v, gate_bias, value_bias, scale, bias, eps, t):
    return _forward(g, v, gate_bias, value_bias, scale, bias, eps, t)[0]


def _swiglu_norm_2d_fwd(g, v, gate_bias, value_bias, scale, bias, eps, t):
    y, mean, rstd = _forward(g, v, gate_bias, value_bias, scale, bias, eps, t)
    return y, (g, v, gate_bias, value_bias, scale, mean, rstd)


def _swiglu_norm_2d_bwd(eps, t, residuals, dy):
    del eps
    g, v, gate_bias, value_bias, scale, mean, rstd = residuals
    dg, dv, d_scale, d_bias, d_gate_bias, d_value_bias = _backward(
        dy, g, v, gate_bias, value_bias, scale, mean, rstd, t
    )
    return dg, dv, d_gate_bias, d_value_bias, d_scale, d_bias


_swiglu_norm_2d.defvjp(_swiglu_norm_2d_fwd, _swiglu_norm_2d_bwd)


def applies(shape) -> bool:
    """Whether swiglu_norm takes g, v of this shape [..., H] (else the caller uses XLA's ops)."""
    return tiling(math.prod(shape[:-1]), shape[-1]) is not None


def swiglu_norm(g, v, gate_bias, value_bias, scale, bias, eps: float, t: Tiling | None = None):
    """LN(SiLU(g + gate_bias) * (v + value_bias)) * scale + bias over the last axis of g, v [..., H].

    The parameter vectors [H] are float32; y has g's dtype. Needs applies(g.shape); t: the
    tiling (default: tiling()'s for this shape), which must divide the rows.
    """
    shape = g.shape
    rows = math.prod(shape[:-1])
    t = t or tiling(rows, shape[-1])
    if rows % t.program_rows or t.program_rows % t.tile_rows:
        raise ValueError(f"swiglu_norm: {t} does not divide {rows} rows")
    flat = lambda a: a.reshape(rows, shape[-1])
    params = (jnp.asarray(p, jnp.float32) for p in (gate_bias, value_bias, scale, bias))
    return _swiglu_norm_2d(flat(g), flat(v), *params, eps, t).reshape(shape)
