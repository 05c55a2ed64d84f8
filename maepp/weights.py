"""A directory of model weights that training and export load: Orbax params + the config.

    DIR/params/       Orbax checkpoint of the parameter tree (float32)
    DIR/config.json   the experiment config the parameters belong to
"""
import json
import pathlib

import ml_collections
import orbax.checkpoint as ocp


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
            "(written by maepp.convert or maepp.weights.save)"
        )
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    params = ocp.StandardCheckpointer().restore(directory / "params")
    return params, config
