"""The held-out step: reconstruction error on fixed masks, plus pictures of the first clips.

Like the train step it is one pure function, jitted by its caller (maepp/evaluators/held_out.py).
"""

import jax.numpy as jnp

from maepp.models import MASKING_RNG, MaskedAutoencoder, patch_errors
from maepp.models.patches import patchify, unpatchify


def reconstruction_pictures(spectrograms, pred, mask, spec):
    """-> [3, B, time, freq]: input, masked input (masked patches NaN: drawn hatched, never as a
    level), and the reconstruction (visible patches from the input, masked ones predicted), as in
    MAE's figures."""
    patches = patchify(spectrograms, spec.patch_size)
    if spec.norm_pix_loss:  # the decoder predicts standardised patches: undo that per patch
        mean = patches.mean(axis=-1, keepdims=True)
        pred = pred * jnp.sqrt(patches.var(axis=-1, keepdims=True) + 1e-6) + mean
    masked = mask[..., None] > 0
    to_image = lambda p: unpatchify(p, spec.input_size, spec.patch_size)
    hidden = to_image(jnp.where(masked, jnp.nan, patches))
    reconstructed = to_image(jnp.where(masked, pred, patches))
    return jnp.stack([spectrograms, hidden, reconstructed])


def make_eval_step(model: MaskedAutoencoder, n_pictures: int):
    """-> eval_step(params, spectrograms [B, T, F], valid [B] bool, rng) -> dict(
    error_sum, masked_patches: over the valid clips' masked patches (their ratio is the loss),
    pictures [3, n_pictures, T, F] of the batch's first clips)."""
    spec = model.spec

    def eval_step(params, spectrograms, valid, rng):
        spectrograms = spectrograms.astype(jnp.float32)
        out = model.apply({"params": params}, spectrograms, rngs={MASKING_RNG: rng})
        patches = patchify(spectrograms, spec.patch_size)
        weights = out["mask"] * valid[:, None].astype(jnp.float32)
        errors = patch_errors(out["pred"], patches, spec.norm_pix_loss)
        first = slice(0, n_pictures)
        return dict(
            error_sum=jnp.sum(errors * weights),
            masked_patches=jnp.sum(weights),
            pictures=reconstruction_pictures(spectrograms[first], out["pred"][first], out["mask"][first], spec),
        )

    return eval_step
