r"""Benchmarks that print figures; the last line of each is JSON.

    python -m maepp.bench data --source records:GLOB [--clips 256] [--json]
    python -m maepp.bench data --source folder:DIR
    python -m maepp.bench export [--workdir RUN | --model_config configs/audiomaepp.py:base] \
        [--clips 256] [--seconds 10] [--json]

`data`: 2 s log-mel crops per second per host core from the tf.data pipeline, against a plain
librosa loop (load + melspectrogram per clip, one core) over the same clips in the same run.
The pipeline uses every core this process may run on, so its rate is divided by that count.

`export`: clips per second through maepp.export's whole path (decode, float64 log-mel on the
host, 200-frame chunks through the jitted encoder on every local device, the .npz), on
procedural clips of --seconds written as WAV files, after one warm-up clip. The encoder is a
run's (--workdir) or a freshly initialised one of --model_config (speed does not depend on
the weights).
"""
import io
import json
import os
import pathlib
import tempfile
import time

import flax.linen as nn
import jax
import librosa
import numpy as np
import soundfile
from absl import app, flags, logging
from ml_collections import config_flags

from maepp import clip_export, encoder, weights
from maepp.audio import reference
from maepp.data.pipeline import train_dataset
from maepp.data.sources import FolderSource, source_from_string
from maepp.data.synthetic import synthetic_clip
from maepp.models import MaskedAutoencoder, ModelSpec, init_params

_SOURCE = flags.DEFINE_string("source", None, "Data source: records:GLOB or folder:DIR.")
_CLIPS = flags.DEFINE_integer("clips", 256, "Crops to time in each method.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Pipeline batch size.")
_JSON = flags.DEFINE_bool("json", False, "Print only the JSON line.")
_WORKDIR = flags.DEFINE_string("workdir", None, "export: the run (or weights directory) whose encoder to time.")
_MODEL_CONFIG = config_flags.DEFINE_config_file("model_config", "configs/audiomaepp.py:micro",
                                                "export: config of a freshly initialised encoder to time.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "export: length of each clip.")

CROP_FRAMES = 200


def pipeline_rate(source, n_crops: int, batch_size: int) -> float:
    """Crops per second from the training pipeline, after one warm-up batch."""
    batches = train_dataset(source, seed=0, batch_size=batch_size).as_numpy_iterator()
    next(batches)  # graph tracing and thread start-up are not throughput
    n_batches = max(1, n_crops // batch_size)
    start = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    return n_batches * batch_size / (time.perf_counter() - start)


def librosa_crop(encoded: bytes, rng: np.random.Generator) -> np.ndarray:
    """What a plain loop does per clip: librosa.load, melspectrogram, log, standardise, crop."""
    waveform, _ = librosa.load(io.BytesIO(encoded), sr=reference.SAMPLE_RATE, mono=True)
    mel = reference.log_mel(waveform)
    start = rng.integers(max(len(mel) - CROP_FRAMES, 0) + 1)
    return mel[start : start + CROP_FRAMES]


def librosa_rate(source, n_crops: int) -> float:
    rng = np.random.default_rng(0)
    librosa_crop(source.encoded(0), rng)  # numba compiles librosa's kernels on first use
    start = time.perf_counter()
    for i in range(n_crops):
        librosa_crop(source.encoded(i % len(source)), rng)
    return n_crops / (time.perf_counter() - start)


def bench_data(source_spec: str, n_crops: int, batch_size: int) -> dict:
    source = source_from_string(source_spec)
    if not hasattr(source, "encoded"):
        raise app.UsageError(f"bench data needs a records: or folder: source, not {source_spec!r}")
    cores = len(os.sched_getaffinity(0))
    pipeline = pipeline_rate(source, n_crops, batch_size)
    baseline = librosa_rate(source, n_crops)
    return dict(
        source=source_spec,
        host_cores=cores,
        pipeline_crops_per_s=round(pipeline, 2),
        pipeline_crops_per_s_per_core=round(pipeline / cores, 2),
        librosa_crops_per_s_per_core=round(baseline, 2),
        ratio_per_core=round(pipeline / cores / baseline, 2),
    )


def _encoder_to_time():
    if _WORKDIR.value:
        model, params, _, loaded = weights.load_model(_WORKDIR.value)
        return model, params, loaded
    model = MaskedAutoencoder(ModelSpec.from_config(_MODEL_CONFIG.value.model))
    return model, nn.meta.unbox(init_params(model, jax.random.key(0))), "random init"


def bench_export(n_clips: int, seconds: float) -> dict:
    model, params, loaded = _encoder_to_time()
    embedder = encoder.local_embedder(model, params)
    with tempfile.TemporaryDirectory() as scratch:
        folder = pathlib.Path(scratch) / "clips"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(n_clips + 1):
            soundfile.write(folder / f"{i:05d}.wav", synthetic_clip(rng, seconds=seconds)[0], reference.SAMPLE_RATE)
        warm_up = folder / "00000.wav"
        embedder.scene(soundfile.read(warm_up)[0])  # compiles the encoder
        warm_up.unlink()
        start = time.perf_counter()
        clip_export.export(FolderSource(folder), embedder, pathlib.Path(scratch) / "out.npz", log=io.StringIO())
        elapsed = time.perf_counter() - start
    return dict(
        encoder=loaded, width=model.spec.width, depth=model.spec.depth, clips=n_clips, clip_seconds=seconds,
        devices=f"{jax.local_device_count()} x {jax.local_devices()[0].device_kind}",
        clips_per_s=round(n_clips / elapsed, 2), audio_seconds_per_s=round(n_clips * seconds / elapsed, 1),
    )


def main(argv):
    logging.set_verbosity(logging.WARNING)  # Orbax and JAX log every restore at INFO
    if len(argv) != 2 or argv[1] not in ("data", "export"):
        raise app.UsageError("usage: python -m maepp.bench data --source records:GLOB|folder:DIR [--json] | "
                             "python -m maepp.bench export [--workdir RUN] [--json]")
    if argv[1] == "export":
        result = bench_export(_CLIPS.value, _SECONDS.value)
        if not _JSON.value:
            print(f"export: {result['clips_per_s']} clips/s of {result['clip_seconds']} s "
                  f"({result['audio_seconds_per_s']} s of audio per s) on {result['devices']}")
        print(json.dumps(result))
        return
    if not _SOURCE.value:
        raise app.UsageError("--source is required")
    result = bench_data(_SOURCE.value, _CLIPS.value, _BATCH.value)
    if not _JSON.value:
        print(f"pipeline: {result['pipeline_crops_per_s']} crops/s on {result['host_cores']} cores = "
              f"{result['pipeline_crops_per_s_per_core']} per core")
        print(f"librosa loop: {result['librosa_crops_per_s_per_core']} crops/s on one core")
        print(f"ratio per core: {result['ratio_per_core']}x")
    print(json.dumps(result))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
