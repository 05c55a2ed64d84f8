"""Judging an encoder by probes on a labelled task (maepp.downstream.evaluate's library).

Features of every clip of the task are exported once (maepp/export/clips.py, restartable) and
probes are trained on them for several seeds. Two references put the encoder's numbers in
context: the same architecture at random init, and per-band mean and std of the log-mel.
"""

import flax.linen as nn
import jax
import numpy as np

from maepp.downstream import FEATURES, probes, ridge
from maepp.downstream.tasks import Task
from maepp.export import artifact, clips
from maepp.export.embed import Embedder
from maepp.models import init_params

PROBES = {"linear": probes.LINEAR, "mlp": probes.HEAR_MLP}  # and "ridge", the closed-form probe


class LogMelStats:
    """The baseline: each clip's 80 band means and 80 band stds of its standardised log-mel."""

    frame_size = 160

    def __init__(self, embedder: Embedder):
        self.log_mel = embedder.log_mel

    def frames_of_log_mels(self, log_mels) -> list:
        return [np.concatenate([m.mean(axis=0), m.std(axis=0)])[None].astype(np.float32) for m in log_mels]


def features_embedder(kind: str, model, params, filterbank: str):
    """The features to probe: the trained encoder, the same encoder at random init (its
    parameters made only when asked for), or the log-mel statistics; all from log-mels made
    with the encoder's filterbank."""
    if kind == "encoder":
        return artifact.local_embedder(model, params, filterbank=filterbank)
    if kind == "random_init":
        random_params = nn.meta.unbox(init_params(model, jax.random.key(0)))
        return artifact.local_embedder(model, random_params, filterbank=filterbank)
    if kind == "log_mel_stats":
        return LogMelStats(artifact.local_embedder(model, params, filterbank=filterbank))
    raise ValueError(f"features {kind!r} not understood; use one of {', '.join(FEATURES)}")


def task_features(task: Task, embedder, output, log) -> dict:
    """-> {clip path: scene features}, through an export to `output` (.npz)."""
    source = clips.FileListSource(task.root, task.paths())
    clips.export(source, embedder, output, log=log)
    exported = np.load(output)
    broken = ~np.isfinite(exported["embeddings"]).all(axis=tuple(range(1, exported["embeddings"].ndim)))
    if broken.any():
        raise ValueError(
            f"{int(broken.sum())} of {len(broken)} clips' features are not finite (first: "
            f"{exported['paths'][np.argmax(broken)]}): the encoder gives NaN or inf, so no score would "
            "mean anything; check its weights"
        )
    return dict(zip(exported["paths"].tolist(), exported["embeddings"]))


def _readable(labelled, features: dict, split: str) -> list:
    """The split's clips that the export could read (it skipped the others, naming each and why);
    ValueError where it holds clips and none of them."""
    readable = [(path, values) for path, values in labelled if path in features]
    if labelled and not readable:
        raise ValueError(
            f"every clip of the {split} split ({len(labelled)}, first: {labelled[0][0]}) was skipped as unreadable "
            "(the export's lines above say why): a probe needs at least one in each split"
        )
    return readable


def _split(labelled, features: dict, labels: list, multilabel: bool, split: str) -> probes.Split:
    labelled = _readable(labelled, features, split)
    x = np.stack([features[path] for path, _ in labelled]).astype(np.float32)
    index = {label: i for i, label in enumerate(labels)}
    if multilabel:
        y = np.zeros((len(labelled), len(labels)), np.float32)
        for row, (_, values) in enumerate(labelled):
            y[row, [index[v] for v in values]] = 1.0
    else:
        y = np.array([index[values[0]] for _, values in labelled], np.int32)
    return probes.Split(x, y)


def ridge_score(task: Task, features: dict, shots: int = 0, l2=1.0) -> tuple:
    """The closed-form probe's test score and the penalty it chose (maepp/downstream/ridge.py):
    what a training run's probe evaluator reports for the same encoder, clips, shots and l2 (one
    number, or several to choose from on the valid split)."""
    l2s = ridge.penalties(l2)
    fitting, choosing, test = (
        _readable(labelled, features, split)
        for labelled, split in zip(
            ridge.probe_clips(task, shots, choosing=len(l2s) > 1), ("fitting", "choosing", "test")
        )
    )

    def stacked(labelled):
        return np.stack([features[path] for path, _ in labelled]).astype(np.float32)

    logits = ridge.ridge_logits_per_penalty(
        stacked(fitting), ridge.targets(fitting, task.labels), stacked(choosing + test), l2s
    )
    best, score = ridge.choose(
        logits, len(choosing), ridge.scored_labels(choosing, task), ridge.scored_labels(test, task), task.multilabel
    )
    return score, l2s[best]


def evaluate(
    task: Task, features: dict, seeds: int, probe_names=("linear", "mlp"), shots: int = 0, l2: float = 1.0, log=None
) -> dict:
    """-> {probe: {mean, ci95, scores}}: per seed, the score averaged over the task's folds. The
    ridge probe is deterministic and fits fold 0 once (shots, l2: its settings): its mean is its
    score, and its l2 the penalty it chose. One rule for every output: numbers as computed here
    (JSON), four decimals where they are printed for reading. log: a line per probe and seed as
    each is done (a probe's seeds take up to a minute on a CPU)."""
    results = {}
    for name in probe_names:
        if name == "ridge":
            score, chosen = ridge_score(task, features, shots, l2)
            results[name] = dict(mean=score, ci95=0.0, scores=[score], l2=chosen)
            continue
        scores = []
        for seed in range(seeds):
            per_fold = []
            for number, fold in enumerate(task.folds):
                train, valid, test = (
                    _split(s, features, task.labels, task.multilabel, f"fold {number} {name}")
                    for s, name in ((fold.train, "train"), (fold.valid, "valid"), (fold.test, "test"))
                )
                per_fold.append(
                    probes.evaluate_probe(train, valid, test, len(task.labels), task.multilabel, PROBES[name], seed)
                )
            scores.append(float(np.mean(per_fold)))
            if log is not None:
                print(f"{name} probe, seed {seed + 1} of {seeds}: {scores[-1]:.4f}", file=log, flush=True)
        mean, half = probes.mean_and_interval(scores)
        results[name] = dict(mean=mean, ci95=half, scores=scores)
    return results
