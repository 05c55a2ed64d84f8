"""The train step: one pure function of (state, batch, rng), jitted by whoever calls it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from maepp.models import MASKING_RNG, MaskedAutoencoder, init_params


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: dict  # float32 master weights (logically partitioned boxes unboxed)
    opt_state: optax.OptState


def create_state(model: MaskedAutoencoder, optimizer: optax.GradientTransformation, rng) -> TrainState:
    params = nn.meta.unbox(init_params(model, rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def make_train_step(model: MaskedAutoencoder, optimizer: optax.GradientTransformation, to_log_mel=None):
    """-> train_step(state, inputs, rng) -> (state, metrics).

    inputs: log-mels [B, time, freq], or, with to_log_mel (e.g. maepp.audio.jax_frontend.crop_log_mel,
    for config.data.frontend "device"), whatever it turns into them inside the step.

    A step whose loss or gradient is not finite leaves params and optimizer state untouched
    and reports skipped = 1; the caller decides when too many in a row end the run.
    """

    def loss_fn(params, spectrograms, rng):
        out = model.apply({"params": params}, spectrograms, rngs={MASKING_RNG: rng})
        return out["loss"]

    def train_step(state: TrainState, inputs, rng):
        spectrograms = inputs if to_log_mel is None else to_log_mel(inputs)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, spectrograms, rng)
        with jax.named_scope("optimizer"):  # names the update's ops in profiles (maepp.tools.bench.profile)
            grad_norm = optax.tree.norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
            new_state = TrainState(
                step=state.step + 1,
                params=keep_if_finite(params, state.params),
                opt_state=keep_if_finite(opt_state, state.opt_state),
            )
        metrics = dict(loss=loss, grad_norm=grad_norm, skipped=(~finite).astype(jnp.int32))
        return new_state, metrics

    return train_step
