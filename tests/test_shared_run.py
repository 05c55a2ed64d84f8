"""The run the end-to-end tests share (tests/conftest.py trained_run): made once, and when it
fails, every test that needs it says why."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_the_shared_run_is_finished_and_no_attempt_is_left_beside_it(trained_run):
    assert (trained_run / "checkpoints" / "60" / "state").is_dir()
    assert not (trained_run.parent / "trained_run.attempt").exists()
    assert not (trained_run.parent / "trained_run.failed").exists()


def test_a_failed_shared_run_is_the_message_of_every_test_that_needs_it(repo_root, tmp_path):
    """Three tests that need the shared run, on two workers, with the run made to fail by a bad
    override: it is tried once, leaves no finished workdir behind to be taken for the shared run,
    and each of the three reports why it failed."""
    needing = [
        "tests/test_shared_run.py::test_the_shared_run_is_finished_and_no_attempt_is_left_beside_it",
        "tests/test_train.py::test_loss_falls_clearly",
        "tests/test_train.py::test_profile_trace_is_written",
    ]
    env = dict(os.environ, MAEPP_TEST_SHARED_RUN_OVERRIDES="--config.batch_size=0", COLUMNS="400")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "session"),
            *needing,
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR ")]
    assert result.returncode == 1 and len(errors) == 3, result.stdout[-3000:]
    cause = (
        "the shared run (tests/conftest.py trained_run) failed: maepp.train exited 1: maepp.train: "
        "config.batch_size=0: must be a whole number of at least 1"
    )
    assert all(cause in line for line in errors), errors
    assert not (tmp_path / "session" / "trained_run").exists()
