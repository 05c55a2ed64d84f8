"""ModelSpec: a config's model section as the model reads it, hashable.

It mirrors `config.model`: the same field names, the encoder and decoder nested as in the config.
The checks of every field live with the other config checks (maepp/config_checks.py). Fields a
config saved by an older maepp lacks take the value its run was trained with.
"""

import dataclasses

import jax.numpy as jnp

from maepp.models.patches import grid_shape, num_visible

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TowerSpec:
    """config.model.encoder or config.model.decoder."""

    width: int
    depth: int
    heads: int
    use_rope: bool = False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    encoder: TowerSpec
    decoder: TowerSpec
    block_type: str = "macaron_swiglu"  # "macaron_swiglu" (AudioMAE++) or "vit" (plain MAE)
    input_size: tuple = (200, 80)  # (time frames, mel bins)
    patch_size: tuple = (4, 16)  # (time, frequency)
    mask_ratio: float = 0.8
    use_cls_token: bool = True
    norm_pix_loss: bool = False
    dtype: str = "float32"  # compute dtype; parameters are float32
    attention: str = "auto"  # maepp.models.layers.attention: "auto", "xla" or "cudnn"
    separate_norm3: bool = True  # Macaron blocks: LN3 of its own, or the release's LN2 in its place
    remat: str = "none"  # blocks' activations recomputed in the backward pass (maepp.models.blocks.REMAT_POLICIES)
    scan_layers: bool = False  # one nn.scan over stacked blocks (maepp.models.layer_stack), else one call per block
    swiglu_norm: str = "xla"  # maepp.models.layers.fused_swiglu_norm: "auto", "xla" or "pallas"

    @classmethod
    def from_config(cls, model) -> "ModelSpec":
        """The spec of a ConfigDict `config.model`, field for field."""
        names = {field.name for field in dataclasses.fields(cls)} - {"encoder", "decoder"}
        values = {
            name: tuple(value) if isinstance(value, (list, tuple)) else value
            for name, value in model.items()
            if name in names
        }
        return cls(encoder=TowerSpec(**model.encoder), decoder=TowerSpec(**model.decoder), **values)

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
