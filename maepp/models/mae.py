"""The masked autoencoder: patch embedding, encoder, decoder with mask tokens, loss.

spectrogram [B, 200, 80] -> patches [B, 250, 64] -> keep 50 per example (random)
-> encoder over [CLS + 50] -> decoder over [CLS + 250] (mask tokens fill the gaps)
-> predicted patches [B, 250, 64] -> MSE on the masked patches only.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from maepp.models import layer_stack
from maepp.models.blocks import apply_blocks
from maepp.models.layers import Linear, layer_norm
from maepp.models.patches import patchify, random_mask, take_tokens
from maepp.models.position import sincos_1d_table, sincos_2d_table
from maepp.models.spec import ModelSpec

MASKING_RNG = "masking"  # flax rng stream that draws the masks


def _token_param(width):
    """A learned [1, 1, width] token (CLS, mask), normal(0.02) init as in the release."""
    return nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")), (1, 1, width)


class Encoder(nn.Module):
    spec: ModelSpec

    @nn.compact
    def __call__(self, x, positions):  # x [B, n, D] -> [B, n, D]
        s = self.spec
        x = apply_blocks(s, s.encoder, x, positions)
        return layer_norm(s.compute_dtype, "encoder_norm")(x)


class Decoder(nn.Module):
    spec: ModelSpec

    @nn.compact
    def __call__(self, encoded, restore_ids):
        """encoded [B, cls + n_visible, D], restore_ids [B, n_tokens] -> patches [B, n_tokens, patch_dim]."""
        s = self.spec
        dtype = s.compute_dtype
        batch = encoded.shape[0]
        cls = int(s.use_cls_token)
        x = Linear((s.decoder.width,), ("embed", "decoder_embed"), dtype, name="decoder_embed")(encoded)
        mask_token = self.param("mask_token", *_token_param(s.decoder.width))
        n_masked = s.n_tokens - (x.shape[1] - cls)
        fill = jnp.broadcast_to(mask_token.astype(dtype), (batch, n_masked, s.decoder.width))
        tokens = take_tokens(jnp.concatenate([x[:, cls:], fill], axis=1), restore_ids)  # token order
        x = jnp.concatenate([x[:, :cls], tokens], axis=1)
        x = x + jnp.asarray(sincos_1d_table(s.decoder.width, s.n_tokens, s.use_cls_token), dtype)
        positions = jnp.broadcast_to(jnp.arange(x.shape[1]), (batch, x.shape[1]))
        x = apply_blocks(s, s.decoder, x, positions)
        x = layer_norm(dtype, "decoder_norm")(x)
        x = Linear((s.patch_dim,), ("decoder_embed", "patch"), dtype, name="decoder_pred")(x)
        return x[:, cls:].astype(jnp.float32)


def target_patches(patches, norm_pix_loss: bool):
    """What the decoder predicts: the patches, or each patch standardised (norm_pix_loss)."""
    if not norm_pix_loss:
        return patches
    mean = patches.mean(axis=-1, keepdims=True)
    var = patches.var(axis=-1, keepdims=True)
    return (patches - mean) / jnp.sqrt(var + 1e-6)


def patch_errors(pred, patches, norm_pix_loss: bool):
    """Mean squared error of each patch: [B, L, patch_dim] float32 -> [B, L]."""
    return jnp.mean((pred - target_patches(patches, norm_pix_loss)) ** 2, axis=-1)


def reconstruction_loss(pred, patches, mask, norm_pix_loss: bool):
    """Mean squared error per patch, averaged over masked patches only. All [B, L, ...] float32."""
    return jnp.sum(patch_errors(pred, patches, norm_pix_loss) * mask) / jnp.sum(mask)


class MaskedAutoencoder(nn.Module):
    """AudioMAE++ (block_type macaron_swiglu) or the plain MAE baseline (block_type vit)."""

    spec: ModelSpec

    def setup(self):
        s = self.spec
        dtype = s.compute_dtype
        self.patch_embed = Linear((s.encoder.width,), ("patch", "embed"), dtype)
        if s.use_cls_token:
            self.cls_token = self.param("cls_token", *_token_param(s.encoder.width))
        self.encoder = Encoder(s)
        self.decoder = Decoder(s)
        # [cls + n_tokens, D]: fixed, so a constant of the graph rather than a parameter.
        self.encoder_positions = sincos_2d_table(s.encoder.width, s.grid, s.use_cls_token)

    def _encode_tokens(self, patches, token_ids):
        """Embeds the patches at token_ids [B, n] and runs the encoder over [CLS + n] tokens."""
        s = self.spec
        dtype = s.compute_dtype
        cls = int(s.use_cls_token)
        x = self.patch_embed(take_tokens(patches, token_ids))  # [B, n, D]
        table = jnp.asarray(self.encoder_positions, dtype)
        x = x + table[cls:][token_ids]
        positions = token_ids + cls
        if s.use_cls_token:
            cls_row = jnp.broadcast_to((self.cls_token.astype(dtype) + table[:1]), (x.shape[0], 1, s.encoder.width))
            x = jnp.concatenate([cls_row, x], axis=1)
            positions = jnp.concatenate([jnp.zeros_like(positions[:, :1]), positions], axis=1)
        return self.encoder(x, positions)

    def __call__(self, spectrogram):
        """spectrogram [B, time, freq] -> dict(loss, pred [B, L, patch_dim], mask [B, L]).

        Needs the rng stream "masking" (apply(..., rngs={"masking": key})).
        """
        s = self.spec
        patches = patchify(spectrogram.astype(jnp.float32), s.patch_size)  # [B, L, patch_dim]
        keep_ids, restore_ids, mask = random_mask(
            self.make_rng(MASKING_RNG), patches.shape[0], s.n_tokens, s.mask_ratio
        )
        encoded = self._encode_tokens(patches, keep_ids)
        pred = self.decoder(encoded, restore_ids)
        loss = reconstruction_loss(pred, patches, mask, s.norm_pix_loss)
        return dict(loss=loss, pred=pred, mask=mask)

    def encode(self, spectrogram):
        """Frozen-encoder features: every token, no masking. [B, time, freq] -> [B, L, D] (no CLS)."""
        s = self.spec
        patches = patchify(spectrogram.astype(jnp.float32), s.patch_size)
        all_ids = jnp.broadcast_to(jnp.arange(s.n_tokens, dtype=jnp.int32), patches.shape[:2])
        encoded = self._encode_tokens(patches, all_ids)
        return encoded[:, int(s.use_cls_token) :].astype(jnp.float32)


def init_params(model: MaskedAutoencoder, rng):
    """Parameters (logically partitioned boxes) for a zero batch of the model's input size.

    The stacked layout (spec.scan_layers) gets the per-block layout's values, stacked: a seed
    gives the same model whichever way its blocks are compiled.
    """
    params_rng, mask_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, *tuple(model.spec.input_size)), jnp.float32)

    def init(spec):
        return MaskedAutoencoder(spec).init({"params": params_rng, MASKING_RNG: mask_rng}, dummy)["params"]

    def init_both_layouts():
        params = init(model.spec)
        if not model.spec.scan_layers:
            return params
        values = layer_stack.to_layout(nn.meta.unbox(init(dataclasses.replace(model.spec, scan_layers=False))), True)
        return jax.tree.map(
            lambda box, value: box.replace_boxed(value), params, values, is_leaf=lambda x: isinstance(x, nn.Partitioned)
        )

    # Under jit: run op by op, init of even the micro model takes seconds.
    return jax.jit(init_both_layouts)()
