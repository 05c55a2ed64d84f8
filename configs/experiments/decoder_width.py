r"""Table 4 of the paper: the decoder's width behind the large encoder, 384, 512 (the release's)
and 768; the paper's overall score rose from 91.7 at 384 to 93.7 at 512, and no further.

    python -m maepp.tools.sweep --config configs/experiments/decoder_width.py --workdir_root gs://BUCKET/dec \
        --launcher tpu --tpu NAME --zone ZONE -- --config.data.source=prepared:gs://BUCKET/audioset
    python -m maepp.tools.sweep --config configs/experiments/decoder_width.py --workdir_root runs/dec --arg size=micro
"""

from maepp.configs import experiment

ROWS = {f"width_{width}": {"model.decoder.width": width} for width in (384, 512, 768)}


def rows() -> list:
    return list(ROWS)


def get_config(arg: str = "width_512"):
    return experiment.row_config(ROWS, arg, size="large")
