"""maepp.data.prepare: shards, manifest, TFDS loading, resuming, and the records: source."""
import json
import os
import pathlib

import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from maepp.audio import jax_frontend, reference
from maepp.audio.decode import load_audio
from maepp.data.pipeline import (
    WAVEFORM_CROP_KEYS,
    ClipOrder,
    crop_fractions,
    eval_dataset,
    random_offset,
    train_dataset,
)
from maepp.data.records import RecordsSource
from maepp.data.sources import source_from_string
from maepp.data.synthetic import synthetic_clip
from maepp.data.writer import prepare


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
    return root


def _shards(out):
    return sorted(p for p in out.iterdir() if ".array_record-" in p.name and not p.name.endswith(".tmp"))


def test_prepare_writes_shards_manifest_and_tfds_metadata(audio_folder, tmp_path):
    manifest = prepare(audio_folder, tmp_path, clips_per_shard=4, workers=2, store="flac")
    out = tmp_path / "audio_clips" / "1.0.0"
    assert manifest["files"] == 11 and manifest["clips"] == 9
    assert manifest["skipped"].keys() == {"broken.wav", "silent.wav"}
    assert "silent" in manifest["skipped"]["silent.wav"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert [s["clips"] for s in manifest["shards"]] == [3, 4, 2]  # broken.wav falls in shard 0, silent.wav in shard 2
    assert len(_shards(out)) == 3
    assert manifest["hours"] == pytest.approx(9 * 2.2 / 3600, rel=1e-3)

    # TFDS reads it as a data source, by name and by directory.
    by_name = tfds.data_source("audio_clips", split="train", data_dir=str(tmp_path))
    assert len(by_name) == 9
    assert len(tfds.builder_from_directory(str(out)).as_data_source(split="train")) == 9

    # The stored audio is the input resampled to 16 kHz mono (up to 16-bit FLAC quantisation).
    source = RecordsSource(str(out / "audio_clips-train.array_record-*"))
    assert source.store == manifest["store"] == "flac"
    names = [source.name(i) for i in range(len(source))]
    assert sorted(names) == sorted(f"{'nested/' if i % 2 else ''}clip_{i}.flac" for i in range(9))
    for i in (0, 5):
        np.testing.assert_allclose(source.load(i), load_audio(audio_folder / names[i]), atol=1e-4)
    # The pcm store keeps the very same 16-bit samples, uncompressed, and the same clip stats.
    prepare(audio_folder, tmp_path / "pcm", clips_per_shard=4, workers=1, store="pcm")
    pcm = RecordsSource(str(tmp_path / "pcm" / "audio_clips" / "1.0.0" / "*.array_record-*"))
    assert pcm.store == "pcm" and [pcm.name(i) for i in range(9)] == names
    for i in (0, 5):
        np.testing.assert_array_equal(pcm.load(i), source.load(i))
        np.testing.assert_array_equal(pcm.load_segment(i, 1000, 5000), source.load(i)[1000:5000])
        assert pcm.clip_info(i) == pytest.approx(source.clip_info(i))


def test_second_run_skips_finished_shards_and_redoes_interrupted_ones(audio_folder, tmp_path):
    prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    out = tmp_path / "audio_clips" / "1.0.0"
    shards = _shards(out)
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    # Interrupted between the rename and the progress file: the shard must not count as done.
    progress = out / ".progress" / f"{shards[1].name}.json"
    progress.unlink()
    shards[1].write_bytes(b"half a shard")
    (out / (shards[2].name + ".tmp")).write_bytes(b"leftover of a killed writer")

    manifest = prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    after = {p.name: p.stat().st_mtime_ns for p in _shards(out)}
    assert after[shards[0].name] == before[shards[0].name]
    assert after[shards[2].name] == before[shards[2].name]
    assert after[shards[1].name] != before[shards[1].name]
    assert manifest["clips"] == 9
    assert not list(out.glob("*.tmp"))  # leftovers of killed writers are cleared
    assert len(RecordsSource(str(out / "*.array_record-*"))) == 9


def test_resuming_with_other_files_sharding_store_or_filterbank_is_refused(audio_folder, tmp_path):
    prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    for change in (dict(clips_per_shard=5), dict(store="pcm"), dict(filterbank="librosa")):
        with pytest.raises(ValueError, match="other files, sharding, store or filterbank"):
            prepare(audio_folder, tmp_path, **{"clips_per_shard": 4, "workers": 1, **change})


def test_records_source_feeds_the_training_pipeline(audio_folder, tmp_path):
    prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    pattern = str(tmp_path / "audio_clips" / "1.0.0" / "audio_clips-train.array_record-*")
    source = source_from_string(f"records:{pattern}")
    batches = list(train_dataset(source, seed=0, batch_size=4).take(3).as_numpy_iterator())
    assert all(b["log_mel"].shape == (4, 200, 80) for b in batches)
    # Its log-mels were made with the default filterbank; training with the other is refused.
    assert source.filterbank == "torchaudio"
    with pytest.raises(ValueError, match="prepared with the 'torchaudio' filterbank and config.audio.filterbank is "
                                         "'librosa': train with --config.audio.filterbank=torchaudio"):
        train_dataset(source, seed=0, batch_size=4, filterbank="librosa")


def test_records_source_without_shards_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="maepp.data.prepare"):
        source_from_string(f"records:{tmp_path}/*.array_record-*")


def test_crops_from_stored_stats_equal_crops_of_the_whole_standardised_clip(tmp_path):
    """The records fast path (only the crop's samples, stored clip stats) changes no value."""
    root = tmp_path / "in"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        soundfile.write(root / f"long_{i}.flac", synthetic_clip(rng, 7.0)[0], 16000)
    prepare(root, tmp_path / "out", clips_per_shard=2, workers=1, store="flac")
    source = RecordsSource(str(tmp_path / "out" / "audio_clips" / "1.0.0" / "*.array_record-*"))
    order = ClipOrder(len(source), seed=4)
    batches = list(train_dataset(source, seed=4, batch_size=4).take(3).as_numpy_iterator())
    for batch in batches:
        for mel, position in zip(batch["log_mel"], batch["position"]):
            epoch, index = order.epoch_and_clip(position)
            whole = reference.log_mel(source.load(index))
            offset = random_offset(len(whole), 200, np.random.default_rng([4, epoch, index]))
            np.testing.assert_allclose(mel, whole[offset : offset + 200], atol=1e-4, rtol=0)
    # The device front end gets the same crops' samples and stored stats.
    for host, device in zip(batches, train_dataset(source, seed=4, batch_size=4, frontend="device").take(3)):
        mel = jax_frontend.crop_log_mel({key: device[key].numpy() for key in WAVEFORM_CROP_KEYS})
        np.testing.assert_allclose(np.asarray(mel), host["log_mel"], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def log_mel_store(tmp_path_factory):
    """A log_mel-store preparation of 6 clips: five of 2.5-9 s, one of 0.5 s (tiled when stored)."""
    root = tmp_path_factory.mktemp("log_mel_in")
    rng = np.random.default_rng(2)
    for i, seconds in enumerate((2.5, 9.0, 4.0, 0.5, 6.0, 3.0)):
        soundfile.write(root / f"clip_{i}.wav", synthetic_clip(rng, seconds)[0], 16000)
    out = tmp_path_factory.mktemp("log_mel_out")
    manifest = prepare(root, out, clips_per_shard=4, workers=1)  # the default store
    source = RecordsSource(str(out / "audio_clips" / "1.0.0" / "*.array_record-*"))
    whole = [reference.log_mel(load_audio(root / source.name(i))) for i in range(len(source))]
    return manifest, source, whole


def _within_float16(got, expected):
    """float16 storage rounds each value to 11 significant bits: |error| <= 2^-11 |value|."""
    assert np.all(np.abs(got - expected) <= np.abs(expected) * 2.0**-11 + 1e-7), np.abs(got - expected).max()


def test_log_mel_store_crops_are_slices_of_the_clips_standardised_log_mel(log_mel_store):
    manifest, source, whole = log_mel_store
    assert manifest["store"] == source.store == "log_mel"
    order = ClipOrder(len(source), seed=3)
    batches = list(train_dataset(source, seed=3, batch_size=4).take(4).as_numpy_iterator())
    for batch in batches:
        assert batch["log_mel"].shape == (4, 200, 80) and batch["log_mel"].dtype == np.float32
        for mel, position in zip(batch["log_mel"], batch["position"]):
            epoch, index = order.epoch_and_clip(position)
            n = len(whole[index])
            offset = int(crop_fractions(3, [epoch], [index])[0] * (max(n - 200, 0) + 1))  # 0 for the 0.5 s clip
            clip = np.tile(whole[index], (-(-200 // n), 1))  # which is tiled
            _within_float16(mel, clip[offset : offset + 200])
    # 16 positions over 6 clips: every clip, over several epochs, at crops that move.
    assert np.concatenate([b["position"] for b in batches]).tolist() == list(range(16))
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
    _, records, _ = log_mel_store
    audio = source_from_string("synthetic:8")
    datasets = [train_dataset(audio, seed=0, batch_size=4), eval_dataset(audio, batch_size=4),
                train_dataset(records, seed=0, batch_size=4), eval_dataset(records, batch_size=4)]
    for dataset in datasets:
        options = dataset.options().autotune
        assert options.enabled is False and options.initial_parallelism == len(os.sched_getaffinity(0))


def test_log_mel_store_refuses_what_needs_audio(log_mel_store):
    _, source, _ = log_mel_store
    with pytest.raises(ValueError, match="config.data.frontend='device' needs audio"):
        train_dataset(source, seed=0, batch_size=2, frontend="device")
    with pytest.raises(ValueError, match="crops of 300 frames"):
        train_dataset(source, seed=0, batch_size=2, crop_frames=300)


@pytest.mark.long(seconds=45)
def test_training_reads_records_from_a_non_local_filesystem_and_resumes(log_mel_store, tmp_path):
    """records: takes any tf.io.gfile path (gs:// in real runs; TensorFlow's in-memory ram://
    here): the shards are copied to a local cache that ArrayRecord can open."""
    import tensorflow as tf

    from maepp.configs import audiomaepp
    from maepp.train_loop import train

    _, source, _ = log_mel_store
    for shard in source.files:
        tf.io.gfile.copy(shard, f"ram://records/{pathlib.Path(shard).name}", overwrite=True)
    config = audiomaepp.get_config("micro")
    config.update(batch_size=8, total_steps=2, warmup_steps=1, checkpoint_every=2, log_every=1)
    config.data.source = "records:ram://records/*.array_record-*"
    config.data.eval_source = ""
    os.environ["MAEPP_RECORDS_CACHE"] = str(tmp_path / "cache")
    first = train(config, tmp_path / "run")
    config.total_steps = 4
    resumed = train(config, tmp_path / "run")
    assert (first["step"], resumed["step"]) == (2, 4) and np.isfinite(resumed["loss"])
    positions = json.loads((tmp_path / "run" / "checkpoints" / "4" / "data" / "metadata").read_text())
    assert positions["positions"] == [32]  # 4 steps of 8 clips: the resumed run went on from clip 16
    assert len(list((tmp_path / "cache").iterdir())) == len(source.files)
