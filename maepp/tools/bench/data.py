"""`python -m maepp.tools.bench data`: 2 s log-mel crops per second per host core from the tf.data
pipeline, against a plain librosa loop (load + melspectrogram per clip, one core) over the same
clips in the same run. The pipeline uses every core this process may run on, so its rate is
divided by that count. With --frontend device the hosts only decode and cut raw-sample crops,
leaving the STFT to the accelerator (config.data.frontend), so that rate is the hosts' alone.

For prepared data it also prints the store's bytes per hour of audio, the bytes the pipeline read
per crop over the crop's own bytes (the reader's count: 16-bit values, [200, 80] log-mels or the
samples its frames cover), and the largest difference of its centre crops (eval pipeline) from
librosa's on the same audio. The log_mel store holds no audio: the librosa side reads the
original files (manifest.json's input folder). With --verify_cost_rounds N, what checking every read
against its checksums costs: the pipeline timed N times checked and N times not, in turn."""

import io
import pathlib
import time

import librosa
import numpy as np
from absl import app, flags

from maepp.audio import filterbanks, reference
from maepp.audio.constants import N_MELS, SAMPLE_RATE, crop_span
from maepp.data.pipeline import centre_offset, eval_dataset, host_cores, train_dataset
from maepp.data.settings import FRONTENDS
from maepp.data.sources import FolderSource, source_from_string
from maepp.tools.bench.report import report

_SOURCE = flags.DEFINE_string("source", None, "Data source: prepared:DIR or folder:DIR.", required=True)
_CLIPS = flags.DEFINE_integer("clips", 256, "Crops to time in each method.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Pipeline batch size.")
_FRONTEND = flags.DEFINE_enum("frontend", "host", FRONTENDS, "Where the pipeline's crops become log-mels.")
_VERIFY = flags.DEFINE_bool("verify", True, "Check prepared clips against their checksums, as training does.")
_COST_ROUNDS = flags.DEFINE_integer(
    "verify_cost_rounds",
    0,
    "Prepared data: also time the pipeline this many times with checking on and off, alternating, "
    "and print what checking costs.",
)

CROP_FRAMES = 200


def _filterbank(source) -> str:
    """Prepared clips' own filterbank; files are read with the default one."""
    return source.filterbank or filterbanks.DEFAULT


def pipeline_rate(source, n_crops: int, batch_size: int, frontend: str) -> float:
    """Crops per second from the training pipeline, after one warm-up batch."""
    batches = train_dataset(
        source, seed=0, batch_size=batch_size, frontend=frontend, filterbank=_filterbank(source)
    ).as_numpy_iterator()
    next(batches)  # graph tracing and thread start-up are not throughput
    n_batches = max(1, n_crops // batch_size)
    start = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    return n_batches * batch_size / (time.perf_counter() - start)


def verification_cost(source, n_crops: int, batch_size: int, frontend: str, rounds: int) -> dict:
    """The pipeline's crops/s per core with every read checked against its checksums and with none,
    timed in turn in one process, so that the machine's drift falls on both: their medians and
    1 - checked / unchecked."""
    rates = {True: [], False: []}
    for _ in range(rounds):
        for verify in rates:
            source.verify = verify
            rates[verify].append(pipeline_rate(source, n_crops, batch_size, frontend) / host_cores())
    checked, unchecked = (float(np.median(rates[verify])) for verify in (True, False))
    return dict(
        checked_crops_per_s_per_core=round(checked, 2),
        unchecked_crops_per_s_per_core=round(unchecked, 2),
        verification_cost=round(1 - checked / unchecked, 4),
        verification_rounds=rounds,
    )


def librosa_crop(encoded: bytes, rng: np.random.Generator) -> np.ndarray:
    """What a plain loop does per clip: librosa.load, STFT, mel, log, standardise, crop."""
    waveform, _ = librosa.load(io.BytesIO(encoded), sr=SAMPLE_RATE, mono=True)
    mel = reference.log_mel(waveform)
    start = rng.integers(max(len(mel) - CROP_FRAMES, 0) + 1)
    return mel[start : start + CROP_FRAMES]


def librosa_rate(audio_bytes, n_clips: int, n_crops: int) -> float:
    rng = np.random.default_rng(0)
    librosa_crop(audio_bytes(0), rng)  # numba compiles librosa's kernels on first use
    start = time.perf_counter()
    for i in range(n_crops):
        librosa_crop(audio_bytes(i % n_clips), rng)
    return n_crops / (time.perf_counter() - start)


def _audio_bytes(source):
    """index -> the bytes of the clip's audio file as a plain loop reads it: for prepared data the
    original file (manifest.json's input folder), whatever the store; else the file itself."""
    if source.store is None:
        return source.encoded
    root = pathlib.Path(source.manifest["input"])
    if not root.is_dir():
        raise app.UsageError(
            f"the librosa loop reads the original files of the prepared data, {root} (their "
            "manifest.json's input), which are not here"
        )
    return lambda index: (root / source.name(index)).read_bytes()


def crop_bytes(store: str) -> int:
    """A crop's own bytes in 16-bit values: its log-mel rows, or the samples its frames cover."""
    return CROP_FRAMES * N_MELS * 2 if store == "log_mel" else crop_span(CROP_FRAMES) * 2


def _stored_bytes(source) -> int:
    return sum(shard["bytes"] for shard in source.manifest["shards"])


def max_error(source, audio_bytes, n_clips: int = 64) -> float:
    """Largest |pipeline - librosa| over the centre crops of the first n_clips (eval pipeline)."""
    worst = 0.0
    filterbank = _filterbank(source)
    batches = eval_dataset(source, batch_size=16, crop_frames=CROP_FRAMES, filterbank=filterbank)
    for batch in batches.as_numpy_iterator():
        for mel, index, valid in zip(batch["log_mel"], batch["index"], batch["valid"]):
            if not valid or index >= n_clips:
                continue
            waveform, _ = librosa.load(io.BytesIO(audio_bytes(int(index))), sr=SAMPLE_RATE, mono=True)
            expected = reference.log_mel(waveform, filterbank)
            offset = centre_offset(len(expected), CROP_FRAMES)  # short clips: 0, then tiled
            expected = np.tile(expected, (-(-CROP_FRAMES // len(expected)), 1))[offset : offset + CROP_FRAMES]
            worst = max(worst, float(np.abs(mel - expected).max()))
        if batch["index"].max() >= n_clips:
            break
    return worst


def bench_data(
    source_spec: str, n_crops: int, batch_size: int, frontend: str = "host", verify: bool = True, cost_rounds: int = 0
) -> dict:
    source = source_from_string(source_spec)
    prepared = source.store is not None
    if prepared:
        source.verify = verify
    if not (prepared or isinstance(source, FolderSource)):
        raise app.UsageError(f"bench data needs a prepared: or folder: source, not {source_spec!r}")
    audio_bytes = _audio_bytes(source)
    cores = host_cores()
    counted = lambda: (source.reads, source.bytes_read) if prepared else (0, 0)
    reads_before, bytes_before = counted()
    pipeline = pipeline_rate(source, n_crops, batch_size, frontend)
    reads, read = (after - before for after, before in zip(counted(), (reads_before, bytes_before)))
    read_per_crop = read / max(reads, 1)  # every read the pipeline made, those prefetched beyond the timed crops too
    baseline = librosa_rate(audio_bytes, len(source), n_crops)
    result = dict(
        source=source_spec,
        store=source.store,
        verified=prepared and verify,
        frontend=frontend,
        host_cores=cores,
        pipeline_crops_per_s=round(pipeline, 2),
        pipeline_crops_per_s_per_core=round(pipeline / cores, 2),
        librosa_crops_per_s_per_core=round(baseline, 2),
        ratio_per_core=round(pipeline / cores / baseline, 2),
    )
    if prepared:
        result.update(
            bytes_per_hour=round(_stored_bytes(source) / source.manifest["hours"]),
            bytes_read_per_crop=round(read_per_crop),
            read_over_crop_bytes=round(read_per_crop / crop_bytes(source.store), 3),
            max_error_vs_librosa=max_error(source, audio_bytes),
        )
    if prepared and cost_rounds:
        result.update(verification_cost(source, n_crops, batch_size, frontend, cost_rounds))
    return result


def main(argv):
    del argv
    if _COST_ROUNDS.value and not _SOURCE.value.startswith("prepared:"):
        raise app.UsageError("--verify_cost_rounds times checksums, which only prepared: data has")
    result = bench_data(_SOURCE.value, _CLIPS.value, _BATCH.value, _FRONTEND.value, _VERIFY.value, _COST_ROUNDS.value)
    report(
        result,
        f"pipeline ({_FRONTEND.value} front end): {result['pipeline_crops_per_s']} crops/s on "
        f"{result['host_cores']} cores = {result['pipeline_crops_per_s_per_core']} per core",
        f"librosa loop: {result['librosa_crops_per_s_per_core']} crops/s on one core",
        f"ratio per core: {result['ratio_per_core']}x",
        *(
            [
                f"{result['store']} store: {result['bytes_per_hour'] / 1e6:.1f} MB per hour of audio, "
                f"{result['bytes_read_per_crop']:,} bytes read per crop "
                f"({result['read_over_crop_bytes']}x the crop's own), "
                f"centre crops within {result['max_error_vs_librosa']:.2g} of librosa"
            ]
            if result["store"]
            else []
        ),
        *(
            [
                f"checking every read: {result['checked_crops_per_s_per_core']} crops/s per core against "
                f"{result['unchecked_crops_per_s_per_core']} unchecked (medians of {_COST_ROUNDS.value} runs each, "
                f"in turn): {result['verification_cost']:.1%} slower"
            ]
            if _COST_ROUNDS.value
            else []
        ),
    )
