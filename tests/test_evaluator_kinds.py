"""The evaluator contract: a kind added in one module (tests/toy_evaluator.py) and one entry of
KINDS, made in a config file, is checked with the config and written by the loop like the others."""

import jax
import numpy as np
import pytest

from maepp import config_checks, program
from maepp.evaluator_kinds import KINDS

TOY_CONFIG = """
from maepp.configs import audiomaepp
from maepp.evaluator_kinds import EVERY, KINDS, Kind
from maepp.field_checks import choice, real

KINDS["toy"] = Kind(
    fields={"type": choice(("toy",)), "every": EVERY, "scale": real("a factor on the norm", 0.0, low_open=True)},
    defaults=dict(scale=1.0),
    evaluator="tests.toy_evaluator:ParameterNorm",
)


def get_config():
    config = audiomaepp.get_config("micro")
    config.evals.norm = dict(type="toy", every=3, scale=2.0)
    return config
"""


@pytest.fixture
def toy_config(tmp_path):
    path = tmp_path / "toy.py"
    path.write_text(TOY_CONFIG)
    try:
        yield program.load_config(str(path))
    finally:
        KINDS.pop("toy", None)


def test_a_toy_kinds_fields_are_checked_like_the_others(toy_config):
    toy_config.evals.norm.scale = -1.0
    must = r"^config\.evals\.norm\.scale=-1\.0: must be a finite number in \(0\.0, inf\)"
    with pytest.raises(ValueError, match=must):
        config_checks.check_train_config(toy_config, 8, 8)
    del toy_config.evals.norm["scale"]
    toy_config.evals.norm.shots = 4  # a probe's field, not the toy's
    with pytest.raises(ValueError, match=r"^config\.evals\.norm\.shots"):
        config_checks.check_train_config(toy_config, 8, 8)


@pytest.mark.e2e
@pytest.mark.long(seconds=30)
def test_a_toy_kind_runs_in_a_micro_run_and_its_metrics_reach_tensorboard_the_console_and_pictures(
    toy_config, tmp_path, capsys
):
    from maepp.train_loop import train
    from tests.helpers import image_steps, logged_scalars, saved_params

    toy_config.update(batch_size=8, total_steps=6, warmup_steps=1, log_every=3, checkpoint_every=3)
    toy_config.evals.held_out.source = ""
    workdir = tmp_path / "run"
    train(toy_config, workdir)
    norms = logged_scalars(workdir, "norm/encoder_norm")
    assert sorted(norms) == [3, 6]
    for step, norm in norms.items():  # the metric of the parameters the loop had at that step, scaled
        encoder = saved_params(workdir, step)["encoder"]
        expected = 2.0 * np.sqrt(sum(np.sum(np.square(np.asarray(p, np.float64))) for p in jax.tree.leaves(encoder)))
        assert norm == pytest.approx(expected, rel=1e-5)
    assert norms[3] != norms[6]
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"step 6 | norm: encoder norm {norms[6]:.4f} (") for line in lines), lines[-5:]
    assert image_steps(workdir, "norm/square") == [3, 6]
    assert sorted(p.name for p in (workdir / "pictures" / "norm").iterdir()) == [
        "step_0000003.png",
        "step_0000006.png",
    ]
