r"""Turns a folder of audio into ArrayRecord shards of 16 kHz clips plus TFDS metadata.

    python -m maepp.data.prepare --input DIR --output DIR [--store log_mel|pcm|flac] [--workers N] \
        [--clips_per_shard 1024] [--filterbank torchaudio|librosa]

Every wav/flac/ogg/mp3 under --input (AudioSet as users download it, any rate or channel
count) is resampled to 16 kHz mono and stored as --store keeps it: log_mel (the default; each
clip's standardised log-mel, so training crops are slices), pcm or flac (audio, for the device
front end or longer crops). Log-mels and their stats use --filterbank, which training's
config.audio.filterbank must match (maepp/audio/filterbanks.py). Bad files are skipped and
listed with the reason in manifest.json.
A progress line shows files read, rate and ETA. Re-running the same command resumes: finished
shards are kept.
Layout and reading: maepp/data/records.py; writing and resume rules: maepp/data/writer.py.
"""
import os
import pathlib
import sys

from absl import app, flags

from maepp.audio import filterbanks
from maepp.data import records
from maepp.data.writer import prepare

_INPUT = flags.DEFINE_string("input", None, "Folder of audio files (searched recursively).")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write NAME/1.0.0/ with the shards.")
_NAME = flags.DEFINE_string("name", "audio_clips", "Dataset name (TFDS name of the result).")
_SPLIT = flags.DEFINE_string("split", "train", "Split name.")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count(), "Processes writing shards in parallel.")
_CLIPS_PER_SHARD = flags.DEFINE_integer("clips_per_shard", 1024, "Input files per shard.")
_STORE = flags.DEFINE_enum("store", "log_mel", records.STORES, "What each record keeps (maepp/data/records.py).")
_FILTERBANK = flags.DEFINE_enum("filterbank", filterbanks.DEFAULT, filterbanks.NAMES,
                                "Mel filterbank of the stored log-mels or stats (config.audio.filterbank).")


def main(argv):
    del argv
    if not _INPUT.value or not _OUTPUT.value:
        raise app.UsageError("--input and --output are required")
    try:
        manifest = prepare(_INPUT.value, _OUTPUT.value, _NAME.value, _SPLIT.value, _WORKERS.value, _CLIPS_PER_SHARD.value,
                           _STORE.value, _FILTERBANK.value)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"maepp.data.prepare: {error}")
    out = pathlib.Path(_OUTPUT.value).absolute() / _NAME.value / records.VERSION
    print(f"{manifest['clips']} clips ({manifest['hours']:.2f} h) in {len(manifest['shards'])} shards under {out}; "
          f"{len(manifest['skipped'])} files skipped (listed in manifest.json)")
    matching = "" if _FILTERBANK.value == filterbanks.DEFAULT else f" --config.audio.filterbank={_FILTERBANK.value}"
    print(f"train on them with --config.data.source='records:{out}/{_NAME.value}-{_SPLIT.value}.array_record-*'"
          f"{matching}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
