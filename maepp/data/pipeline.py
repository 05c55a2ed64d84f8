"""The training input pipeline in tf.data: a deterministic, resumable stream of log-mel crops.

Each process reads its own share of the clips. The order is a pure function of the seed:
    epoch e: one permutation of all clip indices, shared by every process;
    process p of P takes every P-th entry of it, from p (disjoint shares, whose union is all).
A process's `position` counts the clips it has drawn, bad ones included, so
(seed, process, position) fixes everything that follows; a checkpoint saves the position of
the next clip and a resumed run sees exactly the batches an uninterrupted run would have.

Per clip: load (16 kHz mono) -> log-mel of the whole clip, standardised over the clip
(PAPER.md, "Input") -> a random 200-frame crop (short clips are tiled).
"""
import threading

import numpy as np
import tensorflow as tf
from absl import logging

from maepp.audio import tf_frontend
from maepp.audio.decode import BadAudio
from maepp.audio.reference import HOP

_ENDLESS = 2**62


class ClipOrder:
    """Which clip a process draws at each position."""

    def __init__(self, n_clips: int, seed: int, process_index: int = 0, process_count: int = 1):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        if n_clips < process_count:
            raise ValueError(f"{n_clips} clips cannot be shared among {process_count} processes")
        self.n_clips, self.seed = n_clips, seed
        self.process_index, self.process_count = process_index, process_count
        self.per_epoch = len(range(process_index, n_clips, process_count))
        self._cached = (None, None)  # (epoch, its permutation): positions arrive epoch by epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        cached_epoch, permutation = self._cached  # one read: tf.data calls from several threads
        if cached_epoch != epoch:
            permutation = np.random.default_rng([self.seed, epoch]).permutation(self.n_clips)
            self._cached = (epoch, permutation)
        return permutation

    def epoch_and_clip(self, position: int):
        epoch, offset = divmod(int(position), self.per_epoch)
        return epoch, int(self._permutation(epoch)[self.process_index + offset * self.process_count])


class SkipReport:
    """Counts clips that could not be used and names each bad file once in the log."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reasons = {}  # name -> reason
        self.skips = 0  # every skip, also repeats in later epochs

    def add(self, name: str, reason: str):
        with self._lock:
            self.skips += 1
            first_time = name not in self.reasons
            self.reasons[name] = reason
        if first_time:
            logging.warning("skipped clip %s: %s (%d bad clips so far)", name, reason, len(self.reasons))


def crop_offset(n_frames: int, crop_frames: int, rng: np.random.Generator) -> int:
    return int(rng.integers(max(n_frames - crop_frames, 0) + 1))


def check_usable_audio(source, order: ClipOrder, report: SkipReport):
    """Reads this process's clips until one is usable; a clear error if none is."""
    for position in range(order.per_epoch):
        _, index = order.epoch_and_clip(position)
        try:
            source.load(index)
            return
        except BadAudio as bad:
            report.add(source.name(index), bad.reason)
    raise ValueError(
        f"no usable audio: all {order.per_epoch} clips of this process's share were skipped "
        f"({dict(list(report.reasons.items())[:5])}...); check the data source"
    )


def train_dataset(source, *, seed: int, batch_size: int, crop_frames: int = 200, start_position: int = 0,
                  process_index: int = 0, process_count: int = 1, report: SkipReport = None):
    """-> tf.data.Dataset of dicts: log_mel [batch, crop_frames, 80] float32, position [batch] int64.

    `batch_size` is this process's share of the global batch. The position of the next clip
    after a batch is batch["position"][-1] + 1: what a checkpoint saves as start_position.
    """
    order = ClipOrder(len(source), seed, process_index, process_count)
    report = report if report is not None else SkipReport()
    check_usable_audio(source, order, report)  # fail before any compilation starts

    def load(position):
        epoch, index = order.epoch_and_clip(position)
        try:
            waveform = source.load(index)
        except BadAudio as bad:
            report.add(source.name(index), bad.reason)
            return np.zeros(0, np.float32), np.int64(0), False
        n_frames = 1 + len(waveform) // HOP
        offset = crop_offset(n_frames, crop_frames, np.random.default_rng([seed, epoch, index]))
        return waveform, np.int64(offset), True

    def load_op(position):
        waveform, offset, ok = tf.numpy_function(load, [position], [tf.float32, tf.int64, tf.bool], stateful=False)
        waveform.set_shape([None])
        return dict(waveform=waveform, offset=offset, ok=ok, position=position)

    def crop(example):
        mel = tf_frontend.log_mel(example["waveform"])  # [frames, 80]
        repeats = -(-crop_frames // tf.shape(mel)[0])  # tile short clips
        mel = tf.tile(mel, [repeats, 1])[example["offset"] : example["offset"] + crop_frames]
        mel.set_shape([crop_frames, 80])
        return dict(log_mel=mel, position=example["position"])

    dataset = tf.data.Dataset.range(start_position, _ENDLESS)
    dataset = dataset.map(load_op, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.filter(lambda example: example["ok"])
    dataset = dataset.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
