"""The global clip order: which clip each position of the training stream holds.

Position g of the stream is clip perm_e[g mod n] of epoch e = g // n, where perm_e is a
permutation of all n clips drawn from (seed, e). Global batch j of a run that starts at position
s holds positions s + j B ... s + (j + 1) B - 1, row r holding s + j B + r. Each process reads only
the rows its devices hold (maepp.sharding.process_rows), so:
    - the batches are the same whatever the number of processes;
    - a checkpoint saves one number, the position of the next batch, and a run resumes from it
      exactly, on the same or on another number of processes (elastic resume).
A clip that cannot be used is replaced, in its row, by the clip at the same slot of the next
epoch (position g + n), and so on: the replacement depends on g alone, so it too is the same on
any number of processes.
"""

import numpy as np


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
