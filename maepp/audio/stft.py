"""The log-mel computation written once over an array module: jax.numpy on the accelerator
(maepp.audio.jax_frontend, float32) or NumPy (maepp.embed, float64, with no librosa or TF)."""
import numpy as np

from maepp.audio.constants import HOP, LOG_EPS, N_FFT, STD_EPS


def standardized_log_mel(waveforms, filterbank, xp, dtype):
    """16 kHz mono waveforms [batch, samples] -> standardised log-mels [batch, frames, 80].

    frames = 1 + samples // 160; each clip is standardised on its own. filterbank [201, 80].
    """
    n = np.arange(N_FFT)
    window = xp.asarray(0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT), dtype)  # periodic Hann
    waveforms = xp.asarray(waveforms, dtype)
    half = N_FFT // 2
    padded = xp.pad(waveforms, ((0, 0), (half, half)), mode="reflect")
    n_frames = 1 + (padded.shape[1] - N_FFT) // HOP
    starts = np.arange(n_frames)[:, None] * HOP
    frames = padded[:, starts + n[None, :]]  # [batch, frames, 400]
    spectrum = xp.fft.rfft(frames * window, n=N_FFT)  # [batch, frames, 201]
    power = spectrum.real**2 + spectrum.imag**2
    log = xp.log(power @ xp.asarray(filterbank, dtype) + LOG_EPS)  # [batch, frames, 80]
    # Shifting by one value first changes nothing mathematically, but makes a constant (silent)
    # clip exactly zero, so rounding noise in its mean is not divided by std + 1e-8 ~ 1e-8.
    log = log - log[:, :1, :1]
    mean = log.mean(axis=(1, 2), keepdims=True)
    std = xp.sqrt(((log - mean) ** 2).sum(axis=(1, 2), keepdims=True) / (log.shape[1] * log.shape[2] - 1))
    return ((log - mean) / (std + STD_EPS)).astype(np.float32)
