"""Frozen-encoder outputs: embeddings of many clips (clips, cli), the encoder as a portable
artifact (artifact), and what runs it with only jax and numpy (embed) or behind the HEAR API (hear).

    python -m maepp.export ...   (maepp/export/cli.py)
"""
