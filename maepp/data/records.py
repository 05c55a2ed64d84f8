"""Prepared audio: ArrayRecord shards of FLAC-encoded 16 kHz clips with TFDS metadata.

    OUTPUT/NAME/1.0.0/NAME-SPLIT.array_record-00000-of-00012   shards (tf.train.Example records)
    OUTPUT/NAME/1.0.0/dataset_info.json, features.json          TFDS metadata
    OUTPUT/NAME/1.0.0/manifest.json                             counts, durations, skipped files

Each record holds `flac` (bytes), `path` (as found under the input folder) and `num_samples`.
ArrayRecord gives random access, so the pipeline's order stays a pure function of the seed.
The directory loads with `tfds.data_source(NAME, split=SPLIT, data_dir=OUTPUT)` and
`tfds.builder_from_directory(...)`; TFDS reads ArrayRecord through data sources only.
"""
import glob

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source

from maepp.audio.decode import decode_audio

VERSION = "1.0.0"


def features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "flac": tfds.features.Tensor(shape=(), dtype=np.object_),
            "path": tfds.features.Text(),
            "num_samples": tfds.features.Scalar(dtype=np.int64),
        }
    )


def shard_name(name: str, split: str, shard: int, n_shards: int) -> str:
    """TFDS's default file name template, so TFDS finds the shards."""
    return f"{name}-{split}.array_record-{shard:05d}-of-{n_shards:05d}"


class RecordsSource:
    """Clips of prepared ArrayRecord shards, by a glob over shard files."""

    def __init__(self, pattern: str):
        # ".tmp" files are shards still being written by maepp.prepare.
        self.files = sorted(f for f in glob.glob(pattern) if not f.endswith(".tmp"))
        if not self.files:
            raise FileNotFoundError(f"no record shards match {pattern!r}; write them with python -m maepp.prepare")
        self._records = array_record_data_source.ArrayRecordDataSource(self.files)
        if len(self._records) == 0:
            raise ValueError(f"the shards matching {pattern!r} hold no clips")

    def __len__(self):
        return len(self._records)

    def _example(self, index: int):
        return tf.train.Example.FromString(self._records[index]).features.feature

    def name(self, index: int) -> str:
        return self._example(index)["path"].bytes_list.value[0].decode()

    def load(self, index: int) -> np.ndarray:
        example = self._example(index)
        return decode_audio(example["flac"].bytes_list.value[0], example["path"].bytes_list.value[0].decode())
