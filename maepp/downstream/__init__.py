"""Downstream use of a frozen encoder: task layouts, features, linear and MLP probes, and
labelled synthetic tasks to try them on (`python -m maepp.downstream.evaluate`)."""

# What maepp.downstream.evaluate probes: the trained encoder, the same encoder at random init,
# or the log-mel statistics (maepp/downstream/features.py features_embedder).
FEATURES = ("encoder", "random_init", "log_mel_stats")
