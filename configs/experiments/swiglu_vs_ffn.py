r"""The Macaron SwiGLU block against the plain ViT block (LN -> MHSA, LN -> GELU MLP 4D) at equal
encoder parameter counts: tiny, the ViT encoder widened until its count is nearest the AudioMAE++
encoder's, its heads kept near the size's head width. The paper compares the blocks at equal width,
where AudioMAE++ has 1.7x the parameters.

    python -m maepp.tools.sweep --config configs/experiments/swiglu_vs_ffn.py --workdir_root runs/ffn --arg size=micro
    python -m maepp.tools.summary --config configs/experiments/swiglu_vs_ffn.py:ffn   (each row's counts)
"""

import dataclasses
import math

from maepp.configs import experiment


def _matched_encoder(config) -> dict:
    """The ViT encoder (config.model.encoder, widened) whose parameter count is nearest the Macaron
    encoder's of the same size: its width a multiple of 4 (the 2-D sine-cosine table's need), its
    heads the divisor of that width whose head size is nearest the size's own. Encoder counts have
    the form a*D^2 + b*D (each parameter is a row or a matrix of width D), so two widths fix a, b."""
    from maepp.models import ModelSpec
    from maepp.models.counts import parameter_counts

    spec = ModelSpec.from_config(config.model)
    target = parameter_counts(dataclasses.replace(spec, block_type="macaron_swiglu"))["encoder"]

    def vit_count(width):
        tower = dataclasses.replace(spec.encoder, width=width, heads=4)
        return parameter_counts(dataclasses.replace(spec, block_type="vit", encoder=tower))["encoder"]

    d1, d2 = 32, 64
    c1, c2 = vit_count(d1), vit_count(d2)
    a = (c2 / d2 - c1 / d1) / (d2 - d1)
    b = c1 / d1 - a * d1
    root = (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)
    below = max(4, int(root // 4) * 4)
    width = min((below, below + 4), key=lambda d: abs(a * d * d + b * d - target))
    head_size = spec.encoder.width / spec.encoder.heads
    heads = min((h for h in range(1, width + 1) if width % h == 0), key=lambda h: abs(width / h - head_size))
    return dict(config.model.encoder, width=width, heads=heads)


ROWS = {
    "swiglu": dict(block_type="macaron_swiglu"),
    "ffn": {"block_type": "vit", "model.encoder": _matched_encoder},
}


def rows() -> list:
    return list(ROWS)


def get_config(arg: str = "swiglu"):
    return experiment.row_config(ROWS, arg, size="tiny")
