"""`python -m maepp.tools.bench export`: clips per second through maepp.export's whole path (decode,
float64 log-mel on the host, 200-frame chunks through the jitted encoder on every local device,
the .npz), on procedural clips of --seconds written as WAV files, after one warm-up clip. The
encoder is a run's (--workdir) or a freshly initialised one of --model_config (speed does not
depend on the weights)."""

import io
import pathlib
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
import soundfile
from absl import flags

from maepp import program
from maepp.audio.constants import SAMPLE_RATE
from maepp.data.sources import FolderSource
from maepp.data.synthetic import synthetic_clip
from maepp.export import artifact, clips
from maepp.models import MaskedAutoencoder, ModelSpec, init_params
from maepp.tools.bench.report import report
from maepp.weights import store

_CLIPS = flags.DEFINE_integer("clips", 256, "Clips to export.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run (or weights directory) whose encoder to time.")
_MODEL_CONFIG = program.config_file_flag(
    "model_config", program.installed("audiomaepp:micro"), "Config of a freshly initialised encoder to time."
)
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Length of each clip.")


def _encoder_to_time():
    if _WORKDIR.value:
        model, params, _, loaded = store.load_model(_WORKDIR.value)
        return model, params, loaded
    model = MaskedAutoencoder(ModelSpec.from_config(_MODEL_CONFIG.value.model))
    return model, nn.meta.unbox(init_params(model, jax.random.key(0))), "random init"


def bench_export(n_clips: int, seconds: float) -> dict:
    model, params, loaded = _encoder_to_time()
    embedder = artifact.local_embedder(model, params)
    with tempfile.TemporaryDirectory() as scratch:
        folder = pathlib.Path(scratch) / "clips"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(n_clips + 1):
            soundfile.write(folder / f"{i:05d}.wav", synthetic_clip(rng, seconds=seconds)[0], SAMPLE_RATE)
        warm_up = folder / "00000.wav"
        embedder.scene(*soundfile.read(warm_up))  # compiles the encoder
        warm_up.unlink()
        start = time.perf_counter()
        clips.export(FolderSource(folder), embedder, pathlib.Path(scratch) / "out.npz", log=io.StringIO())
        elapsed = time.perf_counter() - start
    return dict(
        encoder=loaded,
        width=model.spec.encoder.width,
        depth=model.spec.encoder.depth,
        clips=n_clips,
        clip_seconds=seconds,
        devices=f"{jax.local_device_count()} x {jax.local_devices()[0].device_kind}",
        clips_per_s=round(n_clips / elapsed, 2),
        audio_seconds_per_s=round(n_clips * seconds / elapsed, 1),
    )


def main(argv):
    del argv
    result = bench_export(_CLIPS.value, _SECONDS.value)
    report(
        result,
        f"export: {result['clips_per_s']} clips/s of {result['clip_seconds']} s "
        f"({result['audio_seconds_per_s']} s of audio per s) on {result['devices']}",
    )
