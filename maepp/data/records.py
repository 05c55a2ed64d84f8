"""Prepared audio: ArrayRecord shards of FLAC-encoded 16 kHz clips with TFDS metadata.

    OUTPUT/NAME/1.0.0/NAME-SPLIT.array_record-00000-of-00012   shards (tf.train.Example records)
    OUTPUT/NAME/1.0.0/dataset_info.json, features.json          TFDS metadata
    OUTPUT/NAME/1.0.0/manifest.json                             counts, durations, skipped files

Each record holds `flac` (bytes), `path` (as found under the input folder), `num_samples`, and
the mean and unbiased std of the whole clip's log-mel (`log_mel_mean`, `log_mel_std`): with them
the pipeline standardises a 2 s crop exactly as PAPER.md's per-clip standardisation of the whole
clip would, while computing the log-mel of the crop only. ArrayRecord gives random access, so the
pipeline's order stays a pure function of the seed.
The directory loads with `tfds.data_source(NAME, split=SPLIT, data_dir=OUTPUT)` and
`tfds.builder_from_directory(...)`; TFDS reads ArrayRecord through data sources only.
"""
import glob
import threading

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source

from maepp.audio.decode import decode_audio, decode_segment

VERSION = "1.0.0"


def features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "flac": tfds.features.Tensor(shape=(), dtype=np.object_),
            "path": tfds.features.Text(),
            "num_samples": tfds.features.Scalar(dtype=np.int64),
            "log_mel_mean": tfds.features.Scalar(dtype=np.float32),
            "log_mel_std": tfds.features.Scalar(dtype=np.float32),
        }
    )


def shard_name(name: str, split: str, shard: int, n_shards: int) -> str:
    """TFDS's default file name template, so TFDS finds the shards."""
    return f"{name}-{split}.array_record-{shard:05d}-of-{n_shards:05d}"


class RecordsSource:
    """Clips of prepared ArrayRecord shards, by a glob over shard files."""

    def __init__(self, pattern: str):
        # ".tmp" files are shards still being written by maepp.data.prepare.
        self.files = sorted(f for f in glob.glob(pattern) if not f.endswith(".tmp"))
        if not self.files:
            raise FileNotFoundError(f"no record shards match {pattern!r}; write them with python -m maepp.data.prepare")
        self._records = array_record_data_source.ArrayRecordDataSource(self.files)
        self._last = threading.local()
        if len(self._records) == 0:
            raise ValueError(f"the shards matching {pattern!r} hold no clips")

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

    def name(self, index: int) -> str:
        return self._example(index)["path"].bytes_list.value[0].decode()

    def encoded(self, index: int) -> bytes:
        """The clip's FLAC bytes as stored."""
        return self._example(index)["flac"].bytes_list.value[0]

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
        example = self._example(index)
        return decode_segment(example["flac"].bytes_list.value[0], example["path"].bytes_list.value[0].decode(), start, stop)

    def load(self, index: int) -> np.ndarray:
        example = self._example(index)
        return decode_audio(example["flac"].bytes_list.value[0], example["path"].bytes_list.value[0].decode())
