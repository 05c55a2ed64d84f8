"""Input pipelines in tf.data: a deterministic, resumable stream of log-mel crops for
training, and one pass of centre crops for evaluation.

The training stream follows the global clip order (maepp/data/order.py): global batch j holds
the positions start + j B ... start + (j + 1) B - 1, and each process reads only the rows of it
that its devices hold (`rows`, from maepp.sharding.process_rows). The batches are therefore the
same on any number of processes, and a run resumes from the position of its next batch alone.
An unusable clip is replaced in its row (the order's replacements), counted and named once.

Per clip: load (16 kHz mono) -> log-mel of the whole clip with config.audio.filterbank
(`filterbank`), standardised over the clip (docs/reference.md, "Input") -> a 200-frame crop,
random for training and central for evaluation (short clips are tiled). Sources that store each
clip's log-mel stats (prepared pcm and flac clips) skip most of that work: only the crop's frames are
computed, from the samples they cover, and standardised with the stored stats; the result is
the same crop of the same standardised log-mel.

Prepared clips of the log_mel store (maepp/data/clip_store.py) hold each clip's standardised
log-mel, so a crop is rows of it: a batch's crops are read in one call, each reading exactly its
own bytes, all at once (`_stored_log_mel_batches`), with no STFT and no decoding.

Where the crop's log-mel is computed is the `frontend` argument (config.data.frontend): "host"
computes it here with tf.signal; "device" hands the accelerator the raw samples its frames cover
(maepp.audio.jax_frontend.crop_log_mel, inside the jitted train step) with the clip's stats. With
prepared pcm or flac clips, whose stats are stored, the hosts then only decode; other sources still need
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
from maepp.data import clip_store
from maepp.data.clip_store import DamagedClip
from maepp.data.order import batch_positions, crop_fractions, training_order
from maepp.data.settings import CLIPS, FRONTENDS, Shuffle

_ENDLESS = 2**62
DAMAGED_ADVICE = "prepare the data again, or skip such clips and count them with --config.data.damaged_clips=skip"


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


def random_offset(n_frames: int, crop_frames: int, rng: np.random.Generator) -> int:
    return int(rng.integers(max(n_frames - crop_frames, 0) + 1))


def centre_offset(n_frames: int, crop_frames: int) -> int:
    return max(n_frames - crop_frames, 0) // 2


class CropReader:
    """Reads what the graph needs to make one crop: samples to frame, and the clip's stats.

    Sources with stored clip stats (prepared pcm and flac clips) decode only the crop's samples; others
    load the whole clip, whose stats the graph computes. A prepared clip whose bytes do not match
    their checksums stops the stream (DamagedClip), or with damaged_clips "skip" is counted and
    stood in for, as audio that does not decode is.
    """

    _HALF = N_FFT // 2

    def __init__(self, source, crop_frames: int, report: SkipReport, damaged_clips: str = "stop"):
        self.source, self.crop_frames, self.report, self.damaged_clips = source, crop_frames, report, damaged_clips
        # Frame f of a crop at `offset` covers padded samples [f * HOP, f * HOP + N_FFT), i.e.
        # clip samples [offset * HOP - N_FFT / 2, ...) over crop_span samples.
        self.crop_span = crop_span(crop_frames)
        self._read = self._crop_only if source.store in clip_store.AUDIO_STORES else self._whole_clip

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
        except (BadAudio, DamagedClip) as bad:
            if isinstance(bad, DamagedClip) and self.damaged_clips == "stop":
                raise DamagedClip(f"{bad}; {DAMAGED_ADVICE}") from None
            self.report.add(self.source.name(index), bad.reason if isinstance(bad, BadAudio) else str(bad))
            return np.zeros(N_FFT, np.float32), np.int64(0), np.float32(np.nan), np.float32(np.nan), False
        return padded, np.int64(offset), np.float32(mean), np.float32(std), True


def _as_written(fn):
    """fn for Dataset.map or filter, traced as written: the functions here branch with tf.cond
    already, so AutoGraph's rewrite buys nothing and costs 0.6 s of every start (and a file each)."""
    return tf.autograph.experimental.do_not_convert(fn)


def host_cores() -> int:
    """The cores this process may run on: each of the pipelines' maps runs this many calls at once.
    Under Slurm, the task's own allotment (SLURM_CPUS_PER_TASK): eight tasks of one node must not
    each run a map as wide as the node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    allotted = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cores, int(allotted)) if allotted.isdigit() and int(allotted) > 0 else cores


def _tuned_without_a_model_thread(dataset):
    """The dataset with tf.data's autotuning off and each AUTOTUNE map host_cores() wide, which is
    where autotuning takes these CPU-bound maps. Autotuning's model thread sleeps through its
    optimisation period (doubling up to 60 s), and destroying the iterator waited for it: 13 to
    19 s at the end of runs here (TF 2.21)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    options.autotune.initial_parallelism = host_cores()
    return dataset.with_options(options)


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
    """ids: dataset of int64 -> dataset of crops (_log_mel_crop's or _waveform_crop's keys, id,
    and ok: False where read found no usable clip, whose crop is then zeros). read(id) ->
    CropReader.read's tuple, run in Python (tf.numpy_function).
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
        made = make_crop(example, crop_frames, filterbank)
        made = {key: tf.where(example["ok"], value, tf.zeros_like(value)) for key, value in made.items()}
        return dict(made, id=example["id"], ok=example["ok"])

    dataset = ids.map(load_op, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _check_filterbank(source, filterbank: str):
    """Prepared clips hold log-mels or log-mel stats made with one filterbank."""
    stored = source.filterbank or filterbank
    if stored != filterbank:
        raise ValueError(
            f"{source.directory} was prepared with the {stored!r} filterbank and config.audio.filterbank is "
            f"{filterbank!r}: train with --config.audio.filterbank={stored}, "
            f"or prepare again with --filterbank {filterbank}"
        )


def _check_log_mel_store(source, crop_frames: int, frontend: str):
    if frontend != "host":
        raise ValueError(
            f"config.data.frontend={frontend!r} needs audio, and {source.directory} holds log-mels (the log_mel "
            "store): use frontend 'host' (a crop is then a slice), or prepare with --store pcm or flac"
        )
    if crop_frames > clip_store.MIN_FRAMES:
        raise ValueError(
            f"crops of {crop_frames} frames: the log_mel store keeps short clips tiled to "
            f"{clip_store.MIN_FRAMES} frames only; prepare with --store pcm for longer crops"
        )


def reraise_damaged(error: Exception):
    """tf.data hands a DamagedClip raised in the graph on as its own error, with a traceback in its
    text: raises the DamagedClip again, as one line. Anything else is left to the caller."""
    marker = f"{DamagedClip.__name__}: "
    if marker in str(error):
        raise DamagedClip(str(error).split(marker, 1)[1].splitlines()[0]) from None


def _stored_log_mel_batches(
    source,
    order,
    seed: int,
    batch_size: int,
    rows: np.ndarray,
    crop_frames: int,
    start_position: int,
    report: SkipReport,
    damaged_clips: str,
):
    """train_dataset for the log_mel store: per batch, one Python call reads the crops of this
    process's rows, each exactly its own bytes, all at once. A damaged crop stops the stream
    (DamagedClip), or is skipped and counted, its row read from the clips that stand in for it."""
    slots = order.slots(rows, batch_size)

    def crops_of(positions):
        epochs, indices = order.clips(positions)
        crops, damaged = source.log_mel_crops(indices, crop_fractions(seed, epochs, indices), crop_frames)
        return crops, damaged, indices

    def read(batch):
        positions = batch_positions(start_position, batch_size, slots, int(batch))
        crops, damaged, indices = crops_of(positions)
        if not damaged:
            return crops, positions
        if damaged_clips == "stop":
            raise DamagedClip(f"{next(iter(damaged.values()))}; {DAMAGED_ADVICE}")
        crops = crops.copy()  # read-only: it views the bytes read
        for row, why in damaged.items():
            report.add(source.name(int(indices[row])), why)
            for candidate in order.replacements(int(positions[row])):
                crop, still_damaged, (index,) = crops_of([candidate])
                if not still_damaged:
                    crops[row] = crop[0]
                    break
                report.add(source.name(int(index)), still_damaged[0])
        return crops, positions

    @_as_written
    def load(batch):
        log_mel, positions = tf.numpy_function(read, [batch], [tf.float16, tf.int64], stateful=False)
        log_mel.set_shape([len(rows), crop_frames, N_MELS])
        positions.set_shape([len(rows)])
        return dict(log_mel=tf.cast(log_mel, tf.float32), position=positions)

    batches = tf.data.Dataset.range(_ENDLESS)
    return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def check_usable_audio(source, report: SkipReport):
    """Reads clips until one is usable; a clear error, before anything compiles, if none is."""
    for index in range(len(source)):
        try:
            source.load(index)
            return
        except (BadAudio, DamagedClip) as bad:
            report.add(source.name(index), bad.reason if isinstance(bad, BadAudio) else str(bad))
    raise ValueError(
        f"no usable audio: all {len(source)} clips were skipped "
        f"({dict(list(report.reasons.items())[:5])}...); check the data source"
    )


def _all_rows(rows, batch_size: int) -> np.ndarray:
    """This process's rows of a global batch; None: all of them (one process)."""
    rows = np.arange(batch_size) if rows is None else np.asarray(rows, np.int64)
    if not len(rows) or rows.min() < 0 or rows.max() >= batch_size:
        raise ValueError(f"rows {rows.tolist()} are not rows of a batch of {batch_size}")
    return rows


def train_dataset(
    source,
    *,
    seed: int,
    batch_size: int,
    rows=None,
    crop_frames: int = 200,
    start_position: int = 0,
    report: SkipReport = None,
    frontend: str = "host",
    filterbank: str = filterbanks.DEFAULT,
    damaged_clips: str = "stop",
    shuffle: Shuffle = CLIPS,
):
    """-> tf.data.Dataset of this process's share of each global batch: dicts of position
    [len(rows)] int64 (each row's global position) and, by frontend, log_mel [len(rows),
    crop_frames, 80] float32 ("host") or WAVEFORM_CROP_KEYS ("device", see _waveform_crop).

    batch_size is the global batch; rows the rows of it this process reads (all by default).
    The stream after k batches continues from start_position + k * batch_size. damaged_clips:
    what a stored clip that holds what no clip can does ("stop": DamagedClip; "skip": counted).
    shuffle: the order (maepp/data/order.py); in blocks, a prepared dataset is read a block at
    a time, holding its streams' current and next windows.
    """
    _check_filterbank(source, filterbank)
    rows = _all_rows(rows, batch_size)
    order = training_order(len(source), seed, shuffle)
    if shuffle.kind == "blocks" and source.store is not None:
        streams = len(np.unique(order.slots(rows, batch_size) % shuffle.streams))
        source.read_in_blocks(shuffle.block_clips, 2 * shuffle.window_blocks * streams)
    if source.store == "log_mel":
        _check_log_mel_store(source, crop_frames, frontend)
        return _tuned_without_a_model_thread(
            _stored_log_mel_batches(
                source,
                order,
                seed,
                batch_size,
                rows,
                crop_frames,
                start_position,
                report if report is not None else SkipReport(),
                damaged_clips,
            )
        )
    report = report if report is not None else SkipReport()
    check_usable_audio(source, report)  # fail before any compilation starts
    reader = CropReader(source, crop_frames, report, damaged_clips)

    def read(position):
        for candidate in (int(position), *order.replacements(int(position))):
            epoch, index = order.clip(candidate)

            def choose_offset(n_frames, epoch=epoch, index=index):  # pure: the reader may ask twice
                return random_offset(n_frames, crop_frames, np.random.default_rng([seed, epoch, index]))

            crop = reader.read(index, choose_offset)
            if crop[-1]:
                return crop
        raise ValueError(f"no usable clip at position {position} nor at any of its {order.n_clips} replacements")

    local = tf.constant(order.slots(rows, batch_size))
    per_batch = len(rows)
    positions = tf.data.Dataset.range(_ENDLESS).map(
        _as_written(lambda i: start_position + (i // per_batch) * batch_size + tf.gather(local, i % per_batch))
    )
    crops = _crops(positions, read, crop_frames, frontend, filterbank)
    crops = crops.map(
        _as_written(
            lambda example: {**{k: v for k, v in example.items() if k not in ("id", "ok")}, "position": example["id"]}
        )
    )
    return _tuned_without_a_model_thread(crops.batch(per_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def eval_batches(n_clips: int, batch_size: int) -> int:
    """How many global batches one pass over n_clips takes (the last one padded)."""
    return -(-n_clips // batch_size)


def eval_dataset(
    source,
    *,
    batch_size: int,
    rows=None,
    crop_frames: int = 200,
    report: SkipReport = None,
    filterbank: str = filterbanks.DEFAULT,
):
    """One pass over the clips in index order, global batch j holding clips j B ... (j + 1) B - 1,
    this process reading its `rows` of each (all by default); log-mels from the host front end
    (evaluation is too small to need the device's). Every process yields eval_batches(...)
    batches, so a jitted eval step runs in lockstep everywhere and compiles once.

    -> dicts: log_mel [len(rows), crop_frames, 80] (centre crops), index [len(rows)] int64 (clip
    index, -1 past the end), valid [len(rows)] bool (False past the end and for unusable clips,
    whose rows are zeros).
    """
    _check_filterbank(source, filterbank)
    rows = _all_rows(rows, batch_size)
    n_batches = eval_batches(len(source), batch_size)
    if source.store == "log_mel":
        _check_log_mel_store(source, crop_frames, "host")
        return _tuned_without_a_model_thread(
            _stored_log_mel_eval_batches(source, batch_size, rows, crop_frames, n_batches)
        )
    report = report if report is not None else SkipReport()
    reader = CropReader(source, crop_frames, report)
    n_clips = len(source)

    def read(index):
        if index >= n_clips:
            return np.zeros(N_FFT, np.float32), np.int64(0), np.float32(np.nan), np.float32(np.nan), False
        return reader.read(int(index), lambda n_frames: centre_offset(n_frames, crop_frames))

    local = tf.constant(rows)
    per_batch = len(rows)
    indices = tf.data.Dataset.range(n_batches * per_batch).map(
        _as_written(lambda i: (i // per_batch) * batch_size + tf.gather(local, i % per_batch))
    )
    crops = _crops(indices, read, crop_frames, "host", filterbank)
    crops = crops.map(
        _as_written(
            lambda example: dict(
                log_mel=example["log_mel"],
                index=tf.where(example["id"] < n_clips, example["id"], -1),
                valid=example["ok"],
            )
        )
    )
    return _tuned_without_a_model_thread(crops.batch(per_batch).prefetch(tf.data.AUTOTUNE))


def _stored_log_mel_eval_batches(source, batch_size: int, rows: np.ndarray, crop_frames: int, n_batches: int):
    """eval_dataset for the log_mel store: centre crops, a batch of clips per call; rows past
    the last clip are zeros with index -1 and valid False."""
    n_clips = len(source)

    def read(batch):
        indices = batch_positions(0, batch_size, rows, int(batch))
        valid = indices < n_clips
        log_mel = np.zeros((len(rows), crop_frames, N_MELS), np.float16)
        if valid.any():
            crops, damaged = source.log_mel_crops(indices[valid], None, crop_frames, centre=True)
            if damaged:  # evaluation has no clip to stand in: the run stops, naming it
                raise DamagedClip(f"{next(iter(damaged.values()))}; prepare the data again")
            log_mel[valid] = crops
        return log_mel, np.where(valid, indices, -1), valid

    @_as_written
    def load(batch):
        log_mel, indices, valid = tf.numpy_function(read, [batch], [tf.float16, tf.int64, tf.bool], stateful=False)
        log_mel.set_shape([len(rows), crop_frames, N_MELS])
        indices.set_shape([len(rows)])
        valid.set_shape([len(rows)])
        return dict(log_mel=tf.cast(log_mel, tf.float32), index=indices, valid=valid)

    batches = tf.data.Dataset.range(n_batches)
    return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
