"""The optimizer of PAPER.md's recipe: AdamW, weight decay only on weight matrices."""
import flax.linen as nn
import jax
import optax

# Parameters that are never weight-decayed (PAPER.md: none on biases and 1-D params; MAE also
# exempts the CLS and mask tokens).
_NO_DECAY_NAMES = ("bias", "scale", "cls_token", "mask_token")


def decay_mask(params):
    """True for parameters that get weight decay: kernels of Linear layers."""
    params = nn.meta.unbox(params)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in _NO_DECAY_NAMES, params
    )


def learning_rate(config) -> float:
    """Peak learning rate: base rate x global batch / 256 (PAPER.md)."""
    return config.optimizer.base_learning_rate * config.batch_size / 256


def adamw(config, schedule=None) -> optax.GradientTransformation:
    opt = config.optimizer
    return optax.adamw(
        schedule if schedule is not None else learning_rate(config),
        b1=opt.b1,
        b2=opt.b2,
        weight_decay=opt.weight_decay,
        mask=decay_mask,
    )
