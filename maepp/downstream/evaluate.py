r"""Linear and HEAR-MLP probes on a frozen encoder's embeddings of a labelled task.

    python -m maepp.downstream.evaluate --workdir RUN --task DIR [--features encoder|random_init|log_mel_stats] \
        [--seeds 5] [--probes linear,mlp,ridge] [--shots 0] [--l2 1.0 | --l2 0.1,1,10] [--output_dir DIR]

DIR is a labelled folder (train/<label>/*, test/<label>/*) or a HEAR task (maepp/downstream/tasks.py).
Prints accuracy (mAP for multi-label tasks) per probe as the mean over seeds with its 95%
interval; the last line is JSON. The ridge probe (maepp/downstream/ridge.py) is the one a
training run's probe evaluator fits (--shots, --l2 as its settings): one deterministic fit, or one
per penalty when --l2 lists several, the one that scores best on the valid split reported. The
features are exported first into RUN/evaluations/<task>/<features>.npz (--output_dir DIR: into
DIR/<task>/, for a run this user may not write): a killed run restarts
that export where it stopped, but each new run computes the features afresh (the checkpoint may
have changed). The JSON line is kept in RUN/evaluations/<task>/scores_<features>.json too, where
maepp.tools.results finds it.
"""

import json
import sys

from absl import flags

from maepp import program
from maepp.downstream import FEATURES

# Only flags here: JAX and the model load in main(), so that --help answers at once.

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir or weights directory.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_TASK = flags.DEFINE_string(
    "task", None, "Task directory, local or gs:// (maepp.downstream.synthetic_tasks writes one).", required=True
)
_FEATURES = flags.DEFINE_enum("features", "encoder", FEATURES, "What to probe.")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Probe seeds (HEAR uses 10).")
_PROBES = flags.DEFINE_list("probes", ["linear", "mlp"], "Probes to train: linear, mlp, ridge.")
_SHOTS = flags.DEFINE_integer("shots", 0, "The ridge probe's training clips per class (0: all).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir",
    None,
    "Where the features and scores go, a folder per task (default: RUN/evaluations, where "
    "maepp.tools.results looks): for a run or weights this user may not write.",
)
_L2 = flags.DEFINE_list(
    "l2",
    ["1.0"],
    "The ridge probe's penalty on standardised features, or several "
    "(0.1,1,10): the one that scores best on the task's valid split is taken.",
)


def _penalties(values: list) -> tuple:
    try:
        l2s = tuple(float(value) for value in values)
    except ValueError:
        l2s = ()
    if not l2s or not all(0 < value < float("inf") for value in l2s):
        raise ValueError(f"--l2 {','.join(values)}: use one positive number, or several separated by commas")
    return l2s


def main(argv):
    del argv
    from maepp import checkpoints
    from maepp.audio import filterbanks
    from maepp.downstream import features
    from maepp.downstream.tasks import load_task
    from maepp.weights import store
    from maepp.workdir_lock import WorkdirInUse

    try:
        unknown = set(_PROBES.value) - {*features.PROBES, "ridge"}
        if unknown:
            raise ValueError(f"--probes {','.join(sorted(unknown))}: use linear, mlp or ridge")
        l2s = _penalties(_L2.value)
        task = load_task(_TASK.value)
        evaluations = checkpoints.workdir_path(_OUTPUT_DIR.value or f"{_WORKDIR.value}/evaluations")
        directory = evaluations / task.name
        try:  # before the model loads: a refusal comes at once
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"{evaluations} cannot be written ({error.strerror}): give --output_dir a folder this user may write"
            ) from None
        model, params, config, loaded = store.load_model(_WORKDIR.value, _STEP.value)
        embedder = features.features_embedder(_FEATURES.value, model, params, filterbanks.from_config(config))
        clip_features = features.task_features(task, embedder, directory / f"{_FEATURES.value}.npz", sys.stderr)
        results = features.evaluate(
            task,
            clip_features,
            _SEEDS.value,
            tuple(_PROBES.value),
            _SHOTS.value,
            l2s if len(l2s) > 1 else l2s[0],
            log=sys.stderr,
        )
    except (FileNotFoundError, ValueError, KeyError, WorkdirInUse) as error:
        sys.exit(f"maepp.downstream.evaluate: {error}")
    metric = "mAP" if task.multilabel else "accuracy"
    for name, result in results.items():
        if name == "ridge":
            spread = f"(closed form, l2 {result['l2']:g}{' chosen on valid' if len(l2s) > 1 else ''})"
        elif result["ci95"] is None:
            spread = "(1 seed: no interval)"
        else:
            spread = f"+- {result['ci95']:.4f} (95%, {_SEEDS.value} seeds)"
        print(f"{task.name} {_FEATURES.value} {name} probe: {metric} {result['mean']:.4f} {spread}")
    line = json.dumps(  # strict JSON: no NaN (one seed's interval is null)
        allow_nan=False,
        obj=dict(
            task=task.name,
            model=loaded,
            features=_FEATURES.value,
            metric=metric,
            clips=len(clip_features),
            **results,
        ),
    )
    print(line)
    # Beside the features, where maepp.tools.results finds it.
    (directory / f"scores_{_FEATURES.value}.json").write_text(line + "\n")


def run():
    program.run_cli(main, "maepp.downstream.evaluate")


if __name__ == "__main__":
    run()
