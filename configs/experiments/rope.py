r"""Table 3 of the paper: rotary position embeddings in neither tower, the encoder, the decoder or
both. The paper found none best (overall 92.0, against 91.4 with both: docs/reference.md#model);
its size is not in our reference, so the rows are base.

    python -m maepp.tools.sweep --config configs/experiments/rope.py --workdir_root gs://BUCKET/rope \
        --launcher tpu --tpu NAME --zone ZONE -- --config.data.source=prepared:gs://BUCKET/audioset
    python -m maepp.tools.sweep --config configs/experiments/rope.py --workdir_root runs/rope --arg size=micro
"""

from maepp.configs import experiment

ROWS = {
    name: {"model.encoder.use_rope": encoder, "model.decoder.use_rope": decoder}
    for name, encoder, decoder in (
        ("neither", False, False),
        ("encoder", True, False),
        ("decoder", False, True),
        ("both", True, True),
    )
}


def rows() -> list:
    return list(ROWS)


def get_config(arg: str = "neither"):
    return experiment.row_config(ROWS, arg, size="base")
