"""A directory of model weights that training and export load: Orbax params + the config.

    DIR/params/       Orbax checkpoint of the parameter tree (float32)
    DIR/config.json   the experiment config the parameters belong to

load_model() also reads a training workdir (DIR/config.json + DIR/checkpoints/<step>/).
"""

import json
import pathlib

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp

from maepp import checkpoints
from maepp.models import MaskedAutoencoder, ModelSpec, init_params, layer_stack


def save(directory, params, config: ml_collections.ConfigDict) -> pathlib.Path:
    directory = pathlib.Path(directory).absolute()
    if (directory / "params").exists():
        raise FileExistsError(f"{directory / 'params'} already exists; choose a new --output directory")
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "params", params)
    checkpointer.wait_until_finished()
    # Written last: a directory with config.json holds complete params.
    (directory / "config.json").write_text(config.to_json(indent=2))
    return directory


def load(directory):
    """-> (params, config). Raises FileNotFoundError naming what is missing."""
    directory = pathlib.Path(directory).absolute()
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} not found: {directory} is not a complete maepp weights directory "
            "(written by maepp.weights.convert or maepp.weights.store.save)"
        )
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    params = ocp.StandardCheckpointer().restore(directory / "params")
    return params, config


def load_model(directory, step: int | None = None):
    """A training workdir (newest checkpoint, or `step`) or a weights directory ->
    (model, params on this host's first device, config, what was loaded, for messages)."""
    directory = checkpoints.workdir_path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} not found: {directory} is neither a maepp training workdir nor a weights directory"
        )
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    spec = ModelSpec.from_config(config.model)
    model = MaskedAutoencoder(spec)
    if not (directory / "checkpoints").exists():
        params, _ = load(directory)
        return model, layer_stack.to_layout(params, spec.scan_layers), config, str(directory)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(lambda rng: nn.meta.unbox(init_params(model, rng)), jax.random.key(0))
    step, params = checkpoints.restore_params(directory, shapes, device, step)
    return model, params, config, f"{directory} step {step}"
