"""Named points at which a test holds a maepp process, so that it acts at a known moment.

    MAEPP_PAUSE_AT=NAME@NUMBER:MARKER[,NAME@NUMBER:MARKER...]

A process that reaches the point NAME with that NUMBER (a step, a block, a count: each point
says which) writes the file MARKER and waits until it is removed. The test waits for the file,
acts (a signal, a kill, a change to the workdir) and lets it go: it writes MARKER.released, then
removes MARKER. A point let go of is not held again (a restarted job passes it). Tests alone set the variable;
without it a point costs one dictionary lookup.

The points and their numbers: `logged@STEP` (the train loop has printed a step's line),
`saved@STEP` (it has started a step's save),
`save_written@STEP` (its files are written, not yet committed), `evaluation@N` (an
evaluation has gone through N of its batches, or of the clips it reads first),
`exported@BLOCK` (maepp.export has finished a block), `shard_written@N` (prepare: the N-th
shard of this worker process).
"""

import os
import pathlib
import time

VARIABLE = "MAEPP_PAUSE_AT"


def reached(name: str, number: int):
    """Holds the process here while MARKER exists, if MAEPP_PAUSE_AT names this point and number."""
    wanted = os.environ.get(VARIABLE)
    if not wanted:
        return
    markers = dict(entry.partition(":")[::2] for entry in wanted.split(","))
    marker = markers.get(f"{name}@{number}")
    if marker is None or os.path.exists(f"{marker}.released"):
        return
    with open(marker, "w") as file:
        file.write(f"{os.getpid()}\n")
    # The test writes MARKER.released before it removes MARKER. A process of a job that wrote MARKER
    # in between (it looked for MARKER.released just before the release) is let go too: held on, it
    # would wait for a removal that has already happened, and its job would hang.
    released = f"{marker}.released"
    while os.path.exists(marker) and not os.path.exists(released):
        time.sleep(0.01)  # signals are handled between sleeps
    pathlib.Path(marker).unlink(missing_ok=True)
