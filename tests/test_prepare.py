"""maepp.data.prepare (layout 2.0.0, on Apache Beam): shards, clip lists, index and manifest,
resuming, the runners agreeing byte for byte, AudioSet's formats, and the prepared: source."""

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import soundfile

from maepp.audio import jax_frontend, reference
from maepp.audio.decode import load_audio
from maepp.data.checksums import CHUNK_BYTES
from maepp.data.clip_store import ClipStoreSource
from maepp.data.listing import list_audio_files
from maepp.data.order import GlobalOrder, crop_fractions
from maepp.data.pipeline import WAVEFORM_CROP_KEYS, eval_dataset, random_offset, train_dataset
from maepp.data.sources import source_from_string
from maepp.data.synthetic import synthetic_clip
from maepp.data.writer import prepare, stored_order
from tests.helpers import LOG_MEL_TOLERANCE, PausePoint


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("input")
    rng = np.random.default_rng(0)
    (root / "nested").mkdir()
    for i in range(9):
        rate = [16000, 22050, 44100][i % 3]
        soundfile.write(root / ("nested" if i % 2 else ".") / f"clip_{i}.flac", synthetic_clip(rng, 2.2, rate)[0], rate)
    (root / "broken.wav").write_bytes(b"RIFF nonsense")
    soundfile.write(root / "silent.wav", np.zeros(8000, np.float32), 16000)
    (root / "labels.csv").write_text("clip_0.flac,music\n")
    return root


def _dataset(out):
    return out / "audio_clips" / "2.0.0"


def _files(folder) -> dict:
    """Every file prepare wrote (not its plan): name -> bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "plan.json"}


def test_prepare_writes_shards_clip_lists_index_and_manifest(audio_folder, tmp_path):
    manifest = prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1, store="flac")
    out = _dataset(tmp_path)
    assert manifest["files"] == 11 and manifest["clips"] == 9 and manifest["layout"] == "2.0.0"
    # Every file not taken is named with its reason, whatever its extension.
    assert manifest["skipped"].keys() == {"broken.wav", "silent.wav", "labels.csv"}
    assert "silent" in manifest["skipped"]["silent.wav"] and "not an audio file" in manifest["skipped"]["labels.csv"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    # Files are stored in the order of their names' hashes (stored_order), 4 to a shard, less those skipped.
    listed, _ = list_audio_files(audio_folder)
    stored = sorted(listed, key=stored_order)
    in_shards = [[f for f in stored[i : i + 4] if f not in manifest["skipped"]] for i in range(0, len(stored), 4)]
    assert [s["clips"] for s in manifest["shards"]] == [len(files) for files in in_shards]
    assert [(out / s["file"]).stat().st_size for s in manifest["shards"]] == [s["bytes"] for s in manifest["shards"]]
    assert manifest["hours"] == pytest.approx(9 * 2.2 / 3600, rel=1e-3)  # resampled lengths round to a sample
    # A shard is a .npy any tool reads: the clips' FLAC files end to end.
    shard = np.load(out / manifest["shards"][0]["file"])
    assert shard.dtype == np.uint8 and bytes(shard[:4]) == b"fLaC"

    # The stored audio is the input resampled to 16 kHz mono (up to 16-bit FLAC quantisation).
    source = ClipStoreSource(str(out))
    assert source.store == manifest["store"] == "flac" and len(source) == 9
    names = [source.name(i) for i in range(len(source))]
    assert names == [f for files in in_shards for f in files]
    assert sorted(names) == sorted(f"{'nested/' if i % 2 else ''}clip_{i}.flac" for i in range(9))
    for i in (0, 5):
        # 16-bit PCM: 3e-5 a step
        np.testing.assert_allclose(source.load(i), load_audio(audio_folder / names[i]), atol=1e-4)
    # The pcm store keeps the very same 16-bit samples, uncompressed, and the same clip stats.
    prepare(audio_folder, tmp_path / "pcm", clips_per_shard=4, workers=1, store="pcm")
    pcm = ClipStoreSource(str(_dataset(tmp_path / "pcm")))
    assert pcm.store == "pcm" and [pcm.name(i) for i in range(9)] == names
    for i in (0, 5):
        np.testing.assert_array_equal(pcm.load(i), source.load(i))
        np.testing.assert_array_equal(pcm.load_segment(i, 1000, 5000), source.load(i)[1000:5000])
        assert pcm.clip_info(i) == pytest.approx(source.clip_info(i))


def test_second_run_skips_finished_shards_and_redoes_interrupted_ones(audio_folder, tmp_path):
    prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    out = _dataset(tmp_path)
    finished = _files(out)
    shards = sorted(name for name in finished if name.endswith(".npy") and ".clips-" in name)
    before = {name: (out / name).stat().st_mtime_ns for name in shards}
    # Killed between a shard and its clip list: the shard must not count as done.
    (out / shards[1].replace(".npy", ".json")).unlink()
    (out / shards[1]).write_bytes(b"half a shard")
    (out / (shards[2] + ".tmp")).write_bytes(b"leftover of a killed writer")

    manifest = prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    after = {name: (out / name).stat().st_mtime_ns for name in shards}
    assert after[shards[0]] == before[shards[0]] and after[shards[2]] == before[shards[2]]
    assert after[shards[1]] != before[shards[1]]
    assert manifest["clips"] == 9 and _files(out) == finished  # the same bytes as before
    assert not list(out.glob("*.tmp"))  # leftovers of killed writers are cleared


def test_resuming_with_other_files_sharding_store_filterbank_or_holdout_is_refused(audio_folder, tmp_path):
    prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    for change in (dict(clips_per_shard=5), dict(store="pcm"), dict(filterbank="librosa"), dict(holdout=0.25)):
        with pytest.raises(ValueError, match="other files, sharding, store, filterbank or held-out fraction"):
            prepare(audio_folder, tmp_path, **{"clips_per_shard": 4, "workers": 1, **change})


def test_a_held_out_fraction_is_prepared_beside_the_training_split_and_training_evaluates_on_it(audio_folder, tmp_path):
    """--holdout 0.25 of 11 audio files: 3 files, chosen by their names' hashes whatever the listing's
    order, prepared into holdout/ and named by the training split's manifest; a run on the dataset
    resolves its held-out evaluator's "auto" to that split. A re-run with another fraction is refused."""
    from maepp.config_checks import held_out_notice
    from maepp.configs import audiomaepp
    from maepp.data.listing import list_audio_files
    from maepp.data.writer import held_out_files
    from maepp.run_plan import checked_plan

    files, _ = list_audio_files(str(audio_folder))
    held = held_out_files(files, 0.25)
    assert len(files) == 11 and len(held) == 3 and held_out_files(files[::-1], 0.25) == held
    manifest = prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1, holdout=0.25)
    out = _dataset(tmp_path)
    held_manifest = json.loads((out / "holdout" / "manifest.json").read_text())
    assert manifest["holdout"] == "holdout" and held_manifest["split"] == "holdout"
    assert manifest["files"] == 8 and held_manifest["files"] == 3
    train, held_out = ClipStoreSource(str(out)), ClipStoreSource(str(out / "holdout"))
    train_names = {train.name(i) for i in range(len(train))}
    held_names = {held_out.name(i) for i in range(len(held_out))}
    assert held_names == held - set(held_manifest["skipped"]) and not train_names & held
    assert len(train_names) + len(held_names) == 9  # every clip in one split: broken.wav and silent.wav are skipped
    with pytest.raises(ValueError, match="held-out fraction"):
        prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1, holdout=0.5)
    with pytest.raises(ValueError, match="leaving none to train on"):
        prepare(audio_folder, tmp_path / "all", workers=1, holdout=0.99)

    config = audiomaepp.get_config("micro")
    config.data.source = f"prepared:{out}"
    plan = checked_plan(config)
    assert plan.resolved["evals.held_out.source"] == f"prepared:{out}/holdout"
    evaluated = plan.sources["evals.held_out"]
    assert {evaluated.name(i) for i in range(len(evaluated))} == held_names
    assert held_out_notice(config, plan.resolved).startswith(f"config.evals.held_out: held-out loss on prepared:{out}")
    prepare(audio_folder, tmp_path / "whole", clips_per_shard=4, workers=1)  # no held-out split: procedural clips
    config.data.source = f"prepared:{_dataset(tmp_path / 'whole')}"
    assert checked_plan(config).resolved["evals.held_out.source"] == "synthetic:256:1"


def _prepare_command(audio_folder, output, *beam):
    return [
        sys.executable,
        "-m",
        "maepp.data.prepare",
        "--input",
        str(audio_folder),
        "--output",
        str(output),
        "--clips_per_shard",
        "2",
        *beam,
    ]


@pytest.mark.e2e
@pytest.mark.long(seconds=40)
def test_beam_with_two_workers_writes_what_one_process_writes_and_a_killed_run_resumes_to_it(
    repo_root, audio_folder, tmp_path
):
    """The runner does not change the output: Beam's local runner with two worker processes
    writes the single-process path's bytes. Killed once its first shards are done, then stopped by
    Ctrl-C (to the whole process group, as a terminal sends it) as its workers start, in one line,
    the same command resumes and ends with the same bytes, printing its progress bar and its
    summary and nothing else (the worker processes' start-up logging goes to a file, removed at
    the end, or at Ctrl-C)."""
    prepare(audio_folder, tmp_path / "one", clips_per_shard=2, workers=1)
    expected = _files(_dataset(tmp_path / "one"))
    command = _prepare_command(audio_folder, tmp_path / "two", "--workers", "2")
    first_shard = PausePoint(tmp_path, "shard_written@1")  # a worker's first
    process = subprocess.Popen(
        command,
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, **first_shard.environment),
    )
    out = _dataset(tmp_path / "two")
    first_shard.wait(process)
    os.killpg(process.pid, signal.SIGKILL)  # the runner and its workers
    process.wait()
    assert not (out / "manifest.json").exists()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    process = subprocess.Popen(
        command,
        cwd=repo_root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600  # against a hang only
    while not list(scratch.iterdir()):  # the workers' log: they are starting
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    said = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("prepare:")]
    assert process.returncode == 130 and said == [
        "maepp.data.prepare: interrupted; what was finished is kept, and the same command goes on from it"
    ], err[-2000:]
    assert not list(scratch.iterdir())
    finished = subprocess.run(command, cwd=repo_root, check=True, capture_output=True, text=True, env=env)
    assert _files(out) == expected
    lines = [line for line in finished.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(line.startswith("prepare: ") for line in lines), finished.stderr[-2000:]
    assert finished.stdout.startswith("9 clips") and not list(scratch.iterdir())


def test_files_of_one_folder_do_not_cluster_in_the_shards(tmp_path):
    """Two folders (two classes, say) of 16 names in sequence: stored by their names' hashes, every
    shard of 8 holds files of both, where the listing's order would fill two shards with each."""
    for label in ("a_class", "b_class"):
        (tmp_path / "in" / label).mkdir(parents=True)
        for i in range(16):
            (tmp_path / "in" / label / f"{i:03d}.wav").touch()
    listed, _ = list_audio_files(tmp_path / "in")
    assert listed == sorted(listed)  # the listing groups each folder
    stored = sorted(listed, key=stored_order)
    assert all(len({name.split("/")[0] for name in stored[i : i + 8]}) == 2 for i in range(0, 32, 8))


@pytest.mark.e2e
def test_the_workers_of_a_killed_prepare_end_with_it(repo_root, tmp_path):
    """SIGKILL to prepare alone, as its two Beam workers have 58 one-clip shards left: each sees
    prepare gone and exits (maepp/data/beam_worker.py) with at most the shards in hand written,
    where Beam's own worker wrote on to the end (49 more shards, measured)."""
    rng = np.random.default_rng(6)
    (tmp_path / "in").mkdir()
    for i in range(60):
        soundfile.write(tmp_path / "in" / f"{i:02d}.wav", synthetic_clip(rng, 1.0)[0], 16000)
    first_shard = PausePoint(tmp_path, "shard_written@1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maepp.data.prepare",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            "--clips_per_shard",
            "1",
            "--workers",
            "2",
        ],
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, **first_shard.environment),
    )
    first_shard.wait(process)
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    process.kill()
    process.wait()
    written = len(list((tmp_path / "out").rglob("*.clips-*.json")))
    first_shard.release()  # the workers go on, if nothing ends them

    def alive(pid):  # an exited process not yet reaped by its new parent is a zombie: not alive
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 60  # against a hang only
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)], "workers outlived their prepare"
    # Each worker ends after the shard in hand at most, however slow the machine (Beam's own
    # worker went on to write 49 more).
    assert len(list((tmp_path / "out").rglob("*.clips-*.json"))) - written <= 2


@pytest.fixture(scope="module")
def audioset_formats(tmp_path_factory):
    """m4a (AAC), opus and webm (Opus), as AudioSet downloads come, beside wav and flac, made by
    PyAV's and libsndfile's encoders; and a file of a kind prepare does not read."""
    root = tmp_path_factory.mktemp("audioset_formats")
    rng = np.random.default_rng(3)
    for name, container, codec, rate in (
        ("a.m4a", "mp4", "aac", 44100),
        ("b.opus", "ogg", "libopus", 48000),
        ("c.webm", "webm", "libopus", 48000),
    ):
        clip = synthetic_clip(rng, 2.5, rate)[0]
        buffer = io.BytesIO()
        with av.open(buffer, "w", format=container) as output:
            stream = output.add_stream(codec, rate=rate, layout="mono")
            for start in range(0, len(clip), 960):
                frame = av.AudioFrame.from_ndarray(clip[None, start : start + 960], format="flt", layout="mono")
                frame.sample_rate, frame.pts = rate, start
                output.mux(stream.encode(frame))
            output.mux(stream.encode(None))
        (root / name).write_bytes(buffer.getvalue())
    soundfile.write(root / "d.wav", synthetic_clip(rng, 2.5)[0], 16000)
    soundfile.write(root / "e.flac", synthetic_clip(rng, 2.5, 22050)[0], 22050)
    (root / "f.aiff-c").write_bytes(b"FORM something")
    return root


def test_audioset_formats_are_prepared_and_an_unknown_kind_is_named(audioset_formats, tmp_path):
    manifest = prepare(audioset_formats, tmp_path, workers=1, store="pcm")
    assert manifest["clips"] == 5 and list(manifest["skipped"]) == ["f.aiff-c"]
    assert "not an audio file maepp reads (.aiff-c)" in manifest["skipped"]["f.aiff-c"]
    source = ClipStoreSource(str(_dataset(tmp_path)))
    for index in range(len(source)):
        waveform = source.load(index)  # 2.5 s at 16 kHz, give or take the codecs' padding
        assert abs(len(waveform) - 40000) < 2000 and 0.05 < np.abs(waveform).max() <= 1.0, source.name(index)


def test_prepared_source_feeds_the_training_pipeline(audio_folder, tmp_path):
    prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    source = source_from_string(f"prepared:{_dataset(tmp_path)}")
    batches = list(train_dataset(source, seed=0, batch_size=4).take(3).as_numpy_iterator())
    assert all(b["log_mel"].shape == (4, 200, 80) for b in batches)
    # Its log-mels were made with the default filterbank; training with the other is refused.
    assert source.filterbank == "torchaudio"
    with pytest.raises(
        ValueError,
        match=r"prepared with the 'torchaudio' filterbank and config\.audio\.filterbank is "
        r"'librosa': train with --config\.audio\.filterbank=torchaudio",
    ):
        train_dataset(source, seed=0, batch_size=4, filterbank="librosa")


def test_a_missing_or_truncated_shard_is_refused_naming_it(audio_folder, tmp_path):
    manifest = prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    out = _dataset(tmp_path)
    first, second = (shard["file"] for shard in manifest["shards"][:2])
    (out / first).unlink()
    with open(out / second, "r+b") as shard:
        shard.truncate(1000)
    with pytest.raises(
        ValueError,
        match=rf"2 of 3 shards do not match manifest.json: {first} \(missing\), "
        rf"{second} \(1,000 bytes, not [\d,]+\)",
    ):
        source_from_string(f"prepared:{out}")
    with pytest.raises(FileNotFoundError, match=r"holds no manifest\.json"):
        source_from_string(f"prepared:{tmp_path}")


def test_crops_from_stored_stats_equal_crops_of_the_whole_standardised_clip(tmp_path):
    """The audio stores' fast path (only the crop's samples, stored clip stats) changes no value."""
    root = tmp_path / "in"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        soundfile.write(root / f"long_{i}.flac", synthetic_clip(rng, 7.0)[0], 16000)
    prepare(root, tmp_path / "out", clips_per_shard=2, workers=1, store="flac")
    source = ClipStoreSource(str(_dataset(tmp_path / "out")))
    order = GlobalOrder(len(source), seed=4)
    batches = list(train_dataset(source, seed=4, batch_size=4).take(3).as_numpy_iterator())
    for batch in batches:
        for mel, position in zip(batch["log_mel"], batch["position"]):
            epoch, index = order.clip(position)
            whole = reference.log_mel(source.load(index))
            offset = random_offset(len(whole), 200, np.random.default_rng([4, epoch, index]))
            np.testing.assert_allclose(mel, whole[offset : offset + 200], atol=LOG_MEL_TOLERANCE, rtol=0)
    # The device front end gets the same crops' samples and stored stats.
    for host, device in zip(batches, train_dataset(source, seed=4, batch_size=4, frontend="device").take(3)):
        mel = jax_frontend.crop_log_mel({key: device[key].numpy() for key in WAVEFORM_CROP_KEYS})
        np.testing.assert_allclose(np.asarray(mel), host["log_mel"], atol=LOG_MEL_TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def log_mel_store(tmp_path_factory):
    """A log_mel-store preparation of 6 clips: five of 2.5-9 s, one of 0.5 s (tiled when stored)."""
    root = tmp_path_factory.mktemp("log_mel_in")
    rng = np.random.default_rng(2)
    for i, seconds in enumerate((2.5, 9.0, 4.0, 0.5, 6.0, 3.0)):
        soundfile.write(root / f"clip_{i}.wav", synthetic_clip(rng, seconds)[0], 16000)
    out = tmp_path_factory.mktemp("log_mel_out")
    manifest = prepare(root, out, clips_per_shard=4, workers=1)  # the default store
    source = ClipStoreSource(str(_dataset(out)))
    whole = [reference.log_mel(load_audio(root / source.name(i))) for i in range(len(source))]
    return manifest, source, whole


def _within_float16(got, expected):
    """float16 storage rounds each value to 11 significant bits: |error| <= 2^-11 |value|."""
    assert np.all(np.abs(got - expected) <= np.abs(expected) * 2.0**-11 + 1e-7), np.abs(got - expected).max()


def test_log_mel_store_crops_are_slices_of_the_clips_standardised_log_mel(log_mel_store):
    manifest, source, whole = log_mel_store
    assert manifest["store"] == source.store == "log_mel"
    order = GlobalOrder(len(source), seed=3)
    reads_before, bytes_before = source.reads, source.bytes_read
    batches = list(train_dataset(source, seed=3, batch_size=4).take(4).as_numpy_iterator())
    for batch in batches:
        assert batch["log_mel"].shape == (4, 200, 80) and batch["log_mel"].dtype == np.float32
        for mel, position in zip(batch["log_mel"], batch["position"]):
            epoch, index = order.clip(position)
            n = len(whole[index])
            offset = int(crop_fractions(3, [epoch], [index])[0] * (max(n - 200, 0) + 1))  # 0 for the 0.5 s clip
            clip = np.tile(whole[index], (-(-200 // n), 1))  # which is tiled
            _within_float16(mel, clip[offset : offset + 200])
    # 16 positions over 6 clips: every clip, over several epochs, at crops that move.
    assert np.concatenate([b["position"] for b in batches]).tolist() == list(range(16))
    # Each crop read its own bytes (200 rows of 80 float16 values), widened to the 4 KB chunks
    # their checksums cover; unchecked, exactly its own.
    per_read = (source.bytes_read - bytes_before) / (source.reads - reads_before)
    assert 200 * 80 * 2 <= per_read < 200 * 80 * 2 + 2 * CHUNK_BYTES
    unchecked = ClipStoreSource(source.directory, verify=False)
    list(train_dataset(unchecked, seed=3, batch_size=4).take(4).as_numpy_iterator())
    assert unchecked.bytes_read == unchecked.reads * 200 * 80 * 2
    # Resuming from a position gives exactly the batches that follow it.
    resumed = next(train_dataset(source, seed=3, batch_size=4, start_position=8).as_numpy_iterator())
    np.testing.assert_array_equal(resumed["log_mel"], batches[2]["log_mel"])


def test_log_mel_store_evaluates_centre_crops_and_pads_the_last_batch(log_mel_store):
    _, source, whole = log_mel_store
    batches = list(eval_dataset(source, batch_size=4).as_numpy_iterator())
    assert [b["valid"].tolist() for b in batches] == [[True] * 4, [True, True, False, False]]
    assert batches[1]["index"].tolist() == [4, 5, -1, -1] and not batches[1]["log_mel"][2:].any()
    for batch in batches:
        for mel, index, valid in zip(batch["log_mel"], batch["index"], batch["valid"]):
            if valid:
                n = len(whole[index])
                offset = max(n - 200, 0) // 2
                _within_float16(mel, np.tile(whole[index], (-(-200 // n), 1))[offset : offset + 200])


def test_every_pipeline_runs_without_the_autotuning_thread(log_mel_store):
    """tf.data's autotuning thread held each iterator's destruction for up to its optimisation
    period (13 to 19 s at the end of runs), so no pipeline starts it, and each map stays as
    parallel as the cores this process may use."""
    _, prepared, _ = log_mel_store
    audio = source_from_string("synthetic:8")
    datasets = [
        train_dataset(audio, seed=0, batch_size=4),
        eval_dataset(audio, batch_size=4),
        train_dataset(prepared, seed=0, batch_size=4),
        eval_dataset(prepared, batch_size=4),
    ]
    for dataset in datasets:
        options = dataset.options().autotune
        assert options.enabled is False and options.initial_parallelism == len(os.sched_getaffinity(0))


def test_log_mel_store_refuses_what_needs_audio(log_mel_store):
    _, source, _ = log_mel_store
    with pytest.raises(ValueError, match=r"config\.data\.frontend='device' needs audio"):
        train_dataset(source, seed=0, batch_size=2, frontend="device")
    with pytest.raises(ValueError, match="crops of 300 frames"):
        train_dataset(source, seed=0, batch_size=2, crop_frames=300)


def test_a_damaged_clip_stops_the_stream_naming_it_or_is_skipped_and_counted(audio_folder, tmp_path):
    """One clip's stored bytes overwritten with 0xFF (float16 NaN), as by a bad sector: "stop"
    names its shard, clip and the bytes that fail their checksum in one line; "skip" reads the
    clips that stand in for it, and counts it."""
    from maepp.data.clip_store import DamagedClip
    from maepp.data.pipeline import SkipReport, reraise_damaged

    manifest = prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    out = _dataset(tmp_path)
    index = np.load(out / manifest["index"])
    shard = manifest["shards"][int(index["shard"][2])]["file"]
    with open(out / shard, "r+b") as damaged:
        damaged.seek(int(index["offset"][2]))
        damaged.write(b"\xff" * int(index["units"][2]) * 80 * 2)
    source = ClipStoreSource(str(out))
    epoch = len(source) // 4  # batches of one epoch: every clip once

    with pytest.raises(DamagedClip) as stopped:
        try:
            list(train_dataset(source, seed=0, batch_size=4).take(epoch).as_numpy_iterator())
        except Exception as error:  # tf.data's own error, which carries ours as text
            reraise_damaged(error)
            raise
    start = int(index["offset"][2])
    stop = min(start + CHUNK_BYTES, start + int(index["units"][2]) * 80 * 2)
    assert str(stopped.value) == (
        f"{out / shard}: clip 2 ({source.name(2)}) is damaged: its bytes {start:,}-{stop:,} do not match their CRC32C "
        "checksum; prepare the data again, or skip such clips and count them with --config.data.damaged_clips=skip"
    )
    # Unchecked, the values themselves give it away: float16 NaN, which no log-mel holds.
    unchecked = ClipStoreSource(str(out), verify=False)
    with pytest.raises(DamagedClip, match=r"its stored log-mel holds nan \(crop frame 0, mel band 0\), which no "):
        try:
            list(train_dataset(unchecked, seed=0, batch_size=4).take(epoch).as_numpy_iterator())
        except Exception as error:
            reraise_damaged(error)
            raise

    report = SkipReport()
    batches = list(
        train_dataset(source, seed=0, batch_size=4, report=report, damaged_clips="skip").take(epoch).as_numpy_iterator()
    )
    assert all(np.isfinite(batch["log_mel"]).all() for batch in batches)
    # At least once: tf.data reads batches ahead, and later epochs hold the clip too.
    assert report.skips >= 1 and list(report.reasons) == [source.name(2)], report.reasons


def test_a_file_past_the_longest_clip_becomes_clips_named_by_where_they_start(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    rng = np.random.default_rng(3)
    soundfile.write(root / "talk.wav", synthetic_clip(rng, 5.0)[0], 16000)
    soundfile.write(root / "short.wav", synthetic_clip(rng, 1.0)[0], 16000)
    manifest = prepare(root, tmp_path / "out", workers=1, store="pcm", max_clip_seconds=2.0)
    source = ClipStoreSource(str(_dataset(tmp_path / "out")))
    clips = {source.name(i): source.clip_info(i)[0] for i in range(len(source))}
    assert clips == {"short.wav": 16000, "talk.wav@0s": 32000, "talk.wav@2s": 32000, "talk.wav@4s": 16000}
    assert manifest["files"] == 2 and manifest["clips"] == 4 and manifest["max_clip_seconds"] == 2.0
    whole = load_audio(root / "talk.wav")
    index = [source.name(i) for i in range(len(source))].index("talk.wav@2s")
    np.testing.assert_array_equal(source.load(index), whole[32000:64000])  # 16-bit in, 16-bit stored
    with pytest.raises(ValueError, match="--max_clip_seconds 0: must be above 0"):
        prepare(root, tmp_path / "other", workers=1, max_clip_seconds=0)


@pytest.mark.parametrize("named", ["output", "name"])
def test_a_folder_above_a_prepared_dataset_names_the_dataset_and_the_flag_to_use(log_mel_store, named):
    """prepare's --output, or its NAME/ folder, given where the dataset itself is meant: the
    message names the prepared dataset(s) below and the exact source string."""
    from maepp.configs import audiomaepp
    from maepp.run_plan import _source

    _, source, _ = log_mel_store
    dataset = pathlib.Path(source.directory)
    above = dataset.parent.parent if named == "output" else dataset.parent
    config = audiomaepp.get_config("micro")
    with pytest.raises(ValueError) as refused:
        _source(config, "data.source", f"prepared:{above}")
    assert str(refused.value) == (
        f"config.data.source='prepared:{above}': {above} holds no manifest.json, but 1 prepared dataset(s) lie "
        f"below it ({dataset}): name one, e.g. --config.data.source=prepared:{dataset}"
    )


def test_a_clip_shorter_than_one_frame_is_named_and_skipped(tmp_path):
    from maepp.data.pipeline import SkipReport

    rng = np.random.default_rng(8)
    for i in range(4):
        soundfile.write(tmp_path / f"{i}.wav", synthetic_clip(rng, 2.0)[0], 16000)
    soundfile.write(tmp_path / "tiny.wav", synthetic_clip(rng, 0.01)[0], 16000)  # 160 samples
    report = SkipReport()
    list(
        train_dataset(source_from_string(f"folder:{tmp_path}"), seed=0, batch_size=5, report=report)
        .take(2)
        .as_numpy_iterator()
    )
    assert report.reasons == {"tiny.wav": "10 ms long: shorter than one 25 ms frame"}
