"""Spectrogram patches and random masking.

Token order is time-major (docs/reference.md#input): token index = t * n_freq_patches + f.
Within a patch, values are ordered (time, frequency), matching a Conv2d kernel of shape
[D, 1, patch_t, patch_f] over a [batch, 1, time, freq] input.
"""

import jax
import jax.numpy as jnp


def grid_shape(input_size, patch_size):
    """(time patches, frequency patches), e.g. (50, 5) for 200x80 in 4x16 patches."""
    (time, freq), (pt, pf) = input_size, patch_size
    if time % pt or freq % pf:
        raise ValueError(f"input_size {tuple(input_size)} is not divisible by patch_size {tuple(patch_size)}")
    return time // pt, freq // pf


def patchify(spectrogram, patch_size):
    """[batch, time, freq] -> [batch, n_patches, patch_t * patch_f]."""
    batch, time, freq = spectrogram.shape
    pt, pf = patch_size
    nt, nf = grid_shape((time, freq), patch_size)
    x = spectrogram.reshape(batch, nt, pt, nf, pf)
    x = x.transpose(0, 1, 3, 2, 4)  # [batch, nt, nf, pt, pf]
    return x.reshape(batch, nt * nf, pt * pf)


def unpatchify(patches, input_size, patch_size):
    """[batch, n_patches, patch_t * patch_f] -> [batch, time, freq]; the inverse of patchify."""
    batch = patches.shape[0]
    pt, pf = patch_size
    nt, nf = grid_shape(input_size, patch_size)
    x = patches.reshape(batch, nt, nf, pt, pf).transpose(0, 1, 3, 2, 4)
    return x.reshape(batch, nt * pt, nf * pf)


def num_visible(n_tokens: int, mask_ratio: float) -> int:
    """How many tokens the encoder sees: the release's int(L * (100 - 100 r) / 100), float rounding
    included (0.65 of 250 keeps 87, not round()'s 88). At least one must be seen and one masked."""
    n_keep = int(n_tokens * (100 - mask_ratio * 100) / 100)
    if not 0 < n_keep < n_tokens:
        raise ValueError(
            f"leaves {n_keep} of {n_tokens} tokens visible; the loss needs some masked and the encoder some "
            "visible: use a ratio in (0, 1), e.g. 0.8"
        )
    return n_keep


def random_mask(rng, batch: int, n_tokens: int, mask_ratio: float):
    """Unstructured per-example random masking (MAE).

    Returns:
      keep_ids: [batch, n_visible] int32, indices of the visible tokens in ascending noise order.
      restore_ids: [batch, n_tokens] int32, puts [visible..., masked...] back into token order.
      mask: [batch, n_tokens] float32, 1 where the token is masked (to be reconstructed).
    """
    n_keep = num_visible(n_tokens, mask_ratio)
    noise = jax.random.uniform(rng, (batch, n_tokens))
    shuffle_ids = jnp.argsort(noise, axis=1)
    restore_ids = jnp.argsort(shuffle_ids, axis=1)
    keep_ids = shuffle_ids[:, :n_keep]
    mask = (restore_ids >= n_keep).astype(jnp.float32)
    return keep_ids.astype(jnp.int32), restore_ids.astype(jnp.int32), mask


def take_tokens(x, ids):
    """x [batch, n, ...] gathered along axis 1 at ids [batch, k] -> [batch, k, ...]."""
    return jnp.take_along_axis(x, ids.reshape(ids.shape + (1,) * (x.ndim - 2)), axis=1)
