"""One row of an experiment file (configs/experiments/): the config of the experiment's size and
block type with the row's fields set."""

import ml_collections

from maepp.configs import audiomaepp, common


def row_config(rows: dict, arg: str, size: str, block_type: str = "macaron_swiglu") -> ml_collections.ConfigDict:
    """One row of an experiment file (configs/experiments/): `arg` is "ROW" or "ROW,size=SIZE",
    e.g. "both,size=micro" for the row's CPU budget. A row is {field: value} set on the config of
    the experiment's size and block type; "block_type" and "size" in a row pick those instead, and
    a callable value is called with the config built so far (for values that depend on the size)."""
    name, *options = [part.strip() for part in (arg or "").split(",")]
    if name not in rows:
        raise ValueError(f"unknown row {name!r}; this experiment's rows are {', '.join(rows)}")
    row = dict(rows[name])
    size = row.pop("size", size)
    for option in options:
        key, equals, value = option.partition("=")
        if key != "size" or not equals:
            raise ValueError(
                f"unknown option {option!r} after the row: the one option is size=SIZE, e.g. {name},size=micro"
            )
        size = value
    model = audiomaepp.model_config(size, row.pop("block_type", block_type))
    config = common.pretraining_config(model, micro=size == "micro")
    for field, value in row.items():
        *parents, leaf = field.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        section[leaf] = value(config) if callable(value) else value
    return config
