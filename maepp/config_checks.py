"""Every field of an experiment config, checked in one place before anything heavy loads.

check_train_config(config, mesh) and check_model(config.model) raise ValueError: one line naming
the field, its value and what it must be (`config.batch_size=6: must be a multiple of 4 ...`).
FIELDS holds one check per leaf of the configs in configs/, so a value's type, range and
finiteness are checked once; RELATIONS checks what one field asks of another. A test enumerates
the configs' leaves and fails on a leaf FIELDS does not check. config.evals holds named
evaluators, each checked by the fields of its kind (maepp/evaluator_kinds.py).
"""

import difflib
import re

from maepp.audio import filterbanks
from maepp.audio.constants import N_MELS
from maepp.data.settings import DAMAGED_CLIPS, FRONTENDS, SHUFFLES
from maepp.evaluator_kinds import KINDS, evaluates
from maepp.evaluator_kinds import settings as evaluator_settings
from maepp.field_checks import choice, flag, pair, real, text, whole
from maepp.models.blocks import BLOCK_TYPES, REMAT_POLICIES
from maepp.models.layers import (
    ATTENTION_IMPLEMENTATIONS,
    SWIGLU_NORM_IMPLEMENTATIONS,
    resolved_attention,
    resolved_swiglu_norm,
)
from maepp.models.patches import num_visible
from maepp.models.spec import DTYPES


def _fail(field: str, value, must: str):
    raise ValueError(f"config.{field}={value!r}: {must}")


_TOWER = {
    "width": whole(4, "model width"),
    "depth": whole(1, "blocks"),
    "heads": whole(1, "attention heads"),
    "use_rope": flag,
}

MODEL_FIELDS = {
    "block_type": choice(BLOCK_TYPES),
    **{f"{tower}.{name}": check for tower in ("encoder", "decoder") for name, check in _TOWER.items()},
    "input_size": pair("time frames, mel bins"),
    "patch_size": pair("time, frequency"),
    "mask_ratio": real("the share of patches masked", 0.0, 1.0, low_open=True),
    "use_cls_token": flag,
    "norm_pix_loss": flag,
    "dtype": choice(tuple(DTYPES)),
    "attention": choice(ATTENTION_IMPLEMENTATIONS),
    "separate_norm3": flag,
    "remat": choice(REMAT_POLICIES),
    "scan_layers": flag,
    "swiglu_norm": choice(SWIGLU_NORM_IMPLEMENTATIONS),
}

_MESH_AXIS = whole(1, "devices along the axis; -1 takes those left over", allow=(-1,))

FIELDS = {
    **{f"model.{name}": check for name, check in MODEL_FIELDS.items()},
    "seed": whole(0, "the run's random seed"),
    "data.source": text("where training clips come from", may_be_empty=False),
    "data.data_dir": text("TFDS's data_dir; empty for its default"),
    "data.frontend": choice(FRONTENDS),
    "data.prefetch": whole(1, "batches made ahead"),
    "data.damaged_clips": choice(DAMAGED_CLIPS),
    "data.shuffle": choice(SHUFFLES),
    "data.block_clips": whole(1, "consecutive stored clips read as one block"),
    "data.window_blocks": whole(1, "blocks whose clips are shuffled together"),
    "data.streams": whole(1, "streams of blocks a batch's rows are split into; it divides config.batch_size"),
    "audio.filterbank": choice(filterbanks.NAMES),
    "batch_size": whole(1, "clips per step, over all devices"),
    **{f"mesh.{axis}": _MESH_AXIS for axis in ("data", "fsdp", "model", "dcn_data", "dcn_fsdp", "dcn_model")},
    "optimizer.base_learning_rate": real("lr for a batch of 256", 0.0, low_open=True),
    "optimizer.b1": real("Adam's first-moment decay", 0.0, 1.0),
    "optimizer.b2": real("Adam's second-moment decay", 0.0, 1.0),
    "optimizer.weight_decay": real("AdamW's decoupled decay", 0.0),
    "optimizer.grad_clip": real("a global-norm clip; 0 is off", 0.0),
    "optimizer.accumulate_steps": whole(1, "batches per update"),
    "total_steps": whole(1, "steps to train"),
    "warmup_steps": whole(0, "steps of linear warmup"),
    "log_every": whole(1, "steps between log lines"),
    "checkpoint_every": whole(1, "steps between checkpoints"),
    "keep_checkpoints": whole(1, "checkpoints kept; 0 would keep none, not even the last"),
    "keep_period": whole(0, "every keep_period-th checkpoint is kept too; 0 is off"),
    "max_nonfinite_steps": whole(1, "non-finite steps in a row before the run stops"),
    "steps_in_flight": whole(1, "steps dispatched ahead"),
    "compile_cache_dir": text('compiled programs kept for the next start: "auto", a folder, or "" for none'),
    "distributed.heartbeat_s": whole(5, "seconds without a heartbeat before a process is taken for dead"),
    "distributed.shutdown_s": whole(10, "seconds the processes wait for each other at the end"),
    "profile.first_step": whole(0, "step of the first trace; 0 is off"),
    "profile.num_steps": whole(1, "steps traced"),
    "profile.every_secs": real("seconds between traces", 0.0),
}


_EVALUATOR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # it names TensorBoard tags and console lines


def _check_evals(evals, batch_devices: int):
    """Each entry of config.evals: a name, a known type, that type's fields (required ones given,
    no field it does not read), and batches the mesh can split."""
    for name, entry in evals.items():
        if not _EVALUATOR_NAME.match(name):
            raise ValueError(
                f"config.evals.{name}: an evaluator's name is a letter, then letters, digits or _ "
                "(it names the evaluator's TensorBoard tags)"
            )
        if not hasattr(entry, "items") or "type" not in entry:
            raise ValueError(f"config.evals.{name}: must be dict(type=..., every=N, ...) with a type of {tuple(KINDS)}")
        if entry["type"] not in KINDS:
            near = difflib.get_close_matches(str(entry["type"]), KINDS, n=1, cutoff=0.6)
            _fail(
                f"evals.{name}.type",
                entry["type"],
                f"use one of {tuple(KINDS)}" + (f"; did you mean {near[0]!r}?" if near else ""),
            )
        kind = KINDS[entry["type"]]
        for required in (field for field in kind.fields if field != "type" and field not in kind.defaults):
            if required not in entry:
                raise ValueError(
                    f"config.evals.{name}: needs {required} (a {entry['type']} evaluator reads "
                    f"{', '.join(kind.fields)})"
                )
        _check_fields(leaves(entry), kind.fields, f"evals.{name}.", strict=True)
        settings = evaluator_settings(entry)
        if not evaluates(entry) or "batch_size" not in settings:
            continue
        if settings["batch_size"] % batch_devices:
            _fail(
                f"evals.{name}.batch_size",
                settings["batch_size"],
                f"must be a multiple of {batch_devices}: the mesh splits a batch {batch_devices} ways",
            )


def leaves(config, prefix="") -> dict:
    """{dotted field: value} of every leaf of a ConfigDict (or dict)."""
    found = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            found.update(leaves(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value
    return found


def _check_fields(values: dict, checks: dict, prefix: str, strict: bool):
    """strict: a field no check knows is an error (it would be read by nothing); a saved config may
    hold fields of older versions, which are left alone."""
    for field, value in values.items():
        check = checks.get(field)
        if check is None:
            if strict:
                _fail(
                    f"{prefix}{field}",
                    value,
                    "no such field is read; remove it (python -m maepp.tools.summary "
                    "--config ... prints a config's fields)",
                )
            continue
        problem = check(value)
        if problem:
            _fail(f"{prefix}{field}", value, problem)


def _model_relations(model, prefix: str):
    for tower in ("encoder", "decoder"):
        width, heads = model[tower]["width"], model[tower]["heads"]
        if width % heads:
            _fail(f"{prefix}{tower}.heads", heads, f"must divide the {tower} width {width}")
        if width % 4:
            _fail(f"{prefix}{tower}.width", width, "must be a multiple of 4: the sin-cos position tables need it")
    (time, freq), (patch_t, patch_f) = model.input_size, model.patch_size
    if freq != N_MELS:
        _fail(
            f"{prefix}input_size", tuple(model.input_size), f"its mel bins must be {N_MELS}, what the front end makes"
        )
    if time % patch_t or freq % patch_f:
        _fail(f"{prefix}patch_size", tuple(model.patch_size), f"must divide input_size {tuple(model.input_size)}")
    try:
        num_visible((time // patch_t) * (freq // patch_f), model.mask_ratio)
    except ValueError as error:
        _fail(f"{prefix}mask_ratio", model.mask_ratio, str(error))
    if model.attention == "cudnn" and model.dtype != "bfloat16":
        _fail(
            f"{prefix}attention",
            "cudnn",
            f"needs config.model.dtype='bfloat16' (got {model.dtype!r}): cuDNN's "
            "fused attention takes half-precision inputs only; use 'auto' or 'xla'",
        )


def check_model(model, prefix: str = "model."):
    """A config's model section (also a saved one, for export): every field and relation."""
    _check_fields(leaves(model), MODEL_FIELDS, prefix, strict=False)
    _model_relations(model, prefix)


def check_train_config(config, n_devices: int, batch_devices: int):
    """Every field of a training config, then what fields ask of each other and of the mesh
    (n_devices devices, splitting a batch batch_devices ways)."""
    _check_fields(
        {field: value for field, value in leaves(config).items() if not field.startswith("evals.")},
        FIELDS,
        "",
        strict=True,
    )
    _check_evals(config.get("evals", {}), batch_devices)
    _model_relations(config.model, "model.")
    if config.warmup_steps >= config.total_steps:
        _fail("warmup_steps", config.warmup_steps, f"must be below config.total_steps={config.total_steps}")
    every = config.optimizer.accumulate_steps
    for field in ("total_steps", "warmup_steps"):
        if config[field] % every:
            _fail(
                field,
                config[field],
                f"must be a multiple of config.optimizer.accumulate_steps={every}: the schedule counts updates",
            )
    if config.batch_size % batch_devices:
        _fail(
            "batch_size",
            config.batch_size,
            f"must be a multiple of {batch_devices}: the mesh splits a batch "
            f"{batch_devices} ways over {n_devices} devices",
        )
    if config.model.swiglu_norm == "pallas" and n_devices > 1:
        _fail(
            "model.swiglu_norm",
            "pallas",
            f"runs on one device only, not {n_devices}: its kernels carry no "
            "sharding rule; use 'auto' (the kernels on one GPU, XLA's ops on a mesh) or 'xla'",
        )


# On resume: fields whose change would mean another run (the state's shapes, what a step draws or
# computes). The rest may change, with what RESUME_EFFECTS says they do.
RESUME_REFUSED = (
    "model.block_type",
    "model.encoder",
    "model.decoder",
    "model.input_size",
    "model.patch_size",
    "model.mask_ratio",
    "model.use_cls_token",
    "model.norm_pix_loss",
    "model.separate_norm3",
    "seed",
    "data.source",
    "data.data_dir",
    "data.shuffle",
    "data.block_clips",
    "data.window_blocks",
    "data.streams",
    "audio.filterbank",
    "optimizer.accumulate_steps",
)
RESUME_EFFECTS = {
    "total_steps": "the cosine schedule is recomputed for the new length from this step on",
    "warmup_steps": "the warmup and cosine schedule are recomputed from this step on",
    "batch_size": "steps draw the new number of clips from the saved position on; the learning rate follows it",
    "optimizer": "the optimizer uses the new setting from this step on",
    "mesh": "the state is resharded onto the new mesh",
    "model": "the computation changes, not the parameters",
    "evals": "the evaluator's figures from this step on are not comparable with its earlier ones",
}


# Fields only maepp 0.0.x wrote into a workdir's config.json (the held-out evaluation before config.evals).
EARLIER_FIELDS = ("eval_every", "eval_batch_size", "data.eval_source")


def saved_by_an_earlier_maepp(saved, workdir):
    """Raises ValueError, one line, for a workdir that maepp 0.0.x saved: maepp 0.1 does not resume it."""
    found = [field for field in EARLIER_FIELDS if field in leaves(saved)]
    if found:
        raise ValueError(
            f"{workdir} holds a run of maepp 0.0.x (its config.json has {', '.join(found)}), which maepp "
            "0.1 does not resume: finish it with maepp 0.0.x, or start this run in another --workdir"
        )


def _refused(field: str) -> bool:
    return any(field == name or field.startswith(name + ".") for name in RESUME_REFUSED)


def _effect(field: str) -> str:
    for name in (field, field.split(".")[0]):
        if name in RESUME_EFFECTS:
            return RESUME_EFFECTS[name]
    return "takes effect from this step on"


def resume_changes(saved, config, accepted=(), resolved=None) -> list:
    """The fields whose value differs from the saved config.json, as lines saying what the change
    does; raises ValueError, one line, for changes that would make another run, unless accepted
    (--resume_with_changed). Fields an older saved config lacks are not compared; "auto" on either
    side is compared as `resolved` (run_plan's) resolves it."""
    old, new = (
        {field: (resolved or {}).get(field, value) if value == "auto" else value for field, value in leaves(c).items()}
        for c in (saved, config)
    )
    changed = {
        field: (old[field], new[field])
        for field in new
        if field in old and _comparable(old[field]) != _comparable(new[field])
    }
    refused = {
        field: values
        for field, values in changed.items()
        if _refused(field) and not any(field == name or field.startswith(name + ".") for name in accepted)
    }
    if refused:
        listed = ", ".join(f"{field} {old!r} -> {new!r}" for field, (old, new) in refused.items())
        raise ValueError(
            f"the workdir holds a run with other settings: {listed}. Its checkpoints are kept as they are: train "
            f"the new settings in another --workdir, or continue this run with them deliberately "
            f"(--resume_with_changed={','.join(refused)})"
        )
    return [
        f"config.{field} changed from {old!r} to {new!r}: {_effect(field)}" for field, (old, new) in changed.items()
    ]


def _comparable(value):
    return tuple(value) if isinstance(value, list) else value


def resolve_auto(model, backend: str, device_count: int) -> dict:
    """config.model's "auto" choices as this backend and device count resolve them:
    {"model.attention": "xla", ...}, only for fields set to "auto". A run resolves them once,
    before compiling, and records them (maepp.train_loop's run_info.jsonl)."""
    resolved = {
        "attention": resolved_attention(model.attention, model.dtype, backend),
        "swiglu_norm": resolved_swiglu_norm(model.swiglu_norm, model.dtype, backend, device_count),
    }
    return {f"model.{field}": value for field, value in resolved.items() if model[field] == "auto"}


# What a held_out evaluator's source "auto" (the default) reads when the training clips have no
# held-out split: 256 procedural clips from a seed the training clips do not use.
HELD_OUT_FALLBACK = "synthetic:256:1"


def resolve_held_out(config, training_clips) -> dict:
    """{"evals.NAME.source": clips} for each held_out evaluator whose source is "auto": the split that
    `prepare --holdout` kept out of the training dataset (its source's `holdout`), where it has one,
    else HELD_OUT_FALLBACK. A run resolves it with the model's "auto" choices (resolve_auto)."""
    clips = training_clips.holdout or HELD_OUT_FALLBACK
    return {
        f"evals.{name}.source": clips
        for name, entry in config.get("evals", {}).items()
        if entry.get("type") == "held_out" and entry.get("source") == "auto"
    }


def resolve_shuffle(config, training_clips) -> dict:
    """{"data.shuffle": "blocks" or "clips"} where config.data.shuffle is "auto": blocks for a
    prepared dataset in a bucket that fills a block for every stream, clips otherwise; ValueError,
    one line, for blocks whose streams do not divide the batch."""
    shuffle, data = config.data.shuffle, config.data
    resolved = {}
    if shuffle == "auto":
        in_bucket = training_clips.store is not None and training_clips.directory.startswith("gs://")
        enough = len(training_clips) >= data.block_clips * data.streams
        shuffle = resolved["data.shuffle"] = "blocks" if in_bucket and enough else "clips"
    if shuffle == "blocks" and config.batch_size % config.data.streams:
        _fail(
            "data.streams",
            config.data.streams,
            f"must divide config.batch_size={config.batch_size}: each "
            "stream of blocks takes the same share of every batch",
        )
    return resolved


def held_out_sources(config, resolved=None) -> dict:
    """{evaluator name: its source} of the config's held-out evaluators that have one; "auto" as
    `resolved` (run_plan's) resolves it."""
    resolved = resolved or {}
    evals = config.get("evals", {})
    return {
        name: resolved.get(f"evals.{name}.source", entry["source"])
        for name, entry in evals.items()
        if entry.get("type") == "held_out" and entry.get("source")
    }


def held_out_notice(config, resolved=None) -> str:
    """One line for the start of a run on the user's own data: where its held-out loss comes from,
    when "auto" found the dataset's held-out split; a warning when it would be the procedural
    clips, which say nothing of how the model does on that data; or ""."""
    source = config.data.source
    if source.startswith("synthetic"):
        return ""
    chosen = held_out_sources(config, resolved)
    procedural = {name: held_out for name, held_out in chosen.items() if held_out.startswith("synthetic")}
    if procedural:
        name, held_out = next(iter(procedural.items()))
        return (
            f"warning: config.evals.{name}.source={held_out!r} is procedural audio, not clips like "
            f"config.data.source={source!r}; set --config.evals.{name}.source to held-out clips of your own (a "
            "folder, a prepared dataset or a tfds split; prepare --holdout writes one beside the training "
            "clips), or to '' for no held-out evaluation"
        )
    found = {name: held_out for name, held_out in chosen.items() if config.evals[name].source == "auto"}
    if found:
        name, held_out = next(iter(found.items()))
        return f"config.evals.{name}: held-out loss on {held_out}, the clips prepare --holdout kept out of training"
    return ""
