"""Transformer blocks: AudioMAE++'s Macaron "Transformer++" block and the plain ViT block."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maepp.models.layers import FeedForward, SelfAttention, SwiGLU, layer_norm

BLOCK_TYPES = ("macaron_swiglu", "vit")
# config.model.remat: "none", or which of a block's intermediates the backward pass keeps, named
# as in jax.checkpoint_policies (the rest is recomputed): e.g. "nothing_saveable" (the block's
# input only), "dots_with_no_batch_dims_saveable", "dots_saveable".
REMAT_POLICIES = (
    "none",
    "nothing_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "everything_saveable",
)


class MacaronBlock(nn.Module):
    """docs/reference.md#model:
        x = x + 0.5 * FFN(LN1(x));  x = x + MHSA(LN2(x));  x = x + SwiGLU(LN3(x))
    The release applies LN2 where LN3 stands, so LN2 learns from both paths; its norm3 is in the
    weights but never used. That is the default here too (norm3 kept, untouched, for the weights'
    layout and parameter counts); separate_norm3 gives LN3 a life of its own, as the paper reads.
    """

    heads: int
    use_rope: bool = False
    dtype: Any = jnp.float32
    attention: str = "auto"
    separate_norm3: bool = False
    swiglu_norm: str = "xla"

    @nn.compact
    def __call__(self, x, positions):
        x = x + 0.5 * FeedForward("silu", self.dtype, name="ffn1")(layer_norm(self.dtype, "norm1")(x))
        norm2, norm3 = layer_norm(self.dtype, "norm2"), layer_norm(self.dtype, "norm3")
        x = x + SelfAttention(self.heads, self.use_rope, self.dtype, self.attention, name="attn")(norm2(x), positions)
        if not self.separate_norm3 and self.is_initializing():
            norm3(x)  # creates the release's unused norm3
        return x + SwiGLU(self.dtype, self.swiglu_norm, name="ffn2")((norm3 if self.separate_norm3 else norm2)(x))


class ViTBlock(nn.Module):
    """The plain-MAE baseline block: x + MHSA(LN1(x)), then x + MLP_gelu(LN2(x))."""

    heads: int
    use_rope: bool = False
    dtype: Any = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x, positions):
        x = x + SelfAttention(self.heads, self.use_rope, self.dtype, self.attention, name="attn")(
            layer_norm(self.dtype, "norm1")(x), positions
        )
        return x + FeedForward("gelu", self.dtype, name="mlp")(layer_norm(self.dtype, "norm2")(x))


def _scan_body(block_class):
    """The block as nn.scan's body: (x, positions) -> (x, None), the same parameters."""

    class ScanBody(block_class):
        def __call__(self, x, positions):
            return super().__call__(x, positions), None

    return ScanBody


def _block_class(spec):
    return MacaronBlock if spec.block_type == "macaron_swiglu" else ViTBlock


def _block_fields(spec, tower) -> dict:
    """A block's fields from the model spec and its tower (encoder or decoder)."""
    fields = dict(heads=tower.heads, use_rope=tower.use_rope, dtype=spec.compute_dtype, attention=spec.attention)
    if spec.block_type == "macaron_swiglu":
        fields.update(separate_norm3=spec.separate_norm3, swiglu_norm=spec.swiglu_norm)
    return fields


def _rematerialised(block_class, policy: str, scanned: bool):
    """The block class with its activations recomputed in the backward pass, but for what the
    policy keeps. Parameters and outputs are unchanged."""
    if policy == "none":
        return block_class
    # Inside scan's loop XLA cannot merge the recomputation away, so guarding against it only costs.
    return nn.remat(block_class, policy=getattr(jax.checkpoint_policies, policy), prevent_cse=not scanned)


def apply_blocks(spec, tower, x, positions):
    """The tower's (spec.encoder's or spec.decoder's) blocks of spec.block_type over x [B, n,
    width] (positions [B, n]); called inside a compact module. spec.scan_layers: one nn.scan over
    stacked parameters (one block to compile, parameters "blocks" with a leading "layers" axis),
    else blocks_0 .. blocks_{depth - 1}."""
    fields = _block_fields(spec, tower)
    if not spec.scan_layers:
        block_class = _rematerialised(_block_class(spec), spec.remat, scanned=False)
        for i in range(tower.depth):
            x = block_class(**fields, name=f"blocks_{i}")(x, positions)
        return x
    scanned = nn.scan(
        _rematerialised(_scan_body(_block_class(spec)), spec.remat, scanned=True),
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=nn.broadcast,
        length=tower.depth,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = scanned(**fields, name="blocks")(x, positions)
    return x
