"""The launchers, in --dry-run mode: the commands they would run on a pod slice or a cluster;
and shellcheck on all of them. (launch/local.sh really runs in tests/test_train.py.)"""
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e  # each test runs a launcher

LAUNCHERS = ["launch/local.sh", "launch/tpu_pod.sh", "launch/slurm.sbatch"]


def _dry_run(repo_root, *args):
    result = subprocess.run(["bash", *args], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def test_shellcheck_is_clean(repo_root):
    shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), *LAUNCHERS], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_local_launcher_starts_one_process_per_index(repo_root):
    commands = _dry_run(repo_root, "launch/local.sh", "3", "--devices", "2", "--port", "15000", "--dry-run", "--",
                        "--config", "configs/audiomaepp.py:micro", "--workdir", "runs/a b")
    assert len(commands) == 3
    for i, command in enumerate(commands):
        assert command[:2] == ["env", f"XLA_FLAGS={os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=2"]
        venv_python = repo_root / ".venv" / "bin" / "python"  # what make builds, as slurm.sbatch runs
        assert command[2] == (str(venv_python) if venv_python.exists() else "python3")
        assert command[3:] == [
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


def test_tpu_pod_launcher_copies_installs_and_trains_on_every_worker(repo_root):
    commands = _dry_run(repo_root, "launch/tpu_pod.sh", "--tpu", "pod", "--zone", "us-central2-b", "--project", "p",
                        "--workdir", "gs://bucket/run", "--config", "configs/audiomaepp.py:large", "--dry-run", "--",
                        "--config.mesh.fsdp=16")
    pack, copy, install, train = commands
    assert pack[0] == "tar" and "-T" in pack
    listed = pathlib.Path(pack[pack.index("-T") + 1]).read_text().split()
    assert "maepp/train.py" in listed and not any(name.startswith((".venv", "runs")) for name in listed)
    for command in (copy, install, train):
        assert command[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and "--worker=all" in command
        assert (
            command[command.index("--zone") + 1] == "us-central2-b" and command[command.index("--project") + 1] == "p"
        )
    # The pinned stack make tests, not whatever pip resolves on the day, less its extras and test tools.
    assert "-r pod-requirements.txt 'jax[tpu]==0.10.2'" in install[-1] and "--no-deps -e ." in install[-1]
    keep = install[-1].split("sed ", 1)[1].split(" > pod-requirements.txt")[0]
    kept = subprocess.run(["sh", "-c", f"sed {keep}"], cwd=repo_root, capture_output=True, text=True,
                          check=True).stdout
    assert "\njax==0.10.2\n" in kept and "tensorstore==" in kept and "protobuf==" in kept
    assert "torch==" not in kept and "pytest==" not in kept
    remote = shlex.split(train[-1].removeprefix("--command=").split("&&", 1)[1])
    assert remote == [".venv/bin/python", "-m", "maepp.train", "--distributed", "--config",
                      "configs/audiomaepp.py:large", "--workdir", "gs://bucket/run", "--config.mesh.fsdp=16"]


def test_tpu_pod_launcher_wants_a_bucket_workdir(repo_root):
    result = subprocess.run(["bash", "launch/tpu_pod.sh", "--tpu", "pod", "--zone", "z", "--workdir", "/tmp/run",
                             "--dry-run"], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 2 and "gs://" in result.stderr


def test_slurm_script_runs_one_task_per_gpu_that_requeues_and_resumes(repo_root):
    (command,) = _dry_run(repo_root, "launch/slurm.sbatch", "--dry-run", "configs/audiomaepp.py:base", "/shared/run",
                          "--config.batch_size=512")
    assert command[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert command[-7:] == ["-m", "maepp.train", "--config", "configs/audiomaepp.py:base", "--workdir", "/shared/run",
                            "--config.batch_size=512"]
    script = (repo_root / "launch/slurm.sbatch").read_text()
    for directive in ("--ntasks-per-node=8", "--gpus-per-node=8", "--requeue", "--signal=TERM@600"):
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
