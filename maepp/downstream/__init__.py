"""Downstream use of a frozen encoder: task layouts, features, linear and MLP probes, and
labelled synthetic tasks to try them on (`python -m maepp.downstream.evaluate`)."""
