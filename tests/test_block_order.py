"""config.data.shuffle="blocks" (maepp/data/order.py BlockOrder): blocks of stored clips read
whole, shuffled within windows, in streams; the same batches on any number of processes, each
process reading only its streams' blocks, and an exact elastic resume."""

import numpy as np
import pytest
import soundfile

from maepp.data.clip_store import ClipStoreSource
from maepp.data.order import BlockOrder
from maepp.data.pipeline import train_dataset
from maepp.data.settings import Shuffle
from maepp.data.synthetic import synthetic_clip
from maepp.data.writer import prepare

BLOCKS = Shuffle("blocks", block_clips=4, window_blocks=2, streams=4)
BATCH = 8


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """66 clips of 2.5 s in shards of 16 (so that blocks cross shards), the log_mel store."""
    root = tmp_path_factory.mktemp("blocks_in")
    rng = np.random.default_rng(9)
    for i in range(66):
        soundfile.write(root / f"clip_{i:02d}.wav", synthetic_clip(rng, 2.5)[0], 16000)
    out = tmp_path_factory.mktemp("blocks_out")
    prepare(root, out, clips_per_shard=16, workers=1)
    return str(out / "audio_clips" / "2.0.0")


def _read(directory, rows, batches, start=0):
    """-> (log_mel [batches, len(rows), 200, 80], positions, the source that read them)."""
    source = ClipStoreSource(directory)
    dataset = train_dataset(source, seed=5, batch_size=BATCH, rows=rows, start_position=start, shuffle=BLOCKS)
    read = list(dataset.take(batches).as_numpy_iterator())
    return np.stack([b["log_mel"] for b in read]), np.stack([b["position"] for b in read]), source


def test_a_batch_holds_the_clip_order_s_positions_and_each_stream_reads_a_window_of_its_own_blocks():
    order = BlockOrder(66, seed=5, block_clips=4, window_blocks=2, streams=4)
    assert (order.n_blocks, order.stream_blocks, order.stream_epoch) == (17, 4, 16)
    rows = np.arange(BATCH)
    streams_blocks = []
    for batch in range(8):  # two stream epochs
        positions = batch * BATCH + order.slots(rows, BATCH)
        assert sorted(positions.tolist()) == list(range(batch * BATCH, (batch + 1) * BATCH))
        _, clips = order.clips(positions)
        streams_blocks.append((clips // 4).reshape(4, 2))  # rows of a stream are consecutive
    for stream in range(4):
        blocks = [set(b[stream]) for b in streams_blocks]
        # 8 clips (a window of 2 blocks) every 4 batches of 2 rows: the same 2 blocks, then 2 others
        assert len(set().union(*blocks[0:4])) == 2
        assert not set().union(*blocks[0:4]) & set().union(*blocks[4:8])
    every = [set(np.concatenate([b[s] for b in streams_blocks])) for s in range(4)]
    assert all(not a & b for i, a in enumerate(every) for b in every[i + 1 :])  # streams share no block
    _, clips = order.clips(np.arange(4 * 16))  # one epoch of every stream: 16 of the 17 blocks, once each
    blocks = set((clips // 4).tolist())
    # every clip of each block read, the last block's 2 clips twice each to fill its 4 places
    assert len(blocks) == 16 and len(set(clips.tolist())) == sum(min(4, 66 - 4 * b) for b in blocks)


@pytest.mark.parametrize("processes", [2, 4])
def test_the_block_order_is_the_same_on_1_2_and_4_processes_each_reading_its_own_blocks(prepared, processes):
    alone, positions, _ = _read(prepared, np.arange(BATCH), 8)  # one epoch of every stream
    shares = [_read(prepared, rows, 8) for rows in np.split(np.arange(BATCH), processes)]
    np.testing.assert_array_equal(np.concatenate([s[0] for s in shares], axis=1), alone)
    np.testing.assert_array_equal(np.concatenate([s[1] for s in shares], axis=1), positions)
    # A block is one or two range requests (it may cross a shard's end), each read by one process.
    reads = [source.reads for *_, source in shares]
    blocks = [set((BlockOrder(66, 5, 4, 2, 4).clips(p.ravel())[1] // 4).tolist()) for _, p, _ in shares]
    assert all(not a & b for i, a in enumerate(blocks) for b in blocks[i + 1 :])
    assert all(len(b) <= r <= 2 * len(b) for b, r in zip(blocks, reads))


def test_a_run_resumed_elastically_reads_the_batches_of_the_uninterrupted_run(prepared):
    """Batches 0-5 on two processes, then from the position after them on one (2 -> 1)."""
    uninterrupted, _, _ = _read(prepared, np.arange(BATCH), 12)
    first = [_read(prepared, rows, 6)[0] for rows in np.split(np.arange(BATCH), 2)]
    then, _, _ = _read(prepared, np.arange(BATCH), 6, start=6 * BATCH)
    np.testing.assert_array_equal(np.concatenate([np.concatenate(first, axis=1), then]), uninterrupted)


def test_blocks_cut_requests_per_crop_to_one_per_block(prepared):
    """Clips: one request per crop; blocks: at most two per block of 4 clips, each block held."""
    clips_source = ClipStoreSource(prepared)
    list(train_dataset(clips_source, seed=5, batch_size=BATCH).take(8).as_numpy_iterator())
    _, _, blocks_source = _read(prepared, np.arange(BATCH), 8)
    assert clips_source.reads >= 64 and blocks_source.reads <= clips_source.reads / 2
