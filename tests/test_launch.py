"""The launchers, in --dry-run mode: the commands they would run on a pod slice or a cluster;
and shellcheck on all of them. (launch/local.sh really runs in tests/test_train.py.)"""

import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.e2e  # each test runs a launcher

LAUNCHERS = ["launch/local.sh", "launch/tpu_pod.sh", "launch/tpu_worker.sh", "launch/slurm.sbatch"]
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _dry_run(repo_root, *args):
    result = subprocess.run(["bash", *args], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def test_shellcheck_is_clean(repo_root):
    shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), *LAUNCHERS], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_local_launcher_starts_one_process_per_index(repo_root):
    commands = _dry_run(
        repo_root,
        "launch/local.sh",
        "3",
        "--devices",
        "2",
        "--port",
        "15000",
        "--dry-run",
        "--",
        "--config",
        "configs/audiomaepp.py:micro",
        "--workdir",
        "runs/a b",
    )
    assert len(commands) == 3
    for i, command in enumerate(commands):
        assert command[:3] == [
            "env",
            f"XLA_FLAGS={os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=2",
            "MAEPP_RESTART=0",
        ]
        venv_python = repo_root / ".venv" / "bin" / "python"  # what make builds, as slurm.sbatch runs
        assert command[3] == (str(venv_python) if venv_python.exists() else "python3")
        assert command[4:] == [
            "-m",
            "maepp.train",
            "--coordinator",
            "127.0.0.1:15000",
            "--num_processes",
            "3",
            "--process_id",
            str(i),
            "--config",
            "configs/audiomaepp.py:micro",
            "--workdir",
            "runs/a b",
        ]


def _tpu_pod(repo_root, *args):
    return _dry_run(
        repo_root, "launch/tpu_pod.sh", "--dry-run", "--tpu", "pod", "--zone", "us-central2-b", "--project", "p", *args
    )


def _remote(command) -> str:
    """The shell command a gcloud ssh line runs on the workers."""
    assert command[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and "--worker=all" in command
    assert command[command.index("--zone") + 1] == "us-central2-b" and command[command.index("--project") + 1] == "p"
    return command[-1].removeprefix("--command=")


def _detached_training(command) -> list:
    """The words tpu_worker.sh runs, from the ssh line that starts it detached."""
    remote = _remote(command)
    assert remote.startswith("cd ~/maepp && mkdir -p logs && setsid nohup bash launch/tpu_worker.sh ")
    assert remote.endswith("< /dev/null > logs/worker.out 2>&1 &")  # nothing ties it to the ssh session
    words = shlex.split(remote.split("setsid nohup ")[1].split(" < /dev/null")[0])
    return words


def test_tpu_pod_launcher_copies_installs_and_starts_detached_on_every_worker(repo_root):
    commands = _tpu_pod(
        repo_root,
        "--workdir",
        "gs://bucket/run",
        "--config",
        "configs/audiomaepp.py:large",
        "--max_restarts",
        "2",
        "--",
        "--config.mesh.fsdp=16",
    )
    pack, copy, install, train = commands
    assert pack[0] == "tar" and "-T" in pack
    listed = pathlib.Path(pack[pack.index("-T") + 1])
    assert not listed.parent.exists()  # the dry run cleans up after itself
    assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and copy[6] == "pod:maepp.tar.gz"
    # The pinned stack make tests, not whatever pip resolves on the day, less its extras and test tools.
    install = _remote(install)
    assert "-r pod-requirements.txt 'jax[tpu]==0.10.2'" in install and "--no-deps -e ." in install
    keep = install.split("sed ", 1)[1].split(" > pod-requirements.txt")[0]
    kept = subprocess.run(["sh", "-c", f"sed {keep}"], cwd=repo_root, capture_output=True, text=True, check=True).stdout
    assert "\njax==0.10.2\n" in kept and "tensorstore==" in kept and "protobuf==" in kept
    assert "torch==" not in kept and "pytest==" not in kept
    assert _detached_training(train) == [
        "bash",
        "launch/tpu_worker.sh",
        "--max_restarts",
        "2",
        "--",
        ".venv/bin/python",
        "-m",
        "maepp.train",
        "--distributed",
        "--config",
        "configs/audiomaepp.py:large",
        "--workdir",
        "gs://bucket/run",
        "--config.mesh.fsdp=16",
    ]


def test_tpu_pod_launcher_joins_two_slices_through_their_megascale_variables(repo_root):
    commands = _tpu_pod(repo_root, "--num_slices", "2", "--workdir", "gs://bucket/run")
    assert [c[6] for c in commands[1:5:2]] == ["pod-0:maepp.tar.gz", "pod-1:maepp.tar.gz"]  # copied to each
    assert [c[5] for c in commands[2:5:2]] == ["pod-0", "pod-1"]  # and installed there
    describe, *trains = commands[5:]
    assert describe[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "pod-0"]
    assert describe[-1] == "--format=value(networkEndpoints[0].ipAddress)"  # slice 0's first worker
    for slice_id, train in enumerate(trains):
        assert train[5] == f"pod-{slice_id}"
        words = _detached_training(train)
        assert words[5:11] == [
            "env",
            "MEGASCALE_COORDINATOR_ADDRESS=COORDINATOR_IP:8080",
            "MEGASCALE_PORT=8080",
            "MEGASCALE_NUM_SLICES=2",
            f"MEGASCALE_SLICE_ID={slice_id}",
            ".venv/bin/python",
        ]


@pytest.mark.parametrize(
    "mode,remote",
    [
        ("--logs", "tail -n 100 -F $HOME/maepp/logs/train.log"),
        ("--status", 'echo "{slice} $(hostname): $(cat $HOME/maepp/logs/state 2>/dev/null || echo never started)"'),
        ("--stop", "echo stopping > $HOME/maepp/logs/state && kill -TERM $(cat $HOME/maepp/logs/train.pid)"),
    ],
)
def test_tpu_pod_launcher_follows_reports_and_stops_every_worker_of_every_slice(repo_root, mode, remote):
    commands = _tpu_pod(repo_root, "--num_slices", "2", mode)
    assert [(c[5], _remote(c)) for c in commands] == [(f"pod-{i}", remote.format(slice=f"pod-{i}")) for i in range(2)]


def test_tpu_worker_runs_its_command_again_after_a_failure_and_says_where_it_stands(tmp_path):
    """launch/tpu_worker.sh as a worker runs it: a command that fails twice and then succeeds is
    started three times with MAEPP_RESTART 0, 1, 2; with one restart allowed it ends failed."""
    command = ["bash", "-c", 'echo "start $MAEPP_RESTART" >> "$0/starts"; [ "$MAEPP_RESTART" = 2 ]', str(tmp_path)]
    env = dict(os.environ, MAEPP_LOGS=str(tmp_path / "logs"))
    worker = ["bash", "launch/tpu_worker.sh", "--delay_s", "0", "--max_restarts"]
    ended = subprocess.run([*worker, "1", "--", *command], cwd=ROOT, env=env, timeout=120)
    assert ended.returncode == 1 and (tmp_path / "starts").read_text() == "start 0\nstart 1\n"
    assert (tmp_path / "logs" / "state").read_text().startswith("failed with status 1 at ")
    assert "(restarts used: 1 of 1)" in (tmp_path / "logs" / "state").read_text()
    (tmp_path / "starts").unlink()
    assert subprocess.run([*worker, "2", "--", *command], cwd=ROOT, env=env, timeout=120).returncode == 0
    assert (tmp_path / "starts").read_text() == "start 0\nstart 1\nstart 2\n"
    assert (tmp_path / "logs" / "state").read_text().startswith("exited 0 at ")
    assert "restart 2 of 2" in (tmp_path / "logs" / "train.log").read_text()


def test_tpu_pod_launcher_wants_a_bucket_workdir(repo_root):
    result = subprocess.run(
        ["bash", "launch/tpu_pod.sh", "--tpu", "pod", "--zone", "z", "--workdir", "/tmp/run", "--dry-run"],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "gs://" in result.stderr


def test_slurm_script_runs_one_task_per_gpu_that_requeues_and_resumes(repo_root):
    (command,) = _dry_run(
        repo_root,
        "launch/slurm.sbatch",
        "--dry-run",
        "--max_restarts",
        "2",
        "configs/audiomaepp.py:base",
        "/shared/run",
        "--config.batch_size=512",
    )
    assert command[:5] == ["srun", "--kill-on-bad-exit=1", "--cpu-bind=none", "env", "MAEPP_RESTART=0"]
    assert command[-7:] == [
        "-m",
        "maepp.train",
        "--config",
        "configs/audiomaepp.py:base",
        "--workdir",
        "/shared/run",
        "--config.batch_size=512",
    ]
    script = (repo_root / "launch/slurm.sbatch").read_text()
    for directive in ("--ntasks-per-node=8", "--gpus-per-node=8", "--requeue", "--signal=B:TERM@600"):
        assert f"#SBATCH {directive}" in script


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launchers_refuse_missing_arguments(repo_root, launcher):
    result = subprocess.run(["bash", launcher], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.parametrize("launcher", ["launch/local.sh", "launch/tpu_pod.sh"])
def test_help_describes_the_launcher_and_exits_0(repo_root, launcher):
    result = subprocess.run(["bash", launcher, "--help"], cwd=repo_root, capture_output=True, text=True)
    usage = [line for line in result.stdout.splitlines() if line.lstrip().startswith(launcher)]
    assert result.returncode == 0 and usage and not result.stdout.startswith("#"), result.stdout


def _fake_slurm(tmp_path, srun_body: str) -> dict:
    """PATH with a fake srun (running srun_body, its arguments in $SRUN_ARGS) and a fake scontrol
    that records its arguments: what slurm.sbatch does around the training step."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(f'#!/usr/bin/env bash\necho "$@" >> "{tmp_path}/srun.log"\n{srun_body}\n')
    (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\necho "$@" >> "{tmp_path}/scontrol.log"\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="77", SLURM_SUBMIT_DIR=str(tmp_path))


def test_slurm_script_requeues_a_failed_job_up_to_max_restarts_counting_them(repo_root, tmp_path):
    env = _fake_slurm(tmp_path, "exit 3")
    script = ["bash", "launch/slurm.sbatch", "--max_restarts", "1", "configs/audiomaepp.py:micro", "/shared/run"]
    first = subprocess.run(script, cwd=repo_root, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and (tmp_path / "scontrol.log").read_text() == "requeue 77\n"
    assert "restart 1 of 1" in first.stderr and (tmp_path / "slurm-maepp-77.restarts").read_text() == "1\n"
    second = subprocess.run(script, cwd=repo_root, env=env, capture_output=True, text=True, timeout=60)  # requeued
    assert second.returncode == 3 and (tmp_path / "scontrol.log").read_text() == "requeue 77\n"  # not again
    assert "restarts used: 1 of 1" in second.stderr
    assert [line.split()[3] for line in (tmp_path / "srun.log").read_text().splitlines()] == [
        "MAEPP_RESTART=0",
        "MAEPP_RESTART=1",
    ]


def test_slurm_script_requeues_a_run_stopped_near_the_time_limit_and_not_a_finished_one(repo_root, tmp_path):
    """Slurm signals the batch script before the time limit (--signal=B:TERM@600); the script
    passes SIGTERM on to srun, whose tasks save and exit 0, and requeues the job."""
    env = _fake_slurm(tmp_path, f'trap "exit 0" TERM; touch "{tmp_path}/started"; while true; do sleep 0.1; done')
    script = subprocess.Popen(
        ["bash", "launch/slurm.sbatch", "configs/audiomaepp.py:micro", "/shared/run"],
        cwd=repo_root,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60  # against a hang only
    while not (tmp_path / "started").exists():
        assert script.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    script.send_signal(signal.SIGTERM)
    _, err = script.communicate(timeout=60)
    assert script.returncode == 0 and (tmp_path / "scontrol.log").read_text() == "requeue 77\n", err
    assert "the time limit is near" in err
    (tmp_path / "scontrol.log").unlink()
    finished = subprocess.run(
        ["bash", "launch/slurm.sbatch", "configs/audiomaepp.py:micro", "/shared/run"],
        cwd=repo_root,
        env=_fake_slurm(tmp_path, "exit 0"),
        capture_output=True,
        timeout=60,
    )
    assert finished.returncode == 0 and not (tmp_path / "scontrol.log").exists()
