"""Writes tests/data/torchaudio_reference.npz: the release's front end, run by torchaudio itself.

    python -m tests.torchaudio_reference   (needs torchaudio; see below)

The release computes its log-mels with torchaudio.transforms.MelSpectrogram (its
src/data/features.py, LogMelSpec): float32 STFT and a filterbank built in float32. torchaudio
cannot be part of the test environment: its last release (2.11) is built for torch 2.11, and its
compiled extension fails to load beside our torch. MelSpectrogram itself is Python over torch
ops, which runs without that extension. To regenerate the file:

    .venv/bin/pip install --no-deps --target /tmp/ta torchaudio==2.11.0
    rm -r /tmp/ta/torchaudio/lib       # the extension: torchaudio then imports without it
    PYTHONPATH=/tmp/ta:. .venv/bin/python -m tests.torchaudio_reference

The file holds the clips as 16-bit PCM (so the generator may change without changing the
reference), torchaudio's filterbank [201, 80] as it builds it (float32), and each clip's
log(mel + eps) [frames, 80] and its standardisation, as the release's LogMelSpec computes them
but in float64: the module run on float64 samples with a Hann window built in float64, its
filterbank's float32 values cast. The release's own float32 outputs are not kept: their quiet
bins carry the rounding of the float32 FFT (and of a float32-built window) of whichever machine
wrote them, up to 1.2e-3 apart between two CPUs' FFT code paths, more than the 4e-5 that
separates one filterbank from another. The float64 outputs are the same on any machine to ~1e-9.
"""

import pathlib

import numpy as np

from maepp.audio.constants import F_MAX, F_MIN, HOP, N_FFT, N_MELS, SAMPLE_RATE
from maepp.data.synthetic import synthetic_clip

PATH = pathlib.Path(__file__).parent / "data" / "torchaudio_reference.npz"
SECONDS = (1.0, 2.5)


def reference_clips() -> list:
    """Procedural clips of several classes, as 16-bit PCM."""
    rng = np.random.default_rng(11)
    clips = [synthetic_clip(rng, seconds=seconds)[0] for seconds in SECONDS]
    return [np.clip(np.round(clip * 32768.0), -32768, 32767).astype(np.int16) for clip in clips]


def main():
    import torch
    import torchaudio

    # The window built in float64: a float32-built one's rounding is noise as loud as a float32 FFT's.
    melspec = torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE,
        n_fft=N_FFT,
        win_length=N_FFT,
        hop_length=HOP,
        f_min=F_MIN,
        f_max=F_MAX,
        n_mels=N_MELS,
        power=2.0,
        wkwargs=dict(dtype=torch.float64),
    )
    arrays = {
        "filterbank": melspec.mel_scale.fb.numpy(),
        "torchaudio_version": np.array(torchaudio.__version__),
        "torch_version": np.array(torch.__version__),
    }
    melspec.double()  # in place: the filterbank's float32 values, cast
    for i, pcm in enumerate(reference_clips()):
        log = (melspec(torch.from_numpy(pcm.astype(np.float64) / 32768.0)[None]) + torch.finfo().eps).log()
        standardised = (log - log.mean(dim=[1, 2], keepdim=True)) / (log.std(dim=[1, 2], keepdim=True) + 1e-8)
        arrays[f"pcm_{i}"] = pcm
        arrays[f"log_mel_{i}"] = log[0].T.numpy()  # [frames, 80] float64, time-major as maepp's
        arrays[f"standardised_{i}"] = standardised[0].T.numpy()
    PATH.parent.mkdir(exist_ok=True)
    np.savez_compressed(PATH, **arrays)
    print(
        f"wrote {PATH} ({PATH.stat().st_size:,} bytes) with torchaudio {torchaudio.__version__}, "
        f"torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
