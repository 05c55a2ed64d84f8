"""The log-mel front end in jax.numpy, for the accelerator.

With config.data.frontend = "device" the hosts only decode audio and cut crops of raw samples
(maepp.data.pipeline), and the jitted train step turns them into log-mels with crop_log_mel:
hosts whose CPUs cannot keep up with the STFT hand it to the accelerator. Same computation as
maepp.audio.reference. The DFT is maepp.audio.sliced_dft's float64-accurate bfloat16 products and
the mel projection a full-precision float32 product, so the result matches the reference to
~1e-6 (tests/test_frontend.py); a float32 FFT would be off by up to ~2e-4.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from maepp.audio import filterbanks, sliced_dft
from maepp.audio.constants import HOP, LOG_EPS, N_FFT, STD_EPS, crop_span


def frames_log_mel(frames, filterbank: str = filterbanks.DEFAULT):
    """Frames of 400 samples [..., 400] float32 -> log(mel + eps) [..., 80]."""
    power = sliced_dft.power_spectrum(frames)  # [..., 201]
    # Full float32: TF32 or one bfloat16 pass (GPU and TPU defaults) would cost ~1e-3 here.
    mel = jnp.matmul(power, jnp.asarray(filterbanks.mel_filterbank(filterbank)), precision=jax.lax.Precision.HIGHEST)
    return jnp.log(mel + LOG_EPS)


def clip_stats(log_mels):
    """[batch, frames, 80] -> per-clip (mean, unbiased std) [batch], as reference.clip_stats."""
    # Shifting by one value first makes a constant (silent) clip exactly zero, so rounding noise
    # in its mean is not divided by std + 1e-8 ~ 1e-8.
    first = log_mels[:, 0, 0]
    shifted = log_mels - first[:, None, None]
    shift_mean = shifted.mean(axis=(1, 2))
    n = log_mels.shape[1] * log_mels.shape[2]
    std = jnp.sqrt(((shifted - shift_mean[:, None, None]) ** 2).sum(axis=(1, 2)) / (n - 1))
    return first + shift_mean, std


def standardize(log_mels, mean, std):
    """[batch, frames, 80] with per-clip mean, std [batch] -> (x - mean) / (std + 1e-8)."""
    return (log_mels - mean[:, None, None]) / (std[:, None, None] + STD_EPS)


def log_mel(waveforms, filterbank: str = filterbanks.DEFAULT):
    """Whole clips, 16 kHz mono [batch, samples] -> standardised log-mels [batch, 1 + samples // 160, 80]."""
    half = N_FFT // 2
    padded = jnp.pad(jnp.asarray(waveforms, jnp.float32), ((0, 0), (half, half)), mode="reflect")
    n_frames = 1 + (padded.shape[1] - N_FFT) // HOP
    frames = padded[:, np.arange(n_frames)[:, None] * HOP + np.arange(N_FFT)]  # [batch, frames, 400]
    log_mels = frames_log_mel(frames, filterbank)
    return standardize(log_mels, *clip_stats(log_mels))


def crop_shapes(batch_size: int, crop_frames: int) -> dict:
    """crop_log_mel's input, as shapes and dtypes (for ahead-of-time compilation)."""
    return dict(
        samples=jax.ShapeDtypeStruct((batch_size, crop_span(crop_frames)), jnp.float32),
        frame_starts=jax.ShapeDtypeStruct((batch_size, crop_frames), jnp.int32),
        mean=jax.ShapeDtypeStruct((batch_size,), jnp.float32),
        std=jax.ShapeDtypeStruct((batch_size,), jnp.float32),
    )


def in_train_step(frontend: str, filterbank: str = filterbanks.DEFAULT):
    """What the train step applies to its inputs for config.data.frontend: crop_log_mel for
    "device" (raw-sample crops in), None for "host" (the inputs are log-mels already)."""
    return functools.partial(crop_log_mel, filterbank=filterbank) if frontend == "device" else None


def crop_log_mel(crops, filterbank: str = filterbanks.DEFAULT):
    """A batch of waveform crops from maepp.data.pipeline (frontend "device") -> log-mels.

    crops: samples [batch, span] float32 (the padded clip's samples the crop's frames cover),
    frame_starts [batch, frames] int32 (where each frame starts in samples; short clips repeat
    frames), mean and std [batch] (the whole clip's log-mel stats).
    -> standardised log-mels [batch, frames, 80], equal to the host front end's crops.
    """

    def frames_of_one(samples, starts):
        return samples[starts[:, None] + np.arange(N_FFT)]  # [frames, 400]

    frames = jax.vmap(frames_of_one)(crops["samples"], crops["frame_starts"])
    return standardize(frames_log_mel(frames, filterbank), crops["mean"], crops["std"])
