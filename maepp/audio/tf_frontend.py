"""The log-mel front end in TensorFlow ops, for tf.data pipelines on the hosts' CPUs.

Same computation as maepp.audio.reference (PAPER.md, "Input"); the HTK filterbank is built
once with librosa and used as a constant, since tf.signal's own mel matrix differs from
torchaudio's by ~0.014 in log-mel (STACK.md).
"""
import functools

import numpy as np
import tensorflow as tf

from maepp.audio import reference


@functools.lru_cache(maxsize=None)
def _filterbank() -> np.ndarray:
    # Cached as NumPy: a cached tf.constant made while tracing one graph cannot enter another.
    return reference.mel_filterbank().astype(np.float64)  # [201, 80]


def standardize(log_mel):
    """Per-clip (x - mean) / (unbiased std + 1e-8); a silent clip (std 0) gives zeros, not NaN.

    The shift by the first value changes nothing mathematically but makes a constant clip exactly
    zero, so rounding noise in its mean is not divided by 1e-8.
    """
    log_mel = log_mel - log_mel[0, 0]
    mean = tf.reduce_mean(log_mel)
    n = tf.cast(tf.size(log_mel), tf.float32)
    std = tf.sqrt(tf.reduce_sum(tf.square(log_mel - mean)) / (n - 1.0))
    return (log_mel - mean) / (std + reference.STD_EPS)


def log_mel(waveform):
    """16 kHz mono waveform [samples] float32 -> standardised log-mel [frames, 80].

    frames = 1 + samples // 160 (centred frames, reflect padding of n_fft / 2 each side).
    """
    half = reference.N_FFT // 2
    # The STFT runs in float64 on the host: a float32 FFT's rounding noise sits ~140 dB under a
    # frame's peak, and in quiet bins of loud frames that moves log-mel by up to ~4e-4.
    padded = tf.pad(tf.cast(waveform, tf.float64), [[half, half]], mode="REFLECT")
    spectrum = tf.signal.stft(
        padded,
        frame_length=reference.N_FFT,
        frame_step=reference.HOP,
        fft_length=reference.N_FFT,
        window_fn=functools.partial(tf.signal.hann_window, dtype=tf.float64),  # periodic, as librosa's "hann"
        pad_end=False,
    )
    power = tf.math.real(spectrum) ** 2 + tf.math.imag(spectrum) ** 2  # [frames, 201]
    mel = tf.matmul(power, tf.constant(_filterbank()))
    return standardize(tf.cast(tf.math.log(mel + reference.LOG_EPS), tf.float32))
