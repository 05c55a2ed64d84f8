"""Writing prepared datasets (layout 2.0.0, maepp/data/clip_store.py) as an Apache Beam pipeline.

The library behind `python -m maepp.data.prepare`. The input's audio files are listed once, put
in the order of their names' hashes (so that files of one folder or one class, or with names
alike, do not cluster in a shard or a block: reading blocks of stored clips, the training order
relies on it), and cut into shards of clips_per_shard; one Beam element per shard still to write, each written by a
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
import itertools
import json
import logging as python_logging
import math
import os
import re
import shutil
import tempfile
import threading

import numpy as np
from absl import logging
from etils import epath

from maepp import pause_points, program
from maepp.audio import filterbanks, reference
from maepp.audio.constants import SAMPLE_RATE
from maepp.audio.decode import AUDIO_EXTENSIONS, BadAudio, decode_soundfile, encode_flac, load_audio
from maepp.data import beam_worker, checksums, clip_store
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
        return dict(
            payload=tiled.astype(np.float16).tobytes(), units=len(tiled), length=len(log_mel), mean=None, std=None
        )
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
    return [
        (f"{relative}@{start / SAMPLE_RATE:g}s", waveform[start : start + max_samples])
        for start in range(0, len(waveform), max_samples)
    ]


_SHARDS_WRITTEN = itertools.count(1)  # by this process (a Beam worker writes several)


def write_shard(
    job: dict, input_root: str, store: str, filterbank: str, max_clip_seconds: float = MAX_CLIP_SECONDS
) -> dict:
    """Writes one shard and then its clip list; returns the clip list. job: output (its split's
    folder), file, paths."""
    out = epath.Path(job["output"])
    clips = dict(names=[], units=[], lengths=[], means=[], stds=[], running_crc32c=[])
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
                clips["running_crc32c"] += checksums.running_checksums(clip["payload"])
                for key, value in (
                    ("names", clip_name),
                    ("units", clip["units"]),
                    ("lengths", clip["length"]),
                    ("means", clip["mean"]),
                    ("stds", clip["std"]),
                ):
                    clips[key].append(value)
            samples += len(waveform)
        header = clip_store.npy_header(store, sum(clips["units"]))
        size = len(header) + payloads.tell()
        payloads.seek(0)
        _write_bytes_atomically(out / job["file"], [header, payloads])
    listing = dict(
        file=job["file"],
        bytes=size,
        header_bytes=len(header),
        clips=clips["names"],
        units=clips["units"],
        lengths=clips["lengths"],
        means=clips["means"],
        stds=clips["stds"],
        running_crc32c=clips["running_crc32c"],
        seconds=samples / SAMPLE_RATE,
        skipped=skipped,
    )
    _write_bytes_atomically(out / _listing_name(job["file"]), [json.dumps(listing).encode()])
    pause_points.reached("shard_written", next(_SHARDS_WRITTEN))
    beam_worker.exit_if_prepare_ended()
    return listing


def _listing_name(shard_file: str) -> str:
    return shard_file.removesuffix(".npy") + ".json"


def _finished(out: epath.Path) -> set:
    """Shards whose clip list is written."""
    return {path.name.removesuffix(".json") + ".npy" for path in out.glob("*.clips-*.json")}


def _check_plan(
    out: epath.Path,
    files: list,
    clips_per_shard: int,
    store: str,
    filterbank: str,
    max_clip_seconds: float,
    holdout: float,
):
    """A resumed run must be the same preparation: same files, same sharding, same store, filterbank,
    longest clip and held-out fraction, and this maepp's checksums."""
    plan = dict(
        clips_per_shard=clips_per_shard,
        files=len(files),
        store=store,
        filterbank=filterbank,
        files_sha256=hashlib.sha256("\n".join(files).encode()).hexdigest(),
        max_clip_seconds=max_clip_seconds,
        holdout=holdout,
        checksums=dict(kind=checksums.KIND, chunk_bytes=checksums.CHUNK_BYTES),
    )
    plan_path = out / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
        raise ValueError(
            f"{out} holds a preparation of other files, sharding, store, filterbank or held-out fraction, "
            f"or an earlier maepp's ({plan_path}); use a new --output, or the same --input, --clips_per_shard, "
            "--store, --filterbank, --max_clip_seconds and --holdout to resume"
        )
    _write_bytes_atomically(plan_path, [json.dumps(plan).encode()])


def _beam():
    """apache_beam, imported with Python's root logger at ERROR: at import its BigQuery client warns
    that apitools is missing, a line across prepare's progress bar about a part prepare never uses."""
    root = python_logging.getLogger()
    level = root.level
    root.setLevel(python_logging.ERROR)
    try:
        import apache_beam
        import apache_beam.options.pipeline_options
    finally:
        root.setLevel(level)
    return apache_beam


def pipeline_options(workers: int, beam_pipeline_options: str = ""):
    """Beam's options: the caller's (--beam_pipeline_options), or those of Beam's local runner
    (_local_runner) with `workers` processes (one: in this process)."""
    import shlex

    PipelineOptions = _beam().options.pipeline_options.PipelineOptions

    # Beam's workers log every channel they open at INFO.
    quiet = ["--default_sdk_harness_log_level=WARNING"]
    if beam_pipeline_options:
        return PipelineOptions(quiet + shlex.split(beam_pipeline_options))
    return PipelineOptions(["--runner=FnApiRunner", f"--direct_num_workers={workers}", *quiet])


class _NotTheWorkersMode(python_logging.Filter):
    """Drops the local runner's warning that the running mode is not multi_processing: _local_runner
    starts the worker processes itself, so the mode is left as it is."""

    def filter(self, record):
        return "direct_running_mode should be" not in record.getMessage()


_NOT_THE_WORKERS_MODE = _NotTheWorkersMode()  # one instance: adding it again changes nothing


def _local_runner(workers: int, log_path: str):
    """Beam's local runner (FnApiRunner: Beam's DirectRunner would first fetch its Prism runner from
    GitHub) for `workers` processes: Beam's own SDK worker, started as Beam's multi_processing mode
    starts it, but with its log level at ERROR (that mode passes workers no options), its start-up
    lines, logged before any option is read, appended to log_path, Ctrl-C left to prepare itself,
    and each worker ending as soon as prepare does (maepp/data/beam_worker.py); or None, for one
    process."""
    if workers == 1:
        return None
    import shlex
    import sys

    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment
    from google.protobuf import struct_pb2

    # Run by a shell. Ctrl-C reaches every process of the terminal's group: the workers ignore it, so
    # that prepare stops in one line (maepp.program.run_cli) and they end with its connection.
    worker = f"trap '' INT; exec {shlex.quote(sys.executable)} -m maepp.data.beam_worker 2>>{shlex.quote(log_path)}"
    worker_options = struct_pb2.Struct()
    worker_options.update({"default_sdk_harness_log_level": "ERROR"})
    provision = beam_provision_api_pb2.ProvisionInfo(
        retrieval_token="unused-retrieval-token", pipeline_options=worker_options
    )
    python_logging.getLogger(fn_runner.__name__).addFilter(_NOT_THE_WORKERS_MODE)
    return fn_runner.FnApiRunner(
        default_environment=SubprocessSDKEnvironment.from_command_string(worker),
        provision_info=fn_runner.ExtendedProvisionInfo(provision),
    )


def _run_pipeline(jobs: list, workers: int, beam_pipeline_options: str, **shard_arguments):
    beam = _beam()
    handle, log_path = tempfile.mkstemp(prefix="maepp-prepare-workers-", suffix=".log")
    os.close(handle)
    keep_log = False
    try:
        runner = None if beam_pipeline_options else _local_runner(workers, log_path)
        with beam.Pipeline(runner=runner, options=pipeline_options(workers, beam_pipeline_options)) as pipeline:
            (
                pipeline
                | "shards" >> beam.Create(jobs)
                | "spread" >> beam.Reshuffle()  # one shard per element, spread over the workers
                | "write" >> beam.Map(write_shard, **shard_arguments)
            )
    except Exception as error:  # a failure, which the workers' output may explain; not Ctrl-C
        keep_log = os.path.getsize(log_path) > 0 and not program.out_of_space(error)  # that one says itself
        if keep_log:
            logging.warning("the local worker processes' own output is kept in %s", log_path)
        raise
    finally:
        if not keep_log:
            os.unlink(log_path)


def _watch_progress(jobs: list, done: threading.Event):
    """tqdm over the files of the shards still to write, as their clip lists appear (whatever the
    runner, its workers write them here). tqdm shows a rate and an ETA once shards finish."""
    from tqdm import tqdm

    files = {job["file"]: len(job["paths"]) for job in jobs}
    folders = {epath.Path(job["output"]) for job in jobs}
    counted = set()
    with tqdm(total=sum(files.values()), unit="file", desc="prepare", smoothing=0) as bar:
        while True:
            stopping = done.wait(1.0)
            finished = (set().union(*(_finished(folder) for folder in folders)) & set(files)) - counted
            bar.update(sum(files[name] for name in finished))
            counted |= finished
            if stopping:
                return


HOLDOUT_SPLIT = "holdout"  # prepare --holdout's split: OUTPUT/NAME/2.0.0/holdout/, a prepared folder of its own


def stored_order(name: str) -> bytes:
    """Files are stored in the order of this hash of their names: a shuffle, the same whatever
    lists them (unlike held_out_files's, salted, so the held-out files spread over the shards)."""
    return hashlib.sha256(f"stored order:{name}".encode()).digest()


def held_out_files(files: list, fraction: float) -> set:
    """The files --holdout keeps out of training: round(fraction * len(files)) of them (at least one),
    those whose names hash lowest, so the choice depends on the names, not on the listing's order."""
    count = max(1, round(fraction * len(files)))
    if count >= len(files):
        raise ValueError(
            f"--holdout {fraction}: of {len(files)} audio files it would hold out {count}, leaving none to train on"
        )
    return set(sorted(files, key=lambda name: hashlib.sha256(name.encode()).digest())[:count])


def prepare(
    input_dir,
    output_dir,
    name="audio_clips",
    split="train",
    workers=1,
    clips_per_shard=1024,
    store="log_mel",
    filterbank=filterbanks.DEFAULT,
    beam_pipeline_options="",
    progress=False,
    max_clip_seconds=MAX_CLIP_SECONDS,
    holdout=0.0,
) -> dict:
    """Writes (or finishes) the prepared dataset; returns the manifest. progress: a tqdm bar of the
    files written, as shards finish. A file longer than max_clip_seconds becomes several clips.
    holdout: the fraction of the files written instead to the split HOLDOUT_SPLIT, in the
    folder of that name inside the dataset's, which the manifest names (training's held-out
    evaluator reads it: maepp/config_checks.py, held_out_sources)."""
    if not max_clip_seconds > 0:
        raise ValueError(f"--max_clip_seconds {max_clip_seconds}: must be above 0")
    if not 0 <= holdout < 1:
        raise ValueError(f"--holdout {holdout}: must be a fraction of the files, at least 0 and below 1")
    if store not in clip_store.STORES:
        raise ValueError(f"--store {store!r}: use one of {clip_store.STORES}")
    if filterbank not in filterbanks.NAMES:
        raise ValueError(f"--filterbank {filterbank!r}: use one of {filterbanks.NAMES}")
    for flag, value in (("--name", name), ("--split", split)):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", value):  # TFDS's rule, and no way out of --output
            raise ValueError(f"{flag} {value!r}: use lower-case letters, digits and _ (a TFDS name), e.g. audio_clips")
    if holdout and split == HOLDOUT_SPLIT:
        raise ValueError(f"--split {split!r} is the name --holdout gives its split: choose another")
    input_root = str(_absolute(input_dir))
    files, left_out = list_audio_files(input_root)
    files = sorted(files, key=stored_order)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {input_root}")
    out = dataset_directory(output_dir, name)
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, files, clips_per_shard, store, filterbank, max_clip_seconds, holdout)
    held = held_out_files(files, holdout) if holdout else set()
    splits = [(out, split, [f for f in files if f not in held], left_out)]
    if held:
        splits.append((out / HOLDOUT_SPLIT, HOLDOUT_SPLIT, [f for f in files if f in held], {}))
    shards, jobs = {}, []
    for folder, split_name, split_files, _ in splits:
        folder.mkdir(parents=True, exist_ok=True)
        if _local(folder):
            for leftover in folder.glob("*.tmp"):  # a writer killed mid-file; its shard is written again
                leftover.unlink()
        n_shards = math.ceil(len(split_files) / clips_per_shard)
        shards[split_name] = [clip_store.shard_name(name, split_name, s, n_shards) for s in range(n_shards)]
        finished = _finished(folder)
        jobs += [
            dict(output=str(folder), file=shard, paths=split_files[s * clips_per_shard : (s + 1) * clips_per_shard])
            for s, shard in enumerate(shards[split_name])
            if shard not in finished
        ]
    logging.info("%d shards, %d to write", sum(map(len, shards.values())), len(jobs))
    if jobs:
        done = threading.Event()
        watcher = threading.Thread(target=_watch_progress, args=(jobs, done), daemon=True) if progress else None
        if watcher:
            watcher.start()
        try:
            _run_pipeline(
                jobs,
                workers,
                beam_pipeline_options,
                input_root=input_root,
                store=store,
                filterbank=filterbank,
                max_clip_seconds=max_clip_seconds,
            )
        finally:
            done.set()
            if watcher:
                watcher.join()
    manifests = [
        _finish_split(
            folder,
            name,
            split_name,
            shards[split_name],
            split_files,
            skipped,
            dict(store=store, filterbank=filterbank, input=input_root, max_clip_seconds=max_clip_seconds),
            holdout=HOLDOUT_SPLIT if held and split_name == split else None,
        )
        for folder, split_name, split_files, skipped in reversed(splits)
    ]  # the held-out split first
    return manifests[-1]


def _finish_split(
    folder: epath.Path, name: str, split: str, shards: list, files: list, left_out: dict, settings: dict, holdout
) -> dict:
    """Writes a split's index and then its manifest, from its shards' clip lists; -> the manifest.
    holdout: the folder of the dataset's held-out split, named in the manifest, or None."""
    listings = [json.loads((folder / _listing_name(shard)).read_text()) for shard in shards]
    index, table = _index(listings, settings["store"])
    _write_bytes_atomically(folder / clip_store.index_name(name, split), [index])
    _write_bytes_atomically(folder / clip_store.checksums_name(name, split), [table])
    manifest = dict(
        layout=clip_store.VERSION,
        name=name,
        split=split,
        store=settings["store"],
        filterbank=settings["filterbank"],
        input=settings["input"],
        files=len(files),
        clips=sum(len(listing["clips"]) for listing in listings),
        max_clip_seconds=settings["max_clip_seconds"],
        hours=sum(listing["seconds"] for listing in listings) / 3600,
        index=clip_store.index_name(name, split),
        checksums=dict(
            file=clip_store.checksums_name(name, split), kind=checksums.KIND, chunk_bytes=checksums.CHUNK_BYTES
        ),
        shards=[
            dict(file=listing["file"], clips=len(listing["clips"]), bytes=listing["bytes"], seconds=listing["seconds"])
            for listing in listings
        ],
        skipped={**left_out, **{path: reason for listing in listings for path, reason in listing["skipped"].items()}},
    )
    if holdout:
        manifest["holdout"] = holdout
    _write_bytes_atomically(folder / "manifest.json", [json.dumps(manifest, indent=2).encode()])
    return manifest


def _index(listings: list, store: str) -> tuple:
    """The index and the checksum table (maepp/data/clip_store.py) from the shards' clip lists:
    .npy bytes of one record per clip, and of every clip's running checksums one after another,
    the same bytes whoever writes them."""
    rows, chunk = [], 0
    for number, listing in enumerate(listings):
        units = np.asarray(listing["units"], np.int64)
        offsets = listing["header_bytes"] + (np.cumsum(units) - units) * clip_store.unit_bytes(store)
        chunks = checksums.chunk_count(units * clip_store.unit_bytes(store))
        for offset, size, length, mean, std, count in zip(
            offsets, units, listing["lengths"], listing["means"], listing["stds"], chunks
        ):
            rows.append(
                (number, offset, size, length, np.nan if mean is None else mean, np.nan if std is None else std, chunk)
            )
            chunk += int(count)
    index, table = io.BytesIO(), io.BytesIO()
    np.save(index, np.array(rows, clip_store.INDEX_DTYPE))
    np.save(table, np.array([c for listing in listings for c in listing["running_crc32c"]], np.uint32))
    return index.getvalue(), table.getvalue()
