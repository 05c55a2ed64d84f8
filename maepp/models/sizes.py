"""The named sizes: each encoder, and the decoder the release's configs pair with it
(docs/reference.md#sizes). Experiment configs (configs/) and the scaling guide read them here."""

# name: (width D, depth, heads) of the encoder.
ENCODERS = {
    "micro": (64, 2, 2),  # not in the paper: a CPU-sized model for demos and tests
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "medium": (512, 12, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}

# name: (width, depth, heads) of the decoder paired with that encoder.
DECODERS = {
    "micro": (64, 1, 2),
    "tiny": (384, 4, 8),
    "small": (384, 4, 6),
    "medium": (384, 4, 6),
    "base": (384, 4, 8),
    "large": (512, 4, 8),
    "huge": (384, 4, 6),
}

NAMES = tuple(ENCODERS)
PAPER_SIZES = tuple(name for name in NAMES if name != "micro")
