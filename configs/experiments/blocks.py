r"""Table 2 of the paper: plain MAE (ViT blocks) against AudioMAE++ (Macaron SwiGLU blocks) at
each size (docs/reference.md#sizes gives both models' parameter counts and overall scores).

    python -m maepp.tools.sweep --config configs/experiments/blocks.py --workdir_root gs://BUCKET/blocks \
        --launcher tpu --tpu NAME --zone ZONE -- --config.data.source=prepared:gs://BUCKET/audioset
    python -m maepp.tools.sweep --config configs/experiments/blocks.py --workdir_root runs/blocks \
        --arg size=micro    (one machine: every row at the CPU budget)
"""

from maepp.configs import experiment

ROWS = {
    f"{name}_{size}": dict(block_type=block_type, size=size)
    for name, block_type in (("mae", "vit"), ("audiomaepp", "macaron_swiglu"))
    for size in ("base", "large", "huge")
}


def rows() -> list:
    return list(ROWS)


def get_config(arg: str = "audiomaepp_base"):
    return experiment.row_config(ROWS, arg, size="base")
