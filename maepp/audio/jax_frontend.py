"""The log-mel front end in jax.numpy, to turn raw waveform crops into log-mels on the
accelerator when the hosts' CPUs are the bottleneck. Same computation as maepp.audio.reference,
in float32 (accelerators have no fast float64): a float32 FFT's rounding noise sits ~140 dB
under a frame's peak, so in quiet bins of loud frames log-mel can differ from the float64-exact
reference by a few 1e-4 (tests/test_frontend.py measures it).
"""
import jax.numpy as jnp

from maepp.audio import reference
from maepp.audio.stft import standardized_log_mel


def log_mel(waveforms):
    """16 kHz mono waveforms [batch, samples] -> standardised log-mels [batch, frames, 80] float32."""
    return standardized_log_mel(waveforms, reference.mel_filterbank(), jnp, jnp.float32)
