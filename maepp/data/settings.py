"""The values config.data's choices take, in one place that needs no TensorFlow: the config checks
(maepp/config_checks.py) and the pipelines (maepp/data/pipeline.py) both read them."""

# config.data.frontend: where training crops become log-mels, on the hosts (tf.data) or the devices.
FRONTENDS = ("host", "device")
# config.data.damaged_clips: a stored clip that holds what no clip can stops the run, or is skipped.
DAMAGED_CLIPS = ("stop", "skip")
