"""Every byte training reads is checked (maepp/data/checksums.py): damaged prepared data is
refused, or skipped and counted, in one line naming the shard, the clip and the bytes; the
manifest, the index, the checksums and the shards' headers are checked against each other at
start; `prepare --verify` checks a whole dataset."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from maepp.data.checksums import CHUNK_BYTES
from maepp.data.clip_store import ClipStoreSource, DamagedClip
from maepp.data.pipeline import SkipReport, reraise_damaged, train_dataset
from maepp.data.synthetic import synthetic_clip
from maepp.data.writer import prepare


def _prepared(tmp_path, store: str):
    """8 clips of 3 s in shards of 4; -> (the dataset folder, its manifest, its index)."""
    rng = np.random.default_rng(11)
    (tmp_path / "in").mkdir(exist_ok=True)
    for i in range(8):
        soundfile.write(tmp_path / "in" / f"{i}.wav", synthetic_clip(rng, 3.0)[0], 16000)
    manifest = prepare(tmp_path / "in", tmp_path / store, clips_per_shard=4, workers=1, store=store)
    out = tmp_path / store / "audio_clips" / "2.0.0"
    return out, manifest, np.load(out / manifest["index"])


def _epoch(source, **options) -> list:
    try:
        return list(train_dataset(source, seed=0, batch_size=4, **options).take(2).as_numpy_iterator())
    except Exception as error:
        reraise_damaged(error)
        raise


def _overwrite(path, at: int, data: bytes):
    with open(path, "r+b") as file:
        file.seek(at)
        file.write(data)


def test_a_shard_zeroed_at_its_own_size_is_refused_at_start_naming_it(tmp_path):
    """What a crash can leave on ext4: the shard's size right, every byte zero, its header too."""
    out, manifest, _ = _prepared(tmp_path, "log_mel")
    shard = out / manifest["shards"][1]["file"]
    shard.write_bytes(bytes(shard.stat().st_size))
    with pytest.raises(ValueError) as refused:
        ClipStoreSource(str(out))
    assert str(refused.value).startswith(f"{shard}: its .npy header is not the one prepare wrote (magic bytes ")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("damaged_clips", ["stop", "skip"])
def test_64_flipped_bytes_in_a_log_mel_clip_are_caught_by_its_checksum(tmp_path, damaged_clips):
    """Values of a few standard deviations pass every bound a standardised log-mel has; the
    checksum does not let them through."""
    out, manifest, index = _prepared(tmp_path, "log_mel")
    clip = 5
    middle = int(index["offset"][clip]) + int(index["units"][clip]) * 160 // 2
    shard = out / manifest["shards"][int(index["shard"][clip])]["file"]
    original = shard.read_bytes()[middle : middle + 64]
    _overwrite(shard, middle, bytes(b ^ 0x01 for b in original))  # each value's lowest bit
    source, report = ClipStoreSource(str(out)), SkipReport()
    if damaged_clips == "stop":
        with pytest.raises(DamagedClip) as stopped:
            _epoch(source)
        chunk = (middle - int(index["offset"][clip])) // CHUNK_BYTES * CHUNK_BYTES + int(index["offset"][clip])
        assert str(stopped.value).startswith(
            f"{shard}: clip {clip} ({source.name(clip)}) is damaged: its bytes {chunk:,}-"
        ) and "do not match their CRC32C checksum; prepare the data again" in str(stopped.value)
    else:
        batches = _epoch(source, report=report, damaged_clips="skip")
        assert report.skips >= 1 and list(report.reasons) == [source.name(clip)]
        assert all(np.isfinite(batch["log_mel"]).all() for batch in batches)


def test_random_bytes_in_a_pcm_shard_stop_the_stream_or_are_skipped_and_counted(tmp_path):
    out, manifest, index = _prepared(tmp_path, "pcm")
    clip = 2
    shard = out / manifest["shards"][int(index["shard"][clip])]["file"]
    start, size = int(index["offset"][clip]), int(index["units"][clip]) * 2
    _overwrite(shard, start, np.random.default_rng(0).bytes(size))  # the whole clip
    source = ClipStoreSource(str(out))
    with pytest.raises(DamagedClip) as stopped:
        _epoch(source)
    # The first chunk the crop's read covers, wherever in the clip the crop starts.
    named = re.match(rf"{shard}: clip {clip} \(.*\) is damaged: its bytes ([\d,]+)-([\d,]+) do not", str(stopped.value))
    first, last = (int(at.replace(",", "")) for at in named.groups())
    assert (first - start) % CHUNK_BYTES == 0 and start <= first < last <= min(first + CHUNK_BYTES, start + size)
    report = SkipReport()
    _epoch(ClipStoreSource(str(out)), report=report, damaged_clips="skip")
    assert list(report.reasons) == [source.name(clip)] and "CRC32C" in report.reasons[source.name(clip)]


def test_a_manifest_claiming_more_clips_than_the_index_holds_is_refused_at_start(tmp_path):
    out, manifest, _ = _prepared(tmp_path, "log_mel")
    manifest["clips"] += 100
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"manifest.json and .*index.npy disagree: 108 clips against 8; prepare"):
        ClipStoreSource(str(out))


def test_data_with_an_earlier_maepps_checksums_is_refused_by_the_reader_and_by_prepare(tmp_path):
    """Layout 2.0.0 first kept a CRC32C of each 16 KB chunk, then the running CRC32C of each 4 KB
    (maepp/data/checksums.py): the reader says to prepare again, and prepare will not mix the two."""
    out, manifest, _ = _prepared(tmp_path, "log_mel")
    manifest["checksums"].update(kind="crc32c", chunk_bytes=16384)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as refused:
        ClipStoreSource(str(out))
    assert str(refused.value) == (
        f"{out} was prepared by an earlier maepp: its checksums are not the running CRC32C this one "
        "checks; prepare it again into a new --output"
    )
    plan = json.loads((out / "plan.json").read_text())
    del plan["checksums"]
    (out / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ValueError, match=r"or an earlier maepp's \(.*plan.json\); use a new --output"):
        prepare(tmp_path / "in", tmp_path / "log_mel", clips_per_shard=4, workers=1, store="log_mel")


@pytest.mark.parametrize("what", ["index", "checksum table"])
def test_a_deleted_index_or_checksum_table_is_one_line_naming_it(tmp_path, what):
    out, manifest, _ = _prepared(tmp_path, "log_mel")
    name = manifest["index"] if what == "index" else manifest["checksums"]["file"]
    (out / name).unlink()
    with pytest.raises(ValueError) as refused:
        ClipStoreSource(str(out))
    assert str(refused.value) == f"{out / name} (the {what}) is missing: prepare again into this --output"


@pytest.mark.e2e
def test_prepare_verify_checks_every_clip_and_names_the_damaged_ones(repo_root, tmp_path):
    out, manifest, index = _prepared(tmp_path, "flac")
    command = [sys.executable, "-m", "maepp.data.prepare", "--verify", str(out)]
    clean = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0 and clean.stdout.strip() == (
        "8 clips in 2 shards checked against their CRC32C checksums: 0 damaged"
    )
    shard = out / manifest["shards"][int(index["shard"][6])]["file"]
    _overwrite(shard, int(index["offset"][6]) + 100, b"\x00" * 8)
    damaged = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert damaged.returncode == 1
    assert damaged.stdout.strip().startswith(f"{shard}: clip 6 (") and damaged.stdout.count("\n") == 1
    assert damaged.stderr.strip().endswith(
        "8 clips in 2 shards checked against their CRC32C checksums: 1 damaged; "
        "prepare again into the same --output after deleting the damaged shards "
        "(the others are kept)"
    )
