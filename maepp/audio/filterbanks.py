"""The mel filterbanks a front end can use: config.audio.filterbank (docs/reference.md#input).

Both are HTK-scale triangles over 50-8000 Hz without normalisation; they differ in rounding:
    "torchaudio"  built in float32 with the arithmetic of torchaudio.functional.melscale_fbanks,
                  as the release's front end (torchaudio.transforms.MelSpectrogram) builds it.
                  The default: it is what trained the published models.
    "librosa"     librosa.filters.mel, built in float64 and rounded to float32. Up to 7.8e-6 off
                  the first, which moves standardised log-mels by up to ~1.6e-4.
"""

import functools
import math

import numpy as np

from maepp.audio.constants import F_MAX, F_MIN, N_FFT, N_MELS, SAMPLE_RATE

NAMES = ("torchaudio", "librosa")
DEFAULT = "torchaudio"


def check(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"config.audio.filterbank={name!r}: use one of {NAMES}")
    return name


def from_config(config) -> str:
    """The filterbank an experiment config (or a run's saved config.json) trains with."""
    return check(config.audio.filterbank)


def _torch_linspace_float32(start: float, stop: float, steps: int) -> np.ndarray:
    """torch.linspace(start, stop, steps) in float32, value for value: ends and step rounded to
    float32, each point one fused multiply-add from the nearer end."""
    start, stop = np.float32(start), np.float32(stop)
    step = np.float64((stop - start) / np.float32(steps - 1))
    i = np.arange(steps)
    from_start = np.float64(start) + step * i
    from_stop = np.float64(stop) - step * (steps - 1 - i)
    return np.where(i < steps // 2, from_start, from_stop).astype(np.float32)


def _torchaudio_htk() -> np.ndarray:
    f32 = np.float32
    all_freqs = _torch_linspace_float32(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)  # [201]
    m_min, m_max = (2595.0 * math.log10(1.0 + f / 700.0) for f in (F_MIN, F_MAX))  # Python floats, as torchaudio
    mels = _torch_linspace_float32(m_min, m_max, N_MELS + 2)  # [82]
    # torch's float32 pow is correctly rounded here; NumPy's float32 pow is not always.
    powers = (10.0 ** (mels / f32(2595.0)).astype(np.float64)).astype(f32)
    f_pts = f32(700.0) * (powers - f32(1.0))
    f_diff = f_pts[1:] - f_pts[:-1]  # [81]
    slopes = f_pts[None, :] - all_freqs[:, None]  # [201, 82]
    down = (f32(-1.0) * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(f32(0.0), np.minimum(down, up))


def _librosa_htk() -> np.ndarray:
    import librosa  # only here: maepp.embed's front end reads its filterbank from the artifact

    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=F_MIN, fmax=F_MAX, htk=True, norm=None)
    return fb.T.astype(np.float32)


@functools.cache
def _built(name: str) -> np.ndarray:
    fb = _torchaudio_htk() if name == "torchaudio" else _librosa_htk()
    fb.setflags(write=False)
    return fb


def mel_filterbank(name: str = DEFAULT) -> np.ndarray:
    """[N_FFT // 2 + 1, N_MELS] = [201, 80] float32, read-only."""
    return _built(check(name))
