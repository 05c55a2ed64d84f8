"""Probes on frozen embeddings, as the HEAR protocol trains them (docs/reference.md#downstream-evaluation
evaluation"): a shallow MLP (one hidden layer of 1024, BatchNorm, ReLU, dropout chosen on the
validation split, Adam 1e-4, early stopping), and a linear probe (Adam 1e-3); repeated over seeds and
reported as mean and 95% interval.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats
from sklearn.metrics import average_precision_score


class Probe(nn.Module):
    n_outputs: int
    hidden: int  # 0: a linear probe
    dropout: float

    @nn.compact
    def __call__(self, x, train: bool):
        if self.hidden:
            x = nn.Dense(self.hidden)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.relu(x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.n_outputs)(x)


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    hidden: int
    dropouts: tuple  # tried in turn; the best on validation is kept
    learning_rate: float
    max_epochs: int = 500
    patience: int = 20  # epochs without a lower validation loss before stopping
    batch_size: int = 256


HEAR_MLP = ProbeSettings(hidden=1024, dropouts=(0.1, 0.5), learning_rate=1e-4)
LINEAR = ProbeSettings(hidden=0, dropouts=(0.0,), learning_rate=1e-3)


@dataclasses.dataclass
class Split:
    x: np.ndarray  # [n, features] float32
    y: np.ndarray  # [n] int class, or [n, classes] {0, 1} when multilabel


def score(logits: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    """Accuracy, or mean average precision over the classes present (multilabel)."""
    if not multilabel:
        return float(np.mean(np.argmax(logits, axis=1) == y))
    present = y.sum(axis=0) > 0
    return float(average_precision_score(y[:, present], logits[:, present], average="macro"))


def _loss(logits, y, multilabel):
    if multilabel:
        return optax.sigmoid_binary_cross_entropy(logits, y).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _fit_one(
    train: Split, valid: Split, n_outputs: int, multilabel: bool, settings: ProbeSettings, dropout: float, seed: int
):
    """-> (best validation score, predict(x) -> logits) of one probe trained with early stopping."""
    probe = Probe(n_outputs, settings.hidden, dropout)
    rng = jax.random.key(seed)
    variables = probe.init(rng, jnp.zeros((2, train.x.shape[1])), train=False)
    optimizer = optax.adam(settings.learning_rate)
    opt_state = optimizer.init(variables["params"])

    @jax.jit
    def step(variables, opt_state, x, y, rng):
        def loss_fn(params):
            logits, updates = probe.apply(
                {**variables, "params": params}, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
            )
            return _loss(logits, y, multilabel), updates

        grads, updates = jax.grad(loss_fn, has_aux=True)(variables["params"])
        param_updates, opt_state = optimizer.update(grads, opt_state)
        return {**variables, **updates, "params": optax.apply_updates(variables["params"], param_updates)}, opt_state

    predict = jax.jit(lambda variables, x: probe.apply(variables, x, train=False))
    order_rng = np.random.default_rng(seed)
    n = len(train.x)
    # Batches of equal size (the last is topped up from the shuffle), so the step compiles once.
    batch = min(settings.batch_size, n)
    # Kept: the epoch with the best validation score (ties: lower validation loss). Stopped:
    # once the validation loss, which moves smoothly where the score plateaus, stops improving.
    best, best_variables, lowest_loss, waited = (-np.inf, np.inf), variables, np.inf, 0
    for _ in range(settings.max_epochs):
        order = order_rng.permutation(n)
        order = np.concatenate([order, order[: (-n) % batch]])
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            rng, step_rng = jax.random.split(rng)
            variables, opt_state = step(variables, opt_state, train.x[rows], train.y[rows], step_rng)
        logits = predict(variables, valid.x)
        loss = float(_loss(logits, valid.y, multilabel))
        current = (score(np.asarray(logits), valid.y, multilabel), -loss)
        if current > best:
            best, best_variables = current, variables
        if loss < lowest_loss:
            lowest_loss, waited = loss, 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    return best[0], lambda x: np.asarray(predict(best_variables, x))


def evaluate_probe(
    train: Split, valid: Split, test: Split, n_outputs: int, multilabel: bool, settings: ProbeSettings, seed: int
) -> float:
    """Test score of the probe (dropout chosen on validation) for one seed; features are
    standardised with the training split's statistics."""
    mean, std = train.x.mean(axis=0), train.x.std(axis=0) + 1e-6
    splits = [Split(((s.x - mean) / std).astype(np.float32), s.y) for s in (train, valid, test)]
    fits = [
        _fit_one(splits[0], splits[1], n_outputs, multilabel, settings, dropout, seed) for dropout in settings.dropouts
    ]
    _, predict = max(fits, key=lambda fit: fit[0])
    return score(predict(splits[2].x), splits[2].y, multilabel)


def mean_and_interval(scores) -> tuple:
    """(mean, half-width of the 95% t interval) over seeds; one seed has no interval: None."""
    scores = np.asarray(scores, np.float64)
    if len(scores) < 2:
        return float(scores.mean()), None
    half = scipy.stats.t.ppf(0.975, len(scores) - 1) * scores.std(ddof=1) / np.sqrt(len(scores))
    return float(scores.mean()), float(half)
