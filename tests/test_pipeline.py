"""The tf.data pipelines: determinism, exact resume, process shares, bad files, eval pass."""

import numpy as np
import pytest
import soundfile

from maepp.audio import jax_frontend, reference
from maepp.data.pipeline import WAVEFORM_CROP_KEYS, SkipReport, eval_dataset, train_dataset
from maepp.data.sources import FolderSource, source_from_string
from maepp.data.synthetic import synthetic_clip
from tests.helpers import LOG_MEL_TOLERANCE


def _batches(dataset, n):
    return list(dataset.take(n).as_numpy_iterator())


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Eight good clips, a 3-channel 44.1 kHz clip, a 0.5 s clip, and four bad files."""
    root = tmp_path_factory.mktemp("messy")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    for i in range(8):
        soundfile.write(root / ("sub" if i % 2 else ".") / f"good_{i}.flac", synthetic_clip(rng, 2.5)[0], 16000)
    three = np.stack([synthetic_clip(rng, 3.0, 44100)[0] for _ in range(3)], axis=1)
    soundfile.write(root / "three_channels_44k.wav", three, 44100)
    soundfile.write(root / "short.wav", synthetic_clip(rng, 0.5)[0], 16000)
    (root / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 16)
    (root / "empty.wav").write_bytes(b"")
    soundfile.write(root / "nan.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    soundfile.write(root / "silent.wav", np.zeros(32000, np.float32), 16000)
    return root


def test_same_seed_same_batches_other_seed_other_batches():
    source = source_from_string("synthetic:32")
    a = _batches(train_dataset(source, seed=1, batch_size=4), 3)
    b = _batches(train_dataset(source, seed=1, batch_size=4), 3)
    c = _batches(train_dataset(source, seed=2, batch_size=4), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["log_mel"], y["log_mel"])
    assert not np.array_equal(a[0]["log_mel"], c[0]["log_mel"])


def test_resume_from_saved_position_gives_the_same_batches(messy_folder):
    source = FolderSource(messy_folder)
    straight = _batches(train_dataset(source, seed=3, batch_size=3), 8)  # crosses epochs, replaces bad files
    resumed = _batches(train_dataset(source, seed=3, batch_size=3, start_position=4 * 3), 4)  # after 4 batches
    for x, y in zip(straight[4:], resumed):
        np.testing.assert_array_equal(x["log_mel"], y["log_mel"])
        np.testing.assert_array_equal(x["position"], y["position"])


def test_bad_files_are_skipped_counted_and_named(messy_folder, caplog):
    source = FolderSource(messy_folder)
    report = SkipReport()
    batches = _batches(train_dataset(source, seed=0, batch_size=5, report=report), 4)  # 20 clips: > 1 epoch
    for batch in batches:
        assert batch["log_mel"].shape == (5, 200, 80)
        assert np.all(np.isfinite(batch["log_mel"]))
    assert sorted(report.reasons) == ["corrupt.flac", "empty.wav", "nan.wav", "silent.wav"]
    assert "NaN" in report.reasons["nan.wav"] and "silent" in report.reasons["silent.wav"]
    assert report.skips >= 4
    assert "skipped clip corrupt.flac" in caplog.text


def test_device_frontend_crops_equal_host_crops(messy_folder):
    """Raw-sample crops turned into log-mels in JAX == the host's log-mel crops: long, resampled,
    short (tiled) clips, crops at a clip's edge (reflect padding), bad files skipped alike."""
    source = FolderSource(messy_folder)
    host = _batches(train_dataset(source, seed=5, batch_size=6), 4)  # 24 clips: > 1 epoch
    device = _batches(train_dataset(source, seed=5, batch_size=6, frontend="device"), 4)
    for on_host, on_device in zip(host, device):
        np.testing.assert_array_equal(on_device["position"], on_host["position"])
        assert on_device["samples"].shape == (6, 199 * 160 + 400)
        mel = np.asarray(jax_frontend.crop_log_mel({key: on_device[key] for key in WAVEFORM_CROP_KEYS}))
        np.testing.assert_allclose(mel, on_host["log_mel"], atol=LOG_MEL_TOLERANCE, rtol=0)


def test_unknown_frontend_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown frontend 'gpu'.*config\.data\.frontend"):
        train_dataset(source_from_string("synthetic:8"), seed=0, batch_size=2, frontend="gpu")


def test_short_clips_are_tiled_to_the_crop(tmp_path):
    soundfile.write(tmp_path / "short.wav", synthetic_clip(np.random.default_rng(0), 0.5)[0], 16000)
    (batch,) = _batches(train_dataset(FolderSource(tmp_path), seed=0, batch_size=2), 1)
    mel = batch["log_mel"][0]
    frames = 1 + 8000 // 160  # 51
    np.testing.assert_array_equal(mel[:frames], mel[frames : 2 * frames])


def test_a_folder_with_no_usable_audio_is_a_clear_error(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"not audio")
    soundfile.write(tmp_path / "b.wav", np.zeros(16000, np.float32), 16000)
    with pytest.raises(ValueError, match="no usable audio"):
        train_dataset(FolderSource(tmp_path), seed=0, batch_size=2)
    empty = tmp_path / "no_audio_here"
    empty.mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        FolderSource(empty)


@pytest.mark.parametrize("shares", [[[0, 1], [2, 3], [4, 5]], [[0, 1, 2], [3, 4, 5]], [[0, 1, 2, 3, 4, 5]] * 2])
def test_processes_read_their_rows_of_batches_that_do_not_depend_on_the_process_count(messy_folder, shares):
    """Three processes, two, or two holding every row (a model axis across processes): together
    they read the one-process batches, each only its rows, bad files replaced in the same rows."""
    source = FolderSource(messy_folder)
    alone = _batches(train_dataset(source, seed=0, batch_size=6, start_position=5), 3)  # crosses epochs
    parts = [_batches(train_dataset(source, seed=0, batch_size=6, rows=rows, start_position=5), 3) for rows in shares]
    for number, batch in enumerate(alone):
        assert batch["position"].tolist() == list(range(5 + 6 * number, 11 + 6 * number))
        for rows, part in zip(shares, parts):
            np.testing.assert_array_equal(part[number]["position"], batch["position"][rows])
            np.testing.assert_array_equal(part[number]["log_mel"], batch["log_mel"][rows])


def test_eval_is_one_pass_of_centre_crops_with_a_padded_last_batch(messy_folder):
    source = FolderSource(messy_folder)
    report = SkipReport()
    batches = list(eval_dataset(source, batch_size=4, report=report).as_numpy_iterator())
    indices = np.concatenate([b["index"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    good = [i for i in range(len(source)) if source.name(i) not in report.reasons]
    assert len(good) == 10 and len(report.reasons) == 4
    assert indices.tolist() == [*range(14), -1, -1]  # every clip in its row; two rows of padding
    assert indices[valid].tolist() == good  # every usable clip once, in order
    assert len(batches) == 4 and not np.concatenate([b["log_mel"] for b in batches])[~valid].any()
    for batch in batches:
        for mel, index, ok in zip(batch["log_mel"], batch["index"], batch["valid"]):
            if ok and source.name(index) != "short.wav":
                whole = reference.log_mel(source.load(index))
                start = (len(whole) - 200) // 2
                np.testing.assert_allclose(mel, whole[start : start + 200], atol=LOG_MEL_TOLERANCE, rtol=0)


def test_eval_rows_of_two_processes_cover_the_set_once(messy_folder):
    source = FolderSource(messy_folder)
    alone = list(eval_dataset(source, batch_size=4).as_numpy_iterator())
    for rows in ([0, 1], [2, 3]):
        share = list(eval_dataset(source, batch_size=4, rows=rows).as_numpy_iterator())
        assert len(share) == len(alone)  # every process runs the same number of batches
        for part, batch in zip(share, alone):
            for key in ("index", "valid", "log_mel"):
                np.testing.assert_array_equal(part[key], batch[key][rows])
