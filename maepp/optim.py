"""The optimizer of the recipe (docs/reference.md#pretraining-recipe): AdamW, weight decay as the release applies it."""

import flax.linen as nn
import jax
import optax

# The release decays every tensor of more than one dimension that is not a bias (timm's
# param_groups_weight_decay, no skip list; docs/reference.md#where-the-release-differs-from-the-paper):
# kernels, and the CLS and mask tokens too.
# Its 1-D tensors are the biases and LayerNorm scales; maepp's qkv bias is [3, heads, head_dim],
# so the rule goes by name here, not by rank.
_NO_DECAY_NAMES = ("bias", "scale")


def decay_mask(params):
    """True for parameters that get weight decay: kernels and the CLS and mask tokens."""
    params = nn.meta.unbox(params)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in _NO_DECAY_NAMES, params
    )


def learning_rate(config) -> float:
    """Peak learning rate: base rate x effective global batch / 256 (docs/reference.md#pretraining-recipe).

    The effective batch of one update is batch_size x accumulate_steps.
    """
    return config.optimizer.base_learning_rate * config.batch_size * config.optimizer.accumulate_steps / 256


def schedule(config) -> optax.Schedule:
    """update number -> rate: linear warmup to the peak, then cosine to 0 (docs/reference.md#pretraining-recipe).

    config.total_steps and warmup_steps count train steps (batches); with gradient accumulation
    there is one update per accumulate_steps of them, so the schedule runs over that many fewer.
    """
    every = config.optimizer.accumulate_steps  # maepp/config_checks.py: it divides both step counts
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate(config),
        warmup_steps=config.warmup_steps // every,
        decay_steps=config.total_steps // every,
        end_value=0.0,
    )


def optimizer(config) -> optax.GradientTransformation:
    """AdamW on the schedule; optional global-norm clipping and gradient accumulation."""
    opt = config.optimizer
    transform = optax.adamw(schedule(config), b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask)
    if opt.grad_clip > 0:
        transform = optax.chain(optax.clip_by_global_norm(opt.grad_clip), transform)
    if opt.accumulate_steps > 1:
        # One update per accumulate_steps calls, with the mean gradient; the schedule counts updates.
        transform = optax.MultiSteps(transform, every_k_schedule=opt.accumulate_steps)
    return transform
