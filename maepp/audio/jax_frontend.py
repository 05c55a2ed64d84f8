"""The log-mel front end in jax.numpy, to turn raw waveform crops into log-mels on the
accelerator when the hosts' CPUs are the bottleneck. Same computation as maepp.audio.reference,
in float32 (accelerators have no fast float64): a float32 FFT's rounding noise sits ~140 dB
under a frame's peak, so in quiet bins of loud frames log-mel can differ from the float64-exact
reference by a few 1e-4 (tests/test_frontend.py measures it).
"""
import functools

import jax.numpy as jnp
import numpy as np

from maepp.audio import reference


@functools.lru_cache(maxsize=None)
def _constants():
    n = np.arange(reference.N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / reference.N_FFT)  # periodic Hann
    return window.astype(np.float32), reference.mel_filterbank()


def log_mel(waveforms):
    """16 kHz mono waveforms [batch, samples] -> standardised log-mels [batch, frames, 80] float32.

    frames = 1 + samples // 160; each clip is standardised on its own.
    """
    window, filterbank = _constants()
    waveforms = jnp.asarray(waveforms, jnp.float32)
    half = reference.N_FFT // 2
    padded = jnp.pad(waveforms, ((0, 0), (half, half)), mode="reflect")
    n_frames = 1 + (padded.shape[1] - reference.N_FFT) // reference.HOP
    starts = np.arange(n_frames)[:, None] * reference.HOP
    frames = padded[:, starts + np.arange(reference.N_FFT)[None, :]]  # [batch, frames, 400]
    spectrum = jnp.fft.rfft(frames * window, n=reference.N_FFT)  # [batch, frames, 201]
    power = spectrum.real**2 + spectrum.imag**2
    log = jnp.log(power @ filterbank + reference.LOG_EPS)  # [batch, frames, 80]
    # Shifting by one value first changes nothing mathematically, but makes a constant (silent)
    # clip exactly zero, so rounding noise in its mean is not divided by std + 1e-8 ~ 1e-8.
    log = log - log[:, :1, :1]
    mean = log.mean(axis=(1, 2), keepdims=True)
    std = jnp.sqrt(((log - mean) ** 2).sum(axis=(1, 2), keepdims=True) / (log.shape[1] * log.shape[2] - 1))
    return (log - mean) / (std + reference.STD_EPS)
