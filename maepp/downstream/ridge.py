"""The closed-form linear probe: ridge regression to one-hot (or multi-hot) targets, as big_vision's
few-shot evaluator fits its probes. Deterministic and one linear solve per penalty: what a training
run can afford at every evaluation (maepp/evaluators/probe.py), and what maepp.downstream.evaluate
runs as its `ridge` probe on the same clips, so the two give the same number.

Clips: fold 0 of the task, at most `shots` fitting clips per class (by their first label, in the
task's order; 0 takes all). With one penalty `l2` the probe has nothing to tune: it fits on the
train and valid splits. With several, it fits on train, takes the penalty that scores best on
valid (the first of the best, in the order given), and reports that fit. Scored on the test
split: accuracy, or mAP for a multi-label task (maepp/downstream/probes.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from maepp.downstream import probes
from maepp.downstream.tasks import Task


def penalties(l2) -> tuple:
    """The l2 setting (a number, or a list of them to choose from) -> a tuple of floats."""
    return tuple(float(value) for value in l2) if isinstance(l2, (tuple, list)) else (float(l2),)


def probe_clips(task: Task, shots: int, choosing: bool = False) -> tuple:
    """-> (fitting clips, choosing clips, test clips) of fold 0, each [(path, [label, ...]), ...].
    Not choosing (one penalty): fit on train and valid, nothing to choose on. Choosing: fit on
    train, choose on valid."""
    fold = task.folds[0]
    taken, per_class = [], {}
    for path, labels in fold.train if choosing else fold.train + fold.valid:
        if shots and per_class.get(labels[0], 0) >= shots:
            continue
        per_class[labels[0]] = per_class.get(labels[0], 0) + 1
        taken.append((path, labels))
    return taken, list(fold.valid) if choosing else [], list(fold.test)


def targets(labelled: list, labels: list) -> np.ndarray:
    """[(path, [label, ...]), ...] -> multi-hot [n, classes] float32 (one-hot for single-label tasks)."""
    index = {label: i for i, label in enumerate(labels)}
    y = np.zeros((len(labelled), len(labels)), np.float32)
    for row, (_, values) in enumerate(labelled):
        y[row, [index[value] for value in values]] = 1.0
    return y


def scored_labels(labelled: list, task: Task) -> np.ndarray:
    """What probes.score compares logits with: multi-hot [n, classes] for a multi-label task,
    class indices [n] otherwise."""
    y = targets(labelled, task.labels)
    return y if task.multilabel else y.argmax(axis=1)


@jax.jit
def ridge_logits(train_x, train_y, test_x, l2):
    """Features standardised with the training clips' statistics, then W minimising
    |X W - (Y - mean Y)|^2 + l2 |W|^2 in closed form: train_x [n, E], train_y [n, C], test_x [m, E]
    float32 -> test logits [m, C]."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    x, test = (train_x - mean) / std, (test_x - mean) / std
    y_mean = train_y.mean(axis=0)
    gram = x.T @ x + l2 * jnp.eye(x.shape[1], dtype=x.dtype)
    weights = jax.scipy.linalg.solve(gram, x.T @ (train_y - y_mean), assume_a="pos")
    return test @ weights + y_mean


@functools.partial(jax.jit, static_argnums=3)
def ridge_logits_per_penalty(train_x, train_y, eval_x, l2s: tuple):
    """ridge_logits for each penalty of l2s, one solve after another: -> [L, m, C]. (Batched, the
    solves hang XLA's CPU backend on 8 devices from a few hundred features on.)"""
    return jnp.stack([ridge_logits(train_x, train_y, eval_x, l2) for l2 in l2s])


def choose(logits_per_penalty, n_choosing: int, choosing_labels, test_labels, multilabel: bool) -> tuple:
    """Logits [L, choosing clips + test clips, C] of each penalty's fit -> (index of the penalty
    that scores best on the choosing clips, the first of the best; its test score). One penalty
    and no choosing clips: index 0."""
    logits = np.asarray(logits_per_penalty)
    best = 0
    if n_choosing:
        scores = [probes.score(per_penalty[:n_choosing], choosing_labels, multilabel) for per_penalty in logits]
        best = int(np.argmax(scores))
    return best, probes.score(logits[best, n_choosing:], test_labels, multilabel)
