"""Model FLOPs for MFU: the analytic count (maepp.models.counts) against the matrix products of
the traced model."""

import math

import jax
import jax.numpy as jnp
import pytest

from maepp.hardware import peak_flops
from maepp.models import MASKING_RNG, MaskedAutoencoder
from maepp.models.counts import abstract_params, forward_flops
from tests.helpers import spec_for


def _dot_general_flops(eqn) -> int:
    # Each output element (batch x lhs free x rhs free dims) is a dot over the contracted dims.
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in lhs_contract)


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):
                yield item.jaxpr


def traced_matmul_flops(jaxpr) -> int:
    """FLOPs of every dot_general in a jaxpr and the jaxprs inside it."""
    return sum(_dot_general_flops(eqn) for eqn in jaxpr.eqns if eqn.primitive.name == "dot_general") + sum(
        traced_matmul_flops(sub) for eqn in jaxpr.eqns for sub in _sub_jaxprs(eqn)
    )


@pytest.mark.parametrize("block_type", ["macaron_swiglu", "vit"])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"encoder.width": 128, "encoder.heads": 4, "decoder.depth": 2, "use_cls_token": False, "mask_ratio": 0.75}],
)
def test_analytic_flops_equal_the_traced_models_matrix_products(block_type, overrides):
    spec = spec_for(block_type=block_type, **overrides)
    model = MaskedAutoencoder(spec)

    def forward(params, spectrograms):
        return model.apply({"params": params}, spectrograms, rngs={MASKING_RNG: jax.random.key(0)})["loss"]

    batch_size = 2
    batch = jax.ShapeDtypeStruct((batch_size, *spec.input_size), jnp.float32)
    traced = traced_matmul_flops(jax.make_jaxpr(forward)(abstract_params(spec), batch).jaxpr)
    assert traced == batch_size * sum(forward_flops(spec).values())


def test_peak_lookup_by_device_kind():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("TPU v4") == 275e12
    assert peak_flops("cpu") is None
