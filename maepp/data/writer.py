"""Writing prepared datasets: ArrayRecord shards of FLAC 16 kHz clips plus TFDS metadata.

The library behind `python -m maepp.data.prepare` (which documents the layout and the resume rules).
Every wav/flac/ogg/mp3 under the input is resampled to 16 kHz mono and stored as FLAC with its
clip stats; bad files are skipped and listed with the reason in manifest.json.

Resumable: a second run skips finished shards. A shard is written under a temporary name and
renamed when closed, and counts as finished only once its progress file exists (written after
the rename), so an interrupted run never leaves a half-written shard that looks complete.
"""
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import pathlib

from absl import logging

from maepp.audio import reference
from maepp.audio.decode import AUDIO_EXTENSIONS, BadAudio, decode_audio, encode_flac, load_audio
from maepp.data import records

PROGRESS_DIR = ".progress"


def _write_atomically(path: pathlib.Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_shard(input_root: str, paths: list, shard_path: str, progress_path: str) -> dict:
    """Writes one shard; returns and records its summary. Runs in a worker process."""
    from array_record.python.array_record_module import ArrayRecordWriter

    features = records.features()
    tmp = shard_path + ".tmp"
    writer = ArrayRecordWriter(tmp, "group_size:1")
    clips, samples, skipped = 0, 0, {}
    for relative in paths:
        try:
            waveform = load_audio(pathlib.Path(input_root) / relative)
        except BadAudio as bad:
            skipped[relative] = bad.reason
            continue
        flac = encode_flac(waveform)
        # Stats of what training will decode: the 16-bit FLAC audio, not the float input.
        mean, std = reference.clip_stats(reference.unstandardized_log_mel(decode_audio(flac, relative)))
        writer.write(features.serialize_example(
            {"flac": flac, "path": relative, "num_samples": len(waveform), "log_mel_mean": mean, "log_mel_std": std}
        ))
        clips += 1
        samples += len(waveform)
    writer.close()
    os.replace(tmp, shard_path)  # complete under its final name, or not there at all
    summary = dict(shard=os.path.basename(shard_path), clips=clips, seconds=samples / reference.SAMPLE_RATE, skipped=skipped)
    _write_atomically(pathlib.Path(progress_path), json.dumps(summary))
    return summary


def list_audio(root: pathlib.Path) -> list:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {root}")
    return files


def _check_plan(progress: pathlib.Path, files: list, clips_per_shard: int):
    """A resumed run must be the same preparation: same files, same sharding."""
    plan = dict(clips_per_shard=clips_per_shard, files=len(files),
                files_sha256=hashlib.sha256("\n".join(files).encode()).hexdigest())
    plan_path = progress / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
        raise ValueError(
            f"{progress.parent} holds a preparation of other files or sharding ({plan_path}); "
            "use a new --output, or the same --input and --clips_per_shard to resume"
        )
    _write_atomically(plan_path, json.dumps(plan))


def prepare(input_dir, output_dir, name="audio_clips", split="train", workers=1, clips_per_shard=1024) -> dict:
    """Writes (or finishes) the prepared dataset; returns the manifest."""
    import tensorflow_datasets as tfds

    input_root = pathlib.Path(input_dir).absolute()
    files = list_audio(input_root)
    out = pathlib.Path(output_dir).absolute() / name / records.VERSION
    progress = out / PROGRESS_DIR
    progress.mkdir(parents=True, exist_ok=True)
    _check_plan(progress, files, clips_per_shard)
    for leftover in out.glob("*.tmp"):  # a writer killed mid-shard; its shard is written again
        leftover.unlink()

    chunks = [files[i : i + clips_per_shard] for i in range(0, len(files), clips_per_shard)]
    jobs = {}
    for shard, chunk in enumerate(chunks):
        shard_path = out / records.shard_name(name, split, shard, len(chunks))
        progress_path = progress / f"{shard_path.name}.json"
        if not progress_path.exists():
            jobs[shard] = (str(input_root), chunk, str(shard_path), str(progress_path))
    logging.info("%d shards, %d already finished, %d to write", len(chunks), len(chunks) - len(jobs), len(jobs))
    # spawn, not fork: the parent may already hold TensorFlow's threads.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max(1, workers), mp_context=context) as pool:
        futures = [pool.submit(write_shard, *job) for job in jobs.values()]
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            summary = future.result()
            print(f"shard {summary['shard']}: {summary['clips']} clips, {len(summary['skipped'])} skipped "
                  f"({done}/{len(jobs)})", flush=True)

    summaries = [
        json.loads((progress / f"{records.shard_name(name, split, s, len(chunks))}.json").read_text())
        for s in range(len(chunks))
    ]
    manifest = dict(
        name=name,
        split=split,
        input=str(input_root),
        files=len(files),
        clips=sum(s["clips"] for s in summaries),
        hours=sum(s["seconds"] for s in summaries) / 3600,
        shards=[dict(file=s["shard"], clips=s["clips"], seconds=s["seconds"]) for s in summaries],
        skipped={path: reason for s in summaries for path, reason in s["skipped"].items()},
    )
    split_info = tfds.core.SplitInfo(
        name=split, shard_lengths=[s["clips"] for s in summaries], num_bytes=0, filename_template=None
    )
    tfds.folder_dataset.write_metadata(
        data_dir=out, features=records.features(), split_infos=[split_info], check_data=False,
        description=f"16 kHz mono FLAC clips prepared by maepp.data.prepare from {input_root}",
    )
    _write_atomically(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest
