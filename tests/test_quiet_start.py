"""TensorFlow's start-up lines never reach a maepp program's console, on any CPU (forced here with
TF_ENABLE_ONEDNN_OPTS=1, the path Intel CPUs with AVX-512 or AMX take by default), and oneDNN's
operations, on or off, leave the log-mels as they are."""

import os
import subprocess
import sys

import numpy as np
import pytest

from maepp import quiet_start
from tests.helpers import ONEDNN_ON

pytestmark = pytest.mark.e2e  # each test starts Python processes


def _stderr_of(program: str, repo_root, **environment) -> str:
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=repo_root,
        capture_output=True,
        text=True,
        env=dict(os.environ, **environment),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def test_tensorflow_loads_quietly_after_maepp_and_loudly_without_it(repo_root):
    """The control shows the path is really taken: TensorFlow alone prints its oneDNN notice."""
    assert "oneDNN custom operations are on" in _stderr_of("import tensorflow", repo_root, **ONEDNN_ON)
    imports = "import maepp, tensorflow, tensorflow_datasets, clu.metric_writers, orbax.checkpoint"
    assert _stderr_of(imports, repo_root, **ONEDNN_ON) == ""


def test_a_warning_printed_while_tensorflow_loads_still_reaches_the_console(repo_root):
    """Only the known notices are kept back: anything else written to stderr during the import
    (here a Python warning raised as TensorFlow's package starts) is written out after it."""
    program = (
        "import warnings, maepp, builtins; real = builtins.__import__\n"
        "def noisy(name, *a, **k):\n"
        "    if name == 'tensorflow.python': warnings.warn('a real problem', UserWarning)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = noisy\nimport tensorflow"
    )
    err = _stderr_of(program, repo_root, **ONEDNN_ON)
    assert "UserWarning: a real problem" in err and not any(notice in err for notice in quiet_start.NOTICES)


def test_onednn_operations_leave_the_log_mel_bit_for_bit_the_same(repo_root, tmp_path):
    """The host front end computes its STFT and mel projection in float64, which oneDNN's float32
    and bfloat16 kernels do not touch: the log-mels of a clip are the same bytes either way."""
    program = (
        "import sys, numpy as np, maepp, tensorflow as tf; from maepp.audio import tf_frontend; "
        "from maepp.data.synthetic import synthetic_clip; "
        "clip = synthetic_clip(np.random.default_rng(0), 10.0)[0]; "
        "np.save(sys.argv[1], tf_frontend.log_mel(tf.constant(clip)).numpy())"
    )
    for setting in ("0", "1"):
        subprocess.run(
            [sys.executable, "-c", program, str(tmp_path / f"{setting}.npy")],
            cwd=repo_root,
            check=True,
            env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting),
            capture_output=True,
            timeout=300,
        )
    off, on = np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy")
    assert off.shape == (1001, 80) and off.tobytes() == on.tobytes()
