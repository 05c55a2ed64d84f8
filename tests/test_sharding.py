"""Data parallel, FSDP and tensor parallel (with scanned layers) on 8 fake CPU devices: same numbers, real shards."""

import jax
import numpy as np
import pytest

from maepp import optim, sharding
from maepp.models import MaskedAutoencoder, layer_stack
from maepp.train_step import make_train_step
from tests.helpers import CONFIG_FILES, spec_for

# One xdist worker runs this whole module, so its module fixture is built once.
pytestmark = pytest.mark.xdist_group("sharding")

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
SCANNED = (2, 2, 2)  # this mesh's run has config.model.scan_layers: the same numbers are due


def _run(mesh_shape, steps=3):
    config = CONFIG_FILES["macaron_swiglu"].get_config("micro")
    model = MaskedAutoencoder(spec_for(scan_layers=mesh_shape == SCANNED))
    optimizer = optim.optimizer(config)
    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, mesh_shape), dcn_data=1, dcn_fsdp=1, dcn_model=1))
    state, shardings = sharding.create_sharded_state(model, optimizer, mesh, jax.random.key(0))
    step = sharding.sharded_train_step(make_train_step(model, optimizer), shardings, mesh)
    rng = np.random.default_rng(0)
    losses = []
    for i in range(steps):
        batch = sharding.global_batch(rng.standard_normal((16, 200, 80)).astype(np.float32), mesh, 16)
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    return losses, state


@pytest.fixture(scope="module")
def runs():
    return {shape: _run(shape) for shape in MESHES}


def test_there_are_eight_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize("shape", MESHES[1:])
def test_same_seed_same_losses_on_every_mesh(runs, shape):
    # Losses: float32 sums over another mesh's shards, in another order.
    np.testing.assert_allclose(runs[shape][0], runs[(8, 1, 1)][0], rtol=1e-5)
    reference = jax.tree.leaves(runs[(8, 1, 1)][1].params)
    # Adam turns the summation-order noise of near-zero gradients into steps of up to lr (1e-3);
    # a tenth of one step separates that from a real difference.
    for a, b in zip(jax.tree.leaves(layer_stack.to_layout(runs[shape][1].params, False)), reference, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def _shard_shape(array):
    return array.addressable_shards[0].data.shape


def test_parameters_are_split_as_the_mesh_says(runs):
    data_parallel, fsdp, tensor = (runs[s][1] for s in MESHES)
    qkv = lambda state: state.params["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]  # [64, 3, 2, 32]
    assert _shard_shape(qkv(data_parallel)) == (64, 3, 2, 32)  # replicated
    assert _shard_shape(qkv(fsdp)) == (16, 3, 2, 32)  # width over fsdp=4
    # The scanned run: every layer on every device, width over fsdp=2, heads over model=2.
    stacked = tensor.params["encoder"]["blocks"]
    assert _shard_shape(stacked["attn"]["qkv"]["kernel"]) == (2, 32, 3, 1, 32)  # [2, 64, 3, 2, 32]
    assert _shard_shape(stacked["ffn1"]["layer1"]["kernel"]) == (2, 32, 128)  # [2, 64, 256]
    # Adam's moments are split like their parameters.
    mu = tensor.opt_state[0].mu["encoder"]["blocks"]["ffn1"]["layer1"]["kernel"]
    assert _shard_shape(mu) == (2, 32, 128)
    assert tensor.step.sharding.is_fully_replicated


def test_bad_mesh_configs_are_clear_errors():
    with pytest.raises(ValueError, match="needs 12 devices"):
        sharding.mesh_shape(dict(data=3, fsdp=4, model=1), 8)
    with pytest.raises(ValueError, match="at most one devices axis may be -1"):
        sharding.mesh_shape(dict(data=-1, fsdp=-1, model=1), 8)
    with pytest.raises(ValueError, match="does not divide"):
        sharding.mesh_shape(dict(data=-1, fsdp=3, model=1), 8)
    assert sharding.mesh_shape(dict(data=-1, fsdp=2, model=2), 8) == (2, 2, 2)
