"""Power spectra of float32 frames, as accurate as a float64 FFT, from bfloat16 matrix products.

Why: a float32 FFT's rounding noise sits ~140 dB under a frame's energy, so quiet bins of loud
frames come out wrong by up to ~2e-4 in standardised log-mel. Accelerators have no fast float64,
but their matrix units multiply bfloat16 exactly and add in float32.

How (Ozaki et al., "Error-free transformations of matrix multiplication", 2012): the windowed DFT
matrix (float64, on the host) and each frame (scaled by a power of two to below 1 in magnitude)
are cut into slices of 7-bit integers times a power of two. A product of two slices has at most
14 bits and 400 of them sum to under 2^23, so each slice-by-slice matrix product is exact in
float32 accumulation, in any order, on any backend. Slice pairs whose terms fall under 2^-35 of
the frame's and the column's scales are dropped; the 14 kept products are added in double-float
arithmetic (two-sum), smallest first. The result matches a float64 STFT to ~1e-6 in
standardised log-mel (tests/test_frontend.py), for 14 bfloat16 matrix products
[frames, 400] x [400, 402], ~4.5 MFLOP per frame.
"""

import functools

import jax.numpy as jnp
import numpy as np

from maepp.audio.constants import N_FFT

BITS = 7  # per slice: 400 products of two 7-bit integers sum exactly in float32's 24 bits
FRAME_SLICES, MATRIX_SLICES = 4, 5
LEVELS = 6  # keep slice pairs (i, j), 1-based, with i + j <= LEVELS: 14 products
N_BINS = N_FFT // 2 + 1  # 201


def _steps_per_unit(i: int) -> float:
    """Slice i (1-based) counts in steps of 2^(-7 i)."""
    return 2.0 ** (BITS * i)


@functools.cache
def windowed_dft_slices() -> np.ndarray:
    """[MATRIX_SLICES, 400, 402] float32: slices of [hann * cos | -hann * sin], columns scaled apart.

    Slice j (1-based) holds integers in [-128, 128] times 2^(-7 j) times its column's power of two,
    exact in bfloat16; the slices sum to the float64 matrix within 2^-35 of each column's scale.
    """
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic Hann
    angle = 2 * np.pi * np.outer(n, np.arange(N_BINS)) / N_FFT
    matrix = np.concatenate([window[:, None] * np.cos(angle), -window[:, None] * np.sin(angle)], axis=1)
    _, exponent = np.frexp(np.maximum(np.abs(matrix).max(axis=0, keepdims=True), np.finfo(np.float64).tiny))
    column_scale = np.ldexp(1.0, exponent)  # so |matrix / column_scale| < 1
    rest, slices = matrix / column_scale, []
    for i in range(1, MATRIX_SLICES + 1):
        piece = np.round(rest * _steps_per_unit(i)) / _steps_per_unit(i)
        slices.append(piece * column_scale)
        rest = rest - piece
    return np.stack(slices).astype(np.float32)


def _frame_slices(frames):
    """[..., 400] float32 -> (FRAME_SLICES slices [..., 400] bfloat16, per-frame scale [..., 1])."""
    _, exponent = jnp.frexp(jnp.max(jnp.abs(frames), axis=-1, keepdims=True))
    scale = jnp.ldexp(jnp.ones_like(frames[..., :1]), exponent)  # |frames / scale| < 1; 1 for silence
    rest, slices = frames / scale, []
    for i in range(1, FRAME_SLICES + 1):
        piece = jnp.round(rest * _steps_per_unit(i)) / _steps_per_unit(i)  # all exact in float32
        slices.append(piece.astype(jnp.bfloat16))
        rest = rest - piece
    return slices, scale


def _two_sum(hi, lo, term):
    """(hi, lo) + term in double-float arithmetic: hi + lo carries ~48 bits."""
    total = hi + term
    term_part = total - hi
    error = (hi - (total - term_part)) + (term - term_part)
    return total, lo + error


def power_spectrum(frames):
    """Unwindowed frames [..., 400] float32 -> |DFT(hann * frame)|^2 [..., 201] float32."""
    matrix = jnp.asarray(windowed_dft_slices(), jnp.bfloat16)
    frame_slices, scale = _frame_slices(jnp.asarray(frames, jnp.float32))
    pairs = [(i, j) for i in range(FRAME_SLICES) for j in range(MATRIX_SLICES) if i + j + 2 <= LEVELS]
    hi = jnp.zeros((*frames.shape[:-1], 2 * N_BINS), jnp.float32)
    lo = jnp.zeros_like(hi)
    for i, j in sorted(pairs, key=lambda pair: -sum(pair)):  # finest products first
        product = jnp.einsum("...n,nk->...k", frame_slices[i], matrix[j], preferred_element_type=jnp.float32)
        hi, lo = _two_sum(hi, lo, product)
    spectrum = (hi + lo) * scale  # [..., 402]: real parts, then imaginary parts
    return spectrum[..., :N_BINS] ** 2 + spectrum[..., N_BINS:] ** 2
