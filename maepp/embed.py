"""`maepp.embed`, the name encoder artifacts are loaded by: maepp/export/embed.py (jax and numpy only)."""

from maepp.export.embed import META_FILE, Embedder, load  # noqa: F401
