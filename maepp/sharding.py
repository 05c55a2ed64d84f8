"""Meshes, logical axis rules and sharded train state: data parallel, FSDP and tensor parallel.

The mesh has three axes, sized by config.mesh (-1 takes the devices left over):
    data   batch split, parameters replicated
    fsdp   batch split too, and parameters split along their width (ZeRO-3 style)
    model  tensor parallel: attention heads and FFN hidden units split
Parameters carry logical axis names (maepp/models/layers.py); LOGICAL_RULES maps them here.

A job of several granules, joined by a slower network than the one inside each (TPU slices over
the data-centre network; GPU nodes, or CPU processes, when a dcn_* field asks for them), has a
hybrid mesh, as MaxText's dcn_* settings make it: config.mesh.{data,fsdp,model} shape the mesh
inside one granule, config.mesh.dcn_{data,fsdp,model} how many granules each axis spans (data
parallel across them by default), and each axis is their product. The logical rules and the
batch sharding do not change.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from maepp.distributed import process_nodes
from maepp.models import MaskedAutoencoder, init_params
from maepp.train_step import TrainState, create_state

MESH_AXES = ("data", "fsdp", "model")
DCN_FIELDS = tuple(f"dcn_{axis}" for axis in MESH_AXES)

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


def _resolve(shape: list, total: int, what: str, named: dict) -> tuple:
    """Sizes with at most one -1, which takes what the others leave of `total`."""
    if shape.count(-1) > 1:
        raise ValueError(f"config.mesh {named}: at most one {what} axis may be -1")
    if any(size < 1 and size != -1 for size in shape):
        raise ValueError(f"config.mesh {named}: sizes are whole numbers of at least 1, or -1")
    known = math.prod(size for size in shape if size != -1)
    if -1 in shape:
        if total % known:
            raise ValueError(f"config.mesh {named} does not divide {total} {what}")
        shape[shape.index(-1)] = total // known
    if math.prod(shape) != total:
        raise ValueError(f"config.mesh {named} needs {math.prod(shape)} {what}, but there are {total}")
    return tuple(shape)


def mesh_shape(mesh_config, n_devices: int) -> tuple:
    """(data, fsdp, model) from the config; one -1 takes the devices the others leave."""
    shape = [int(mesh_config[axis]) for axis in MESH_AXES]
    return _resolve(shape, n_devices, "devices", dict(zip(MESH_AXES, shape)))


def _dcn_sizes(mesh_config) -> list:
    """config.mesh.dcn_{data,fsdp,model}."""
    return [int(mesh_config[field]) for field in DCN_FIELDS]


def _granules(devices, mesh_config) -> tuple:
    """-> (a function of a device that tells granules apart, or None for a single one; what they
    are called; their number). TPU slices always; on other platforms nodes (processes grouped by
    maepp.distributed.process_nodes), when a dcn_* field asks for more than one."""
    if devices[0].platform == "tpu":
        granule_of, kind = (lambda device: getattr(device, "slice_index", 0)), "slices"  # one slice may not say
    elif any(size > 1 for size in _dcn_sizes(mesh_config)):
        nodes = process_nodes() if len({d.process_index for d in devices}) == jax.process_count() > 1 else None
        granule_of = (lambda device: nodes[device.process_index]) if nodes else (lambda device: device.process_index)
        kind = "nodes"
    else:
        return None, "", 1
    count = len({granule_of(device) for device in devices})
    return (granule_of, kind, count) if count > 1 else (None, "", 1)


def hybrid_shapes(mesh_config, devices) -> tuple:
    """-> (mesh inside a granule, mesh of granules, the function telling granules apart or None):
    the config's two parts, checked against the devices."""
    granule_of, kind, count = _granules(devices, mesh_config)
    dcn_sizes = _dcn_sizes(mesh_config)
    named = dict(zip(DCN_FIELDS, dcn_sizes))
    if count == 1:
        if any(size > 1 for size in dcn_sizes):
            raise ValueError(
                f"config.mesh {named}: this job's {len(devices)} devices form one granule (one slice "
                "or one node); a dcn_* axis needs a multi-slice TPU job or several nodes (processes "
                "under Slurm are grouped by SLURM_NODEID; elsewhere each process is a node)"
            )
        return mesh_shape(mesh_config, len(devices)), (1, 1, 1), None
    dcn = _resolve(dcn_sizes, count, kind, named)
    return mesh_shape(mesh_config, len(devices) // count), dcn, granule_of


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
    devices = devices if devices is not None else jax.devices()
    ici, dcn, granule_of = hybrid_shapes(mesh_config, devices)
    # Auto axes: flax's logical partitioning places shardings through jit, not explicit types.
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if granule_of is None:
        return jax.make_mesh(ici, MESH_AXES, axis_types=axis_types, devices=devices)
    return jax.sharding.Mesh(_hybrid_grid(ici, dcn, devices, granule_of), MESH_AXES, axis_types=axis_types)


def _hybrid_grid(ici: tuple, dcn: tuple, devices, granule_of) -> np.ndarray:
    """Devices [ici * dcn, per axis]: each granule's own mesh of shape ici, the granules laid out
    by dcn, as jax's create_hybrid_device_mesh lays them, but with granules of any grouping
    (slices, or nodes of several processes). A granule's devices in process, then device order."""
    granules = {}
    for device in sorted(devices, key=lambda d: (d.process_index, d.id)):
        granules.setdefault(granule_of(device), []).append(device)
    if any(len(members) != math.prod(ici) for members in granules.values()):
        raise ValueError(
            f"the granules hold {sorted(len(m) for m in granules.values())} devices; the mesh inside "
            f"each needs {math.prod(ici)}"
        )
    # Split physical axes where the mesh asks (FSDP 2 inside a 16x16 slice), as jax.make_mesh does.
    meshes = [
        mesh_utils.create_device_mesh(ici, members, allow_split_physical_axes=True)
        for _, members in sorted(granules.items())
    ]
    layout = np.empty(dcn, dtype=object)
    for index, mesh in zip(np.ndindex(*dcn), meshes):
        layout[index] = mesh
    return np.block(layout.tolist())


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
    _, shardings = abstract_state(model, optimizer, mesh)
    return fresh_state(model, optimizer, shardings, rng), shardings


def fresh_state(model: MaskedAutoencoder, optimizer: optax.GradientTransformation, shardings, rng):
    """A new train state, made directly in its shards (abstract_state's shardings)."""
    return jax.jit(functools.partial(create_state, model, optimizer), out_shardings=shardings)(rng)


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


def process_rows(mesh, batch_size: int) -> np.ndarray:
    """The rows of a global batch that this process's devices hold, in order [k] int64: a
    contiguous share when the batch is split over processes, every row where processes hold
    replicas of it (a model axis spanning processes). What this process's pipeline reads."""
    indices = batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
    return np.unique(np.concatenate([np.arange(batch_size)[index] for index in indices]))


def global_batch(local_batch, mesh, batch_size: int):
    """This process's rows (process_rows) [k, ...] -> one global array [batch_size, ...] split
    over (data, fsdp) across all processes."""
    return jax.make_array_from_process_local_data(
        batch_sharding(mesh), local_batch, (batch_size, *local_batch.shape[1:])
    )


def sharded_train_step(train_step, state_shardings, mesh):
    """jit of maepp.train_step's pure step with the state's shardings; the old state is donated."""
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )
