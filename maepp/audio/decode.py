"""Reading audio files of any rate and channel count as 16 kHz mono float32.

A file that cannot be used raises BadAudio with the reason; pipelines skip it, count it and
name it in the log, so one corrupt file in two million never stops a run.
"""
import pathlib
import struct

import librosa
import numpy as np
import soundfile

from maepp.audio.reference import SAMPLE_RATE

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class BadAudio(ValueError):
    """A clip that cannot be trained on. `reason` is one short phrase for the skip report."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def to_mono_16k(samples: np.ndarray, sample_rate: int, path="<array>") -> np.ndarray:
    """[frames, channels] (or [frames]) at any rate -> [samples] float32 at 16 kHz, checked."""
    samples = np.asarray(samples, np.float32)
    if samples.size == 0:
        raise BadAudio(path, "empty (no samples)")
    if not np.all(np.isfinite(samples)):
        raise BadAudio(path, "contains NaN or Inf samples")
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if sample_rate != SAMPLE_RATE:
        mono = librosa.resample(mono, orig_sr=sample_rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    if float(np.std(mono)) == 0.0:
        raise BadAudio(path, "silent (all samples equal)")
    return mono.astype(np.float32)


def _wav_declared_frames(path: pathlib.Path):
    """Frames the header of a RIFF/WAVE file promises, or None if it is not a plain WAV.

    libsndfile quietly reads a cut-off WAV as a shorter one; the header tells the truth.
    """
    with open(path, "rb") as f:
        riff = f.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            header = f.read(8)
            if len(header) < 8:
                return None
            chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk_id == b"fmt ":
                block_align = struct.unpack("<H", f.read(size)[12:14])[0]
                f.seek(size % 2, 1)
            elif chunk_id == b"data":
                return size // block_align if block_align else None
            else:
                f.seek(size + size % 2, 1)


def load_audio(path) -> np.ndarray:
    """Any wav/flac/ogg/mp3 file -> 16 kHz mono float32 [samples]; raises BadAudio."""
    path = pathlib.Path(path)
    try:
        info = soundfile.info(str(path))
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise BadAudio(path, f"unreadable ({error})") from error
    promised = max(info.frames, _wav_declared_frames(path) or 0)
    if len(samples) < promised:
        raise BadAudio(path, f"truncated ({len(samples)} of {promised} frames readable)")
    return to_mono_16k(samples, sample_rate, path)
