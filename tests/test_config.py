"""Every field of every config is checked (maepp/config_checks.py): a bad value of each is one line
naming the field, and a field nothing checks fails here."""

import math

import ml_collections
import pytest

from maepp import config_checks
from maepp.configs import audiomaepp, mae
from maepp.evaluator_kinds import KINDS
from maepp.models import ModelSpec, spec

# One bad value per field: out of range, of the wrong kind, or not finite.
BAD = {
    "seed": -1,
    "data.source": "",
    "data.data_dir": 3,
    "data.frontend": "gpu",
    "data.damaged_clips": "ignore",
    "data.prefetch": 0,
    "audio.filterbank": "htk",
    "batch_size": 0,
    "mesh.data": 0,
    "mesh.fsdp": -2,
    "mesh.model": 1.5,
    "mesh.dcn_data": 0,
    "mesh.dcn_fsdp": -3,
    "mesh.dcn_model": True,
    "optimizer.base_learning_rate": math.inf,
    "optimizer.b1": 1.0,
    "optimizer.b2": -0.1,
    "optimizer.weight_decay": math.nan,
    "optimizer.grad_clip": -1.0,
    "optimizer.accumulate_steps": 0,
    "total_steps": 0,
    "warmup_steps": -1,
    "log_every": 0,
    "checkpoint_every": 0,
    "keep_checkpoints": 0,
    "keep_period": -1,
    "max_nonfinite_steps": 0,
    "steps_in_flight": 0,
    "data.shuffle": "random",
    "data.block_clips": 0,
    "data.window_blocks": 0,
    "data.streams": 0,
    "compile_cache_dir": None,
    "distributed.heartbeat_s": 2,
    "distributed.shutdown_s": 0,
    "profile.first_step": -1,
    "profile.num_steps": 0,
    "profile.every_secs": math.inf,
    "model.block_type": "resnet",
    "model.encoder.width": -64,
    "model.encoder.depth": 0,
    "model.encoder.heads": 0,
    "model.encoder.use_rope": "no",
    "model.decoder.width": -64,
    "model.decoder.depth": 0,
    "model.decoder.heads": 0,
    "model.decoder.use_rope": 1,
    "model.input_size": (200,),
    "model.patch_size": (4, 0),
    "model.mask_ratio": 1.5,
    "model.use_cls_token": None,
    "model.norm_pix_loss": "false",
    "model.dtype": "float16",
    "model.attention": "flash",
    "model.separate_norm3": 0,
    "model.remat": "sometimes",
    "model.scan_layers": "yes",
    "model.swiglu_norm": "triton",
}


def _configs():
    return {
        "audiomaepp:micro": audiomaepp.get_config("micro"),
        "audiomaepp:huge": audiomaepp.get_config("huge"),
        "mae:base": mae.get_config("base"),
    }


def _with(config, field, value):
    """The config with one field set to anything, whatever its type (ConfigDict refuses that)."""
    changed = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
    node = changed
    *parents, leaf = field.split(".")
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    return changed


def _assert_refused_in_one_line(config, start: str):
    """check_train_config refuses the config with one line that starts with `start`."""
    with pytest.raises(ValueError) as error:
        config_checks.check_train_config(config, n_devices=8, batch_devices=8)
    message = str(error.value)
    assert message.startswith(start) and "\n" not in message, message


@pytest.mark.parametrize("name", list(_configs()))
def test_every_field_of_every_config_is_checked_and_passes(name):
    config = _configs()[name]
    fields = {field for field in config_checks.leaves(config) if not field.startswith("evals.")}
    assert fields == set(config_checks.FIELDS), "a field without a check, or a check of nothing"
    for entry in config.evals.values():  # each evaluator's fields are its type's
        assert set(entry) <= set(KINDS[entry.type].fields)
    assert set(config_checks.FIELDS) == set(BAD), "every check needs its bad value in this test"
    config_checks.check_train_config(config, n_devices=8, batch_devices=8)


@pytest.mark.parametrize("field", sorted(BAD))
def test_a_bad_value_of_each_field_is_one_line_naming_it(field):
    config = _with(audiomaepp.get_config("micro"), field, BAD[field])
    _assert_refused_in_one_line(config, f"config.{field}=")


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(warmup_steps=300), "config.warmup_steps=300: must be below config.total_steps=300"),
        (
            {"optimizer.accumulate_steps": 7},
            "config.total_steps=300: must be a multiple of config.optimizer.accumulate_steps=7",
        ),
        (dict(batch_size=12), "config.batch_size=12: must be a multiple of 8: the mesh splits a batch 8 ways"),
        ({"model.encoder.heads": 3}, "config.model.encoder.heads=3: must divide the encoder width 64"),
        (
            {"model.decoder.width": 66, "model.decoder.heads": 1},
            "config.model.decoder.width=66: must be a multiple of 4",
        ),
        ({"model.input_size": (200, 64)}, "config.model.input_size=(200, 64): its mel bins must be 80"),
        ({"model.patch_size": (3, 16)}, "config.model.patch_size=(3, 16): must divide input_size (200, 80)"),
        ({"model.mask_ratio": 0.999}, "config.model.mask_ratio=0.999: leaves 0 of 250 tokens visible"),
        ({"model.attention": "cudnn"}, "config.model.attention='cudnn': needs config.model.dtype='bfloat16'"),
        ({"model.swiglu_norm": "pallas"}, "config.model.swiglu_norm='pallas': runs on one device only, not 8"),
    ],
)
def test_what_fields_ask_of_each_other_is_checked(fields, message):
    config = audiomaepp.get_config("micro")
    for field, value in fields.items():
        config = _with(config, field, value)
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        config_checks.check_train_config(config, n_devices=8, batch_devices=8)


def test_a_field_no_check_knows_is_refused_in_a_training_config_and_ignored_in_a_saved_model():
    config = _with(audiomaepp.get_config("micro"), "model.fuse_gate_value", True)  # an option of an older maepp
    with pytest.raises(ValueError, match=r"^config.model.fuse_gate_value=True: no such field is read"):
        config_checks.check_train_config(config, n_devices=8, batch_devices=8)
    config_checks.check_model(config.model)  # a saved run's config may hold it: export still loads


def test_own_data_with_the_procedural_held_out_set_is_warned_of_and_a_held_out_split_is_named():
    config = audiomaepp.get_config("micro")
    procedural = {"evals.held_out.source": config_checks.HELD_OUT_FALLBACK}  # "auto" without a held-out split
    assert config_checks.held_out_notice(config, procedural) == ""  # procedural training data: procedural held-out
    config.data.source = "prepared:/data/audio_clips/2.0.0"
    warning = config_checks.held_out_notice(config, procedural)
    assert warning.startswith("warning:") and "--config.evals.held_out.source" in warning and "--holdout" in warning
    split = {"evals.held_out.source": "prepared:/data/audio_clips/2.0.0/holdout"}
    assert config_checks.held_out_notice(config, split) == (
        "config.evals.held_out: held-out loss on prepared:/data/audio_clips/2.0.0/holdout, the clips prepare "
        "--holdout kept out of training"
    )
    config.evals.held_out.source = "folder:/data/held_out"
    assert config_checks.held_out_notice(config, {}) == ""
    config.evals.held_out.source = ""
    assert config_checks.held_out_notice(config, {}) == ""


# One bad value per field of each evaluator type, beside a good entry of that type.
GOOD_EVALUATORS = {
    "held_out": dict(type="held_out", source="synthetic:16:1", every=5, batch_size=8),
    "probe": dict(type="probe", task="/data/task", every=5, shots=4, l2=1.0, batch_size=8),
}
BAD_EVALUATOR_FIELDS = {
    "held_out": dict(type="held-out", source=3, every=0, batch_size=-8),
    "probe": dict(type="linear", task="", every=2.5, shots=-1, l2=0.0, batch_size=0),
}


@pytest.mark.parametrize(
    "kind,field", [(kind, field) for kind, fields in BAD_EVALUATOR_FIELDS.items() for field in fields]
)
def test_a_bad_field_of_each_evaluator_type_is_one_line_naming_it(kind, field):
    assert set(BAD_EVALUATOR_FIELDS[kind]) == set(KINDS[kind].fields)
    config = audiomaepp.get_config("micro")
    config.evals.kw = GOOD_EVALUATORS[kind]
    config_checks.check_train_config(config, n_devices=8, batch_devices=8)
    config = _with(config, f"evals.kw.{field}", BAD_EVALUATOR_FIELDS[kind][field])
    _assert_refused_in_one_line(config, f"config.evals.kw.{field}=")


@pytest.mark.parametrize(
    "entry,message",
    [
        (
            dict(type="prob", task="/t", every=5),
            "config.evals.kw.type='prob': use one of ('held_out', 'probe'); did you mean 'probe'?",
        ),
        (dict(type="probe", every=5), "config.evals.kw: needs task"),
        (dict(type="probe", task="/t", every=5, shot=4), "config.evals.kw.shot=4: no such field is read"),
        (
            dict(type="probe", task="/t", every=5, batch_size=12),
            "config.evals.kw.batch_size=12: must be a multiple of 8",
        ),
        (dict(task="/t", every=5), "config.evals.kw: must be dict(type=..."),
        (
            dict(type="probe", task="/t", every=5, l2=(0.1, -1.0)),
            "config.evals.kw.l2=(0.1, -1.0): each value must be a finite number in (0.0, inf)",
        ),
        (dict(type="probe", task="/t", every=5, l2=()), "config.evals.kw.l2=(): must be a number or a non-empty list"),
    ],
)
def test_a_bad_evaluator_entry_is_one_line(entry, message):
    config = audiomaepp.get_config("micro")
    config.evals.kw = entry
    _assert_refused_in_one_line(config, message)


def test_a_probe_takes_several_penalties_to_choose_from():
    config = audiomaepp.get_config("micro")
    config.evals.kw = dict(GOOD_EVALUATORS["probe"], l2=(0.1, 1.0, 10.0))
    config_checks.check_train_config(config, n_devices=8, batch_devices=8)


def test_a_workdir_of_maepp_0_0_is_refused_in_one_line():
    """maepp 0.0.x wrote the held-out evaluation into config.json as loose fields."""
    saved = ml_collections.ConfigDict(audiomaepp.get_config("micro").to_dict())
    config_checks.saved_by_an_earlier_maepp(saved, "/runs/a")  # today's: nothing to say
    saved.eval_every = 100
    with pytest.raises(
        ValueError,
        match=r"^/runs/a holds a run of maepp 0\.0\.x \(its config.json has eval_every\), "
        r"which maepp 0\.1 does not resume: .* another --workdir$",
    ):
        config_checks.saved_by_an_earlier_maepp(saved, "/runs/a")


def test_a_changed_held_out_source_is_said_on_resume_and_an_added_evaluator_is_not_a_change():
    config = audiomaepp.get_config("micro")
    saved = ml_collections.ConfigDict(config.to_dict())
    saved.evals.held_out.source = "synthetic:256:1"
    assert config_checks.resume_changes(saved, config, resolved={"evals.held_out.source": "synthetic:256:1"}) == []
    config.evals.held_out.source = "folder:/data/held_out"
    config.evals.kw = GOOD_EVALUATORS["probe"]  # an evaluator added on resume: not a change of the run
    assert config_checks.resume_changes(saved, config) == [
        "config.evals.held_out.source changed from 'synthetic:256:1' to 'folder:/data/held_out': the evaluator's "
        "figures from this step on are not comparable with its earlier ones"
    ]


def test_auto_choices_resolve_from_the_backend_and_the_device_count():
    model = audiomaepp.get_config("base").model
    model.swiglu_norm = "auto"
    assert config_checks.resolve_auto(model, "cpu", 8) == {"model.attention": "xla", "model.swiglu_norm": "xla"}
    model.dtype = "bfloat16"
    assert config_checks.resolve_auto(model, "gpu", 1) == {"model.attention": "cudnn", "model.swiglu_norm": "pallas"}
    # The kernels carry no sharding rule: several devices stay with XLA's ops.
    assert config_checks.resolve_auto(model, "gpu", 8) == {"model.attention": "cudnn", "model.swiglu_norm": "xla"}
    model.attention, model.swiglu_norm = "xla", "xla"  # chosen, not "auto": nothing to record
    assert config_checks.resolve_auto(model, "gpu", 1) == {}


def test_a_probe_on_a_folder_that_is_not_a_task_is_one_line_before_compiling(tmp_path):
    from maepp.run_plan import checked_plan

    config = audiomaepp.get_config("micro")
    config.evals.kw = dict(type="probe", task=str(tmp_path), every=5)
    with pytest.raises(ValueError) as error:
        checked_plan(config)
    assert str(error.value).startswith(
        f"config.evals.kw.task={str(tmp_path)!r}: {tmp_path} is not a task: it needs train/ and test/ folders"
    ), str(error.value)


def test_the_model_checks_and_the_model_spec_name_the_same_fields():
    towers = {f"{tower}.{name}" for tower in ("encoder", "decoder") for name in spec.field_names(spec.TowerSpec)}
    fields = set(spec.field_names(ModelSpec)) - {"encoder", "decoder"} | towers
    assert set(config_checks.MODEL_FIELDS) == fields
    assert set(config_checks.leaves(audiomaepp.get_config("micro").model)) == fields  # the config gives each


@pytest.mark.parametrize("where", ["model", "model.encoder"])
def test_an_unknown_model_field_is_refused_in_one_line(where):
    model = audiomaepp.get_config("micro").model
    (model.encoder if where == "model.encoder" else model).dropout = 0.1
    with pytest.raises(ValueError, match=rf"^config\.{where} has no field dropout: its fields are [a-z_0-9, ]+$"):
        ModelSpec.from_config(model)


@pytest.mark.parametrize(
    "source, message",
    [
        ("import nonexistent_module\n", "raising.py:1: ModuleNotFoundError: No module named 'nonexistent_module'"),
        (
            "x = 1\n",
            "raising.py has no get_config(): define one that returns the ConfigDict, as configs/audiomaepp.py does",
        ),
        (
            "def get_config(size='base'):\n    raise KeyError('no such dataset')\n",
            "get_config raised it: {}:2: KeyError: 'no such dataset'",
        ),
    ],
)
def test_a_config_file_that_fails_is_one_line_naming_it(tmp_path, source, message):
    """What a user's config file raises, where it has no get_config, or what its get_config raises."""
    from maepp import program

    path = tmp_path / "raising.py"
    path.write_text(source)
    with pytest.raises(ValueError) as error:
        program.load_config(f"{path}:micro")
    assert str(error.value).startswith(f"--config {path}:micro: ")
    assert str(error.value).endswith(message.format(path)) and "\n" not in str(error.value)
