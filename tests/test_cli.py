"""The command-line entry points, run as a user runs them."""
import json

import pytest

from tests.helpers import run_module as _run


@pytest.mark.parametrize(
    "config,encoder_params,decoder_params",
    [("configs/audiomaepp.py:base", 141_855_744, 12_158_528), ("configs/mae.py:huge", 629_765_120, None)],
)
def test_summary_prints_a_table_and_json_last(repo_root, config, encoder_params, decoder_params):
    out = _run(repo_root, "maepp.tools.summary", "--config", config).strip().splitlines()
    summary = json.loads(out[-1])
    assert set(summary) == {"encoder_params", "decoder_params", "train_flops_per_example"}
    assert summary["encoder_params"] == encoder_params
    if decoder_params:
        assert summary["decoder_params"] == decoder_params
    assert any(line.startswith("encoder total") for line in out)


def test_summary_flops_follow_the_overrides(repo_root):
    def flops(*overrides):
        out = _run(repo_root, "maepp.tools.summary", "--config", "configs/audiomaepp.py:base", *overrides)
        return json.loads(out.strip().splitlines()[-1])["train_flops_per_example"]

    base = flops()
    # A lower mask ratio means more visible tokens in the encoder: more work.
    assert flops("--config.model.mask_ratio=0.5") > 1.5 * base
    assert base / 1e9 == pytest.approx(62.67, abs=0.01)
