r"""Plain-MAE baseline: ViT blocks (LN -> MHSA, LN -> GELU MLP 4D) in encoder and decoder.

    python -m maepp.summary --config configs/mae.py:base
    python -m maepp.train --config configs/mae.py:micro --workdir runs/mae_micro

Same sizes, decoders and recipe as configs/audiomaepp.py; PAPER.md gives MAE-Base 85.1M and
MAE-Huge 629.8M encoder parameters.
"""
from maepp.recipe import pretraining_config


def get_config(size: str = "base"):
    return pretraining_config(size, block_type="vit")
