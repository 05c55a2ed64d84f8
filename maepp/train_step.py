"""The train step: one pure function of (state, batch, rng), jitted by whoever calls it."""
import flax.linen as nn
import jax
import optax
from flax import struct

from maepp.models import MASKING_RNG, MaskedAutoencoder, init_params


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: dict  # float32 master weights (logically partitioned boxes unboxed)
    opt_state: optax.OptState


def create_state(model: MaskedAutoencoder, optimizer: optax.GradientTransformation, rng) -> TrainState:
    params = nn.meta.unbox(init_params(model, rng))
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=optimizer.init(params))


def make_train_step(model: MaskedAutoencoder, optimizer: optax.GradientTransformation):
    """-> train_step(state, spectrograms [B, time, freq], rng) -> (state, metrics)."""

    def loss_fn(params, spectrograms, rng):
        out = model.apply({"params": params}, spectrograms, rngs={MASKING_RNG: rng})
        return out["loss"]

    def train_step(state: TrainState, spectrograms, rng):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, spectrograms, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step
