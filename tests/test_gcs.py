"""gs:// end to end, against a real GCS API server on 127.0.0.1 (maepp/tools/gcs_emulator.py):
the workdir lock's preconditions, a gs:// workdir that is taken over, killed and resumed bit for
bit, prepared data written to and read from a bucket in place, each process its share, and a
probe task read from a bucket."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from maepp.data.synthetic import synthetic_clip
from maepp.distributed import free_local_port
from maepp.tools.gcs_emulator import GcsEmulator
from maepp.workdir_lock import WorkdirInUse, WorkdirLock
from tests.helpers import PausePoint, assert_trees_equal, paused_at, saved_params, train, train_command, two_at_once

pytestmark = pytest.mark.e2e  # every test talks to a GCS API server process


@pytest.fixture(scope="module")
def gcs():
    with GcsEmulator() as emulator:
        yield emulator


@pytest.fixture
def bucket(gcs, request):
    name = "maepp-" + request.node.name.replace("_", "-")[:50].lower().strip("-")
    gcs.create_bucket(name)
    return name


def _storage_client(gcs):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="maepp-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": gcs.default["STORAGE_EMULATOR_HOST"]},
    )


def test_of_two_runs_starting_together_exactly_one_holds_the_workdir(gcs, bucket, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.default["STORAGE_EMULATOR_HOST"])

    def take():
        lock = WorkdirLock(f"gs://{bucket}/run", lease_s=3.0, renew_s=0.5)
        lock.acquire()
        return lock

    held, refused = two_at_once(take, WorkdirInUse)
    assert len(held) == 1 and len(refused) == 1, (held, refused)  # the loser saw the winner renew
    assert "is in use by another run" in str(refused[0])
    held[0].release()
    assert _storage_client(gcs).bucket(bucket).get_blob("run/lock.json") is None


def test_a_dead_runs_lease_is_waited_out_then_taken_over(gcs, bucket, monkeypatch, capsys):
    """The lease of a run that died a moment ago (renewed now, never again) holds its successor
    off until it runs out; then the successor takes it over."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.default["STORAGE_EMULATOR_HOST"])
    lock_blob = _storage_client(gcs).bucket(bucket).blob("run/lock.json")
    lock_blob.upload_from_string(json.dumps(dict(host="dead-host", pid=7, started=0, renewed=time.time())))
    started = time.monotonic()
    with WorkdirLock(f"gs://{bucket}/run", lease_s=8.0, renew_s=0.5) as successor:
        waited = time.monotonic() - started
        out = capsys.readouterr().out
        assert "is held by pid 7 on dead-host" in out and "s for its lease to run out" in out
        assert "took over" in out and waited >= 6.0  # 8 s from its renewal, less the upload
        assert json.loads(lock_blob.download_as_text())["token"] == successor.me["token"]


def test_a_holder_renewing_its_lease_fast_is_never_taken_for_another_run(gcs, bucket, monkeypatch):
    """Ownership is read from lock.json's token: a check made while the renewal thread writes a new
    generation, and a renewal refused because its own earlier write was stored though its answer
    was lost (here: its text uploaded from outside), both find the lease still this run's."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.default["STORAGE_EMULATOR_HOST"])
    lock_blob = _storage_client(gcs).bucket(bucket).blob("run/lock.json")
    with WorkdirLock(f"gs://{bucket}/run", lease_s=1.0, renew_s=0.02) as lock:
        lock_blob.upload_from_string(lock._text())  # the stored write whose answer never came back
        generations, deadline = {lock._generation}, time.monotonic() + 600  # the deadline: against a hang only
        while len(generations) <= 50:  # fifty renewals after the refused one, each racing the checks
            lock.check_held()  # raises WorkdirLost if it takes its own renewal for a takeover
            assert not lock.lost and time.monotonic() < deadline, lock.lost or "the renewals stopped"
            generations.add(lock._generation)
    assert _storage_client(gcs).bucket(bucket).get_blob("run/lock.json") is None


@pytest.mark.long(seconds=100)
def test_a_gs_workdir_taken_over_killed_and_resumed_ends_as_an_uninterrupted_run(
    gcs, bucket, repo_root, tmp_path, monkeypatch
):
    """One gs:// workdir through three faults: its lease taken over (the run stops before its next
    save, in one line), the run killed with SIGKILL (its successor waits the lease out), and a
    resume; the final parameters equal an uninterrupted local run's bit for bit."""
    overrides = [  # a batch of 8 clips: the faults are the test, not what the model learns
        "--config.total_steps=12",
        "--config.batch_size=8",
        "--config.warmup_steps=2",
        "--config.checkpoint_every=3",
        "--config.log_every=3",
        "--config.evals.held_out.every=100",
        "--config.evals.held_out.source=synthetic:16:1",
        "--config.evals.held_out.batch_size=8",
    ]
    train(repo_root, tmp_path / "local", *overrides)  # the uninterrupted run

    workdir = f"gs://{bucket}/run"
    # A short lease: the killed run's successor takes it over within seconds, having waited out what
    # is left of it, if anything (how long it waits depends on how long it took to start).
    env = {**os.environ, **gcs.client_environment(), "MAEPP_WORKDIR_LEASE_S": "5"}
    blobs = _storage_client(gcs).bucket(bucket)

    def steps_saved():
        return sorted(
            {
                int(b.name.split("/")[2])
                for b in blobs.list_blobs(prefix="run/checkpoints/")
                if b.name.split("/")[2].isdigit()
            }
        )

    def start(*pauses):
        return subprocess.Popen(
            train_command(workdir, *overrides),
            cwd=repo_root,
            env={**env, **paused_at(*pauses)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    # 1. Another run takes the lease over while this one is held after starting its step-3 save:
    # it stops before its next save, in one line.
    saved_3 = PausePoint(tmp_path, "saved@3")
    first = start(saved_3)
    saved_3.wait(first)
    blobs.blob("run/lock.json").upload_from_string(
        json.dumps(dict(host="elsewhere", pid=1, started=0, renewed=time.time()))
    )
    saved_3.release()
    _, err = first.communicate(timeout=600)
    assert first.returncode == 1
    assert "was taken over by another run (pid 1 on elsewhere" in err.strip().splitlines()[-1]
    assert "this run stopped before its next save" in err.strip().splitlines()[-1]
    assert steps_saved() == [3]
    blobs.blob("run/lock.json").delete()  # that other run went away

    # 2. Killed outright once its step-6 checkpoint is written, before it is committed.
    written_6 = PausePoint(tmp_path, "save_written@6")
    second = start(written_6)
    written_6.wait(second)
    os.killpg(second.pid, signal.SIGKILL)
    second.wait()

    # 3. The successor takes the dead run's lease over, resumes and finishes.
    third = start()
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err[-3000:]
    assert "from a run that stopped renewing it" in out
    assert "resumed from step " in out and "stopped at step 12" in out
    import orbax.checkpoint as ocp

    for variable, value in gcs.client_environment().items():  # Orbax reads the bucket from this process
        monkeypatch.setenv(variable, value)
    resumed = ocp.StandardCheckpointer().restore(f"{workdir}/checkpoints/12/state")["params"]
    assert_trees_equal(resumed, saved_params(tmp_path / "local", 12))
    names = {b.name for b in blobs.list_blobs(prefix="run/")}
    assert "run/pictures/held_out/step_0000012.png" in names
    assert any("/tensorboard/events.out.tfevents" in n for n in names)
    assert "run/lock.json" not in names  # let go at the end


def test_a_gs_run_killed_during_its_final_save_finishes_it_again(gcs, bucket, repo_root, tmp_path, monkeypatch):
    """On gs:// Orbax writes a step under its own number and commits it with commit_success.txt.
    A run killed once its last step's files are written, before that commit, left a step that
    cannot be read: the re-run must not call the run finished on it, but resume from the newest
    committed step and save the last one again, ending with the uninterrupted run's parameters."""
    overrides = [
        "--config.total_steps=4",
        "--config.batch_size=8",
        "--config.warmup_steps=1",
        "--config.checkpoint_every=2",
        "--config.log_every=2",
        "--config.evals.held_out.source=",
    ]
    train(repo_root, tmp_path / "local", *overrides)  # the uninterrupted run
    workdir, env = f"gs://{bucket}/run", {**os.environ, **gcs.client_environment(), "MAEPP_WORKDIR_LEASE_S": "3"}
    final_save = PausePoint(tmp_path, "save_written@4")
    killed = subprocess.Popen(
        train_command(workdir, *overrides),
        cwd=repo_root,
        env={**env, **final_save.environment},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    final_save.wait(killed)
    killed.kill()
    killed.wait()
    blobs = _storage_client(gcs).bucket(bucket)
    assert blobs.get_blob("run/checkpoints/4/commit_success.txt") is None
    assert any(b.name.startswith("run/checkpoints/4/") for b in blobs.list_blobs(prefix="run/"))

    rerun = subprocess.run(
        train_command(workdir, *overrides), cwd=repo_root, env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from step 2 " in rerun.stdout and "stopped at step 4" in rerun.stdout, rerun.stdout
    assert "newest checkpoint: step 4 in" in rerun.stdout
    import orbax.checkpoint as ocp

    for variable, value in gcs.client_environment().items():  # Orbax reads the bucket from this process
        monkeypatch.setenv(variable, value)
    assert_trees_equal(
        ocp.StandardCheckpointer().restore(f"{workdir}/checkpoints/4/state")["params"],
        saved_params(tmp_path / "local", 4),
    )


_READ_SHARE = """
import json, sys
import numpy as np
from maepp.data.pipeline import train_dataset
from maepp.data.sources import source_from_string

def read(spec, rows):
    source = source_from_string(spec)
    return list(train_dataset(source, seed=0, batch_size=8, rows=rows).take(4 * len(source) // 8).as_numpy_iterator())

batches = read(sys.argv[1], json.loads(sys.argv[2]))  # the pipeline is freed on return, its reads done
np.savez(sys.argv[3], positions=np.concatenate([b["position"] for b in batches]),
         log_mel=np.concatenate([b["log_mel"] for b in batches]))
"""


def test_prepared_in_a_bucket_each_process_reads_its_share_in_place(gcs, bucket, repo_root, tmp_path):
    """prepare reads its input from a bucket and writes its output to one; two processes then
    read four epochs of it where it lies, each the rows of every batch its devices hold: half the
    dataset's bytes each by the server's count, nothing copied to local disk, and the very crops
    the same data gives when read from a local folder."""
    blobs = _storage_client(gcs).bucket(bucket)
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(32):  # 2 s clips: a crop is its whole clip
        soundfile.write(tmp_path / "in" / f"clip_{i:02d}.wav", synthetic_clip(rng, 2.0)[0], 16000)
        blobs.blob(f"in/clip_{i:02d}.wav").upload_from_filename(str(tmp_path / "in" / f"clip_{i:02d}.wav"))
    env = {**os.environ, **gcs.client_environment()}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "maepp.data.prepare",
            "--input",
            f"gs://{bucket}/in",
            "--output",
            f"gs://{bucket}/out",
            "--workers",
            "1",
            "--clips_per_shard",
            "8",
        ],
        cwd=repo_root,
        env=env,
        check=True,
        capture_output=True,
    )
    dataset = f"gs://{bucket}/out/audio_clips/2.0.0"
    manifest = json.loads(blobs.blob("out/audio_clips/2.0.0/manifest.json").download_as_bytes())
    assert manifest["clips"] == 32 and len(manifest["shards"]) == 4
    payload = sum(shard["bytes"] for shard in manifest["shards"])

    readers, meters = [], []
    for process, rows in enumerate(([0, 1, 2, 3], [4, 5, 6, 7])):
        meter = gcs.meter()
        meters.append(meter)
        scratch = tmp_path / f"scratch_{process}"
        scratch.mkdir()
        readers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _READ_SHARE,
                    f"prepared:{dataset}",
                    json.dumps(rows),
                    str(tmp_path / f"{process}.npz"),
                ],
                cwd=repo_root,
                env={**env, **gcs.client_environment(meter), "TMPDIR": str(scratch)},
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for reader in readers:
        assert reader.wait(timeout=300) == 0, reader.stderr.read()[-3000:]
    shares = [np.load(tmp_path / f"{process}.npz") for process in range(2)]
    for process, meter in enumerate(meters):
        assert not list((tmp_path / f"scratch_{process}").iterdir())  # no local copy of anything
        # Half of each epoch's crops (a 2 s clip's crop is all of it), the batches tf.data read
        # ahead (3% of the four epochs each: 3 of them under the suite's load, 0.595 in all), and the
        # manifest, index and a listing; a process reading everything would be at 1.
        assert 0.45 < meter.counts()["response_bytes"] / (4 * payload) < 0.75, meter.counts()
    positions = np.concatenate([share["positions"] for share in shares])
    assert sorted(positions.tolist()) == list(range(4 * 32))  # every position once, read by one process

    from maepp.data.pipeline import train_dataset
    from maepp.data.sources import source_from_string
    from maepp.data.writer import prepare

    prepare(tmp_path / "in", tmp_path / "local", clips_per_shard=8, workers=1)
    local = source_from_string(f"prepared:{tmp_path}/local/audio_clips/2.0.0")
    alone = list(train_dataset(local, seed=0, batch_size=8).take(16).as_numpy_iterator())
    for batch, (first, second) in zip(alone, zip(*(np.split(share["log_mel"], 16) for share in shares))):
        np.testing.assert_array_equal(batch["log_mel"], np.concatenate([first, second]))


def _upload(blobs, folder, prefix):
    for path in sorted(folder.iterdir()):
        if path.is_file():
            blobs.blob(f"{prefix}/{path.name}").upload_from_filename(str(path))


@pytest.mark.long(seconds=60)
def test_two_processes_sharing_a_model_axis_train_from_a_bucket_and_the_slower_one_is_named(
    gcs, bucket, repo_root, tmp_path
):
    """A fresh run of two processes whose model axis spans both (dcn_model=2: each holds every row
    of a batch and half of each layer), reading prepared clips from a bucket; process 1 reads
    through a narrow link (200 ms a request, one at a time: about 3 s a batch of 16 rows, against
    steps of about 0.25 s). Once the batches read ahead while the processes started and compiled are used up,
    process 1 waits for each batch: the input wait reported is the slowest process's, and names it.
    The 16 steps of 16 rows are one epoch of 256 clips, so no row repeats another's bytes."""
    from maepp.data.writer import prepare
    from tests.test_train import _job

    rng = np.random.default_rng(4)
    (tmp_path / "in").mkdir()
    for i in range(256):
        soundfile.write(tmp_path / "in" / f"{i}.wav", synthetic_clip(rng, 2.5)[0], 16000)
    prepare(tmp_path / "in", tmp_path / "prepared", clips_per_shard=32, workers=1)
    _upload(_storage_client(gcs).bucket(bucket), tmp_path / "prepared" / "audio_clips" / "2.0.0", "data")
    narrow = gcs.meter(delay_s=0.2)

    port = free_local_port()

    def launch(i):
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)]
        return flags, gcs.client_environment(narrow if i == 1 else None)

    out = _job(
        repo_root,
        tmp_path / "run",
        launch,
        "--config.total_steps=16",
        "--config.warmup_steps=1",
        "--config.log_every=4",
        "--config.checkpoint_every=16",
        "--config.batch_size=16",
        "--config.data.prefetch=1",
        "--config.evals.held_out.source=",
        f"--config.data.source=prepared:gs://{bucket}/data",
        "--config.mesh.data=2",
        "--config.mesh.dcn_model=2",
        "--config.profile.first_step=0",
    )
    lines = [line for line in out.splitlines() if line.startswith("step ") and "input wait" in line]
    assert [line.split("/")[0] for line in lines] == ["step 4", "step 8", "step 12", "step 16"]
    wait = int(lines[-1].split("input wait ")[1].split("%")[0])
    # A wait is a time, so this stays a timing check, with a wide margin: 3.2 s of reads a batch
    # for process 1, many times a step on this model however loaded the machine; process 0 reads
    # at once.
    assert wait > 0 and f"input wait {wait}% (slowest: process 1) |" in lines[-1], lines[-1]
    # Process 1 read every row of each of its batches: at least a 200x80 float16 crop of each of the
    # 256 clips (its reads, widened to checksum chunks and merged by shard, only add bytes). Half the
    # rows would be at most 128 whole clips of 250 frames, 5.1 MB.
    assert narrow.counts()["response_bytes"] >= 16 * 16 * 200 * 80 * 2


def test_a_probe_task_in_a_bucket_is_the_task_on_disk(gcs, bucket, tmp_path, monkeypatch):
    """A labelled task uploaded to a bucket loads as the same splits and labels, and the probe
    evaluator reads from it the very scene embeddings and score it reads from the local copy."""
    import jax

    from maepp import sharding
    from maepp.configs import audiomaepp
    from maepp.downstream.tasks import load_task
    from maepp.evaluator_kinds import RunContext
    from maepp.evaluator_kinds import settings as evaluator_settings
    from maepp.evaluators.probe import ProbeEvaluation
    from maepp.models import MaskedAutoencoder, ModelSpec
    from maepp.optim import optimizer
    from tests.helpers import PROBE

    blobs, rng = _storage_client(gcs).bucket(bucket), np.random.default_rng(0)
    for split, per_label in (("train", 4), ("test", 2)):
        for label in ("hum", "noise"):
            for i in range(per_label):
                path = tmp_path / "task" / split / label / f"{i}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, synthetic_clip(rng, 1.0 + 0.5 * i)[0], 16000)
                blobs.blob(str(path.relative_to(tmp_path))).upload_from_filename(str(path))
    for variable, value in gcs.client_environment().items():
        monkeypatch.setenv(variable, value)
    local, remote = load_task(tmp_path / "task"), load_task(f"gs://{bucket}/task")
    assert (remote.name, remote.labels, remote.folds) == (local.name, local.labels, local.folds)
    assert len(remote.paths()) == 12

    config = audiomaepp.get_config("micro")
    mesh = sharding.make_mesh(config.mesh)
    model = MaskedAutoencoder(ModelSpec.from_config(config.model))
    state, shardings = sharding.create_sharded_state(model, optimizer(config), mesh, jax.random.key(0))
    probes = [
        ProbeEvaluation(
            "kw",
            evaluator_settings(dict(PROBE, task=str(task.root), batch_size=8)),
            RunContext(model, mesh, shardings.params, config.audio.filterbank, config.seed),
            task,
        )
        for task in (local, remote)
    ]
    np.testing.assert_array_equal(*(np.asarray(probe.scene_embeddings(state.params)) for probe in probes))
    assert probes[0](state.params) == probes[1](state.params) and not probes[1].unreadable


def test_a_held_out_split_prepared_into_a_bucket_is_found_there(gcs, bucket, tmp_path, monkeypatch):
    """prepare --holdout with its output in a bucket: the training split's manifest names the held-out
    split, whose source string reads it in place, its clips the ones held out."""
    from maepp.data.clip_store import ClipStoreSource
    from maepp.data.writer import held_out_files, prepare

    rng = np.random.default_rng(5)
    (tmp_path / "in").mkdir()
    for i in range(10):
        soundfile.write(tmp_path / "in" / f"{i}.wav", synthetic_clip(rng, 2.0)[0], 16000)
    for variable, value in gcs.client_environment().items():
        monkeypatch.setenv(variable, value)
    prepare(tmp_path / "in", f"gs://{bucket}/out", clips_per_shard=10, workers=1, holdout=0.2)
    train = ClipStoreSource(f"gs://{bucket}/out/audio_clips/2.0.0")
    assert train.holdout == f"prepared:gs://{bucket}/out/audio_clips/2.0.0/holdout" and len(train) == 8
    held = ClipStoreSource(train.holdout.removeprefix("prepared:"))
    expected = held_out_files([f"{i}.wav" for i in range(10)], 0.2)
    assert {held.name(i) for i in range(len(held))} == expected and len(expected) == 2
