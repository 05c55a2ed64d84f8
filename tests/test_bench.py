"""The benchmarks run and print what they promise (their figures are for benchmarks, not tests)."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from maepp.data.synthetic import synthetic_clip
from maepp.tools.bench import profile, table
from tests.helpers import run_module


def _last_json(out):
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.e2e
def test_bench_step_reports_model_flops_and_where_the_time_goes(repo_root, tmp_path):
    out = run_module(
        repo_root,
        "maepp.tools.bench",
        "step",
        "--config",
        "configs/audiomaepp.py:micro",
        "--config.batch_size=8",
        "--steps",
        "1",
        "--json",
        "--variant",
        "batch_size=4",
        "--profile_dir",
        str(tmp_path),
    )
    result, variant = (json.loads(line) for line in out.strip().splitlines())
    assert result["global_batch"] == 8 and result["steps"] == 1 and result["devices"].endswith("cpu")
    assert result["mfu"] is None  # no peak is known for a CPU
    assert math.isfinite(result["final_loss"]) and result["step_ms"] > 0
    # On the CPU, XLA counts every dot (and the elementwise work and optimizer besides): the
    # model's matrix FLOPs must be most of it, never more.
    assert 0.8 * result["xla_tflop_per_step"] <= result["model_tflop_per_step"] <= result["xla_tflop_per_step"]
    assert variant["variant"] == {"batch_size": "4"} and variant["global_batch"] == 4
    assert variant["model_tflop_per_step"] == pytest.approx(result["model_tflop_per_step"] / 2, abs=1e-4)  # rounded
    for breakdown in (result["profile"], variant["profile"]):
        assert sum(breakdown["share"].values()) == pytest.approx(1, abs=0.01)  # shares printed to 2 decimals
        for category in ("matmul", "attention", "layernorm", "elementwise", "optimizer"):
            assert breakdown["ms_per_step"][category] > 0, category
        assert len(breakdown["top_kernels"]) == 10
    assert (tmp_path / "run1" / "module.hlo.txt").exists()


@pytest.mark.e2e
def test_bench_step_names_a_variant_field_the_config_lacks(repo_root):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maepp.tools.bench",
            "step",
            "--config",
            "configs/audiomaepp.py:micro",
            "--variant",
            "model.widht=3",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "config has no field 'model.widht'" in result.stderr


@pytest.mark.e2e
def test_bench_swiglu_norm_times_xla_and_each_tiling_it_can_make(repo_root):
    out = run_module(
        repo_root,
        "maepp.tools.bench",
        "swiglu_norm",
        "--shapes",
        "2x48x256,1x51x2048",
        "--tile_elements",
        "1024,4096",
        "--programs",
        "4",
        "--num_warps",
        "4",
        "--num_stages",
        "1,2",
        "--iterations",
        "1",
        "--json",
    )
    first, second = _last_json(out)["swiglu_norm"]
    assert first["shape"] == [2, 48, 256] and first["cases"][0]["implementation"] == "xla"
    tilings = [(c["tiling"]["tile_rows"], c["tiling"]["num_stages"]) for c in first["cases"][1:]]
    assert tilings == [(4, 1), (4, 2), (16, 1), (16, 2)]  # 1024 and 4096 values per tile of 256
    assert all(c["ms"] > 0 and c["speedup"] > 0 for c in first["cases"][1:])
    # 2048 wide: no tile of 1024 values; tiles of 4096 halved to one row, as 51 rows are odd.
    assert [c.get("tiling", {}).get("tile_rows") for c in second["cases"]] == [None, 1, 1]


HLO = """HloModule jit_train_step

%fused_computation.3 (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  ROOT %t = f32[8]{0} transpose(%param_0), dimensions={0}, metadata={op_name="jit(train_step)/transpose"}
}

ENTRY %main (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  %loop_add_fusion.3 = f32[8]{0} fusion(%p), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(train_step)/jvp(MaskedAutoencoder)/decoder/blocks_0/norm1/add"}
  %gemm_fusion_dot.2 = f32[8]{0} fusion(%loop_add_fusion.3), kind=kCustom, calls=%fused_computation.3, metadata={op_name="jit(train_step)/transpose(jvp(MaskedAutoencoder))/decoder/blocks_0/attn/qkv/dot_general"}
  ROOT %copy_fusion = f32[8]{0} fusion(%gemm_fusion_dot.2), kind=kLoop, calls=%fused_computation.3
}
"""


def test_profile_joins_kernels_to_their_instructions_by_name():
    instructions = profile.hlo_instructions(HLO)
    # XLA's kernels carry their instruction's name, '.' written '_'; inside a CUDA graph every
    # kernel's hlo_op is the graph's, which names nothing useful.
    assert profile.kernel_instruction("loop_add_fusion_3", "command_buffer_1", instructions) == "loop_add_fusion.3"
    assert profile.kernel_instruction("nvjet_sm90_tst_128x160", "command_buffer_1", instructions) == ""
    categories = {name: profile.categorise(instructions[name], name) for name in ("loop_add_fusion.3", "copy_fusion")}
    assert categories == {"loop_add_fusion.3": "layernorm", "copy_fusion": "copy/transpose"}
    # Library kernels are known by name; an operand named gemm_* makes no matmul of its consumer.
    assert profile.categorise(None, "nvjet_sm90_tst_128x160") == "matmul"
    assert profile.categorise(None, "cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention"
    assert profile.categorise(None, "swiglu_norm_backward__1") == "layernorm"  # maepp's Pallas kernels
    assert profile._short(instructions["gemm_fusion_dot.2"].op_name) == "bwd decoder/blocks_0/attn/qkv/dot_general"


def test_speed_table_compares_with_the_peer_of_the_same_run_and_batch():
    rows = [
        dict(
            run=1,
            variant={},
            dtype="bfloat16",
            attention="auto",
            global_batch=512,
            step_ms=100.0,
            clips_per_s=5120.0,
            mfu=0.33,
        ),
        dict(
            run=1,
            peer="official-pytorch",
            batch=512,
            amp="bf16",
            sdpa=True,
            compile=True,
            step_s=0.128,
            clips_per_s=4000.0,
        ),
        dict(
            run=2,
            variant={"batch_size": "128"},
            dtype="bfloat16",
            attention="auto",
            global_batch=128,
            step_ms=25.0,
            clips_per_s=5120.0,
            mfu=0.3,
        ),
        dict(run=2, variant={"model.attention": "bad"}, error="ValueError: ..."),
    ]
    lines = table.speed_table(rows).splitlines()
    assert len(lines) == 2 + 3  # header, rule, three timed rows; the failed variant is left out
    assert lines[2].endswith("| 1.28x |")  # 5120 / 4000, the peer of run 1 at 512
    assert "official release, bf16 autocast + SDPA + torch.compile" in lines[3]
    assert lines[4].endswith("|  |")  # run 2 timed no peer at 128: no ratio across runs


@pytest.mark.e2e
def test_bench_data_times_the_pipeline_and_the_librosa_loop_on_the_same_clips(repo_root, tmp_path):
    from maepp.data.writer import prepare

    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(8):
        soundfile.write(tmp_path / "in" / f"{i}.wav", synthetic_clip(rng, 5.0)[0], 16000)
    prepare(tmp_path / "in", tmp_path / "out", workers=1)
    result = _last_json(
        run_module(
            repo_root,
            "maepp.tools.bench",
            "data",
            "--source",
            f"prepared:{tmp_path}/out/audio_clips/2.0.0",
            "--clips",
            "16",
            "--batch_size",
            "4",
            "--verify_cost_rounds",
            "1",
            "--json",
        )
    )
    assert result["pipeline_crops_per_s_per_core"] > 0 and result["librosa_crops_per_s_per_core"] > 0
    checked, unchecked = result["checked_crops_per_s_per_core"], result["unchecked_crops_per_s_per_core"]
    assert math.isclose(result["verification_cost"], 1 - checked / unchecked, abs_tol=1e-3)
    ratio = result["pipeline_crops_per_s_per_core"] / result["librosa_crops_per_s_per_core"]
    assert math.isclose(result["ratio_per_core"], ratio, abs_tol=0.02)  # both sides rounded to 0.01
    # A 2 s crop of a 5 s clip reads its own 200 rows of 80 float16 values (32,000 bytes), widened
    # to the 4 KB chunks their checksums cover: 8 or 9 of the clip's 20 (its last one short).
    assert result["verified"] and 32000 <= result["bytes_read_per_crop"] <= 9 * 4096
    assert result["max_error_vs_librosa"] < 2e-3 * 4  # float16 storage: 2^-11 of values up to ~4


@pytest.mark.e2e
@pytest.mark.parametrize("order", ["clips", "blocks"])
def test_bench_scale_reads_a_bucket_each_process_its_share(repo_root, order):
    """Blocks of 8 clips, through a link of 5 ms a request and a bucket limit: a request per
    block (or two, across a shard's end), where each crop is a request of its own."""
    blocks = [
        "--block_clips",
        "8",
        "--window_blocks",
        "2",
        "--streams",
        "2",
        "--latency_ms",
        "5",
        "--bucket_rps",
        "400",
    ]
    result = _last_json(
        run_module(
            repo_root,
            "maepp.tools.bench",
            "scale",
            "--processes",
            "2",
            "--clips",
            "192",
            "--clips_per_shard",
            "24",
            "--batch_size",
            "16",
            "--prepare_workers",
            "1",
            "--shuffle",
            order,
            *(blocks if order == "blocks" else []),
            "--json",
        )
    )
    assert result["shards"] == 8 and result["first_batch_s"] > 0 and result["requests_per_s_per_process"] > 0
    # 2 s clips: a crop is its whole clip, so each process reads half the dataset in its 12 batches,
    # plus the batches tf.data reads ahead (3 measured alone; 48 clips were too few: under load it
    # read ahead to the end), the manifest and the index.
    assert 0.45 < result["read_per_process_over_dataset"] < 0.85
    assert result["local_disk_bytes_written"] < 100_000  # nothing copied (a few logs at most)
    # A 2 s clip is 201 frames: a crop reads all of it, widened to its checksum chunks or with its
    # block. In the block order a crop whose block is still held costs nothing: the pipeline's
    # read-ahead into the next epoch meets blocks of this one (on a loaded run: 0.966).
    if order == "blocks":
        assert 0 < result["read_per_crop_over_crop_bytes"] <= round(201 / 200, 3)
    else:
        assert result["read_per_crop_over_crop_bytes"] == round(201 / 200, 3)
    if order == "blocks":  # the manifest, the index and a listing besides
        assert result["requests_per_crop"] < 2 / 8 + 0.05 and result["latency_ms"] == 5
        # Shards of 24 clips hold 3 whole blocks each: a block is one request.
        assert result["requests_per_block"] == 1.0 and result["requests_per_crop_at_scale"] == 1 / 8
    else:
        assert result["requests_per_crop"] > 1 and result["requests_per_block"] is None


@pytest.mark.e2e
def test_bench_export_counts_the_clips_it_exports(repo_root):
    result = _last_json(
        run_module(repo_root, "maepp.tools.bench", "export", "--clips", "2", "--seconds", "3", "--json")
    )
    assert result["clips"] == 2 and result["clips_per_s"] > 0
    assert math.isclose(result["audio_seconds_per_s"], 3 * result["clips_per_s"], rel_tol=0.05)
