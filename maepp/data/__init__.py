"""Audio sources and input pipelines."""
