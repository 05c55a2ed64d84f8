"""Prepared data: ArrayRecord shards of 16 kHz clips, in one of three stores, with TFDS metadata.

    OUTPUT/NAME/1.0.0/NAME-SPLIT.array_record-00000-of-00012   shards (tf.train.Example records)
    OUTPUT/NAME/1.0.0/dataset_info.json, features.json          TFDS metadata
    OUTPUT/NAME/1.0.0/manifest.json                             store, counts, durations, skipped files

What a record holds besides `path` (as found under the input folder), by store:
    log_mel  `log_mel`: the whole clip's standardised log-mel (PAPER.md, "Input"), float16 bytes
             [frames, 80], short clips tiled to MIN_FRAMES; `num_frames` before tiling. A crop is a
             slice of it: no decoding and no STFT when training (the release trained on stored
             log-mels too). The default.
    pcm      `pcm`: 16-bit samples; `num_samples`; the whole clip's log-mel `log_mel_mean` and
             unbiased `log_mel_std`, so a crop's log-mel is computed from its samples alone.
    flac     as pcm, the samples FLAC-compressed in `flac` (about half the bytes, a decode per crop).
Every record also names the `filterbank` (maepp.audio.filterbanks) its log-mel or stats were made
with; records written before that field existed used "librosa".
ArrayRecord gives random access, so the pipeline's order stays a pure function of the seed.
The directory loads with `tfds.data_source(NAME, split=SPLIT, data_dir=OUTPUT)` and
`tfds.builder_from_directory(...)`; TFDS reads ArrayRecord through data sources only.
"""
import hashlib
import os
import tempfile
import threading

import numpy as np
import tensorflow as tf
from array_record.python import array_record_data_source

from maepp.audio import filterbanks
from maepp.audio.decode import decode_audio, decode_segment

VERSION = "1.0.0"
STORES = ("log_mel", "pcm", "flac")
MIN_FRAMES = 200  # log_mel store: short clips are tiled to this many frames (one 2 s crop)
LOG_MEL_DTYPE = np.float16


def features(store: str = "log_mel"):
    """-> the store's tfds.features.FeaturesDict, for the metadata TFDS reads."""
    # Imported here: TFDS takes 0.4 s to import, and training from records never needs it.
    import tensorflow_datasets as tfds

    if store not in STORES:
        raise ValueError(f"unknown store {store!r}; use one of {STORES}")
    if store == "log_mel":
        fields = {"log_mel": tfds.features.Tensor(shape=(), dtype=np.object_),
                  "num_frames": tfds.features.Scalar(dtype=np.int64)}
    else:
        fields = {store: tfds.features.Tensor(shape=(), dtype=np.object_),
                  "num_samples": tfds.features.Scalar(dtype=np.int64),
                  "log_mel_mean": tfds.features.Scalar(dtype=np.float32),
                  "log_mel_std": tfds.features.Scalar(dtype=np.float32)}
    return tfds.features.FeaturesDict({**fields, "filterbank": tfds.features.Text(), "path": tfds.features.Text()})


def stored_log_mel(log_mel: np.ndarray) -> bytes:
    """A clip's standardised log-mel [frames, 80] as the log_mel store keeps it."""
    repeats = -(-MIN_FRAMES // len(log_mel))
    return np.tile(log_mel, (repeats, 1)).astype(LOG_MEL_DTYPE).tobytes()


def shard_name(name: str, split: str, shard: int, n_shards: int) -> str:
    """TFDS's default file name template, so TFDS finds the shards."""
    return f"{name}-{split}.array_record-{shard:05d}-of-{n_shards:05d}"


def local_copies(files: list, cache_dir: str = None) -> list:
    """Local paths of shard files: local ones as they are; others (gs://, any tf.io.gfile
    filesystem) copied once into cache_dir ($MAEPP_RECORDS_CACHE, or the temp dir), since
    ArrayRecord's reader opens local files only (google/array_record issue 120). A copy is
    complete under its final name or not there."""
    if not any("://" in f for f in files):
        return files
    cache = cache_dir or os.environ.get("MAEPP_RECORDS_CACHE") or os.path.join(tempfile.gettempdir(), "maepp-records")
    local = []
    for remote in files:
        key = hashlib.sha256(remote.encode()).hexdigest()[:16]
        path = os.path.join(cache, f"{key}-{os.path.basename(remote)}")
        if not os.path.exists(path) or os.path.getsize(path) != tf.io.gfile.stat(remote).length:
            os.makedirs(cache, exist_ok=True)
            tf.io.gfile.copy(remote, path + ".part", overwrite=True)
            os.replace(path + ".part", path)
        local.append(path)
    return local


class RecordsSource:
    """Clips of prepared ArrayRecord shards, by a glob over shard files: local, gs:// or any
    tf.io.gfile filesystem (remote shards are read from local copies, `local_copies`)."""

    def __init__(self, pattern: str):
        # ".tmp" files are shards still being written by maepp.data.prepare.
        self.files = sorted(f for f in tf.io.gfile.glob(pattern) if not f.endswith(".tmp"))
        if not self.files:
            raise FileNotFoundError(f"no record shards match {pattern!r}; write them with python -m maepp.data.prepare")
        self._records = array_record_data_source.ArrayRecordDataSource(local_copies(self.files))
        self._last = threading.local()
        if len(self._records) == 0:
            raise ValueError(f"the shards matching {pattern!r} hold no clips")
        stored = set(self._example(0)) & set(STORES)
        if len(stored) != 1:
            raise ValueError(f"{self.files[0]} holds none of the stores {STORES}: not written by maepp.data.prepare")
        self.store = stored.pop()  # log_mel: no audio; the pipeline slices crops in the graph
        named = self._example(0).get("filterbank")
        self.filterbank = named.bytes_list.value[0].decode() if named else filterbanks.BEFORE_THE_OPTION

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

    def serialized(self, indices) -> list:
        """The records of these clips as stored (tf.train.Example bytes). One by one: the data
        source's batched read (a thread pool per call) took 1.5x as long for a batch of 32."""
        return [self._records[int(i)] for i in indices]

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
        return decode_audio(self.encoded(index), self.name(index))
