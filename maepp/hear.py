"""`maepp.hear`, the module name hear-validator is given: the HEAR API of maepp/export/hear.py."""

from maepp.export.hear import get_scene_embeddings, get_timestamp_embeddings, load_model  # noqa: F401
