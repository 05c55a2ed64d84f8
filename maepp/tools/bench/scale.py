r"""`python -m maepp.tools.bench scale`: P hosts reading one prepared dataset from a GCS API server.

    python -m maepp.tools.bench scale --processes 4 --clips 20000 --clips_per_shard 100 \
        [--shuffle clips|blocks] [--latency_ms 30] [--bucket_rps 5000] [--json]

Prepares --clips short procedural clips (the log_mel store), puts them in a bucket of a GCS API
server on 127.0.0.1 (maepp.tools.gcs_emulator, the tests' server), then starts --processes reader
processes, as many hosts: each runs the training pipeline over its rows of every global batch
(a data-parallel share) for --epochs, in the --shuffle order, through a proxy of its own that
counts its requests and bytes. The proxies hold every request --latency_ms (a network's round
trip) and share a limit of --bucket_rps requests a second (a bucket's, before GCS ramps it up):
the server itself answers at once. Reported, last line JSON:
    time to the first batch       from opening the dataset, the slowest process's
    bytes read per process        over the dataset's bytes, per epoch (1/P: each host its share; with
                                  the few batches the pipeline reads ahead of the last one)
    bytes read per crop           over the crop's own bytes (1.0: a crop reads only its rows)
    requests per crop             requests over crops read, every process's
    requests per block            (blocks) range requests over blocks read: a request per shard a block spans
    requests per crop at scale    (blocks) requests per block over block_clips: what a crop costs where
                                  each block is read once an epoch, as in a dataset far larger than
                                  the blocks a process holds (AudioSet). A small dataset's figure
                                  above also counts the next epoch's blocks read ahead, and over
                                  several epochs it gains blocks still held from the last.
    requests per second           per process, while reading
    crops per second              per process, while reading
    waited on reads               seconds each process spent waiting for its batches (it does nothing else)
    local disk bytes written      by the readers (about 0: nothing is copied)
docs/scaling.md turns these ratios into AudioSet-2M's figures on real systems.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile
from absl import flags

from maepp.data.settings import Shuffle
from maepp.tools.bench.report import report

_PROCESSES = flags.DEFINE_integer("processes", 4, "Reader processes, as many simulated hosts.")
_CLIPS = flags.DEFINE_integer("clips", 20000, "Procedural clips in the dataset.")
_SECONDS = flags.DEFINE_float("seconds", 2.0, "Length of each clip.")
_CLIPS_PER_SHARD = flags.DEFINE_integer("clips_per_shard", 100, "Clips per shard.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Global batch, split over the processes.")
_EPOCHS = flags.DEFINE_integer("epochs", 1, "Epochs each process reads.")
_WORKERS = flags.DEFINE_integer(
    "prepare_workers", None, "Beam workers preparing the dataset (default: this host's cores)."
)
_SHUFFLE = flags.DEFINE_enum("shuffle", "clips", ["clips", "blocks"], "The training order (config.data.shuffle).")
_BLOCK_CLIPS = flags.DEFINE_integer("block_clips", 128, "Clips per block (config.data.block_clips).")
_WINDOW_BLOCKS = flags.DEFINE_integer("window_blocks", 4, "Blocks per window (config.data.window_blocks).")
_STREAMS = flags.DEFINE_integer("streams", 16, "Streams of blocks (config.data.streams).")
_LATENCY_MS = flags.DEFINE_float("latency_ms", 0.0, "Every request's round trip, in milliseconds.")
_BUCKET_RPS = flags.DEFINE_float(
    "bucket_rps", 0.0, "The bucket's requests per second, all processes together (0: no limit)."
)

# One simulated host: its share of every global batch through the training pipeline.
_READER = """
import json, sys, time
from maepp.data.pipeline import train_dataset
from maepp.data.settings import Shuffle
from maepp.data.sources import source_from_string

def read(spec, batch_size, rows, n_batches, shuffle):
    opened = time.perf_counter()
    source = source_from_string(spec)
    batches = train_dataset(source, seed=0, batch_size=batch_size, rows=rows, shuffle=shuffle).as_numpy_iterator()
    next(batches)
    first = time.perf_counter()
    for _ in range(n_batches - 1):
        next(batches)
    done = time.perf_counter()
    return dict(first_batch_s=first - opened, read_s=done - first, crops=n_batches * len(rows), reads=source.reads,
                bytes_read=source.bytes_read, served=source.payloads_served, blocks=source.blocks_read)

# In a function: its pipeline, reads still in flight, is freed before the interpreter shuts down.
result = read(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]),
              Shuffle(**json.loads(sys.argv[5])))
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print(json.dumps(dict(result, disk_bytes_written=int(io["write_bytes"]))))
"""


def _dataset(root: str, n_clips: int, seconds: float, clips_per_shard: int, workers: int) -> str:
    from maepp.data.synthetic import synthetic_clip
    from maepp.data.writer import dataset_directory, prepare

    rng = np.random.default_rng(0)
    os.makedirs(f"{root}/in")
    for i in range(n_clips):
        soundfile.write(f"{root}/in/{i:06d}.wav", synthetic_clip(rng, seconds)[0], 16000, subtype="PCM_16")
    prepare(f"{root}/in", f"{root}/out", clips_per_shard=clips_per_shard, workers=workers)
    return str(dataset_directory(f"{root}/out", "audio_clips"))


def bench_scale(
    processes: int,
    n_clips: int,
    seconds: float,
    clips_per_shard: int,
    batch_size: int,
    epochs: int,
    prepare_workers: int,
    shuffle=None,
    latency_ms: float = 0.0,
    bucket_rps: float = 0.0,
) -> dict:
    import dataclasses

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from maepp.data.settings import CLIPS
    from maepp.tools.gcs_emulator import GcsEmulator, RequestLimit

    shuffle = shuffle or CLIPS

    if batch_size % processes:
        raise ValueError(f"--batch_size {batch_size} does not split over {processes} processes")
    with tempfile.TemporaryDirectory(prefix="maepp-bench-scale-") as root, GcsEmulator() as gcs:
        local = _dataset(root, n_clips, seconds, clips_per_shard, prepare_workers)
        gcs.create_bucket("maepp-bench")
        bucket = storage.Client(
            project="maepp-bench",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": f"http://127.0.0.1:{gcs.port}"},
        ).bucket("maepp-bench")
        dataset_bytes = 0
        for name in sorted(os.listdir(local)):
            if name != "plan.json":
                bucket.blob(f"data/{name}").upload_from_filename(f"{local}/{name}")
                if ".clips-" in name and name.endswith(".npy"):
                    dataset_bytes += os.path.getsize(f"{local}/{name}")
        share, n_batches = batch_size // processes, epochs * n_clips // batch_size
        meters, readers = [], []
        limit = RequestLimit(bucket_rps) if bucket_rps else None
        for process in range(processes):
            meter = gcs.meter(latency_s=latency_ms / 1000, limit=limit)
            meters.append(meter)
            rows = list(range(process * share, (process + 1) * share))
            readers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        _READER,
                        "prepared:gs://maepp-bench/data",
                        str(batch_size),
                        json.dumps(rows),
                        str(n_batches),
                        json.dumps(dataclasses.asdict(shuffle)),
                    ],
                    env={**os.environ, **gcs.client_environment(meter)},
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        results = []
        for reader in readers:
            out, _ = reader.communicate()
            if reader.returncode:
                raise RuntimeError(f"a reader process failed (exit {reader.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
    served = [meter.counts() for meter in meters]
    crop_bytes = 200 * 80 * 2
    blocks = sum(r["blocks"] for r in results)
    requests_per_block = sum(r["reads"] for r in results) / blocks if blocks else None
    return dict(
        processes=processes,
        shuffle=shuffle.kind,
        block_clips=shuffle.block_clips if shuffle.kind == "blocks" else None,
        latency_ms=latency_ms,
        bucket_rps=bucket_rps,
        clips=n_clips,
        shards=-(-n_clips // clips_per_shard),
        epochs=epochs,
        dataset_bytes=dataset_bytes,
        first_batch_s=round(max(r["first_batch_s"] for r in results), 2),
        read_per_process_over_dataset=round(max(s["response_bytes"] for s in served) / (epochs * dataset_bytes), 4),
        read_per_crop_over_crop_bytes=round(
            sum(r["bytes_read"] for r in results) / sum(r["served"] for r in results) / crop_bytes, 3
        ),
        requests_per_crop=round(sum(s["requests"] for s in served) / sum(r["crops"] for r in results), 4),
        requests_per_block=None if requests_per_block is None else round(requests_per_block, 4),
        requests_per_crop_at_scale=(
            None if requests_per_block is None else round(requests_per_block / shuffle.block_clips, 4)
        ),
        requests_per_s_per_process=round(
            float(np.mean([s["requests"] / r["read_s"] for s, r in zip(served, results)])), 1
        ),
        crops_per_s_per_process=round(float(np.mean([r["crops"] / r["read_s"] for r in results])), 1),
        waited_on_reads_s=[round(r["read_s"], 1) for r in results],
        local_disk_bytes_written=max(r["disk_bytes_written"] for r in results),
    )


def main(argv):
    del argv
    t = time.perf_counter()
    from maepp.data.pipeline import host_cores

    r = bench_scale(
        _PROCESSES.value,
        _CLIPS.value,
        _SECONDS.value,
        _CLIPS_PER_SHARD.value,
        _BATCH.value,
        _EPOCHS.value,
        _WORKERS.value or host_cores(),
        Shuffle(_SHUFFLE.value, _BLOCK_CLIPS.value, _WINDOW_BLOCKS.value, _STREAMS.value),
        _LATENCY_MS.value,
        _BUCKET_RPS.value,
    )
    report(
        r,
        f"{r['processes']} processes read {r['clips']:,} clips in {r['shards']} shards "
        f"({r['dataset_bytes'] / 1e6:.1f} MB) "
        f"from a GCS API server on 127.0.0.1, {r['epochs']} epoch(s) each, in the {r['shuffle']} order, "
        f"{r['latency_ms']:g} ms a request, {r['bucket_rps'] or 'no'} requests/s for the bucket "
        f"(bench took {time.perf_counter() - t:.0f} s)",
        f"time to the first batch: {r['first_batch_s']} s (slowest process)",
        f"bytes read per process over the dataset's, per epoch: {r['read_per_process_over_dataset']} "
        f"(1/{r['processes']} = {1 / r['processes']:.4f})",
        f"bytes read per crop over the crop's own: {r['read_per_crop_over_crop_bytes']}",
        f"requests per crop: {r['requests_per_crop']}; per second per process: {r['requests_per_s_per_process']:,} "
        f"({r['crops_per_s_per_process']:,} crops/s); waited on reads: {r['waited_on_reads_s']} s",
        *(
            [
                f"requests per block: {r['requests_per_block']}; per crop where each block is read once an "
                f"epoch (a dataset far larger than the blocks held): {r['requests_per_crop_at_scale']}"
            ]
            if r["requests_per_block"]
            else []
        ),
        f"local disk bytes written by the readers: {r['local_disk_bytes_written']:,}",
    )
