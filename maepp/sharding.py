"""Meshes, logical axis rules and sharded train state: data parallel, FSDP and tensor parallel.

The mesh has three axes, sized by config.mesh (-1 takes the devices left over):
    data   batch split, parameters replicated
    fsdp   batch split too, and parameters split along their width (ZeRO-3 style)
    model  tensor parallel: attention heads and FFN hidden units split
Parameters carry logical axis names (maepp/models/layers.py); LOGICAL_RULES maps them here.
"""
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from maepp.models import MaskedAutoencoder, init_params
from maepp.train_step import TrainState, create_state

MESH_AXES = ("data", "fsdp", "model")

LOGICAL_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("qkv", None),
    ("patch", None),
    ("norm", None),
    ("decoder_embed", None),
    ("layers", None),  # the stacked blocks of config.model.scan_layers: every device holds every layer's share
)


def mesh_shape(mesh_config, n_devices: int) -> tuple:
    """(data, fsdp, model) from the config; one -1 takes the devices the others leave."""
    shape = [int(mesh_config[axis]) for axis in MESH_AXES]
    if shape.count(-1) > 1:
        raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))}: at most one axis may be -1")
    known = math.prod(size for size in shape if size != -1)
    if -1 in shape:
        if n_devices % known:
            raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))} does not divide {n_devices} devices")
        shape[shape.index(-1)] = n_devices // known
    if math.prod(shape) != n_devices:
        raise ValueError(
            f"config.mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, but there are {n_devices}"
        )
    return tuple(shape)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
    devices = devices if devices is not None else jax.devices()
    shape = mesh_shape(mesh_config, len(devices))
    # Auto axes: flax's logical partitioning places shardings through jit, not explicit types.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def batch_sharding(mesh) -> NamedSharding:
    """Examples split over data and fsdp: [batch, ...]."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def param_shardings(model: MaskedAutoencoder, mesh):
    """NamedSharding for every parameter, from its logical axis names."""
    boxed = jax.eval_shape(lambda rng: init_params(model, rng), jax.random.key(0))
    specs = nn.get_partition_spec(boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def create_sharded_state(model: MaskedAutoencoder, optimizer: optax.GradientTransformation, mesh, rng):
    """-> (state, state_shardings): the train state created directly in its shards.

    Nothing is materialised whole on one device: init runs under jit with out_shardings, so
    each device computes only its part.
    """
    init_state = functools.partial(create_state, model, optimizer)
    _, shardings = abstract_state(model, optimizer, mesh)
    state = jax.jit(init_state, out_shardings=shardings)(rng)
    return state, shardings


def abstract_state(model: MaskedAutoencoder, optimizer: optax.GradientTransformation, mesh):
    """-> (state shapes as ShapeDtypeStructs carrying their shardings, the shardings); nothing
    is allocated, so the mesh may be made of devices this host does not have (AOT compiles)."""
    params_sharding = param_shardings(model, mesh)
    abstract = jax.eval_shape(functools.partial(create_state, model, optimizer), jax.random.key(0))
    opt_sharding = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract.opt_state,
        params_sharding,
        transform_non_params=lambda _: replicated(mesh),
    )
    shardings = TrainState(step=replicated(mesh), params=params_sharding, opt_state=opt_sharding)
    placed = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return placed, shardings


def abstract_state_in_other_layout(model: MaskedAutoencoder, optimizer: optax.GradientTransformation, mesh):
    """abstract_state's ShapeDtypeStructs for the other block layout (config.model.scan_layers):
    what maepp.checkpoints reads a step saved with the other setting into before converting it."""
    other = MaskedAutoencoder(dataclasses.replace(model.spec, scan_layers=not model.spec.scan_layers))
    return abstract_state(other, optimizer, mesh)[0]


def global_batch(local_batch, mesh):
    """This process's rows -> one global array split over (data, fsdp) across all processes."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)


def sharded_train_step(train_step, state_shardings, mesh):
    """jit of maepp.train_step's pure step with the state's shardings; the old state is donated."""
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )
