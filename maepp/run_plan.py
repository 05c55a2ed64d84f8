"""A training run's mesh, model and data sources, made from its config and checked before
anything heavy loads. Free of TensorFlow (the loop's tf.data and TensorBoard bring it in), so
`python -m maepp.train` reports a bad config in about 3 s rather than 7 on 2 CPU cores."""

from typing import NamedTuple

import jax

from maepp import sharding
from maepp.config_checks import check_train_config, resolve_auto, resolve_held_out, resolve_shuffle
from maepp.data.sources import source_from_string
from maepp.downstream.tasks import load_task
from maepp.evaluator_kinds import KINDS, evaluates
from maepp.models import ModelSpec


class RunPlan(NamedTuple):
    mesh: jax.sharding.Mesh
    spec: ModelSpec
    # "data.source" -> the training clips; "evals.NAME" -> a held-out evaluator's clips (a data
    # source) or a probe's labelled task (maepp.downstream.tasks.Task)
    sources: dict
    # the config's "auto" choices as this backend and data resolve them:
    # {"model.attention": "xla", "evals.held_out.source": "prepared:/data/x/2.0.0/holdout"}
    resolved: dict


def checked_plan(config) -> RunPlan:
    """Raises ValueError or FileNotFoundError, one line naming the field and its value, for
    anything the config gets wrong: before the workdir is taken and before any compilation."""
    mesh = sharding.make_mesh(config.mesh)
    check_train_config(config, mesh.size, mesh.shape["data"] * mesh.shape["fsdp"])
    resolved = resolve_auto(config.model, jax.default_backend(), mesh.size)
    model = config.model.copy_and_resolve_references()
    model.update({field.removeprefix("model."): value for field, value in resolved.items()})
    spec = ModelSpec.from_config(model)
    sources = {"data.source": _source(config, "data.source", config.data.source)}
    resolved.update(resolve_held_out(config, sources["data.source"]))
    resolved.update(resolve_shuffle(config, sources["data.source"]))
    for name, entry in config.get("evals", {}).items():
        if not evaluates(entry):
            continue
        kind = KINDS[entry.type]
        if kind.reads is None:
            sources[f"evals.{name}"] = None
            continue
        field = f"evals.{name}.{kind.source_field}"
        value = resolved.get(field, entry[kind.source_field])
        if kind.reads == "clips":
            sources[f"evals.{name}"] = _source(config, field, value)
        else:
            try:
                sources[f"evals.{name}"] = load_task(value)
            except (ValueError, FileNotFoundError) as error:
                raise ValueError(f"config.{field}={value!r}: {error}") from None
    return RunPlan(mesh, spec, sources, resolved)


def _source(config, field: str, clips: str):
    """The data source `clips` names, or ValueError, one line naming the field."""
    try:
        return source_from_string(clips, config.data.data_dir or None)
    except (ValueError, FileNotFoundError) as error:
        advice = str(error).replace("e.g. prepared:", f"e.g. --config.{field}=prepared:")  # a folder above one
        raise ValueError(f"config.{field}={clips!r}: {advice}") from None
