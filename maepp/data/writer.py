"""Writing prepared datasets (layout 2.0.0, maepp/data/clip_store.py) as an Apache Beam pipeline.

The library behind `python -m maepp.data.prepare`. The input's audio files are listed once and cut
into shards of clips_per_shard; one Beam element per shard still to write, each written by a
worker: every file decoded, resampled to 16 kHz mono and stored as the store keeps it. On one
machine the pipeline runs on Beam's local runner (one process, or `workers` of them); the same
pipeline runs on Dataflow, Flink or Spark with their options (--beam_pipeline_options). Input
and output may be local folders or gs://.

Runner-independent output: a shard's bytes depend only on its files, so the shards, their clip
lists, the index and the manifest are the same whoever wrote them. Resumable and idempotent:
    - a shard is written whole under its final name (a local file is renamed into place; a GCS
      object appears when its upload completes), then its clip list (.json), which marks it done;
    - a re-run writes only the shards without a clip list, and a retried bundle rewrites the same
      bytes;
    - the index and manifest are written last, from the clip lists.
"""
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import threading

import numpy as np
from absl import logging
from etils import epath

from maepp.audio import filterbanks, reference
from maepp.audio.constants import SAMPLE_RATE
from maepp.audio.decode import AUDIO_EXTENSIONS, BadAudio, decode_soundfile, encode_flac, load_audio
from maepp.data import clip_store
from maepp.data.listing import list_audio_files


def _local(path) -> bool:
    return "://" not in str(path)


def _absolute(path) -> epath.Path:
    return epath.Path(path if not _local(path) else os.path.abspath(path))


def dataset_directory(output_dir, name: str) -> epath.Path:
    """Where prepare writes a dataset: OUTPUT/NAME/VERSION."""
    return _absolute(output_dir) / name / clip_store.VERSION


def _write_bytes_atomically(path: epath.Path, chunks):
    """Writes the chunks as one file that appears complete under its name or not at all: a local
    file through a temporary name and a rename; a GCS object is only visible once uploaded."""
    target = path.with_name(path.name + ".tmp") if _local(path) else path
    with target.open("wb") as file:
        for chunk in chunks:
            if hasattr(chunk, "read"):
                shutil.copyfileobj(chunk, file, 1 << 22)
            else:
                file.write(chunk)
    if target != path:
        os.replace(target, path)


def clip_payload(store: str, filterbank: str, waveform: np.ndarray) -> dict:
    """One clip as the store keeps it: its payload bytes and their units, its own length, its
    log-mel stats (audio stores; the log_mel store keeps standardised values)."""
    if store == "log_mel":
        log_mel = reference.log_mel(waveform, filterbank)
        tiled = np.tile(log_mel, (-(-clip_store.MIN_FRAMES // len(log_mel)), 1))
        return dict(payload=tiled.astype(np.float16).tobytes(), units=len(tiled), length=len(log_mel),
                    mean=None, std=None)
    pcm = np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)
    payload = pcm.tobytes() if store == "pcm" else encode_flac(waveform)
    # Stats of what training will read back: the 16-bit audio, not the float input.
    decoded = pcm.astype(np.float32) / 32768.0 if store == "pcm" else decode_soundfile(payload, "<flac>")
    mean, std = reference.clip_stats(reference.unstandardized_log_mel(decoded, filterbank))
    units = len(pcm) if store == "pcm" else len(payload)
    return dict(payload=payload, units=units, length=len(pcm), mean=mean, std=std)


MAX_CLIP_SECONDS = 600.0  # prepare's default --max_clip_seconds


def clip_pieces(relative: str, waveform: np.ndarray, max_samples: int) -> list:
    """A file's audio -> [(clip name, samples)]: the whole file, or, past max_samples, pieces of
    max_samples from its start, each named by where it starts (`talk.wav@600s`). A clip's front
    end then holds one piece's spectra, whatever the file's length."""
    if len(waveform) <= max_samples:
        return [(relative, waveform)]
    return [(f"{relative}@{start / SAMPLE_RATE:g}s", waveform[start : start + max_samples])
            for start in range(0, len(waveform), max_samples)]


def write_shard(job: dict, input_root: str, output: str, store: str, filterbank: str,
                max_clip_seconds: float = MAX_CLIP_SECONDS) -> dict:
    """Writes one shard and then its clip list; returns the clip list. job: file, paths."""
    out = epath.Path(output)
    clips = dict(names=[], units=[], lengths=[], means=[], stds=[])
    skipped, samples = {}, 0
    with tempfile.TemporaryFile(prefix="maepp-shard-") as payloads:
        for relative in job["paths"]:
            try:
                waveform = load_audio(epath.Path(input_root) / relative)
            except BadAudio as bad:
                skipped[relative] = bad.reason
                continue
            for clip_name, piece in clip_pieces(relative, waveform, int(max_clip_seconds * SAMPLE_RATE)):
                clip = clip_payload(store, filterbank, piece)
                payloads.write(clip["payload"])
                for key, value in (("names", clip_name), ("units", clip["units"]), ("lengths", clip["length"]),
                                   ("means", clip["mean"]), ("stds", clip["std"])):
                    clips[key].append(value)
            samples += len(waveform)
        header = clip_store.npy_header(store, sum(clips["units"]))
        size = len(header) + payloads.tell()
        payloads.seek(0)
        _write_bytes_atomically(out / job["file"], [header, payloads])
    listing = dict(file=job["file"], bytes=size, header_bytes=len(header), clips=clips["names"],
                   units=clips["units"], lengths=clips["lengths"], means=clips["means"], stds=clips["stds"],
                   seconds=samples / SAMPLE_RATE, skipped=skipped)
    _write_bytes_atomically(out / _listing_name(job["file"]), [json.dumps(listing).encode()])
    return listing


def _listing_name(shard_file: str) -> str:
    return shard_file.removesuffix(".npy") + ".json"


def _finished(out: epath.Path) -> set:
    """Shards whose clip list is written."""
    return {path.name.removesuffix(".json") + ".npy" for path in out.glob("*.clips-*.json")}


def _check_plan(out: epath.Path, files: list, clips_per_shard: int, store: str, filterbank: str,
                max_clip_seconds: float):
    """A resumed run must be the same preparation: same files, same sharding, same store, filterbank
    and longest clip."""
    plan = dict(clips_per_shard=clips_per_shard, files=len(files), store=store, filterbank=filterbank,
                files_sha256=hashlib.sha256("\n".join(files).encode()).hexdigest())
    if max_clip_seconds != MAX_CLIP_SECONDS:  # plans written before the option hold none
        plan["max_clip_seconds"] = max_clip_seconds
    plan_path = out / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
        raise ValueError(
            f"{out} holds a preparation of other files, sharding, store or filterbank ({plan_path}); "
            "use a new --output, or the same --input, --clips_per_shard, --store, --filterbank and "
            "--max_clip_seconds to resume"
        )
    _write_bytes_atomically(plan_path, [json.dumps(plan).encode()])


def pipeline_options(workers: int, beam_pipeline_options: str = ""):
    """Beam's options: the caller's (--beam_pipeline_options), or Beam's local runner with `workers`
    processes (one: in this process). The local runner is named FnApiRunner, what DirectRunner
    runs this pipeline on: DirectRunner would first fetch its Prism runner from GitHub."""
    import shlex

    from apache_beam.options.pipeline_options import PipelineOptions

    # Beam's workers log every channel they open at INFO.
    quiet = ["--default_sdk_harness_log_level=WARNING"]
    if beam_pipeline_options:
        return PipelineOptions(quiet + shlex.split(beam_pipeline_options))
    mode = ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"] if workers > 1 else []
    return PipelineOptions(["--runner=FnApiRunner", *mode, *quiet])


def _run_pipeline(jobs: list, options, **shard_arguments):
    import apache_beam as beam

    with beam.Pipeline(options=options) as pipeline:
        (pipeline
         | "shards" >> beam.Create(jobs)
         | "spread" >> beam.Reshuffle()  # one shard per element, spread over the workers
         | "write" >> beam.Map(write_shard, **shard_arguments))


def _watch_progress(out: epath.Path, jobs: list, done: threading.Event):
    """tqdm over the files of the shards still to write, as their clip lists appear (whatever the
    runner, its workers write them here). tqdm shows a rate and an ETA once shards finish."""
    from tqdm import tqdm

    files = {job["file"]: len(job["paths"]) for job in jobs}
    counted = set()
    with tqdm(total=sum(files.values()), unit="file", desc="prepare", smoothing=0) as bar:
        while True:
            stopping = done.wait(1.0)
            finished = (_finished(out) & set(files)) - counted
            bar.update(sum(files[name] for name in finished))
            counted |= finished
            if stopping:
                return


def prepare(input_dir, output_dir, name="audio_clips", split="train", workers=1, clips_per_shard=1024,
            store="log_mel", filterbank=filterbanks.DEFAULT, beam_pipeline_options="", progress=False,
            max_clip_seconds=MAX_CLIP_SECONDS) -> dict:
    """Writes (or finishes) the prepared dataset; returns the manifest. progress: a tqdm bar of the
    files written, as shards finish. A file longer than max_clip_seconds becomes several clips."""
    if not max_clip_seconds > 0:
        raise ValueError(f"--max_clip_seconds {max_clip_seconds}: must be above 0")
    if store not in clip_store.STORES:
        raise ValueError(f"--store {store!r}: use one of {clip_store.STORES}")
    if filterbank not in filterbanks.NAMES:
        raise ValueError(f"--filterbank {filterbank!r}: use one of {filterbanks.NAMES}")
    for flag, value in (("--name", name), ("--split", split)):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", value):  # TFDS's rule, and no way out of --output
            raise ValueError(f"{flag} {value!r}: use lower-case letters, digits and _ (a TFDS name), e.g. audio_clips")
    input_root = str(_absolute(input_dir))
    files, left_out = list_audio_files(input_root)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {input_root}")
    out = dataset_directory(output_dir, name)
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, files, clips_per_shard, store, filterbank, max_clip_seconds)
    if _local(out):
        for leftover in out.glob("*.tmp"):  # a writer killed mid-file; its shard is written again
            leftover.unlink()

    n_shards = math.ceil(len(files) / clips_per_shard)
    shards = [clip_store.shard_name(name, split, s, n_shards) for s in range(n_shards)]
    finished = _finished(out)
    jobs = [dict(file=shard, paths=files[s * clips_per_shard: (s + 1) * clips_per_shard])
            for s, shard in enumerate(shards) if shard not in finished]
    logging.info("%d shards, %d already finished, %d to write", n_shards, n_shards - len(jobs), len(jobs))
    if jobs:
        done = threading.Event()
        watcher = threading.Thread(target=_watch_progress, args=(out, jobs, done), daemon=True) if progress else None
        if watcher:
            watcher.start()
        try:
            _run_pipeline(jobs, pipeline_options(workers, beam_pipeline_options), input_root=input_root,
                          output=str(out), store=store, filterbank=filterbank, max_clip_seconds=max_clip_seconds)
        finally:
            done.set()
            if watcher:
                watcher.join()
    listings = [json.loads((out / _listing_name(shard)).read_text()) for shard in shards]
    _write_bytes_atomically(out / clip_store.index_name(name, split), [_index(listings, store)])
    manifest = dict(
        layout=clip_store.VERSION,
        name=name,
        split=split,
        store=store,
        filterbank=filterbank,
        input=input_root,
        files=len(files),
        clips=sum(len(listing["clips"]) for listing in listings),
        max_clip_seconds=max_clip_seconds,
        hours=sum(listing["seconds"] for listing in listings) / 3600,
        index=clip_store.index_name(name, split),
        shards=[dict(file=listing["file"], clips=len(listing["clips"]), bytes=listing["bytes"],
                     seconds=listing["seconds"]) for listing in listings],
        skipped={**left_out, **{path: reason for listing in listings for path, reason in listing["skipped"].items()}},
    )
    _write_bytes_atomically(out / "manifest.json", [json.dumps(manifest, indent=2).encode()])
    return manifest


def _index(listings: list, store: str) -> bytes:
    """The index (maepp/data/clip_store.py) from the shards' clip lists: .npy bytes of one record
    per clip, the same bytes whoever writes them."""
    rows = []
    for number, listing in enumerate(listings):
        units = np.asarray(listing["units"], np.int64)
        offsets = listing["header_bytes"] + (np.cumsum(units) - units) * clip_store.unit_bytes(store)
        for offset, size, length, mean, std in zip(
            offsets, units, listing["lengths"], listing["means"], listing["stds"]
        ):
            rows.append(
                (number, offset, size, length, np.nan if mean is None else mean, np.nan if std is None else std)
            )
    buffer = io.BytesIO()
    np.save(buffer, np.array(rows, clip_store.INDEX_DTYPE))
    return buffer.getvalue()
