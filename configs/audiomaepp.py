r"""AudioMAE++ pretraining on log-mel spectrograms: every size, and the recipe (docs/reference.md).

    maepp-train --config audiomaepp:base --workdir gs://BUCKET/runs/base
    python -m maepp.train --config configs/audiomaepp.py:micro --workdir runs/demo   (CPU demo)
    python -m maepp.tools.summary --config audiomaepp:base

The argument after the colon picks the size: micro (CPU demo), tiny, small, medium, base, large,
huge. Any field can be overridden on the command line, e.g. --config.model.dtype=bfloat16 or
--config.model.encoder.use_rope=True (the paper's ablation switches live in config.model).
The recipe shared with configs/mae.py is configs/common.py.
"""

import ml_collections

from maepp.configs import common
from maepp.models import sizes


def model_config(size: str, block_type: str = "macaron_swiglu") -> ml_collections.ConfigDict:
    """The model section for one named size; block_type "vit" gives the plain-MAE baseline."""
    if size not in sizes.NAMES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(sizes.NAMES)}")
    width, depth, heads = sizes.ENCODERS[size]
    dec_width, dec_depth, dec_heads = sizes.DECODERS[size]
    return ml_collections.ConfigDict(
        dict(
            block_type=block_type,  # "macaron_swiglu" (AudioMAE++) or "vit" (plain MAE)
            encoder=dict(width=width, depth=depth, heads=heads, use_rope=False),
            decoder=dict(width=dec_width, depth=dec_depth, heads=dec_heads, use_rope=False),
            input_size=(200, 80),  # (time frames, mel bins): 2 s at a 10 ms hop
            patch_size=(4, 16),  # (time, frequency)
            mask_ratio=0.8,
            use_cls_token=True,
            norm_pix_loss=False,  # off in the release (docs/reference.md#model)
            dtype="float32",  # compute dtype; parameters are always float32
            # "auto": cuDNN's fused attention on GPUs in bfloat16, XLA's elsewhere; "xla"; "cudnn".
            attention="auto",
            # False: the release's block, LN2 applied where LN3 stands
            # (docs/reference.md#where-the-release-differs-from-the-paper); True: LN3 of its own.
            separate_norm3=False,
            # Activations recomputed in the backward pass, per block: "none", or a jax.checkpoint_policies
            # name such as "nothing_saveable" (maepp/models/blocks.py); for large and huge at big batches.
            remat="none",
            # True: the blocks run as one nn.scan over parameters stacked on a "layers" axis, so XLA
            # compiles one block, not depth of them; checkpoints of either layout load into both.
            scan_layers=False,
            # SwiGLU's gate, product and inner LayerNorm: "xla"; "pallas" (maepp/models/swiglu_norm.py's
            # fused kernels, one device only); "auto" (those on one GPU in bfloat16). Not yet faster
            # than XLA's ops on an H200 (docs/performance.md), so "xla".
            swiglu_norm="xla",
        )
    )


def get_config(size: str = "base"):
    return common.pretraining_config(model_config(size), micro=size == "micro")
