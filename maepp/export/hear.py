"""The HEAR API (hearbenchmark.com) over a maepp encoder; install the extra: pip install -e .[hear]

    hear-validator maepp.hear --model RUN          # RUN: training workdir, weights or artifact dir

load_model returns a torch.nn.Module (what the HEAR tools expect) that holds no torch
parameters: the jitted JAX encoder runs on JAX's own device, and results come back as torch
tensors on the input's device. Frames and their times are maepp/export/embed.py's: one embedding of
5 * D values per 40 ms, the scene embedding their mean.
"""

import pathlib

import numpy as np
import torch

from maepp.audio.constants import SAMPLE_RATE
from maepp.export import embed


class HearModel(torch.nn.Module):
    sample_rate = SAMPLE_RATE

    def __init__(self, embedder: embed.Embedder):
        super().__init__()
        self.embedder = embedder
        self.scene_embedding_size = int(embedder.frame_size)
        self.timestamp_embedding_size = int(embedder.frame_size)


def load_model(model_file_path: str = "") -> HearModel:
    if not model_file_path:
        raise ValueError("maepp.hear needs --model: a maepp training workdir, weights directory or encoder artifact")
    if (pathlib.Path(model_file_path) / embed.META_FILE).exists():
        return HearModel(embed.load(model_file_path))
    # The training code, needed unless an artifact is given.
    from maepp.audio import filterbanks
    from maepp.export import artifact
    from maepp.weights import store

    model, params, config, _ = store.load_model(model_file_path)
    return HearModel(artifact.local_embedder(model, params, filterbank=filterbanks.from_config(config)))


def _frames(audio: torch.Tensor, model: HearModel) -> np.ndarray:
    """audio [n, samples] in [-1, 1] -> frame embeddings [n, T, E] (equal lengths give equal T).
    ValueError, one line, for input no embedding could be made of: no clips, no samples, or a
    sample that is not finite (which would make every frame of its clip NaN)."""
    if audio.ndim != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(
            f"maepp.hear: audio must be [clips, samples] with at least one of each, not {list(audio.shape)}"
        )
    waveforms = audio.detach().cpu().numpy().astype(np.float64)
    broken = ~np.isfinite(waveforms).all(axis=1)
    if broken.any():
        raise ValueError(
            f"maepp.hear: {int(broken.sum())} of {len(waveforms)} clips hold NaN or inf samples (first: "
            f"clip {int(np.argmax(broken))}); export skips such files, and no embedding of them would mean "
            "anything"
        )
    log_mels = [model.embedder.log_mel(waveform) for waveform in waveforms]
    return np.stack(model.embedder.frames_of_log_mels(log_mels))


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel):
    """-> (embeddings float32 [n, T, E], timestamps in ms [n, T]), as torch tensors."""
    frames = _frames(audio, model)
    times = np.broadcast_to(model.embedder.timestamps_ms(frames.shape[1]), frames.shape[:2])
    return (
        torch.from_numpy(frames).to(audio.device),
        torch.from_numpy(np.ascontiguousarray(times, np.float32)).to(audio.device),
    )


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """-> float32 [n, E]: the mean of each clip's frame embeddings."""
    return torch.from_numpy(_frames(audio, model).mean(axis=1)).to(audio.device)
