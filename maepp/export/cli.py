r"""Frozen-encoder embeddings of many clips, or the encoder itself as a portable artifact.

    python -m maepp.export --workdir RUN [--step N] --input DIR|LIST.csv|tfds:NAME[:SPLIT] \
        --output OUT.npz [--timestamps] [--batch_size 64] [--block_clips 256]
    python -m maepp.export --workdir RUN [--step N] --artifact DIR

--workdir is a training workdir (its newest checkpoint, or --step) or a weights directory
(maepp.weights.convert). Clips of any length, rate and channel count are resampled to 16 kHz mono and
cut into 200-frame chunks (maepp/export/embed.py); OUT.npz's layout is in maepp/export/clips.py. A
killed export restarts where it stopped when run again with the same arguments. --artifact
writes the encoder as a jax.export function plus weights, which maepp.embed.load(DIR) runs
with only jax and numpy installed.
"""

import sys

from absl import flags

from maepp import program

# Only flags here: JAX and the model load in main(), so that --help answers at once.

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir or weights directory.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_INPUT = flags.DEFINE_string("input", None, "Folder of audio, CSV list of files, or tfds:NAME[:SPLIT].")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for --input tfds:... (may be gs://).")
_OUTPUT = flags.DEFINE_string("output", None, "The .npz to write.")
_TIMESTAMPS = flags.DEFINE_bool("timestamps", False, "Also write every frame embedding and its time.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "200-frame chunks per encoder call (over all local devices).")
_BLOCK = flags.DEFINE_integer("block_clips", 256, "Clips per restartable block.")
_ARTIFACT = flags.DEFINE_string("artifact", None, "Write the encoder artifact to this new directory instead.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an --output file that maepp.export did not write.")


def main(argv):
    del argv
    from maepp.audio import filterbanks
    from maepp.export import artifact, clips
    from maepp.weights import store
    from maepp.workdir_lock import WorkdirInUse

    if not (_ARTIFACT.value or (_INPUT.value and _OUTPUT.value)):
        sys.exit("maepp.export: give --input and --output, or --artifact")
    try:
        if not _ARTIFACT.value:
            clips.check_output(_OUTPUT.value, _OVERWRITE.value)  # before any work
        model, params, config, loaded = store.load_model(_WORKDIR.value, _STEP.value)
        if _ARTIFACT.value:
            directory = artifact.write_artifact(_ARTIFACT.value, model, params, config)
            print(f"encoder of {loaded} written to {directory}; load it with maepp.embed.load({str(directory)!r})")
            return
        source = clips.input_source(_INPUT.value, _DATA_DIR.value)
        embedder = artifact.local_embedder(model, params, _BATCH.value, filterbanks.from_config(config))
        counts = clips.export(
            source,
            embedder,
            _OUTPUT.value,
            timestamps=_TIMESTAMPS.value,
            block_clips=_BLOCK.value,
            model=loaded,
            overwrite=_OVERWRITE.value,
        )
    except (FileNotFoundError, FileExistsError, ValueError, WorkdirInUse) as error:
        sys.exit(f"maepp.export: {error}")
    print(f"{counts['clips']} clips embedded with {loaded} into {counts['output']}, {counts['skipped']} skipped")


def run():
    program.run_cli(main, "maepp.export")


if __name__ == "__main__":
    run()
