"""The log-mel computation in NumPy float64, for maepp.embed: frozen-encoder artifacts run it
with nothing but NumPy and the filterbank they store (no librosa, no TensorFlow).

A clip of any length is taken in blocks of BLOCK_FRAMES frames, so memory holds one block's
float64 frames and spectrum, not the clip's (an hour of audio made 1.2 GB of each), besides the
float32 result. The statistics that standardise the clip are merged block by block in float64.
"""

import numpy as np

from maepp.audio.constants import HOP, LOG_EPS, N_FFT, STD_EPS

BLOCK_FRAMES = 2048  # about 20 MB of float64 frames and spectra at a time
WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann


def n_frames(samples: int) -> int:
    """Frames of a clip of this many samples (centred frames: the clip padded by N_FFT / 2 each side)."""
    return 1 + samples // HOP


def log_mel_block(waveform, first: int, stop: int, filterbank) -> np.ndarray:
    """Natural-log mel power of frames [first, stop) of a waveform, float64 [stop - first, 80].

    Frame t covers samples [t HOP - N_FFT / 2, t HOP + N_FFT / 2) of the clip reflected at both
    ends, as np.pad(mode="reflect") would pad it."""
    half = N_FFT // 2
    positions = np.arange(first * HOP - half, (stop - 1) * HOP + half)
    last = len(waveform) - 1
    # Reflection without repeating the edge sample; a clip shorter than N_FFT / 2 reflects again.
    period = 2 * last if last else 1
    folded = np.abs(positions) % period
    segment = np.asarray(waveform)[np.minimum(folded, period - folded)].astype(np.float64)
    frames = segment[np.arange(stop - first)[:, None] * HOP + np.arange(N_FFT)[None, :]]  # [frames, 400]
    spectrum = np.fft.rfft(frames * WINDOW, n=N_FFT)  # [frames, 201]
    power = spectrum.real**2 + spectrum.imag**2
    return np.log(power @ np.asarray(filterbank, np.float64) + LOG_EPS)


def standardized_log_mel(waveform, filterbank) -> np.ndarray:
    """16 kHz mono waveform [samples] -> standardised log-mel [1 + samples // 160, 80] float32.

    filterbank [201, 80]; the clip is standardised over all its values (sample std, ddof 1).
    """
    total = n_frames(len(waveform))
    out = np.empty((total, np.shape(filterbank)[1]), np.float32)
    count, mean, squares, shift = 0, 0.0, 0.0, None
    for first in range(0, total, BLOCK_FRAMES):
        stop = min(first + BLOCK_FRAMES, total)
        log = log_mel_block(waveform, first, stop, filterbank)
        # Shifting by one value first changes nothing mathematically, but makes a constant (silent)
        # clip exactly zero, so rounding noise in its mean is not divided by std + 1e-8 ~ 1e-8.
        shift = log[0, 0] if shift is None else shift
        log -= shift
        # Chan, Golub and LeVeque's merge of two blocks' counts, means and summed squared deviations.
        block_mean = log.mean()
        block_squares = np.square(log - block_mean).sum()
        merged = count + log.size
        delta = block_mean - mean
        mean += delta * log.size / merged
        squares += block_squares + delta**2 * count * log.size / merged
        count = merged
        out[first:stop] = log
    std = np.sqrt(squares / (count - 1)) if count > 1 else 0.0
    # Standardised in float64 block by block (the stored values are float32 rounding of the shifted logs).
    for first in range(0, total, BLOCK_FRAMES):
        block = out[first : first + BLOCK_FRAMES]
        block[:] = (block.astype(np.float64) - mean) / (std + STD_EPS)
    return out
