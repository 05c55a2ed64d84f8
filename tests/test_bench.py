"""The benchmarks run and print what they promise (their figures are for benchmarks, not tests)."""
import json
import math

import numpy as np
import soundfile

from maepp.data.synthetic import synthetic_clip
from tests.helpers import run_module


def _last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def test_bench_step_reports_model_flops_close_to_xlas_count(repo_root):
    out = run_module(repo_root, "maepp.bench", "step", "--config", "configs/audiomaepp.py:micro",
                     "--config.batch_size=8", "--steps", "1", "--json")
    result = _last_json(out)
    assert result["global_batch"] == 8 and result["steps"] == 1 and result["devices"].endswith("cpu")
    assert result["mfu"] is None  # no peak is known for a CPU
    assert math.isfinite(result["final_loss"]) and result["step_ms"] > 0
    # On the CPU, XLA counts every dot (and the elementwise work and optimizer besides): the
    # model's matrix FLOPs must be most of it, never more.
    assert 0.8 * result["xla_tflop_per_step"] <= result["model_tflop_per_step"] <= result["xla_tflop_per_step"]


def test_bench_data_times_the_pipeline_and_the_librosa_loop_on_the_same_clips(repo_root, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        soundfile.write(tmp_path / f"{i}.wav", synthetic_clip(rng)[0], 16000)
    result = _last_json(run_module(repo_root, "maepp.bench", "data", "--source", f"folder:{tmp_path}",
                                   "--clips", "16", "--batch_size", "4", "--json"))
    assert result["pipeline_crops_per_s_per_core"] > 0 and result["librosa_crops_per_s_per_core"] > 0
    ratio = result["pipeline_crops_per_s_per_core"] / result["librosa_crops_per_s_per_core"]
    assert math.isclose(result["ratio_per_core"], ratio, abs_tol=0.02)  # both sides rounded to 0.01


def test_bench_export_counts_the_clips_it_exports(repo_root):
    result = _last_json(run_module(repo_root, "maepp.bench", "export", "--clips", "2", "--seconds", "3", "--json"))
    assert result["clips"] == 2 and result["clips_per_s"] > 0
    assert math.isclose(result["audio_seconds_per_s"], 3 * result["clips_per_s"], rel_tol=0.05)
