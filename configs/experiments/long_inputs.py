r"""10 s inputs (1000 x 80 log-mel frames, 1250 patches) with and without rotary embeddings: the
paper trained on 2 s crops and found RoPE worse there; whether that is a short-context effect is
the question it leaves open. Base, as rope.py; the release's weights stay 2 s.

    python -m maepp.tools.sweep --config configs/experiments/long_inputs.py --workdir_root gs://BUCKET/long \
        --launcher tpu --tpu NAME --zone ZONE -- --config.data.source=prepared:gs://BUCKET/audioset
    python -m maepp.tools.sweep --config configs/experiments/long_inputs.py --workdir_root runs/long --arg size=micro
"""

from maepp.configs import experiment

TEN_SECONDS = (1000, 80)
ROWS = {
    name: {"model.input_size": TEN_SECONDS, "model.encoder.use_rope": rope, "model.decoder.use_rope": rope}
    for name, rope in (("sincos", False), ("rope", True))
}


def rows() -> list:
    return list(ROWS)


def get_config(arg: str = "sincos"):
    return experiment.row_config(ROWS, arg, size="base")
