"""ModelSpec: the validated, hashable form of an experiment config's `model` section."""
import dataclasses

import jax.numpy as jnp

from maepp.models.blocks import BLOCK_TYPES, REMAT_POLICIES
from maepp.models.layers import ATTENTION_IMPLEMENTATIONS, SWIGLU_NORM_IMPLEMENTATIONS
from maepp.models.patches import grid_shape, num_visible

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    block_type: str
    width: int
    depth: int
    heads: int
    encoder_rope: bool
    decoder_width: int
    decoder_depth: int
    decoder_heads: int
    decoder_rope: bool
    input_size: tuple  # (time frames, mel bins)
    patch_size: tuple  # (time, frequency)
    mask_ratio: float
    use_cls_token: bool
    norm_pix_loss: bool
    dtype: str
    attention: str = "auto"  # maepp.models.layers.attention: "auto", "xla" or "cudnn"
    separate_norm3: bool = False  # Macaron blocks: LN3 of its own, or the release's LN2 in its place
    remat: str = "none"  # blocks' activations recomputed in the backward pass (maepp.models.blocks.REMAT_POLICIES)
    scan_layers: bool = False  # one nn.scan over stacked blocks (maepp.models.layer_stack), else one call per block
    swiglu_norm: str = "xla"  # maepp.models.layers.fused_swiglu_norm: "auto", "xla" or "pallas"

    @classmethod
    def from_config(cls, model) -> "ModelSpec":
        """Builds and checks a spec from the ConfigDict `config.model`."""
        spec = cls(
            block_type=model.block_type,
            width=model.encoder.width,
            depth=model.encoder.depth,
            heads=model.encoder.heads,
            encoder_rope=model.encoder.use_rope,
            decoder_width=model.decoder.width,
            decoder_depth=model.decoder.depth,
            decoder_heads=model.decoder.heads,
            decoder_rope=model.decoder.use_rope,
            input_size=tuple(model.input_size),
            patch_size=tuple(model.patch_size),
            mask_ratio=float(model.mask_ratio),
            use_cls_token=bool(model.use_cls_token),
            norm_pix_loss=bool(model.norm_pix_loss),
            dtype=model.dtype,
            # Configs saved before these switches lack them: those models were trained with XLA's
            # attention (same function) and a separate LN3.
            attention=model.get("attention", "auto"),
            separate_norm3=bool(model.get("separate_norm3", True)),
            remat=model.get("remat", "none"),
            scan_layers=bool(model.get("scan_layers", False)),
            swiglu_norm=model.get("swiglu_norm", "xla"),
        )
        spec.validate()
        return spec

    def validate(self):
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(f"config.model.block_type={self.block_type!r}; choose one of {BLOCK_TYPES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"config.model.dtype={self.dtype!r}; choose one of {sorted(DTYPES)}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"config.model.attention={self.attention!r}; choose one of {ATTENTION_IMPLEMENTATIONS}")
        if self.swiglu_norm not in SWIGLU_NORM_IMPLEMENTATIONS:
            raise ValueError(f"config.model.swiglu_norm={self.swiglu_norm!r}; choose one of {SWIGLU_NORM_IMPLEMENTATIONS}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"config.model.remat={self.remat!r}; choose one of {REMAT_POLICIES}")
        if self.attention == "cudnn" and self.dtype != "bfloat16":
            raise ValueError(
                f"config.model.attention='cudnn' needs config.model.dtype='bfloat16' (got {self.dtype!r}): "
                "cuDNN's fused attention takes half-precision inputs only; use 'auto' or 'xla'"
            )
        for part, width, heads in (("encoder", self.width, self.heads), ("decoder", self.decoder_width, self.decoder_heads)):
            if width % heads:
                raise ValueError(f"config.model.{part}: width {width} is not divisible by heads {heads}")
            if width % 4:
                raise ValueError(f"config.model.{part}.width={width}: sin-cos tables need a multiple of 4")
        grid_shape(self.input_size, self.patch_size)
        num_visible(self.n_tokens, self.mask_ratio)

    @property
    def grid(self) -> tuple:
        return grid_shape(self.input_size, self.patch_size)

    @property
    def n_tokens(self) -> int:
        n_time, n_freq = grid_shape(self.input_size, self.patch_size)
        return n_time * n_freq

    @property
    def n_visible(self) -> int:
        return num_visible(self.n_tokens, self.mask_ratio)

    @property
    def patch_dim(self) -> int:
        return self.patch_size[0] * self.patch_size[1]

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]
