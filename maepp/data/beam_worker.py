"""Beam's SDK worker, as prepare's local runner starts it (maepp/data/writer.py), ending with prepare.

A worker of a killed prepare would otherwise go on writing shards for minutes, and race the
re-run that resumes the preparation. Once the worker has been handed to another parent, prepare
is gone, and the worker exits: at the end of the shard in hand (`exit_if_prepare_ended`, which
the writer calls after each shard), or at once, from a thread that watches the parent, if a long
shard is in hand.

    python -m maepp.data.beam_worker   (Beam's sdk_worker_main, with its arguments and environment)
"""

import os
import sys
import threading
import time

# The pid of the prepare that started this worker; unset in any other process (Beam's own
# workers, another runner's): those never exit here.
PREPARE_PID = "MAEPP_BEAM_WORKER_PREPARE_PID"


def exit_if_prepare_ended():
    """Ends this worker if it is one of prepare's and prepare is gone: between shards, so that it
    writes none after the one in hand however late the watching thread runs on a loaded machine."""
    prepare = os.environ.get(PREPARE_PID)
    if prepare and os.getppid() != int(prepare):
        os._exit(1)


def _end_with_prepare():
    while True:
        time.sleep(0.05)  # 20 checks a second: a worker finishes a short shard in less
        exit_if_prepare_ended()


if __name__ == "__main__":
    os.environ[PREPARE_PID] = str(os.getppid())
    threading.Thread(target=_end_with_prepare, name="maepp-end-with-prepare", daemon=True).start()
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)
