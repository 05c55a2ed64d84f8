"""The log-mel front end in NumPy/librosa: the reference the fast versions are tested against.

docs/reference.md#input: 16 kHz, n_fft 400, periodic Hann window 400, hop 160, 80 HTK mel bins
50-8000 Hz without filter normalisation (maepp.audio.filterbanks), power 2, centred frames with
reflect padding (as torchaudio), log(mel + float32 eps), then per-clip standardisation with the
unbiased std. The STFT is librosa's: its float64 window promotes the float32 frames, so the FFT
runs in float64 on any CPU and only the spectrum is rounded to complex64.
"""

import librosa
import numpy as np

from maepp.audio import filterbanks
from maepp.audio.constants import HOP, LOG_EPS, N_FFT, STD_EPS


def clip_stats(log_mel: np.ndarray):
    """(mean, unbiased std) of a clip's log-mel, in float64.

    Computed around the first value: for a constant (silent) clip the mean is then exactly that
    value, so x - mean is exactly zero and no rounding noise is divided by std + 1e-8 ~ 1e-8.
    """
    first = np.float64(log_mel.flat[0])
    shifted = np.asarray(log_mel, np.float64) - first
    return float(first + shifted.mean()), float(shifted.std(ddof=1))


def standardize(log_mel: np.ndarray, stats=None) -> np.ndarray:
    """(x - mean) / (unbiased std + 1e-8), with the clip's own stats unless given."""
    mean, std = stats if stats is not None else clip_stats(log_mel)
    return ((log_mel - mean) / (std + STD_EPS)).astype(np.float32)


def unstandardized_log_mel(waveform: np.ndarray, filterbank: str = filterbanks.DEFAULT) -> np.ndarray:
    """16 kHz mono waveform [samples] -> log(mel + eps) [frames, 80] float32, time-major."""
    spectrum = librosa.stft(
        np.asarray(waveform, np.float32),
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=N_FFT,
        window="hann",
        center=True,
        pad_mode="reflect",
    )  # [201, frames] complex64
    power = (np.abs(spectrum) ** 2).T  # [frames, 201]
    return np.log(power @ filterbanks.mel_filterbank(filterbank) + LOG_EPS).astype(np.float32)


def log_mel(waveform: np.ndarray, filterbank: str = filterbanks.DEFAULT) -> np.ndarray:
    """16 kHz mono waveform [samples] -> standardised log-mel [frames, 80] float32, time-major."""
    return standardize(unstandardized_log_mel(waveform, filterbank))
