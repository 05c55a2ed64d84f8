r"""The plain-MAE baseline: ViT blocks (LN -> MHSA, LN -> GELU MLP 4D) in encoder and decoder.

    python -m maepp.tools.summary --config mae:base
    python -m maepp.train --config configs/mae.py:micro --workdir runs/mae_micro

Everything else is configs/audiomaepp.py's: the same sizes, decoders and recipe. docs/reference.md#sizes gives
MAE-Base 85.1M and MAE-Huge 629.8M encoder parameters.
"""

from maepp.configs import audiomaepp, common


def get_config(size: str = "base"):
    return common.pretraining_config(audiomaepp.model_config(size, block_type="vit"), micro=size == "micro")
