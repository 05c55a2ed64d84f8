"""maepp.train end to end, as a user runs it: loss falls, held-out loss and pictures, profile,
the device front end and SIGTERM, two processes, stop after repeated non-finite steps."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from maepp.distributed import free_local_port
from maepp.evaluators.pictures import reconstruction_grid
from tests.helpers import (
    MICRO,
    SHORT_JOB,
    PausePoint,
    assert_trees_equal,
    fake_devices_environment,
    image_steps,
    leaves,
    logged_scalars,
    paused_at,
    ridge_score_of,
    saved_params,
    spec_for,
    train_command,
)
from tests.helpers import TRAINED_RUN as RUN


def _saved_on_stop(out: str) -> int:
    """The step a run saved when asked to stop (SIGTERM), from its console."""
    return int(out.split("stop requested: saved step ")[1].split(",")[0])


@pytest.fixture
def uninterrupted(trained_run):
    return trained_run


@pytest.mark.e2e
def test_loss_falls_clearly(uninterrupted):
    losses = logged_scalars(uninterrupted)
    assert sorted(losses) == list(range(1, 61))
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(56, 61)])
    assert last < 0.75 * first, (first, last)


@pytest.mark.e2e
def test_held_out_loss_falls_and_pictures_are_written(uninterrupted):
    held_out = logged_scalars(uninterrupted, "held_out/loss")
    assert sorted(held_out) == [30, 60] and held_out[60] < held_out[30], held_out
    assert image_steps(uninterrupted, "held_out/reconstruction") == [30, 60]
    pictures = sorted(p.name for p in (uninterrupted / "pictures" / "held_out").iterdir())
    assert pictures == ["step_0000030.png", "step_0000060.png"]
    image = tf.io.decode_png((uninterrupted / "pictures" / "held_out" / pictures[0]).read_bytes()).numpy()
    assert image.shape == reconstruction_grid(np.zeros((3, 4, 200, 80))).shape and image.std() > 10  # 4 clips


@pytest.mark.e2e
def test_the_parameter_overview_is_in_tensorboard(uninterrupted):
    """Every parameter's shape and statistics, with the total the parameter count gives."""
    from tensorboard.util import tensor_util

    from maepp.models.counts import parameter_counts

    texts = []
    for path in (uninterrupted / "tensorboard").glob("events.out.tfevents.*"):
        events = event_accumulator.EventAccumulator(str(path), size_guidance={"tensors": 0})
        events.Reload()
        if "parameter_overview" in events.Tags()["tensors"]:
            texts += [
                tensor_util.make_ndarray(event.tensor_proto).item().decode()
                for event in events.Tensors("parameter_overview")
            ]
    (text,) = texts
    counts = parameter_counts(spec_for("micro"))
    total = counts["encoder"] + counts["decoder"]
    assert "| Name " in text and "encoder" in text and f"Total: {total:,} -- " in text


@pytest.mark.e2e
def test_profile_trace_is_written(uninterrupted):
    # config.profile (off in micro's config, on in this run): steps 20-25 traced into TensorBoard's
    # profile plugin directory
    assert list((uninterrupted / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))


@pytest.mark.e2e
def test_a_device_frontend_run_follows_the_host_run_and_saves_its_step_on_sigterm(repo_root, uninterrupted, tmp_path):
    """config.data.frontend=device: raw samples in, log-mels made in the train step; the same crops,
    masks and updates as the host run, so the same losses up to the front ends' ~1e-6 difference.
    Stopped by SIGTERM, the run saves the step it is on and exits cleanly."""
    workdir = tmp_path / "terminated"
    process = subprocess.Popen(
        train_command(workdir, *RUN, "--config.total_steps=100000", "--config.data.frontend=device"),
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 300
    while len(logged_scalars(workdir)) < 5 if (workdir / "tensorboard").exists() else True:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    stopped = _saved_on_stop(out)
    assert stopped >= 5
    assert (workdir / "checkpoints" / str(stopped) / "state").is_dir()
    assert not list((workdir / "checkpoints").glob("*tmp*"))
    device, host = logged_scalars(workdir), logged_scalars(uninterrupted)
    for step in range(1, 6):  # the warm-up, whose learning rates do not depend on total_steps
        assert device[step] == pytest.approx(host[step], abs=1e-4), step


def _job(repo_root, workdir, launch, *overrides, config=MICRO, processes=2, devices=2):
    """maepp.train as a job of JAX processes, each of fake CPU devices, joined by
    jax.distributed on localhost; -> process 0's console.

    launch(i) -> (extra flags, extra environment) of process i.
    """
    started = []
    for i in range(processes):
        flags, environment = launch(i)
        started.append(
            subprocess.Popen(
                train_command(workdir, *flags, *overrides, config=config),
                cwd=repo_root,
                env=fake_devices_environment(devices, **environment),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600) for p in started]
    for process, (_, err) in zip(started, outputs):
        assert process.returncode == 0, err[-3000:]
    return outputs[0][0]


def _slurm_job_id() -> str:
    """A job id whose coordinator port, as JAX derives it from Slurm's variables (61440 + id %
    4096), the operating system lets this machine bind now."""
    for port in random.sample(range(61440, 65536), 256):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return str(port - 61440)
    raise AssertionError("no free port in 61440-65535")


def _by_slurm_environment(job_id: str, nodes: int, tasks_per_node: int):
    """-> launch(i): what srun sets for task i of a step of `nodes` x `tasks_per_node` tasks (all
    of them on this machine, which names the first node: JAX's coordinator)."""
    return lambda i: (
        [],
        dict(
            SLURM_JOB_ID=job_id,
            SLURM_STEP_NODELIST="localhost",
            SLURM_NTASKS=str(nodes * tasks_per_node),
            SLURM_PROCID=str(i),
            SLURM_NODEID=str(i // tasks_per_node),
            SLURM_LOCALID=str(i % tasks_per_node),
        ),
    )


def _follows(run, reference, steps, tag="loss"):
    """The run's logged values at these steps equal the reference run's, up to the summation order
    of another mesh (measured: within 2e-5 over 60 steps)."""
    got, expected = logged_scalars(run, tag), logged_scalars(reference, tag)
    for step in steps:
        assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-5), (tag, step, got[step], expected[step])


# The shared run's recipe, its profiler off: multi-process runs compare their numbers with it.
SHARED = [*RUN, "--config.profile.first_step=0"]


@pytest.mark.e2e
@pytest.mark.long(seconds=130)
def test_a_fresh_run_split_over_two_processes_stops_together_on_sigterm_and_resumes_on_one(
    repo_root, trained_run, tmp_path
):
    """Two processes of 2 fake devices, each a granule of a hybrid mesh: FSDP over the 2 inside
    each, data parallel across the two (dcn_data=2), so the state is split across both from step
    1 (a fresh run of that kind stopped at step 1 before). SIGTERM reaches one of them after the
    step-10 checkpoint, as a preemption notice would: JAX tells the other, both save one agreed
    step and exit cleanly. Resumed on one process of 4 devices (2 -> 1), the run goes on through
    the global clip order from that step's position: its losses, before the stop and after, and
    its held-out loss at step 30 are the shared single-process run's."""
    workdir = tmp_path / "two_hosts"
    saved_10 = PausePoint(tmp_path, "saved@10")
    launcher = subprocess.Popen(
        [
            "bash",
            "launch/local.sh",
            "2",
            "--devices",
            "2",
            "--port",
            str(free_local_port()),
            "--",
            "--config",
            "configs/audiomaepp.py:micro",
            "--workdir",
            str(workdir),
            *SHARED,
            "--config.checkpoint_every=10",
            "--config.mesh.data=1",
            "--config.mesh.fsdp=2",
            "--config.mesh.dcn_data=2",
        ],
        cwd=repo_root,
        env=dict(os.environ, PYTHON=sys.executable, **saved_10.environment),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    saved_10.wait(launcher)
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    os.kill(int(children[1]), signal.SIGTERM)
    saved_10.release()
    out, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err[-3000:]
    assert "input wait" in out and "(slowest: process " in out  # every process's wait, the slowest named
    stopped = _saved_on_stop(out)
    assert 10 < stopped < 60  # held at step 10 until the signal had come
    data = json.loads((workdir / "checkpoints" / str(stopped) / "data" / "metadata").read_text())
    assert data == {"position": 32 * stopped, "processes": 2}  # one global position: 32 clips a step
    # Resumed, it is stopped the same way once its step-30 save has started: the steps up to there
    # and the held-out loss at 30 are the comparison (the shared run's last 30 steps add nothing).
    saved_30 = PausePoint(tmp_path, "saved@30")
    resumed = subprocess.Popen(
        train_command(workdir, *SHARED),
        cwd=repo_root,
        env=fake_devices_environment(4, **saved_30.environment),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    saved_30.wait(resumed)
    resumed.send_signal(signal.SIGTERM)
    saved_30.release()
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed step {stopped} saved by 2 processes on 1 processes" in out
    last = _saved_on_stop(out)
    assert 30 < last < 60
    _follows(workdir, trained_run, range(1, last + 1))
    _follows(workdir, trained_run, [30], "held_out/loss")
    starts = [json.loads(line) for line in (workdir / "run_info.jsonl").read_text().splitlines()]
    assert [(s["processes"], s["mesh"]) for s in starts] == [
        (2, {"data": 2, "fsdp": 2, "model": 1}),
        (1, {"data": 4, "fsdp": 1, "model": 1}),
    ]
    assert all(s["resolved"] == {"model.attention": "xla", "data.shuffle": "clips"} for s in starts)  # "auto"s


@pytest.mark.e2e
@pytest.mark.long(seconds=70)
def test_a_one_process_checkpoint_resumes_on_two_processes_whose_model_axis_spans_them(
    repo_root, trained_run, probed_config, tmp_path
):
    """The shared run's step-30 checkpoint (one process) goes on over two processes joined
    through the Slurm environment of two nodes (1 -> 2), on a mesh whose model axis spans them
    (dcn_model=2): each holds every row of the batch and half of each layer's heads and hidden
    units. Its losses and the held-out loss at the end are the shared run's. Its probe's score at
    the end is the same on both processes, and what one process computes from the checkpoint."""
    workdir = tmp_path / "two_hosts"
    shutil.copytree(trained_run / "checkpoints" / "30", workdir / "checkpoints" / "30")
    out = _job(
        repo_root,
        workdir,
        _by_slurm_environment(_slurm_job_id(), nodes=2, tasks_per_node=1),
        *SHARED,
        "--config.mesh.data=2",
        "--config.mesh.dcn_model=2",
        config=probed_config,
    )
    assert "resumed step 30 saved by 1 processes on 2 processes" in out and "stopped at step 60" in out
    _follows(workdir, trained_run, range(31, 61))
    _follows(workdir, trained_run, [60], "held_out/loss")
    score = logged_scalars(workdir, "classes/accuracy")[60]
    assert f"probe classes accuracy {score:.4f}" in out and "(the same on 2 processes)" in out
    one_process = ridge_score_of(workdir, 60, probed_config.parent / "classes_task", tmp_path / "features.npz")
    assert score == pytest.approx(one_process, abs=1e-6)


@pytest.mark.e2e
@pytest.mark.long(seconds=90)
def test_a_slurm_job_of_two_nodes_of_two_gpu_processes_is_data_parallel_across_the_nodes(
    repo_root, trained_run, tmp_path
):
    """launch/slurm.sbatch starts one task per GPU; docs/scaling.md's meshes count nodes in the
    dcn_* axes. Four tasks of one device each, on two nodes by SLURM_NODEID, with dcn_data=2:
    the nodes are the granules (data parallel inside each node and across the two), and the
    warm-up steps' losses are the shared single-process run's."""
    workdir = tmp_path / "slurm"
    out = _job(
        repo_root,
        workdir,
        _by_slurm_environment(_slurm_job_id(), nodes=2, tasks_per_node=2),
        *SHARED,
        "--config.total_steps=6",
        "--config.evals.held_out.source=",
        "--config.mesh.dcn_data=2",
        processes=4,
        devices=1,
    )
    assert "stopped at step 6" in out
    start = json.loads((workdir / "run_info.jsonl").read_text())
    assert start["processes"] == 4 and start["mesh"] == {"data": 4, "fsdp": 1, "model": 1}
    _follows(workdir, trained_run, range(1, 6))  # the warm-up: its learning rates do not depend on total_steps


@pytest.mark.e2e
@pytest.mark.long(seconds=60)
@pytest.mark.parametrize("where", ["in a collective", "between collectives"])
def test_a_process_that_loses_the_other_says_so_in_one_line(repo_root, tmp_path, where):
    """Process 1 is killed while both are held after starting the step-8 save. Let go at once,
    process 0 meets the loss in its next step's collective (Gloo's error); held on, JAX's
    heartbeat check finds process 1 gone and ends process 0 from C++. Either way process 0's
    console gets one line: what happened, the newest complete checkpoint, the command."""
    pauses = [PausePoint(tmp_path, "saved@8") for _ in range(2)]
    for i, pause in enumerate(pauses):
        pause.marker = tmp_path / f"paused-{i}"
    port = free_local_port()
    processes = [
        subprocess.Popen(
            train_command(
                tmp_path / "w",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
                *SHORT_JOB,
            ),
            cwd=repo_root,
            env=fake_devices_environment(1, **paused_at(pauses[i])),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for process, pause in zip(processes, pauses):
        pause.wait(process)
    processes[1].kill()
    processes[1].wait()
    if where == "in a collective":
        pauses[0].release()
    _, err = processes[0].communicate(timeout=600)
    assert processes[0].returncode != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-4000:]
    line = lines[0]
    what = (
        "a collective failed: another process of the job stopped ("
        if where == "in a collective"
        else "process 1 stopped answering (JAX's report: "
    )
    assert line.startswith(f"maepp.train: {what}"), line
    assert (
        f"this process stopped too. The newest complete checkpoint is step 4 in {tmp_path / 'w' / 'checkpoints'}; "
        "the same command resumes from it"
    ) in line and line.endswith(" --process_id 0 " + " ".join(SHORT_JOB))


@pytest.mark.e2e
@pytest.mark.long(seconds=120)
def test_a_job_that_lost_a_process_is_restarted_by_its_launcher_and_ends_as_if_uninterrupted(repo_root, tmp_path):
    """launch/local.sh --max_restarts 1, two processes of one device: process 1 is killed as the
    step-8 save starts; the launcher stops process 0, starts the job again, and it resumes from
    step 4 and ends with the parameters of one process of two devices (the same mesh) run through."""
    reference = tmp_path / "reference"
    subprocess.run(
        train_command(reference, *SHORT_JOB),
        cwd=repo_root,
        env=fake_devices_environment(2),
        check=True,
        capture_output=True,
    )
    workdir, saved_8 = tmp_path / "restarted", PausePoint(tmp_path, "saved@8")
    launcher = subprocess.Popen(
        [
            "bash",
            "launch/local.sh",
            "2",
            "--devices",
            "1",
            "--max_restarts",
            "1",
            "--",
            "--config",
            "configs/audiomaepp.py:micro",
            "--workdir",
            str(workdir),
            *SHORT_JOB,
        ],
        cwd=repo_root,
        env=dict(os.environ, PYTHON=sys.executable, **saved_8.environment),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    saved_8.wait(launcher)
    (process_1,) = subprocess.run(
        ["pgrep", "-P", str(launcher.pid), "-f", "--", "--process_id 1 "], capture_output=True, text=True
    ).stdout.split()
    os.kill(int(process_1), signal.SIGKILL)
    saved_8.release()  # and the restarted job is not held there
    out, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err[-3000:]
    assert "restart 1 of 1, from the newest checkpoint" in err
    assert "resumed from step 4 " in out and "stopped at step 12" in out
    starts = [json.loads(line) for line in (workdir / "run_info.jsonl").read_text().splitlines()]
    assert [start["restart"] for start in starts] == [0, 1]
    assert_trees_equal(saved_params(workdir, 12), saved_params(reference, 12))


@pytest.mark.e2e
def test_every_process_sees_every_processes_numbers(repo_root):
    """What the console line sums (skipped clips) and compares (input wait) over processes: two
    real JAX processes gather distinct numbers in process order."""
    program = (
        "import sys, jax; from maepp import distributed; "
        f"distributed.initialize('127.0.0.1:{free_local_port()}', 2, int(sys.argv[1])); "
        "p = jax.process_index(); print(distributed.every_process([p + 1, 10 * p]).tolist())"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", program, str(i)],
            cwd=repo_root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=fake_devices_environment(1),
        )
        for i in range(2)
    ]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == "[[1.0, 0.0], [2.0, 10.0]]"  # after Gloo's own lines


@pytest.mark.e2e
def test_repeated_non_finite_steps_stop_the_run_naming_the_last_good_checkpoint(tmp_path):
    from maepp.configs import audiomaepp
    from maepp.train_loop import train as train_in_process

    config = audiomaepp.get_config("micro")
    # A rate that overflows the parameters: from step 2 on every loss is inf or NaN.
    config.optimizer.base_learning_rate = 1e34
    config.update(batch_size=8, warmup_steps=0, total_steps=50, checkpoint_every=1, max_nonfinite_steps=3, log_every=1)
    config.evals = {}
    config.profile.first_step = 0
    with pytest.raises(FloatingPointError, match=r"3 steps in a row .* last good checkpoint is step (\d+)") as error:
        train_in_process(config, tmp_path)
    good = int(error.value.args[0].split("last good checkpoint is step ")[1].split()[0])
    skipped = logged_scalars(tmp_path, "skipped")
    assert [s for s in sorted(skipped) if skipped[s]] == [good + 1, good + 2, good + 3]
    params = saved_params(tmp_path, good)
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves(params))
