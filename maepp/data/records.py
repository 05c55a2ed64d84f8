"""Prepared data of layouts before 2.0.0: ArrayRecord shards of whole clips, in one of three
stores, with TFDS metadata; and any TFDS dataset written the same way. Read only: prepare writes
layout 2.0.0 now (maepp/data/clip_store.py), whose crops read only their own bytes.

    OUTPUT/NAME/1.0.0/NAME-SPLIT.array_record-00000-of-00012   shards (tf.train.Example records)
    OUTPUT/NAME/1.0.0/dataset_info.json, features.json          TFDS metadata
    OUTPUT/NAME/1.0.0/manifest.json                             store, counts, durations, skipped files

What a record holds besides `path` (as found under the input folder), by store:
    log_mel  `log_mel`: the whole clip's standardised log-mel (docs/reference.md, "Input"), float16 bytes
             [frames, 80], short clips tiled to MIN_FRAMES; `num_frames` before tiling. A crop is a
             slice of it: no decoding and no STFT when training (the release trained on stored
             log-mels too). The default.
    pcm      `pcm`: 16-bit samples; `num_samples`; the whole clip's log-mel `log_mel_mean` and
             unbiased `log_mel_std`, so a crop's log-mel is computed from its samples alone.
    flac     as pcm, the samples FLAC-compressed in `flac` (about half the bytes, a decode per crop).
Every record also names the `filterbank` (maepp.audio.filterbanks) its log-mel or stats were made
with; records written before that field existed used "librosa".
ArrayRecord gives random access, so the pipeline's order stays a pure function of the seed.
Shards on gs:// are read where they are, by ArrayRecord's own GCS reader (array_record >= 0.8.3):
whole records, so a crop reads its clip's record whole.
"""

import json
import threading

import numpy as np
import tensorflow as tf
from array_record.python import array_record_data_source

from maepp.audio import filterbanks
from maepp.audio.decode import decode_segment, decode_soundfile
from maepp.data import clip_store

VERSION = "1.0.0"
STORES = ("log_mel", "pcm", "flac")
MIN_FRAMES = 200  # log_mel store: short clips are tiled to this many frames (one 2 s crop)
LOG_MEL_DTYPE = np.float16
# A record's features, by store: how a TFDS dataset written by prepare is told from others.
FEATURE_NAMES = {
    "log_mel": {"log_mel", "num_frames", "filterbank", "path"},
    "pcm": {"pcm", "num_samples", "log_mel_mean", "log_mel_std", "filterbank", "path"},
    "flac": {"flac", "num_samples", "log_mel_mean", "log_mel_std", "filterbank", "path"},
}


class RecordsSource:
    """Clips of ArrayRecord shards, by a glob over shard files, local or gs://."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        # ".tmp" files are shards still being written by maepp.data.prepare.
        self.files = sorted(f for f in tf.io.gfile.glob(pattern) if not f.endswith(".tmp"))
        if not self.files:
            raise FileNotFoundError(f"no record shards match {pattern!r}; write them with python -m maepp.data.prepare")
        self._records = array_record_data_source.ArrayRecordDataSource(self.files)
        manifest = self.files[0].rsplit("/", 1)[0] + "/manifest.json"  # prepare's, beside its shards
        self.manifest = json.loads(tf.io.gfile.GFile(manifest).read()) if tf.io.gfile.exists(manifest) else None
        self._counting = threading.Lock()
        self.reads = self.bytes_read = (
            0  # records and their bytes read so far by log_mel_crops (the reader's own count)
        )
        self._last = threading.local()
        if len(self._records) == 0:
            raise ValueError(f"the shards matching {pattern!r} hold no clips")
        stored = set(self._example(0)) & set(STORES)
        if len(stored) != 1:
            raise ValueError(f"{self.files[0]} holds none of the stores {STORES}: not written by maepp.data.prepare")
        self.store = stored.pop()  # log_mel: no audio; the pipeline slices crops in the graph
        named = self._example(0).get("filterbank")
        self.filterbank = named.bytes_list.value[0].decode() if named else filterbanks.BEFORE_THE_OPTION

    @property
    def open_files(self) -> int:
        """ArrayRecord keeps one descriptor open per shard it has read: all of them, in training."""
        return len(self.files)

    def __len__(self):
        return len(self._records)

    def _example(self, index: int):
        """The parsed record; the pipeline reads a clip's info and then its samples, so each
        thread keeps its last record parsed."""
        cached = getattr(self._last, "record", None)
        if cached is None or cached[0] != index:
            cached = (index, tf.train.Example.FromString(self._records[index]).features.feature)
            self._last.record = cached
        return cached[1]

    def log_mel_crops(self, indices, fractions, crop_frames: int, centre: bool = False) -> np.ndarray:
        """The log_mel store: [k] clips -> crops [k, crop_frames, 80] float16, as
        maepp.data.clip_store.ClipStoreSource.log_mel_crops makes them."""
        crops, read = [], 0
        for index, fraction in zip(indices, np.zeros(len(indices)) if fractions is None else fractions):
            record = self._records[int(index)]
            read += len(record)
            example = tf.train.Example.FromString(record).features.feature
            room = max(example["num_frames"].int64_list.value[0] - crop_frames, 0)
            start = room // 2 if centre else min(int(np.floor(fraction * (room + 1))), room)
            stored = example["log_mel"].bytes_list.value[0]
            crops.append(np.frombuffer(stored, LOG_MEL_DTYPE, count=crop_frames * 80, offset=start * 80 * 2))
        with self._counting:
            self.reads += len(crops)
            self.bytes_read += read
        return np.stack(crops).reshape(len(crops), crop_frames, 80)

    def damaged_crops(self, indices, crops) -> dict:
        """log_mel crops -> {row: why}, as clip_store.ClipStoreSource.damaged_crops; the shard is
        named by the pattern (ArrayRecord keeps which file holds a record to itself)."""
        indices = np.asarray(indices, np.int64)
        frames = lambda rows: [self._example(int(i))["num_frames"].int64_list.value[0] for i in indices[rows]]
        found = clip_store.damaged_rows(crops, frames)
        return {
            row: clip_store.damage_reason(
                f"the shards {self.pattern}", int(indices[row]), self.name(int(indices[row])), frames([row])[0], where
            )
            for row, where in found.items()
        }

    def name(self, index: int) -> str:
        return self._example(index)["path"].bytes_list.value[0].decode()

    def encoded(self, index: int) -> bytes:
        """The clip's audio bytes as stored (FLAC, or 16-bit PCM)."""
        return self._example(index)[self.store].bytes_list.value[0]

    def clip_info(self, index: int):
        """(num_samples, mean, std of the whole clip's log-mel), as stored by maepp.data.prepare."""
        example = self._example(index)
        return (
            example["num_samples"].int64_list.value[0],
            example["log_mel_mean"].float_list.value[0],
            example["log_mel_std"].float_list.value[0],
        )

    def load_segment(self, index: int, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) of the clip, decoding only those."""
        if self.store == "pcm":
            pcm = np.frombuffer(self.encoded(index), np.int16, count=stop - start, offset=2 * start)
            return pcm.astype(np.float32) / 32768.0
        return decode_segment(self.encoded(index), self.name(index), start, stop)

    def load(self, index: int) -> np.ndarray:
        if self.store == "pcm":
            return np.frombuffer(self.encoded(index), np.int16).astype(np.float32) / 32768.0
        return decode_soundfile(self.encoded(index), self.name(index))
