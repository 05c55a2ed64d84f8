"""Parameter counts against docs/reference.md#sizes (released-code counts, exact)."""

import pytest

from maepp.models.counts import parameter_counts
from tests.helpers import spec_for

# docs/reference.md#sizes: encoder params of the release code.
AUDIOMAEPP_ENCODER = {
    "tiny": 8_921_856,
    "small": 35_538_432,
    "medium": 63_107_056,
    "base": 141_855_744,
    # The paper prints 640.1M for Large; the released code gives this
    # (docs/reference.md#where-the-release-differs-from-the-paper: unresolved).
    "large": 503_992_256,
    "huge": 1_049_714_304,
}
MAE_ENCODER = {"base": 85_106_688, "large": 302_379_008, "huge": 629_765_120}


@pytest.mark.parametrize("size", sorted(AUDIOMAEPP_ENCODER))
def test_audiomaepp_encoder_params_match_release(size):
    assert parameter_counts(spec_for(size))["encoder"] == AUDIOMAEPP_ENCODER[size]


def test_audiomaepp_base_matches_paper_within_0p1_percent():
    counts = parameter_counts(spec_for("base"))
    assert abs(counts["encoder"] - 141.86e6) / 141.86e6 < 1e-3
    assert counts["decoder"] == 12_158_528  # docs/reference.md#sizes: decoder 384/4/8 after a base encoder


@pytest.mark.parametrize("size", sorted(MAE_ENCODER))
def test_mae_encoder_params_match_release(size):
    assert parameter_counts(spec_for(size, block_type="vit"))["encoder"] == MAE_ENCODER[size]


def test_mae_paper_rounding():
    assert round(parameter_counts(spec_for("base", block_type="vit"))["encoder"] / 1e6, 1) == 85.1
    assert round(parameter_counts(spec_for("huge", block_type="vit"))["encoder"] / 1e6, 1) == 629.8
