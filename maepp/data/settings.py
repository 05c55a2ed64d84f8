"""The values config.data's choices take, in one place that needs no TensorFlow: the config checks
(maepp/config_checks.py) and the pipelines (maepp/data/pipeline.py) both read them."""

import dataclasses

# config.data.frontend: where training crops become log-mels, on the hosts (tf.data) or the devices.
FRONTENDS = ("host", "device")
# config.data.damaged_clips: a stored clip that holds what no clip can stops the run, or is skipped.
DAMAGED_CLIPS = ("stop", "skip")
# config.data.shuffle: the training order (maepp/data/order.py): every clip on its own, or blocks
# of stored clips shuffled within windows; "auto" takes blocks for prepared data in a bucket.
SHUFFLES = ("auto", "clips", "blocks")


@dataclasses.dataclass(frozen=True)
class Shuffle:
    """config.data's order: kind ("clips" or "blocks", "auto" resolved) and the blocks' sizes."""

    kind: str = "clips"
    block_clips: int = 128  # consecutive stored clips read as one
    window_blocks: int = 4  # blocks whose clips are shuffled together
    streams: int = 16  # the batch's rows split into this many streams of blocks; divides the batch

    @classmethod
    def from_config(cls, data, resolved: dict) -> "Shuffle":
        return cls(resolved.get("data.shuffle", data.shuffle), data.block_clips, data.window_blocks, data.streams)


CLIPS = Shuffle()  # each clip read on its own
