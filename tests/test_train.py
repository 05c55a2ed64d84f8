"""maepp.train end to end, as a user runs it: loss falls, exact resume after SIGKILL, SIGTERM."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

MICRO = "configs/audiomaepp.py:micro"


def _train_command(workdir, *overrides):
    return [sys.executable, "-m", "maepp.train", "--config", MICRO, "--workdir", str(workdir), *overrides]


def _train(repo_root, workdir, *overrides):
    result = subprocess.run(_train_command(workdir, *overrides), cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _losses(workdir) -> dict:
    """step -> loss from the TensorBoard event files; a step logged twice keeps its last value."""
    losses = {}
    for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*"), key=os.path.getmtime):
        events = event_accumulator.EventAccumulator(str(path), size_guidance={"tensors": 0})
        events.Reload()
        if "loss" in events.Tags()["tensors"]:
            for event in events.Tensors("loss"):
                losses[event.step] = float(tensor_util.make_ndarray(event.tensor_proto))
    return losses


def _final_params(workdir, step):
    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return restored["params"]


RUN = ["--config.total_steps=60", "--config.checkpoint_every=30", "--config.log_every=1", "--config.warmup_steps=5"]


@pytest.fixture(scope="module")
def uninterrupted(repo_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    out = _train(repo_root, workdir, *RUN)
    assert "stopped at step 60" in out
    return workdir


def test_loss_falls_clearly(uninterrupted):
    losses = _losses(uninterrupted)
    assert sorted(losses) == list(range(1, 61))
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(56, 61)])
    assert last < 0.75 * first, (first, last)


def test_resume_after_sigkill_is_exact(repo_root, uninterrupted, tmp_path):
    workdir = tmp_path / "killed"
    process = subprocess.Popen(_train_command(workdir, *RUN), cwd=repo_root, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "30").exists():  # Orbax renames a step dir when complete
        assert process.poll() is None and time.time() < deadline, "the run ended before its step-30 checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (workdir / "checkpoints" / "60").exists(), "killed too late to test a resume"
    out = _train(repo_root, workdir, *RUN)
    assert "resumed from step 30" in out
    reference, resumed = _losses(uninterrupted), _losses(workdir)
    for step in range(31, 61):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step
    for a, b in zip(_leaves(_final_params(workdir, 60)), _leaves(_final_params(uninterrupted, 60))):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_sigterm_saves_the_current_step_and_exits_cleanly(repo_root, tmp_path):
    workdir = tmp_path / "terminated"
    process = subprocess.Popen(
        _train_command(workdir, "--config.total_steps=100000", "--config.log_every=1"),
        cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    deadline = time.time() + 300
    while len(_losses(workdir)) < 5 if (workdir / "tensorboard").exists() else True:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    stopped = int(out.split("stop requested: saved step ")[1].split(",")[0])
    assert stopped >= 5
    assert (workdir / "checkpoints" / str(stopped) / "state").is_dir()
    assert not list((workdir / "checkpoints").glob("*tmp*"))


def _two_processes(repo_root, workdir, port, *overrides):
    """maepp.train as two JAX processes of 4 fake CPU devices each (jax.distributed on localhost)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    processes = [
        subprocess.Popen(
            _train_command(workdir, "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
                           "--process_id", str(i), *overrides),
            cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    return outputs[0][0]


def test_two_processes_train_checkpoint_and_resume_on_another_mesh(repo_root, tmp_path):
    workdir = tmp_path / "two_hosts"
    common = ["--config.warmup_steps=2", "--config.checkpoint_every=10", "--config.log_every=1"]
    out = _two_processes(repo_root, workdir, 12461, "--config.total_steps=10", "--config.mesh.data=8", *common)
    assert "stopped at step 10" in out
    data = json.loads((workdir / "checkpoints" / "10" / "data" / "metadata").read_text())
    assert data["positions"] == [160, 160]  # each process: 10 steps x 16 clips, none bad
    # The (8, 1, 1) checkpoint continues on a (2, 4, 1) mesh: data parallel x FSDP.
    out = _two_processes(repo_root, workdir, 12462, "--config.total_steps=20", "--config.mesh.data=2",
                         "--config.mesh.fsdp=4", *common)
    assert "resumed from step 10" in out and "stopped at step 20" in out
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, 21)) and all(np.isfinite(list(losses.values())))
