"""Reading audio files of any rate and channel count as 16 kHz mono float32.

wav, flac, ogg and mp3 are read by libsndfile (soundfile); m4a/AAC, opus and webm (AudioSet
as users download it) by FFmpeg, through PyAV, whose wheels carry it. A file that cannot be used
raises BadAudio with the reason; pipelines skip it, count it and name it in the log, so one
corrupt file in two million never stops a run.
"""

import io
import os
import struct

import librosa
import numpy as np
import soundfile
from etils import epath

from maepp.audio.constants import N_FFT, SAMPLE_RATE

SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
FFMPEG_EXTENSIONS = (".m4a", ".aac", ".mp4", ".opus", ".webm")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS


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
    if len(mono) < N_FFT:
        raise BadAudio(path, f"{len(mono) / SAMPLE_RATE * 1e3:g} ms long: shorter than one 25 ms frame")
    if float(np.std(mono)) == 0.0:
        raise BadAudio(path, "silent (all samples equal)")
    return mono.astype(np.float32)


def _wav_declared_frames(data: bytes):
    """Frames the header of a RIFF/WAVE file promises, or None if it is not a plain WAV.

    libsndfile quietly reads a cut-off WAV as a shorter one; the header tells the truth.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    block_align, offset = None, 12
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        body = offset + 8
        if chunk_id == b"fmt ":
            block_align = struct.unpack("<H", data[body + 12 : body + 14])[0]
        elif chunk_id == b"data":
            return size // block_align if block_align else None
        offset = body + size + size % 2
    return None


def _reason(error: Exception) -> str:
    """libsndfile's own message, without the in-memory file object's address it is prefixed with."""
    return getattr(error, "error_string", None) or str(error)


def decode_audio(data: bytes, name) -> np.ndarray:
    """The bytes of an audio file (AUDIO_EXTENSIONS, told apart by `name`'s) -> 16 kHz mono
    float32 [samples]; raises BadAudio."""
    if os.path.splitext(str(name))[1].lower() in FFMPEG_EXTENSIONS:
        return _decode_with_ffmpeg(data, name)
    return decode_soundfile(data, name)


def _decode_with_ffmpeg(data: bytes, name) -> np.ndarray:
    import av  # only for these containers: FFmpeg's libraries take a while to load

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise BadAudio(name, "holds no audio stream")
            stream = container.streams.audio[0]
            # Planar float32, each frame [channels, samples], whatever the codec decodes to.
            to_planar = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
            chunks = [
                resampled.to_ndarray() for frame in container.decode(stream) for resampled in to_planar.resample(frame)
            ]
            sample_rate = stream.rate
    except (av.FFmpegError, ValueError) as error:
        raise BadAudio(name, f"unreadable ({error})") from error
    if not chunks:
        raise BadAudio(name, "empty (no samples)")
    return to_mono_16k(np.concatenate(chunks, axis=1).T, sample_rate, name)


def decode_soundfile(data: bytes, name) -> np.ndarray:
    """The bytes of a file libsndfile reads (wav/flac/ogg/mp3; prepared FLAC clips, whatever their
    name) -> 16 kHz mono float32 [samples]; raises BadAudio."""
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            declared = f.frames
            samples = f.read(dtype="float32", always_2d=True)
            sample_rate = f.samplerate
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise BadAudio(name, f"unreadable ({_reason(error)})") from error
    promised = max(declared, _wav_declared_frames(data) or 0)
    if len(samples) < promised:
        raise BadAudio(name, f"truncated ({len(samples)} of {promised} frames readable)")
    return to_mono_16k(samples, sample_rate, name)


def decode_segment(data: bytes, name, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of 16 kHz mono audio bytes (prepared FLAC), decoding only those."""
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            if f.samplerate != SAMPLE_RATE or f.channels != 1 or not 0 <= start <= stop <= f.frames:
                raise BadAudio(name, f"not a 16 kHz mono clip holding samples [{start}, {stop})")
            f.seek(start)
            samples = f.read(stop - start, dtype="float32")
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise BadAudio(name, f"unreadable ({_reason(error)})") from error
    if len(samples) != stop - start:
        raise BadAudio(name, f"truncated ({len(samples)} of {stop - start} samples readable)")
    if not np.all(np.isfinite(samples)):
        raise BadAudio(name, "contains NaN or Inf samples")
    return samples


def load_audio(path) -> np.ndarray:
    """Any audio file (AUDIO_EXTENSIONS), local or gs:// -> 16 kHz mono float32 [samples]; raises BadAudio."""
    try:
        data = epath.Path(path).read_bytes()  # local, gs:// or any tf.io.gfile filesystem
    except OSError as error:
        raise BadAudio(path, f"unreadable ({error.strerror or error})") from error
    return decode_audio(data, path)


def encode_flac(waveform: np.ndarray) -> bytes:
    """16 kHz mono float32 -> FLAC bytes (16-bit), how prepared flac clips store audio."""
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
