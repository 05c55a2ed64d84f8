"""AOT compile of the real train step for a TPU slice (libtpu, the [tpu] extra), and its memory
against docs/scaling.md's arithmetic."""
import importlib.util
import json
import subprocess
import sys

import pytest

from maepp import scaling
from tests.helpers import run_module

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu (the [tpu] extra) is not installed")


def test_micro_compiles_for_v5e_2x2_and_its_state_matches_the_scaling_table(repo_root):
    out = run_module(repo_root, "maepp.compile_check", "--config", "configs/audiomaepp.py:micro",
                     "--topology", "v5e:2x2", "--config.mesh.data=1", "--config.mesh.fsdp=4", "--json")
    report = json.loads(out.strip().splitlines()[-1])
    assert report["devices"] == 4 and report["mesh"] == [1, 4, 1] and report["fits"]
    # The compiled step's arguments are the state's shards (params and two Adam moments: 3 of
    # scaling's 4 copies, which also count the gradients) plus the batch's shard. TPU memory
    # tiles the two minor dimensions to (8, 128), so micro's 64- and 32-wide arrays take more
    # than their elements (measured: 1.6x); the bounds still tell a sharded state from a
    # replicated one, which would need over 4x.
    params = scaling._logical_params("micro")
    expected = scaling.state_bytes_per_device(params, dict(data=1, fsdp=4, model=1)) * 3 / 4 + 32 // 4 * 200 * 80 * 4
    assert expected <= report["arguments_bytes"] <= 2 * expected


def test_an_unknown_chip_is_a_clear_error(repo_root):
    result = subprocess.run([sys.executable, "-m", "maepp.compile_check", "--config", "configs/audiomaepp.py:micro",
                             "--topology", "v9x:2x2"], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 1 and "chip 'v9x' unknown" in result.stderr
