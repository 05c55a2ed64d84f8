"""ModelSpec: a config's model section as the model reads it, hashable.

It mirrors `config.model` field for field (the encoder and decoder nested as in the config), with
no defaults of its own: the values come from the config (configs/audiomaepp.py model_config), and
a missing or unknown field is refused. The checks of every field's value live with the other
config checks (maepp/config_checks.py MODEL_FIELDS, which a test holds to these fields).
"""

import dataclasses

import jax.numpy as jnp

from maepp.models.patches import grid_shape, num_visible

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def field_names(spec_class) -> list:
    return [field.name for field in dataclasses.fields(spec_class)]


def _fields(section, spec_class, where: str, nested=frozenset()) -> dict:
    """A config section's values for spec_class, lists made tuples; ValueError naming a field the
    section lacks or one spec_class does not have."""
    expected, given = set(field_names(spec_class)) - set(nested), set(section.keys()) - set(nested)
    unknown, missing = sorted(given - expected), sorted(expected - given)
    if unknown or missing:
        problem = f"has no field {', '.join(unknown)}" if unknown else f"lacks {', '.join(missing)}"
        raise ValueError(f"config.{where} {problem}: its fields are {', '.join(field_names(spec_class))}")
    return {
        name: tuple(value) if isinstance(value, (list, tuple)) else value
        for name, value in section.items()
        if name in expected
    }


@dataclasses.dataclass(frozen=True)
class TowerSpec:
    """config.model.encoder or config.model.decoder."""

    width: int
    depth: int
    heads: int
    use_rope: bool


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    encoder: TowerSpec
    decoder: TowerSpec
    block_type: str  # "macaron_swiglu" (AudioMAE++) or "vit" (plain MAE)
    input_size: tuple  # (time frames, mel bins)
    patch_size: tuple  # (time, frequency)
    mask_ratio: float
    use_cls_token: bool
    norm_pix_loss: bool
    dtype: str  # compute dtype; parameters are float32
    attention: str  # maepp.models.layers.attention: "auto", "xla" or "cudnn"
    separate_norm3: bool  # Macaron blocks: LN3 of its own, or the release's LN2 in its place
    remat: str  # blocks' activations recomputed in the backward pass (maepp.models.blocks.REMAT_POLICIES)
    scan_layers: bool  # one nn.scan over stacked blocks (maepp.models.layer_stack), else one call per block
    swiglu_norm: str  # maepp.models.layers.fused_swiglu_norm: "auto", "xla" or "pallas"

    @classmethod
    def from_config(cls, model) -> "ModelSpec":
        """The spec of a ConfigDict `config.model`, field for field; ValueError, one line, for a
        field it lacks or one no model reads."""
        towers = {
            name: _fields(model[name], TowerSpec, f"model.{name}")
            for name in ("encoder", "decoder")
            if name in model and hasattr(model[name], "items")
        }
        values = _fields(model, cls, "model", nested=set(towers))
        return cls(**values, **{name: TowerSpec(**fields) for name, fields in towers.items()})

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
