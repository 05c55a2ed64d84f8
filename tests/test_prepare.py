"""maepp.data.prepare: shards, manifest, TFDS loading, resuming, and the records: source."""
import json

import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from maepp.audio import jax_frontend, reference
from maepp.audio.decode import load_audio
from maepp.data.pipeline import WAVEFORM_CROP_KEYS, ClipOrder, random_offset, train_dataset
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
    manifest = prepare(audio_folder, tmp_path, clips_per_shard=4, workers=2)
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
    names = [source.name(i) for i in range(len(source))]
    assert sorted(names) == sorted(f"{'nested/' if i % 2 else ''}clip_{i}.flac" for i in range(9))
    for i in (0, 5):
        np.testing.assert_allclose(source.load(i), load_audio(audio_folder / names[i]), atol=1e-4)


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


def test_resuming_with_other_files_is_refused(audio_folder, tmp_path):
    prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    with pytest.raises(ValueError, match="other files or sharding"):
        prepare(audio_folder, tmp_path, clips_per_shard=5, workers=1)


def test_records_source_feeds_the_training_pipeline(audio_folder, tmp_path):
    prepare(audio_folder, tmp_path, clips_per_shard=4, workers=1)
    pattern = str(tmp_path / "audio_clips" / "1.0.0" / "audio_clips-train.array_record-*")
    batches = list(train_dataset(source_from_string(f"records:{pattern}"), seed=0, batch_size=4).take(3).as_numpy_iterator())
    assert all(b["log_mel"].shape == (4, 200, 80) for b in batches)


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
    prepare(root, tmp_path / "out", clips_per_shard=2, workers=1)
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
