"""The global clip order: which clip each position of the training stream holds.

Global batch j of a run that starts at position s holds positions s + j B ... s + (j + 1) B - 1;
which row holds which position is the order's `slots` (row r: s + j B + slots[r]). Each process
reads only the rows its devices hold (maepp.sharding.process_rows), so:
    - the batches are the same whatever the number of processes;
    - a checkpoint saves one number, the position of the next batch, and a run resumes from it
      exactly, on the same or on another number of processes (elastic resume).
Two orders (config.data.shuffle):
    "clips"   GlobalOrder: position g is clip perm_e[g mod n] of epoch e = g // n, perm_e a
              permutation of all n clips drawn from (seed, e); row r holds slot r. Every crop is
              a read of its own.
    "blocks"  BlockOrder: clips are read a block of consecutive stored clips at a time, and
              shuffled within a window of blocks (MosaicML Streaming's block shuffles are the
              model; this is maepp's own). The batch's rows are split into streams, each fed by
              blocks of its own, so each process reads only its streams' blocks.
A clip that cannot be used is replaced, in its row, by the clip at the same place one epoch on,
and so on: the replacement depends on the position alone, so it too is the same on any number of
processes.
"""

import numpy as np

from maepp.data.settings import Shuffle


class GlobalOrder:
    def __init__(self, n_clips: int, seed: int):
        if n_clips < 1:
            raise ValueError("the data source holds no clips")
        self.n_clips, self.seed = n_clips, seed
        self._cached = {}  # epoch -> its permutation: a batch spans at most two epochs

    def _permutation(self, epoch: int) -> np.ndarray:
        permutation = self._cached.get(epoch)  # one lookup: tf.data calls from several threads
        if permutation is None:
            permutation = np.random.default_rng([self.seed, epoch]).permutation(self.n_clips)
            self._cached = {epoch: permutation, **{e: p for e, p in self._cached.items() if e == epoch - 1}}
        return permutation

    def clips(self, positions) -> tuple:
        """Global positions [k] -> (epochs [k], clip indices [k]), int64."""
        epochs, slots = np.divmod(np.asarray(positions, np.int64), self.n_clips)
        indices = np.empty_like(slots)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            indices[here] = self._permutation(int(epoch))[slots[here]]
        return epochs, indices

    def clip(self, position: int) -> tuple:
        """-> (epoch, clip index) of one position."""
        epochs, indices = self.clips([position])
        return int(epochs[0]), int(indices[0])

    def replacements(self, position: int):
        """The positions whose clips stand in, one after another, for an unusable clip at
        `position`: the same slot in each later epoch, one epoch's worth of them."""
        return range(position + self.n_clips, position + self.n_clips * self.n_clips + 1, self.n_clips)

    def slots(self, rows, batch_size: int) -> np.ndarray:
        """Where in its batch's positions each row is: row r at slot r."""
        del batch_size
        return np.asarray(rows, np.int64)


class BlockOrder:
    """Clips read in blocks and shuffled within windows of blocks, in `streams` streams.

    A block is `block_clips` consecutive clips of the stored order (clips k b ... (k + 1) b - 1;
    the last, shorter block fills its b places with its own clips again), so reading one is a
    range request per shard it spans. In epoch e the blocks are permuted (seed, e) and dealt to
    the streams in turn; each stream takes K = n_blocks // streams of them (the few left over
    wait for another epoch). A
    stream's clips are its blocks one after another, shuffled within each window of
    `window_blocks` blocks (seed, e, stream, window): a window's blocks are all a stream reads
    while it lasts, so a reader holds at most a window's blocks per stream, and the next window's.

    A batch of B rows takes B / streams consecutive clips of every stream: rows r of stream r //
    (B / streams). Position g is clip i = g // streams of stream g % streams; row r of batch j
    holds position s + j B + (r % R) streams + r // R (R = B / streams), so the batch's positions
    are the same set as the clip order's, and a checkpoint's position s is i = s / streams clips
    into every stream: a run resumes exactly with another batch size too. Streams are fixed by
    the config, not by the processes, so every process count that divides them reads disjoint
    blocks (1/P of the data each), and any process count gives the same batches.
    """

    def __init__(self, n_clips: int, seed: int, block_clips: int, window_blocks: int, streams: int):
        if n_clips < 1:
            raise ValueError("the data source holds no clips")
        self.n_clips, self.seed = n_clips, seed
        self.block_clips, self.window_blocks, self.streams = block_clips, window_blocks, streams
        self.n_blocks = -(-n_clips // block_clips)
        self.stream_blocks = self.n_blocks // streams  # K: blocks per stream per epoch
        if self.stream_blocks < 1:
            raise ValueError(
                f"{n_clips} clips make {self.n_blocks} blocks of {block_clips}, fewer than the {streams} streams "
                "that read them: lower config.data.block_clips or config.data.streams, or shuffle clips"
            )
        self.stream_epoch = self.stream_blocks * block_clips  # clips a stream reads in an epoch
        self._cached = {}  # epoch -> its block permutation
        self._windows = {}  # (epoch, stream, window) -> its shuffle, for the windows being read

    def _dealt(self, epoch: int) -> np.ndarray:
        """[streams, K]: the blocks each stream reads in this epoch, in order."""
        dealt = self._cached.get(epoch)
        if dealt is None:
            permutation = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
            dealt = permutation[: self.stream_blocks * self.streams].reshape(self.stream_blocks, self.streams).T
            self._cached = {epoch: dealt, **{e: d for e, d in self._cached.items() if e == epoch - 1}}
        return dealt

    def _window(self, epoch: int, stream: int, window: int) -> np.ndarray:
        """A window's shuffle: the place among its blocks' clips each of its slots reads."""
        key = (epoch, stream, window)
        shuffled = self._windows.get(key)
        if shuffled is None:
            blocks = min(self.window_blocks, self.stream_blocks - window * self.window_blocks)
            shuffled = np.random.default_rng([self.seed, *key]).permutation(blocks * self.block_clips)
            if len(self._windows) >= 4 * self.streams:  # windows long read: the stream moved on
                self._windows = {}
            self._windows[key] = shuffled
        return shuffled

    def clips(self, positions) -> tuple:
        """Global positions [k] -> (epochs [k], clip indices [k]), int64."""
        positions = np.asarray(positions, np.int64)
        streams, within = positions % self.streams, positions // self.streams
        epochs, taken = np.divmod(within, self.stream_epoch)
        windows, slots = np.divmod(taken, self.window_blocks * self.block_clips)
        indices = np.empty_like(positions)
        windows_read = np.stack([epochs, streams, windows], axis=1)
        for key in np.unique(windows_read, axis=0):  # a batch reads a window or two of each stream
            here = (windows_read == key).all(axis=1)
            epoch, stream, window = (int(k) for k in key)
            slot = self._window(epoch, stream, window)[slots[here]]
            block = self._dealt(epoch)[stream, window * self.window_blocks + slot // self.block_clips]
            first = block * self.block_clips
            indices[here] = first + (slot % self.block_clips) % np.minimum(self.block_clips, self.n_clips - first)
        return epochs, indices

    def clip(self, position: int) -> tuple:
        epochs, indices = self.clips([position])
        return int(epochs[0]), int(indices[0])

    def replacements(self, position: int):
        """The same place of the same stream in each later epoch, one stream-epoch's worth."""
        step = self.stream_epoch * self.streams
        return range(position + step, position + step * self.stream_epoch + 1, step)

    def slots(self, rows, batch_size: int) -> np.ndarray:
        """Row r -> slot (r % R) streams + r // R of its batch (R = batch_size / streams)."""
        per_stream = batch_size // self.streams
        rows = np.asarray(rows, np.int64)
        return (rows % per_stream) * self.streams + rows // per_stream


def training_order(n_clips: int, seed: int, shuffle: Shuffle):
    """config.data.shuffle's order over n_clips: a GlobalOrder or a BlockOrder."""
    if shuffle.kind == "blocks":
        return BlockOrder(n_clips, seed, shuffle.block_clips, shuffle.window_blocks, shuffle.streams)
    return GlobalOrder(n_clips, seed)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise over uint64."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def crop_fractions(seed: int, epochs, indices) -> np.ndarray:
    """Uniform in [0, 1) for each (seed, epoch, clip): where in its clip a crop starts. A hash,
    so a whole batch is one numpy expression; float64 [n]."""
    with np.errstate(over="ignore"):
        z = _mix(np.full(len(indices), seed, np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        z = _mix(z ^ np.asarray(epochs, np.uint64))
        z = _mix(z ^ np.asarray(indices, np.uint64))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def batch_positions(start: int, batch_size: int, rows: np.ndarray, batch: int) -> np.ndarray:
    """The global positions of this process's rows [len(rows)] of batch `batch` of a stream from `start`."""
    return start + batch * batch_size + np.asarray(rows, np.int64)
