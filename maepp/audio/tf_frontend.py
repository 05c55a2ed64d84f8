"""The log-mel front end in TensorFlow ops, for tf.data pipelines on the hosts' CPUs.

Same computation as maepp.audio.reference (docs/reference.md#input), with a filterbank of
maepp.audio.filterbanks as a constant: tf.signal's own mel matrix differs from torchaudio's by
~0.014 in log-mel (docs/reference.md#input).
"""

import functools

import tensorflow as tf

from maepp.audio import filterbanks
from maepp.audio.constants import HOP, LOG_EPS, N_FFT, STD_EPS


def clip_stats(log_mel):
    """(mean, unbiased std) of a clip's log-mel, as maepp.audio.reference.clip_stats."""
    first = log_mel[0, 0]
    shifted = log_mel - first
    n = tf.cast(tf.size(log_mel), tf.float32)
    shift_mean = tf.reduce_mean(shifted)
    std = tf.sqrt(tf.reduce_sum(tf.square(shifted - shift_mean)) / (n - 1.0))
    return first + shift_mean, std


def standardize(log_mel, mean, std):
    """(x - mean) / (std + 1e-8); with the clip's own stats a silent clip gives zeros, not NaN."""
    return (log_mel - mean) / (std + STD_EPS)


def frames_log_mel(padded, filterbank: str = filterbanks.DEFAULT):
    """Already padded 16 kHz samples -> log(mel + eps) [frames, 80] float32, one frame per hop.

    The STFT runs in float64 on the host: a float32 FFT's rounding noise sits ~140 dB under a
    frame's peak, and in quiet bins of loud frames that moves log-mel by up to ~4e-4.
    """
    spectrum = tf.signal.stft(
        tf.cast(padded, tf.float64),
        frame_length=N_FFT,
        frame_step=HOP,
        fft_length=N_FFT,
        window_fn=functools.partial(tf.signal.hann_window, dtype=tf.float64),  # periodic, as librosa's "hann"
        pad_end=False,
    )
    power = tf.math.real(spectrum) ** 2 + tf.math.imag(spectrum) ** 2  # [frames, 201]
    mel = tf.matmul(power, tf.constant(filterbanks.mel_filterbank(filterbank), tf.float64))  # [201, 80]
    return tf.cast(tf.math.log(mel + LOG_EPS), tf.float32)


def log_mel(waveform, filterbank: str = filterbanks.DEFAULT):
    """16 kHz mono waveform [samples] float32 -> standardised log-mel [frames, 80].

    frames = 1 + samples // 160 (centred frames, reflect padding of n_fft / 2 each side).
    """
    half = N_FFT // 2
    log = frames_log_mel(tf.pad(waveform, [[half, half]], mode="REFLECT"), filterbank)
    return standardize(log, *clip_stats(log))
