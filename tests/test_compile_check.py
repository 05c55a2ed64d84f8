"""AOT compile of the real train step for hardware this machine lacks (libtpu and jax's CUDA
plugin, installed by make into .venv/aot-plugins), and its memory against docs/scaling.md's
arithmetic."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from maepp.tools import scaling
from tests.helpers import run_module

pytestmark = pytest.mark.e2e  # each test runs maepp.tools.compile_check

REPO = pathlib.Path(__file__).parents[1]
PLUGIN_DIR = pathlib.Path(os.environ.get("MAEPP_AOT_PLUGINS", REPO / ".venv" / "aot-plugins"))


def _installed(relative_path: str) -> bool:
    return any((pathlib.Path(p) / relative_path).exists() for p in [*sys.path, PLUGIN_DIR] if p)


needs_libtpu = pytest.mark.skipif(not _installed("libtpu"), reason="libtpu (the [tpu] extra) is not installed")
needs_cuda_plugin = pytest.mark.skipif(
    not _installed("jax_plugins/xla_cuda12"), reason="jax's CUDA plugin (the [gpu-aot] extra) is not installed"
)


def _compile_check(repo_root, *args):
    """compile_check's JSON line; its stderr is empty: the compilers' start-up notices (the CUDA
    plugin's "Could not find cuda drivers" on this machine) are kept off it."""
    result = subprocess.run(
        [sys.executable, "-m", "maepp.tools.compile_check", "--config", "configs/audiomaepp.py:micro", *args, "--json"],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_cuda_plugin
def test_micro_compiles_for_two_nodes_of_two_h100s_and_its_state_matches_the_scaling_table(repo_root):
    """h100:NODESxGPUS, one process per node: FSDP inside each node, data parallel across them."""
    report = _compile_check(
        repo_root, "--topology", "h100:2x2", "--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.dcn_data=2"
    )
    assert report["devices"] == 4 and report["mesh"] == [2, 2, 1] and report["fits"] and report["hbm_gib"] == 80
    # GPU buffers are not padded: the table's count holds to within 1% (measured: 20 bytes over,
    # the step counter and Adam's count).
    expected = scaling.predicted_arguments_bytes(scaling._logical_params("micro"), dict(data=2, fsdp=2, model=1), 32)
    assert abs(report["arguments_bytes"] / expected - 1) < 0.01


@pytest.mark.long(seconds=30)
@needs_libtpu
def test_micro_compiles_for_two_v5e_2x2_slices_sharded_with_waveform_crops_as_arguments(repo_root):
    """Multi-slice: the state split over fsdp=4 inside each slice, data parallel across the two
    (config.mesh.dcn_data takes the slices by default); the device front end's raw-sample crops as
    the step's input."""
    report = _compile_check(
        repo_root,
        "--topology",
        "v5e:2x2",
        "--num_slices",
        "2",
        "--config.mesh.data=1",
        "--config.mesh.fsdp=4",
        "--config.data.frontend=device",
    )
    assert report["devices"] == 8 and report["slices"] == 2 and report["mesh"] == [2, 4, 1] and report["fits"]
    rows = 32 // 8  # per device
    log_mels, crops = rows * 200 * 80 * 4, rows * ((199 * 160 + 400) * 4 + 200 * 4 + 2 * 4)
    expected = scaling.predicted_arguments_bytes(scaling._logical_params("micro"), dict(data=2, fsdp=4, model=1), 32)
    expected += crops - log_mels
    # TPU memory tiles the two minor dimensions to (8, 128), so micro's 64- and 32-wide arrays
    # take more than their elements (measured: 1.6x; small, 384 wide, is within 7.1%); the
    # bounds still tell a sharded state from a replicated one, which would need over 4x.
    assert expected <= report["arguments_bytes"] <= 2 * expected


@needs_libtpu
def test_a_step_over_hbm_exits_1_and_names_the_config_change(repo_root):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maepp.tools.compile_check",
            "--config",
            "configs/audiomaepp.py:micro",
            "--topology",
            "v5e:2x2",
            "--config.batch_size=65536",
            "--json",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # libtpu refuses the program at compile time; its activations alone are over 16 GiB.
    assert not report["fits"] and report["arguments_bytes"] is None and report["peak_gib"] > 16
    # Activations dominate, so the advice starts with a smaller per-device batch.
    assert "does not fit on v5e:2x2: it needs" in result.stderr
    assert result.stderr.index("accumulate_steps=2") < result.stderr.index("--config.mesh.fsdp=2")


@needs_libtpu
def test_v4_and_v5p_slices_have_one_device_per_chip_as_jax_sees_them(repo_root):
    # v4-8 is 4 chips of 2 TensorCores; JAX on the slice sees 4 devices (megacore), and so must
    # the compile target, or jax.make_mesh refuses the mesh.
    program = (
        "import maepp.tools.compile_check as c; "
        "print(*(len(c.abstract_devices(t)) for t in ('v4:2x2x1', 'v5p:2x2x2', 'v5e:2x2')))"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=repo_root, capture_output=True, text=True)
    assert result.stdout.split() == ["4", "8", "4"], result.stderr[-2000:]


@pytest.mark.parametrize(
    "topology, message", [("v9x:2x2", "chip 'v9x' unknown"), ("h100:x8", "name the GPUs of one node")]
)
def test_an_unknown_target_is_a_clear_error(repo_root, topology, message):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maepp.tools.compile_check",
            "--config",
            "configs/audiomaepp.py:micro",
            "--topology",
            topology,
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and message in result.stderr


@needs_cuda_plugin
def test_scaling_check_compiles_the_recommended_mesh_and_matches_the_prediction(repo_root):
    out = run_module(repo_root, "maepp.tools.scaling", "--check", "8xH100", "--sizes", "micro")
    report = json.loads(out.strip().splitlines()[-1])
    assert report["hardware"] == "8xH100" and report["size"] == "micro" and report["mesh"] == [8, 1, 1]
    assert report["per_device_batch"] == 1024 // 8 and report["fits"]
    predicted = scaling.predicted_arguments_bytes(scaling._logical_params("micro"), dict(data=8, fsdp=1, model=1))
    assert abs(report["arguments_bytes"] / predicted - 1) < 0.01
