r"""`python -m maepp.tools.bench order`: how well each training order shuffles, from the order alone.

    python -m maepp.tools.bench order --clips 2000000 --batch_size 1024 [--block_clips 128] \
        [--window_blocks 4] [--streams 16] [--batches 200] [--json]

For the clip order (config.data.shuffle="clips") and the block order ("blocks") over --clips
clips in stored order, over --batches global batches from the start:
    same block       the share of a batch's pairs of clips that lie in one block of --block_clips
                     consecutive stored clips (related clips, if the store kept them together)
    blocks a batch   the distinct blocks a batch's clips come from, over the batch size
    stored neighbours  the median distance, in positions of the stream over the clips' count, at
                     which a clip and the next one in the store are read (0.33 for a full shuffle;
                     0 for clips read in stored order)
    requests         per crop, if a block costs one request and a clip read alone one
Training on data whose store clusters related clips (classes, recordings) is what a low "same
block" protects against; `prepare` stores files in the order of their names' hashes for the same
reason. Nothing is read: the orders are pure functions of (seed, epoch, position).
"""

import time

import numpy as np
from absl import flags

from maepp.data.order import training_order
from maepp.data.settings import Shuffle
from maepp.tools.bench.report import report

_CLIPS = flags.DEFINE_integer("clips", 200_000, "Clips in the dataset.")
_BATCH = flags.DEFINE_integer("batch_size", 1024, "Global batch.")
_BATCHES = flags.DEFINE_integer("batches", 100, "Global batches measured, from the start.")
_BLOCK_CLIPS = flags.DEFINE_integer("block_clips", 128, "Clips per block (config.data.block_clips).")
_WINDOW_BLOCKS = flags.DEFINE_integer("window_blocks", 4, "Blocks per window (config.data.window_blocks).")
_STREAMS = flags.DEFINE_integer("streams", 16, "Streams of blocks (config.data.streams).")


def order_quality(n_clips: int, batch_size: int, batches: int, shuffle: Shuffle) -> dict:
    order = training_order(n_clips, seed=0, shuffle=shuffle)
    block = shuffle.block_clips
    rows = np.arange(batch_size)
    same, distinct, read_at = [], [], np.full(n_clips, -1, np.int64)
    for j in range(batches):
        positions = j * batch_size + order.slots(rows, batch_size)
        _, clips = order.clips(positions)
        blocks = clips // block
        counts = np.unique(blocks, return_counts=True)[1]
        same.append(float((counts * (counts - 1)).sum()) / (batch_size * (batch_size - 1)))
        distinct.append(len(counts) / batch_size)
        first = read_at[clips] < 0
        read_at[clips[first]] = positions[first]
    seen = np.flatnonzero(read_at >= 0)
    pairs = seen[np.isin(seen + 1, seen)]
    distance = np.abs(read_at[pairs + 1] - read_at[pairs]) / n_clips if len(pairs) else np.array([np.nan])
    per_block = shuffle.kind == "blocks"
    return dict(
        order=shuffle.kind,
        clips=n_clips,
        batch_size=batch_size,
        batches=batches,
        block_clips=block,
        window_blocks=shuffle.window_blocks if per_block else None,
        streams=shuffle.streams if per_block else None,
        same_block=round(float(np.mean(same)), 5),
        blocks_per_batch_over_batch=round(float(np.mean(distinct)), 4),
        stored_neighbours_median_distance=round(float(np.median(distance)), 5),
        requests_per_crop=round(1 / block if per_block else 1.0, 5),
    )


def main(argv):
    del argv
    t = time.perf_counter()
    for kind in ("clips", "blocks"):
        shuffle = Shuffle(kind, _BLOCK_CLIPS.value, _WINDOW_BLOCKS.value, _STREAMS.value)
        r = order_quality(_CLIPS.value, _BATCH.value, _BATCHES.value, shuffle)
        report(
            r,
            f"{kind} order over {r['clips']:,} clips, {r['batches']} batches of {r['batch_size']}"
            + (
                f", blocks of {r['block_clips']} in windows of {r['window_blocks']}, {r['streams']} streams"
                if kind == "blocks"
                else ""
            )
            + f" ({time.perf_counter() - t:.0f} s)",
            f"pairs of a batch in one block of {r['block_clips']}: {r['same_block']:.5f}; blocks a batch "
            f"draws on, over its size: {r['blocks_per_batch_over_batch']}",
            f"stored neighbours read apart (median, over the clips): {r['stored_neighbours_median_distance']}; "
            f"requests per crop: {r['requests_per_crop']}",
        )
