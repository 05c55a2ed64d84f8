"""Embeddings of whole clips from a frozen encoder, with only jax and numpy needed.

    embedder = maepp.embed.load("artifact_dir")      # written by python -m maepp.export --artifact
    frames = embedder.frames(waveform, 16000)      # [ceil(T / 4), 5 * D], T = 1 + samples // 160
    scene = embedder.scene(waveform, 16000)        # [5 * D], the mean of the frames

The waveform is mono [samples] at 16 kHz: a clip at another rate is refused, not embedded as if
it were 16 kHz (resample it first, e.g. librosa.resample(waveform, orig_sr=sr, target_sr=16000)).

A clip's standardised log-mel [T, 80] is cut into crop-sized chunks (200 frames; the last one
zero-padded, 0 being the clip's mean after standardisation). Each chunk's 250 tokens become 50
frame embeddings, one per time step of 4 log-mel frames (40 ms): the 5 frequency patches of
that step concatenated (docs/reference.md#downstream-evaluation; the released code interleaves
times here). Steps that hold only padding are dropped. Log-mel frame t is centred at 10 t ms, so step s at 40 s + 15 ms.
"""

import json
import math
import pathlib

import jax
import numpy as np

from maepp.audio.constants import HOP, SAMPLE_RATE
from maepp.audio.stft import standardized_log_mel

HOP_MS = 1000.0 * HOP / SAMPLE_RATE  # 10 ms per log-mel frame
ENCODER_FILE, WEIGHTS_FILE, META_FILE = "encoder.jax_export", "weights.npz", "meta.json"


def n_frame_embeddings(n_log_mel_frames: int, patch_frames: int) -> int:
    return math.ceil(n_log_mel_frames / patch_frames)


def timestamps_ms(n_frames: int, patch_frames: int) -> np.ndarray:
    """Centre of each frame embedding in ms: the mean centre of its log-mel frames."""
    return (np.arange(n_frames) * patch_frames + (patch_frames - 1) / 2) * HOP_MS


def chunks(log_mel: np.ndarray, chunk_frames: int) -> np.ndarray:
    """[T, F] -> [ceil(T / chunk_frames), chunk_frames, F], the end zero-padded."""
    n_chunks = max(1, math.ceil(log_mel.shape[0] / chunk_frames))
    padded = np.zeros((n_chunks * chunk_frames, log_mel.shape[1]), np.float32)
    padded[: log_mel.shape[0]] = log_mel
    return padded.reshape(n_chunks, chunk_frames, log_mel.shape[1])


class Embedder:
    """Clips -> frame and scene embeddings through chunk_frames(chunks [B, 200, 80]) ->
    [B, 50, E], called on fixed batches of batch_size chunks (so a jitted one compiles once)."""

    def __init__(self, chunk_frames, *, frame_size: int, filterbank, chunk_length=200, patch_frames=4, batch_size=64):
        self.chunk_frames, self.frame_size, self.filterbank = chunk_frames, frame_size, filterbank
        self.chunk_length, self.patch_frames, self.batch_size = chunk_length, patch_frames, batch_size

    def log_mel(self, waveform) -> np.ndarray:
        """16 kHz mono [samples] -> standardised log-mel [1 + samples // 160, 80], in float64."""
        return standardized_log_mel(waveform, self.filterbank)

    def frames_of_log_mels(self, log_mels) -> list:
        """[T_i, 80] each -> frame embeddings [ceil(T_i / 4), E] each; all clips' chunks batched."""
        pieces = [chunks(log_mel, self.chunk_length) for log_mel in log_mels]
        every_chunk = (
            pieces[0]
            if len(pieces) == 1
            else np.concatenate(pieces)
            if pieces
            else np.zeros((0, self.chunk_length, 80), np.float32)
        )
        # Filled in place: a long clip's embeddings are held once, not once per batch and again joined.
        frames = np.zeros((0, 1, self.frame_size), np.float32)
        for start in range(0, len(every_chunk), self.batch_size):
            batch = every_chunk[start : start + self.batch_size]
            full = np.zeros((self.batch_size, *batch.shape[1:]), np.float32)
            full[: len(batch)] = batch
            output = np.asarray(self.chunk_frames(full), np.float32)[: len(batch)]
            if start == 0:
                frames = np.empty((len(every_chunk), *output.shape[1:]), np.float32)
            frames[start : start + len(batch)] = output
        result, start = [], 0
        for log_mel, piece in zip(log_mels, pieces):
            clip = frames[start : start + len(piece)].reshape(-1, self.frame_size)
            result.append(clip[: n_frame_embeddings(log_mel.shape[0], self.patch_frames)])
            start += len(piece)
        return result

    def frames(self, waveform, sample_rate: int) -> np.ndarray:
        """Mono [samples] at 16 kHz -> frame embeddings [ceil(T / 4), E]."""
        return self.frames_of_log_mels([self.log_mel(_checked_waveform(waveform, sample_rate))])[0]

    def scene(self, waveform, sample_rate: int) -> np.ndarray:
        """Mono [samples] at 16 kHz -> the clip's embedding [E], the mean of its frames."""
        return self.frames(waveform, sample_rate).mean(axis=0)

    def timestamps_ms(self, n_frames: int) -> np.ndarray:
        return timestamps_ms(n_frames, self.patch_frames)


def _checked_waveform(waveform, sample_rate: int) -> np.ndarray:
    """The waveform as given, or ValueError naming what is wrong with it and what to do."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(
            f"sample_rate={sample_rate}: the encoder takes {SAMPLE_RATE} Hz audio; resample it first, "
            f"e.g. librosa.resample(waveform, orig_sr={sample_rate}, target_sr={SAMPLE_RATE})"
        )
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise ValueError(
            f"waveform of shape {waveform.shape}: the encoder takes one channel [samples]; mix it "
            "down first, e.g. waveform.mean(axis=-1) for [samples, channels]"
        )
    return waveform


def load(directory, batch_size: int = 64) -> Embedder:
    """An artifact directory (python -m maepp.export --artifact) -> Embedder, without the training code."""
    directory = pathlib.Path(directory)
    missing = [name for name in (ENCODER_FILE, WEIGHTS_FILE, META_FILE) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a complete maepp encoder artifact: {', '.join(missing)} missing")
    meta = json.loads((directory / META_FILE).read_text())
    exported = jax.export.deserialize(bytearray((directory / ENCODER_FILE).read_bytes()))
    stored = np.load(directory / WEIGHTS_FILE)
    weights = [stored[f"w{i:04d}"] for i in range(meta["n_weights"])]
    call = jax.jit(exported.call)
    return Embedder(
        lambda batch: call(weights, batch),
        frame_size=meta["frame_size"],
        filterbank=stored["filterbank"],
        chunk_length=meta["chunk_length"],
        patch_frames=meta["patch_frames"],
        batch_size=batch_size,
    )
