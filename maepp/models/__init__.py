"""AudioMAE++ and plain-MAE models in flax.linen."""

from maepp.models.mae import MASKING_RNG, MaskedAutoencoder, init_params, patch_errors, reconstruction_loss
from maepp.models.spec import ModelSpec

__all__ = ["MASKING_RNG", "MaskedAutoencoder", "ModelSpec", "init_params", "patch_errors", "reconstruction_loss"]
