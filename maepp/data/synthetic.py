"""Procedural audio: the embedded default dataset that needs no download.

Each clip is one of a few sound classes (the label is kept for probe tests), built from
random parameters: harmonic tones with vibrato, chirps, noise bursts, click trains, or a
mixture of two of them, at a random level with a little background noise.
"""

import numpy as np
import scipy.signal

CLASSES = ("harmonic", "chirp", "noise_burst", "clicks", "mixture")


def _harmonic(rng, t):
    f0 = rng.uniform(80, 800)
    vibrato = rng.uniform(0, 0.03) * np.sin(2 * np.pi * rng.uniform(3, 8) * t)
    phase = 2 * np.pi * np.cumsum(f0 * (1 + vibrato)) / (len(t) / t[-1])
    n_harmonics = rng.integers(1, 8)
    rolloff = rng.uniform(0.3, 0.9)
    return sum(rolloff**k * np.sin((k + 1) * phase) for k in range(n_harmonics))


def _chirp(rng, t):
    f_start, f_end = rng.uniform(100, 6000, size=2)
    freq = f_start * (f_end / f_start) ** (t / t[-1])  # exponential sweep
    return np.sin(2 * np.pi * np.cumsum(freq) / (len(t) / t[-1]))


def _noise_burst(rng, t):
    envelope = np.zeros_like(t)
    for _ in range(rng.integers(1, 5)):
        start = rng.uniform(0, t[-1])
        envelope += np.exp(-np.maximum(t - start, 0) * rng.uniform(5, 30)) * (t >= start)
    noise = rng.standard_normal(len(t))
    alpha = rng.uniform(0.0, 0.95)  # one-pole low-pass of random strength colours the noise
    coloured = scipy.signal.lfilter([1 - alpha], [1, -alpha], noise)
    return envelope * (coloured + 0.3 * noise)


def _clicks(rng, t):
    rate = rng.uniform(2, 40)
    out = np.zeros_like(t)
    sr = len(t) / t[-1]
    for start in np.arange(rng.uniform(0, 1 / rate), t[-1], 1 / rate):
        i = int(start * sr)
        length = min(int(0.004 * sr), len(t) - i)
        out[i : i + length] += np.hanning(length) * rng.choice([-1, 1])
    return out


_GENERATORS = {"harmonic": _harmonic, "chirp": _chirp, "noise_burst": _noise_burst, "clicks": _clicks}


def synthetic_clip(rng: np.random.Generator, seconds: float = 2.0, sample_rate: int = 16000):
    """-> (waveform [samples] float32 in [-1, 1], label index into CLASSES)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    label = int(rng.integers(len(CLASSES)))
    if CLASSES[label] == "mixture":
        first, second = rng.choice(list(_GENERATORS), size=2, replace=False)
        signal = _GENERATORS[first](rng, t) + rng.uniform(0.3, 1.0) * _GENERATORS[second](rng, t)
    else:
        signal = _GENERATORS[CLASSES[label]](rng, t)
    signal = signal / (np.max(np.abs(signal)) + 1e-9) * rng.uniform(0.1, 0.9)
    signal = signal + rng.uniform(1e-4, 1e-2) * rng.standard_normal(len(t))
    return np.clip(signal, -1.0, 1.0).astype(np.float32), label
