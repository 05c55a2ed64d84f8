"""Input pipelines in tf.data: a deterministic, resumable stream of log-mel crops for
training, and one pass of centre crops for evaluation.

Each process reads its own share of the clips. The order is a pure function of the seed:
    epoch e: one permutation of all clip indices, shared by every process;
    process p of P takes every P-th entry of it, from p (disjoint shares, whose union is all).
A process's `position` counts the clips it has drawn, bad ones included, so
(seed, process, position) fixes everything that follows; a checkpoint saves the position of
the next clip and a resumed run sees exactly the batches an uninterrupted run would have.

Per clip: load (16 kHz mono) -> log-mel of the whole clip with config.audio.filterbank
(`filterbank`), standardised over the clip (PAPER.md, "Input") -> a 200-frame crop, random for
training and central for evaluation (short clips are tiled). Sources that store each
clip's log-mel stats (prepared records) skip most of that work: only the crop's frames are
computed, from the samples they cover, and standardised with the stored stats; the result is
the same crop of the same standardised log-mel.

Records of the log_mel store (maepp/data/records.py) hold each clip's standardised log-mel, so
their crops are slices: a batch of records is read in one call and parsed, cropped and decoded by
tf.data graph ops over the whole batch, with no Python per clip (`_stored_log_mel_batches`).

Where the crop's log-mel is computed is the `frontend` argument (config.data.frontend): "host"
computes it here with tf.signal; "device" hands the accelerator the raw samples its frames cover
(maepp.audio.jax_frontend.crop_log_mel, inside the jitted train step) with the clip's stats. With
prepared records, whose stats are stored, the hosts then only decode; other sources still need
the whole clip's log-mel on the host for its stats.
"""
import os
import threading

import numpy as np
import tensorflow as tf
from absl import logging

from maepp.audio import filterbanks, tf_frontend
from maepp.audio.constants import HOP, N_FFT, N_MELS, crop_span
from maepp.audio.decode import BadAudio
from maepp.data import records

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


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise over uint64."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def crop_fractions(seed: int, epochs, indices) -> np.ndarray:
    """Uniform in [0, 1) for each (seed, epoch, clip): where in its clip a crop starts. A hash,
    so a whole batch is one numpy expression; float64 [n]."""
    with np.errstate(over="ignore"):
        z = _mix(np.full(len(indices), seed, np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        z = _mix(z ^ np.asarray(epochs, np.uint64))
        z = _mix(z ^ np.asarray(indices, np.uint64))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def random_offset(n_frames: int, crop_frames: int, rng: np.random.Generator) -> int:
    return int(rng.integers(max(n_frames - crop_frames, 0) + 1))


def centre_offset(n_frames: int, crop_frames: int) -> int:
    return max(n_frames - crop_frames, 0) // 2


class CropReader:
    """Reads what the graph needs to make one crop: samples to frame, and the clip's stats.

    Sources with stored clip stats (prepared records) decode only the crop's samples; others
    load the whole clip, whose stats the graph computes.
    """

    _HALF = N_FFT // 2

    def __init__(self, source, crop_frames: int, report: SkipReport):
        self.source, self.crop_frames, self.report = source, crop_frames, report
        # Frame f of a crop at `offset` covers padded samples [f * HOP, f * HOP + N_FFT), i.e.
        # clip samples [offset * HOP - N_FFT / 2, ...) over crop_span samples.
        self.crop_span = crop_span(crop_frames)
        self._read = self._crop_only if hasattr(source, "clip_info") else self._whole_clip

    def _whole_clip(self, index, choose_offset):
        waveform = self.source.load(index)
        offset = choose_offset(1 + len(waveform) // HOP)
        # Stats NaN: the graph computes them from the whole clip's log-mel.
        return np.pad(waveform, self._HALF, mode="reflect"), offset, np.nan, np.nan

    def _crop_only(self, index, choose_offset):
        n_samples, mean, std = self.source.clip_info(index)
        n_frames = 1 + n_samples // HOP
        offset = choose_offset(n_frames)
        start = offset * HOP - self._HALF
        if n_frames < self.crop_frames or start < 0 or start + self.crop_span > n_samples:
            return self._whole_clip(index, choose_offset)  # short clips, crops needing reflect padding
        return self.source.load_segment(index, start, start + self.crop_span), 0, mean, std

    def read(self, index: int, choose_offset):
        """-> (padded samples, first frame to keep, clip mean, clip std, usable).

        choose_offset(n_frames) -> first frame of the crop; must give the same answer each call.
        """
        try:
            padded, offset, mean, std = self._read(index, choose_offset)
        except BadAudio as bad:
            self.report.add(self.source.name(index), bad.reason)
            return np.zeros(N_FFT, np.float32), np.int64(0), np.float32(np.nan), np.float32(np.nan), False
        return padded, np.int64(offset), np.float32(mean), np.float32(std), True


def _as_written(fn):
    """fn for Dataset.map or filter, traced as written: the functions here branch with tf.cond
    already, so AutoGraph's rewrite buys nothing and costs 0.6 s of every start (and a file each)."""
    return tf.autograph.experimental.do_not_convert(fn)


def host_cores() -> int:
    """The cores this process may run on: each of the pipelines' maps runs this many calls at once."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _tuned_without_a_model_thread(dataset):
    """The dataset with tf.data's autotuning off and each AUTOTUNE map host_cores() wide, which is
    where autotuning takes these CPU-bound maps. Autotuning's model thread sleeps through its
    optimisation period (doubling up to 60 s), and destroying the iterator waited for it: 13 to
    19 s at the end of runs here (TF 2.21)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    options.autotune.initial_parallelism = host_cores()
    return dataset.with_options(options)


FRONTENDS = ("host", "device")
# What a "device" batch holds besides its position: maepp.audio.jax_frontend.crop_log_mel's input.
WAVEFORM_CROP_KEYS = ("samples", "frame_starts", "mean", "std")


def _clip_stats(example, whole_clip_log_mel):
    """The clip's (mean, std): stored ones, or those of whole_clip_log_mel() [frames, 80]."""
    return tf.cond(
        tf.math.is_nan(example["mean"]),
        lambda: tf_frontend.clip_stats(whole_clip_log_mel()),
        lambda: (example["mean"], example["std"]),
    )


def _log_mel_crop(example, crop_frames: int, filterbank: str):
    """Host front end: -> log_mel [crop_frames, 80], standardised with the whole clip's stats."""
    log = tf_frontend.frames_log_mel(example["padded"], filterbank)  # [frames, 80]
    mean, std = _clip_stats(example, lambda: log)
    mel = tf_frontend.standardize(log, mean, std)
    repeats = -(-crop_frames // tf.shape(mel)[0])  # tile short clips
    mel = tf.tile(mel, [repeats, 1])[example["offset"] : example["offset"] + crop_frames]
    mel.set_shape([crop_frames, 80])
    return dict(log_mel=mel)


def _waveform_crop(example, crop_frames: int, filterbank: str):
    """Device front end: -> the samples the crop's frames cover and where each frame starts.

    samples [span] (zero-filled after a short clip's end), frame_starts [crop_frames] int32,
    mean, std: the same frames, in the same order, as the host front end's crop of the clip.
    """
    span = crop_span(crop_frames)
    padded = example["padded"]
    n_frames = 1 + (tf.shape(padded, out_type=tf.int64)[0] - N_FFT) // HOP
    frame_indices = (example["offset"] + tf.range(crop_frames, dtype=tf.int64)) % n_frames  # short clips repeat
    first = tf.reduce_min(frame_indices) * HOP
    samples = padded[first : first + span]
    samples = tf.pad(samples, [[0, span - tf.shape(samples)[0]]])
    samples.set_shape([span])
    mean, std = _clip_stats(example, lambda: tf_frontend.frames_log_mel(padded, filterbank))
    return dict(samples=samples, frame_starts=tf.cast(frame_indices * HOP - first, tf.int32), mean=mean, std=std)


def _crops(ids, read, crop_frames: int, frontend: str, filterbank: str):
    """ids: dataset of int64 -> dataset of crops (_log_mel_crop's or _waveform_crop's keys, and
    id), bad clips dropped. read(id) -> CropReader.read's tuple, run in Python (tf.numpy_function).
    """
    if frontend not in FRONTENDS:
        raise ValueError(f"unknown frontend {frontend!r}: use one of {FRONTENDS} (config.data.frontend)")
    make_crop = _log_mel_crop if frontend == "host" else _waveform_crop

    @_as_written
    def load_op(clip_id):
        padded, offset, mean, std, ok = tf.numpy_function(
            read, [clip_id], [tf.float32, tf.int64, tf.float32, tf.float32, tf.bool], stateful=False
        )
        padded.set_shape([None])
        return dict(padded=padded, offset=offset, mean=mean, std=std, ok=ok, id=clip_id)

    @_as_written
    def crop(example):
        return dict(make_crop(example, crop_frames, filterbank), id=example["id"])

    dataset = ids.map(load_op, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.filter(_as_written(lambda example: example["ok"]))
    return dataset.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _stored_log_mel_crops(serialized, fractions, crop_frames: int, centre: bool = False):
    """Records of the log_mel store [batch] -> crops [batch, crop_frames, 80] float32, in graph ops.

    A crop starts at floor(fraction * (frames - crop_frames + 1)), or in the middle (centre), of
    the clip's own frames, as the audio stores' crops do (random_offset, centre_offset); short
    clips start at 0 and were tiled to records.MIN_FRAMES when stored, so every crop is whole.
    """
    parsed = tf.io.parse_example(serialized, {"log_mel": tf.io.FixedLenFeature([], tf.string),
                                              "num_frames": tf.io.FixedLenFeature([], tf.int64)})
    stored = parsed["log_mel"]
    row_bytes = N_MELS * np.dtype(records.LOG_MEL_DTYPE).itemsize
    room = tf.maximum(parsed["num_frames"] - crop_frames, 0)
    offset = room // 2 if centre else tf.cast(tf.floor(fractions * tf.cast(room + 1, tf.float64)), tf.int64)
    start = tf.minimum(offset, room) * row_bytes
    crop = tf.strings.substr(stored, start, tf.fill(tf.shape(start), tf.constant(crop_frames * row_bytes, tf.int64)))
    mel = tf.io.decode_raw(crop, tf.as_dtype(records.LOG_MEL_DTYPE))
    return tf.reshape(tf.cast(mel, tf.float32), [-1, crop_frames, N_MELS])


def _check_filterbank(source, filterbank: str):
    """Prepared records hold log-mels or log-mel stats made with one filterbank."""
    stored = getattr(source, "filterbank", filterbank)
    if stored != filterbank:
        raise ValueError(
            f"{source.files[0]} was prepared with the {stored!r} filterbank and config.audio.filterbank is "
            f"{filterbank!r}: train with --config.audio.filterbank={stored}, "
            f"or prepare again with --filterbank {filterbank}"
        )


def _check_log_mel_store(source, crop_frames: int, frontend: str):
    if frontend != "host":
        raise ValueError(
            f"config.data.frontend={frontend!r} needs audio, and {source.files[0]} holds log-mels (the log_mel "
            "store): use frontend 'host' (a crop is then a slice), or prepare with --store pcm or flac"
        )
    if crop_frames > records.MIN_FRAMES:
        raise ValueError(f"crops of {crop_frames} frames: the log_mel store keeps short clips tiled to "
                         f"{records.MIN_FRAMES} frames only; prepare with --store pcm for longer crops")


def _stored_log_mel_batches(source, order: ClipOrder, seed: int, batch_size: int, crop_frames: int,
                            start_position: int):
    """train_dataset for the log_mel store: per batch, one Python call reads the records of its
    positions; parsing, cropping and decoding are graph ops over the batch."""

    def read(positions):
        epochs, indices = np.array([order.epoch_and_clip(p) for p in positions]).T
        return np.array(source.serialized(indices), dtype=object), crop_fractions(seed, epochs, indices)

    @_as_written
    def load(positions):
        serialized, fractions = tf.numpy_function(read, [positions], [tf.string, tf.float64], stateful=False)
        serialized.set_shape([batch_size])
        fractions.set_shape([batch_size])
        return dict(log_mel=_stored_log_mel_crops(serialized, fractions, crop_frames), position=positions)

    positions = tf.data.Dataset.range(start_position, _ENDLESS).batch(batch_size, drop_remainder=True)
    return positions.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


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
                  process_index: int = 0, process_count: int = 1, report: SkipReport = None,
                  frontend: str = "host", filterbank: str = filterbanks.DEFAULT):
    """-> tf.data.Dataset of dicts: position [batch] int64 and, by frontend, log_mel [batch,
    crop_frames, 80] float32 ("host") or WAVEFORM_CROP_KEYS ("device", see _waveform_crop).

    `batch_size` is this process's share of the global batch. The position of the next clip
    after a batch is batch["position"][-1] + 1: what a checkpoint saves as start_position.
    """
    _check_filterbank(source, filterbank)
    order = ClipOrder(len(source), seed, process_index, process_count)
    if getattr(source, "store", None) == "log_mel":
        _check_log_mel_store(source, crop_frames, frontend)
        return _tuned_without_a_model_thread(
            _stored_log_mel_batches(source, order, seed, batch_size, crop_frames, start_position))
    report = report if report is not None else SkipReport()
    check_usable_audio(source, order, report)  # fail before any compilation starts
    reader = CropReader(source, crop_frames, report)

    def read(position):
        epoch, index = order.epoch_and_clip(position)

        def choose_offset(n_frames):  # pure: the reader may ask twice
            return random_offset(n_frames, crop_frames, np.random.default_rng([seed, epoch, index]))

        return reader.read(index, choose_offset)

    crops = _crops(tf.data.Dataset.range(start_position, _ENDLESS), read, crop_frames, frontend, filterbank)
    crops = crops.map(
        _as_written(lambda example: {**{k: v for k, v in example.items() if k != "id"}, "position": example["id"]}))
    return _tuned_without_a_model_thread(crops.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def eval_dataset(source, *, batch_size: int, crop_frames: int = 200, process_index: int = 0,
                 process_count: int = 1, report: SkipReport = None, filterbank: str = filterbanks.DEFAULT):
    """One pass over this process's share (every process_count-th clip) in index order, with
    log-mels from the host front end (evaluation is too small to need the device's).

    -> dicts: log_mel [batch, crop_frames, 80] (centre crops), index [batch] int64 (clip index,
    -1 for padding), valid [batch] bool. Every batch has the full batch size, so a jitted eval
    step compiles once: the last one is padded with zeros and valid=False.
    """
    _check_filterbank(source, filterbank)
    if getattr(source, "store", None) == "log_mel":
        _check_log_mel_store(source, crop_frames, "host")
        return _tuned_without_a_model_thread(
            _stored_log_mel_eval_batches(source, batch_size, crop_frames, process_index, process_count))
    report = report if report is not None else SkipReport()
    reader = CropReader(source, crop_frames, report)

    def read(index):
        return reader.read(int(index), lambda n_frames: centre_offset(n_frames, crop_frames))

    crops = _crops(tf.data.Dataset.range(process_index, len(source), process_count), read, crop_frames, "host",
                   filterbank)
    crops = crops.map(_as_written(lambda example: dict(log_mel=example["log_mel"], index=example["id"], valid=True)))
    padding = tf.data.Dataset.from_tensors(
        dict(log_mel=tf.zeros([crop_frames, 80]), index=tf.constant(-1, tf.int64), valid=False)
    ).repeat(batch_size - 1)
    # Append padding, then drop the batch made only of padding.
    batches = crops.concatenate(padding).batch(batch_size, drop_remainder=True)
    batches = batches.filter(_as_written(lambda batch: batch["valid"][0]))
    return _tuned_without_a_model_thread(batches.prefetch(tf.data.AUTOTUNE))


def _stored_log_mel_eval_batches(source, batch_size: int, crop_frames: int, process_index: int, process_count: int):
    """eval_dataset for the log_mel store: centre crops, a batch of records per call, the last
    batch padded (index -1, valid False, zeros)."""

    def read(indices):
        return np.array(source.serialized(np.maximum(indices, 0)), dtype=object)  # padding reads clip 0

    @_as_written
    def load(indices):
        indices = tf.pad(indices, [[0, batch_size - tf.shape(indices)[0]]], constant_values=-1)
        serialized = tf.numpy_function(read, [indices], tf.string, stateful=False)
        serialized.set_shape([batch_size])
        valid = indices >= 0
        mel = _stored_log_mel_crops(serialized, tf.zeros([batch_size], tf.float64), crop_frames, centre=True)
        return dict(log_mel=tf.where(valid[:, None, None], mel, 0.0), index=indices, valid=valid)

    indices = tf.data.Dataset.range(process_index, len(source), process_count).batch(batch_size)
    return indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
