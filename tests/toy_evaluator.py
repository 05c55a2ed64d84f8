"""A toy evaluator kind, as a user adds one (docs/training.md, "A kind of your own"): this module
and one entry of maepp.evaluator_kinds.KINDS, made in tests/test_evaluator_kinds.py."""

import jax
import jax.numpy as jnp
import numpy as np

from maepp.evaluator_kinds import Metrics


class ParameterNorm:
    """The L2 norm of the encoder's parameters, and a picture of it as a grey square."""

    def __init__(self, name, settings, run, source):
        self.name, self.scale = name, settings["scale"]

    def run(self, params, between) -> Metrics:
        del between  # no batches to stop between
        squares = jax.tree.map(lambda p: jnp.sum(jnp.square(p.astype(jnp.float32))), params["encoder"])
        norm = self.scale * float(jnp.sqrt(sum(jax.tree.leaves(squares))))
        level = np.uint8(min(255, int(norm)))
        return Metrics(
            text=f"{self.name}: encoder norm {norm:.4f}",
            scalars=dict(encoder_norm=norm),
            images=dict(square=np.full((8, 8, 3), level, np.uint8)),
        )
