"""Writing prepared datasets: ArrayRecord shards of 16 kHz clips plus TFDS metadata.

The library behind `python -m maepp.data.prepare` (which documents the layout and the resume rules).
Every wav/flac/ogg/mp3 under the input is resampled to 16 kHz mono and stored as the chosen store
keeps it (maepp/data/records.py: its standardised log-mel, or 16-bit PCM or FLAC with its clip
stats); bad files are skipped and listed with the reason in manifest.json.

Resumable: a second run skips finished shards. A shard is written under a temporary name and
renamed when closed, and counts as finished only once its progress file exists (written after
the rename), so an interrupted run never leaves a half-written shard that looks complete.
"""
import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import pathlib
import queue
import re
import sys
import time

import numpy as np
from absl import logging

from maepp.audio import filterbanks, reference
from maepp.audio.constants import SAMPLE_RATE
from maepp.audio.decode import AUDIO_EXTENSIONS, BadAudio, decode_audio, encode_flac, load_audio
from maepp.data import records
from maepp.data.listing import list_audio_files

PROGRESS_DIR = ".progress"


def _write_atomically(path: pathlib.Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _record(store: str, filterbank: str, waveform: np.ndarray, relative: str) -> dict:
    """What a record of `store` holds for one clip (maepp/data/records.py)."""
    named = {"filterbank": filterbank, "path": relative}
    if store == "log_mel":
        log_mel = reference.log_mel(waveform, filterbank)
        return {"log_mel": records.stored_log_mel(log_mel), "num_frames": len(log_mel), **named}
    pcm = np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)
    audio = pcm.tobytes() if store == "pcm" else encode_flac(waveform)
    # Stats of what training will read back: the 16-bit audio, not the float input.
    decoded = pcm.astype(np.float32) / 32768.0 if store == "pcm" else decode_audio(audio, relative)
    mean, std = reference.clip_stats(reference.unstandardized_log_mel(decoded, filterbank))
    return {store: audio, "num_samples": len(waveform), "log_mel_mean": mean, "log_mel_std": std, **named}


def write_shard(input_root: str, paths: list, shard_path: str, progress_path: str, store: str, filterbank: str,
                done=None) -> dict:
    """Writes one shard; returns and records its summary. Runs in a worker (a process, or a thread
    when there is one worker); puts a 1 on the `done` queue for every clip it has read."""
    from array_record.python.array_record_module import ArrayRecordWriter

    features = records.features(store)
    tmp = shard_path + ".tmp"
    # Uncompressed: log-mels and PCM hardly compress (6% with zstd here) and FLAC already is, while
    # decompressing a 10 s clip's record cost 3x its read.
    writer = ArrayRecordWriter(tmp, "group_size:1,uncompressed")
    clips, samples, skipped = 0, 0, {}
    for relative in paths:
        if done is not None:
            done.put(1)
        try:
            waveform = load_audio(pathlib.Path(input_root) / relative)
        except BadAudio as bad:
            skipped[relative] = bad.reason
            continue
        writer.write(features.serialize_example(_record(store, filterbank, waveform, relative)))
        clips += 1
        samples += len(waveform)
    writer.close()
    os.replace(tmp, shard_path)  # complete under its final name, or not there at all
    summary = dict(shard=os.path.basename(shard_path), clips=clips, seconds=samples / SAMPLE_RATE, skipped=skipped)
    _write_atomically(pathlib.Path(progress_path), json.dumps(summary))
    return summary


class _ProgressLine:
    """One line, rewritten in place at most once a second: files read, rate, ETA."""

    def __init__(self, total: int):
        self.total, self.done, self.start, self.shown = total, 0, time.perf_counter(), 0.0

    def add(self, n: int, force=False):
        self.done += n
        now = time.perf_counter()
        if not force and now - self.shown < 1.0:
            return
        self.shown = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate else float("inf")
        sys.stderr.write(f"\rprepare: {self.done:,}/{self.total:,} files, {rate:,.1f} files/s, ETA {eta:,.0f} s ")
        sys.stderr.flush()


def list_audio(root: pathlib.Path) -> tuple:
    """-> (the audio files to prepare, {file: reason} of those left out: see maepp/data/listing.py)."""
    files, left_out = list_audio_files(root)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {root}")
    return files, left_out


def _check_plan(progress: pathlib.Path, files: list, clips_per_shard: int, store: str, filterbank: str):
    """A resumed run must be the same preparation: same files, same sharding, same store and filterbank."""
    plan = dict(clips_per_shard=clips_per_shard, files=len(files), store=store, filterbank=filterbank,
                files_sha256=hashlib.sha256("\n".join(files).encode()).hexdigest())
    plan_path = progress / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
        raise ValueError(
            f"{progress.parent} holds a preparation of other files, sharding, store or filterbank ({plan_path}); "
            "use a new --output, or the same --input, --clips_per_shard, --store and --filterbank to resume"
        )
    _write_atomically(plan_path, json.dumps(plan))


def prepare(input_dir, output_dir, name="audio_clips", split="train", workers=1, clips_per_shard=1024,
            store="log_mel", filterbank=filterbanks.DEFAULT) -> dict:
    """Writes (or finishes) the prepared dataset; returns the manifest."""
    import tensorflow_datasets as tfds

    if store not in records.STORES:
        raise ValueError(f"--store {store!r}: use one of {records.STORES}")
    if filterbank not in filterbanks.NAMES:
        raise ValueError(f"--filterbank {filterbank!r}: use one of {filterbanks.NAMES}")
    for flag, value in (("--name", name), ("--split", split)):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", value):  # TFDS's rule, and no way out of --output
            raise ValueError(f"{flag} {value!r}: use lower-case letters, digits and _ (a TFDS name), e.g. audio_clips")
    input_root = pathlib.Path(input_dir).absolute()
    files, left_out = list_audio(input_root)
    out = pathlib.Path(output_dir).absolute() / name / records.VERSION
    progress = out / PROGRESS_DIR
    progress.mkdir(parents=True, exist_ok=True)
    _check_plan(progress, files, clips_per_shard, store, filterbank)
    for leftover in out.glob("*.tmp"):  # a writer killed mid-shard; its shard is written again
        leftover.unlink()

    chunks = [files[i : i + clips_per_shard] for i in range(0, len(files), clips_per_shard)]
    jobs = {}
    for shard, chunk in enumerate(chunks):
        shard_path = out / records.shard_name(name, split, shard, len(chunks))
        progress_path = progress / f"{shard_path.name}.json"
        if not progress_path.exists():
            jobs[shard] = (str(input_root), chunk, str(shard_path), str(progress_path), store, filterbank)
    logging.info("%d shards, %d already finished, %d to write", len(chunks), len(chunks) - len(jobs), len(jobs))
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # spawn, not fork: the parent may already hold TensorFlow's threads.
            context = multiprocessing.get_context("spawn")
            done = stack.enter_context(context.Manager()).Queue()
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(workers, mp_context=context))
        else:  # one writer: a thread here, not a new process that first imports TensorFlow again (6 s)
            done = queue.Queue()
            pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1))
        line = _ProgressLine(sum(len(job[1]) for job in jobs.values()))
        pending = {pool.submit(write_shard, *job, done) for job in jobs.values()}
        while pending:
            finished, pending = concurrent.futures.wait(pending, timeout=0.5)
            for future in finished:
                future.result()  # a worker's error stops the preparation here
            read = 0
            while not done.empty():
                read += done.get()
            line.add(read, force=not pending)
        if jobs:
            sys.stderr.write("\n")

    summaries = [
        json.loads((progress / f"{records.shard_name(name, split, s, len(chunks))}.json").read_text())
        for s in range(len(chunks))
    ]
    manifest = dict(
        name=name,
        split=split,
        store=store,
        filterbank=filterbank,
        input=str(input_root),
        files=len(files),
        clips=sum(s["clips"] for s in summaries),
        hours=sum(s["seconds"] for s in summaries) / 3600,
        shards=[dict(file=s["shard"], clips=s["clips"], seconds=s["seconds"]) for s in summaries],
        skipped={**left_out, **{path: reason for s in summaries for path, reason in s["skipped"].items()}},
    )
    split_info = tfds.core.SplitInfo(
        name=split, shard_lengths=[s["clips"] for s in summaries], num_bytes=0, filename_template=None
    )
    tfds.folder_dataset.write_metadata(
        data_dir=out, features=records.features(store), split_infos=[split_info], check_data=False,
        description=f"16 kHz mono clips ({store} store) prepared by maepp.data.prepare from {input_root}",
    )
    _write_atomically(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest
