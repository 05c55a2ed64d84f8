"""The log-mel computation in NumPy float64, for maepp.embed: frozen-encoder artifacts run it
with nothing but NumPy and the filterbank they store (no librosa, no TensorFlow)."""
import numpy as np

from maepp.audio.constants import HOP, LOG_EPS, N_FFT, STD_EPS


def standardized_log_mel(waveform, filterbank) -> np.ndarray:
    """16 kHz mono waveform [samples] -> standardised log-mel [1 + samples // 160, 80] float32.

    filterbank [201, 80]; the clip is standardised over all its values.
    """
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic Hann
    half = N_FFT // 2
    padded = np.pad(np.asarray(waveform, np.float64), (half, half), mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    frames = padded[np.arange(n_frames)[:, None] * HOP + n[None, :]]  # [frames, 400]
    spectrum = np.fft.rfft(frames * window, n=N_FFT)  # [frames, 201]
    power = spectrum.real**2 + spectrum.imag**2
    log = np.log(power @ np.asarray(filterbank, np.float64) + LOG_EPS)  # [frames, 80]
    # Shifting by one value first changes nothing mathematically, but makes a constant (silent)
    # clip exactly zero, so rounding noise in its mean is not divided by std + 1e-8 ~ 1e-8.
    log = log - log[0, 0]
    return ((log - log.mean()) / (log.std(ddof=1) + STD_EPS)).astype(np.float32)
