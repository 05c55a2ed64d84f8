r"""AudioMAE++ pretraining on log-mel spectrograms (PAPER.md: model table and recipe).

    python -m maepp.summary --config configs/audiomaepp.py:base
    python -m maepp.train --config configs/audiomaepp.py:base --workdir gs://BUCKET/runs/base
    python -m maepp.train --config configs/audiomaepp.py:micro --workdir runs/demo   (CPU demo)

The argument after the colon picks the size: micro (CPU demo), tiny, small, medium, base,
large, huge. Any field can be overridden on the command line, e.g. --config.model.dtype=bfloat16
or --config.model.encoder.use_rope=True (the paper's ablation switches live in config.model).
"""
from maepp.recipe import pretraining_config


def get_config(size: str = "base"):
    return pretraining_config(size, block_type="macaron_swiglu")
