r"""Turns a folder of audio (local or gs://) into shards of 16 kHz clips, on Apache Beam.

    python -m maepp.data.prepare --input DIR --output DIR [--store log_mel|pcm|flac] [--workers N] \
        [--clips_per_shard 1024] [--filterbank torchaudio|librosa] [--holdout 0.01] [--beam_pipeline_options "..."]

Every audio file under --input (AudioSet as users download it: wav, flac, ogg, mp3, m4a/AAC,
opus, webm, at any rate and channel count) is resampled to 16 kHz mono and stored as --store
keeps it: log_mel (the default; each clip's standardised log-mel, so a training crop reads only
its own bytes), pcm or flac (audio, for the device front end or longer crops). Log-mels and their
stats use --filterbank, which training's config.audio.filterbank must match
(maepp/audio/filterbanks.py). Every file not taken is listed with the reason in manifest.json.
--holdout F keeps a fraction F of the files out of training, prepared alike in the dataset's
holdout/ folder: a training run on the dataset evaluates its held-out loss there (by default).

The work runs as a Beam pipeline: on Beam's local runner (FnApiRunner) with --workers processes, or
anywhere Beam runs with --beam_pipeline_options (e.g. "--runner=DataflowRunner --project=P
--region=R --temp_location=gs://B/tmp"). Re-running the same command resumes: finished shards
are kept. Layout and reading: maepp/data/clip_store.py; writing and resume rules:
maepp/data/writer.py.
"""

import json
import os
import sys

from absl import flags

from maepp import program
from maepp.audio import filterbanks
from maepp.data import clip_store
from maepp.data.writer import HOLDOUT_SPLIT, MAX_CLIP_SECONDS, dataset_directory, prepare

_INPUT = flags.DEFINE_string("input", None, "Folder of audio files, local or gs:// (searched recursively).")
_OUTPUT = flags.DEFINE_string(
    "output", None, f"Where to write NAME/{clip_store.VERSION}/ with the shards, local or gs://."
)
_VERIFY = flags.DEFINE_string(
    "verify",
    None,
    "Check a prepared dataset (OUTPUT/NAME/2.0.0, local or gs://) instead of writing one: its "
    "manifest, index, checksums and shards' headers against each other, and every clip against its checksums.",
)
_NAME = flags.DEFINE_string("name", "audio_clips", "Dataset name (TFDS name of the result).")
_SPLIT = flags.DEFINE_string("split", "train", "Split name.")
_WORKERS = flags.DEFINE_integer(
    "workers", os.cpu_count(), "Processes writing shards in parallel (Beam's local runner)."
)
_CLIPS_PER_SHARD = flags.DEFINE_integer("clips_per_shard", 1024, "Input files per shard.")
_STORE = flags.DEFINE_enum(
    "store", "log_mel", clip_store.STORES, "What a shard keeps of each clip (maepp/data/clip_store.py)."
)
_FILTERBANK = flags.DEFINE_enum(
    "filterbank",
    filterbanks.DEFAULT,
    filterbanks.NAMES,
    "Mel filterbank of the stored log-mels or stats (config.audio.filterbank).",
)
_MAX_CLIP_SECONDS = flags.DEFINE_float(
    "max_clip_seconds",
    MAX_CLIP_SECONDS,
    "Files longer than this become several clips of at most this length, "
    "each named by where it starts (talk.wav@600s), so memory stays bounded whatever a file's length.",
)
_HOLDOUT = flags.DEFINE_float(
    "holdout",
    0.0,
    f"Fraction of the files kept out of training, written as the split {HOLDOUT_SPLIT!r} in the "
    f"dataset's {HOLDOUT_SPLIT}/ folder, where training's held-out loss is computed (0: none).",
)
_BEAM_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options",
    "",
    "Apache Beam pipeline options, e.g. "
    "'--runner=DirectRunner --direct_num_workers=4 --direct_running_mode=multi_processing' "
    "or a Dataflow, Flink or Spark runner's; they replace --workers.",
)


def verify(directory: str):
    """prepare --verify: one line per damaged clip, then one summary line; exit 1 if any is damaged."""
    try:
        source = clip_store.ClipStoreSource(directory)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"maepp.data.prepare: {error}")
    damaged = source.verify_all()
    for reason in damaged:
        print(reason)
    summary = (
        f"{len(source):,} clips in {len(source.shards)} shards checked against their CRC32C checksums: "
        f"{len(damaged)} damaged"
    )
    if damaged:
        sys.exit(
            f"maepp.data.prepare: {summary}; prepare again into the same --output after deleting the damaged "
            "shards (the others are kept)"
        )
    print(summary)


def main(argv):
    del argv
    if _VERIFY.value:
        verify(_VERIFY.value)
        return
    if not (_INPUT.value and _OUTPUT.value):
        sys.exit(
            "maepp.data.prepare: --input and --output name what to prepare and where (or --verify DIR checks "
            "a prepared dataset)"
        )
    try:
        manifest = prepare(
            _INPUT.value,
            _OUTPUT.value,
            _NAME.value,
            _SPLIT.value,
            _WORKERS.value,
            _CLIPS_PER_SHARD.value,
            _STORE.value,
            _FILTERBANK.value,
            _BEAM_OPTIONS.value,
            progress=True,
            max_clip_seconds=_MAX_CLIP_SECONDS.value,
            holdout=_HOLDOUT.value,
        )
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"maepp.data.prepare: {error}")
    out = dataset_directory(_OUTPUT.value, _NAME.value)
    print(
        f"{manifest['clips']} clips ({manifest['hours']:.2f} h) in {len(manifest['shards'])} shards under {out}; "
        f"{len(manifest['skipped'])} files left out (listed in manifest.json)"
    )
    if "holdout" in manifest:
        held = json.loads((out / manifest["holdout"] / "manifest.json").read_text())
        print(
            f"{held['clips']} more clips ({held['hours']:.2f} h) held out under {out / manifest['holdout']}: "
            "training on this dataset computes its held-out loss on them"
        )
    matching = "" if _FILTERBANK.value == filterbanks.DEFAULT else f" --config.audio.filterbank={_FILTERBANK.value}"
    print(f"train on them with --config.data.source=prepared:{out}{matching}")


def run():
    program.run_cli(main, "maepp.data.prepare")


if __name__ == "__main__":
    run()
