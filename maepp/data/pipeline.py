"""The training input pipeline in tf.data: a deterministic, resumable stream of log-mel crops.

Each process reads its own share of the clips. The order is a pure function of the seed:
    epoch e: one permutation of all clip indices, shared by every process;
    process p of P takes every P-th entry of it, from p (disjoint shares, whose union is all).
A process's `position` counts the clips it has drawn, bad ones included, so
(seed, process, position) fixes everything that follows; a checkpoint saves the position of
the next clip and a resumed run sees exactly the batches an uninterrupted run would have.

Per clip: load (16 kHz mono) -> log-mel of the whole clip, standardised over the clip
(PAPER.md, "Input") -> a random 200-frame crop (short clips are tiled). Sources that store each
clip's log-mel stats (prepared records) skip most of that work: only the crop's frames are
computed, from the samples they cover, and standardised with the stored stats; the result is
the same crop of the same standardised log-mel.
"""
import threading

import numpy as np
import tensorflow as tf
from absl import logging

from maepp.audio import tf_frontend
from maepp.audio.decode import BadAudio
from maepp.audio.reference import HOP, N_FFT

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

    half = N_FFT // 2
    # Frames f of a crop at `offset` cover padded samples [f * HOP, f * HOP + N_FFT), i.e. clip
    # samples [offset * HOP - half, (offset + crop_frames - 1) * HOP + half).
    crop_span = (crop_frames - 1) * HOP + N_FFT

    def crop_rng(epoch, index):
        return np.random.default_rng([seed, epoch, index])

    def crop_from_whole_clip(index, epoch):
        waveform = source.load(index)
        offset = crop_offset(1 + len(waveform) // HOP, crop_frames, crop_rng(epoch, index))
        # Stats NaN: computed from the whole clip's log-mel in the graph.
        return np.pad(waveform, half, mode="reflect"), offset, np.nan, np.nan

    def crop_only(index, epoch):
        """Sources with stored clip stats: decode and transform only the crop's samples."""
        n_samples, mean, std = source.clip_info(index)
        n_frames = 1 + n_samples // HOP
        offset = crop_offset(n_frames, crop_frames, crop_rng(epoch, index))
        start = offset * HOP - half
        if n_frames < crop_frames or start < 0 or start + crop_span > n_samples:
            return crop_from_whole_clip(index, epoch)  # short clips, crops that need reflect padding
        return source.load_segment(index, start, start + crop_span), 0, mean, std

    read_crop = crop_only if hasattr(source, "clip_info") else crop_from_whole_clip

    def load(position):
        """-> (padded samples to frame, first frame to keep, clip mean, clip std, usable)."""
        epoch, index = order.epoch_and_clip(position)
        try:
            padded, offset, mean, std = read_crop(index, epoch)
        except BadAudio as bad:
            report.add(source.name(index), bad.reason)
            return np.zeros(N_FFT, np.float32), np.int64(0), np.float32(np.nan), np.float32(np.nan), False
        return padded, np.int64(offset), np.float32(mean), np.float32(std), True

    def load_op(position):
        padded, offset, mean, std, ok = tf.numpy_function(
            load, [position], [tf.float32, tf.int64, tf.float32, tf.float32, tf.bool], stateful=False
        )
        padded.set_shape([None])
        return dict(padded=padded, offset=offset, mean=mean, std=std, ok=ok, position=position)

    def crop(example):
        log = tf_frontend.frames_log_mel(example["padded"])  # [frames, 80]
        mean, std = tf.cond(
            tf.math.is_nan(example["mean"]),
            lambda: tf_frontend.clip_stats(log),
            lambda: (example["mean"], example["std"]),
        )
        mel = tf_frontend.standardize(log, mean, std)
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
