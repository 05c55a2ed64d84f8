"""Beam's SDK worker, as prepare's local runner starts it (maepp/data/writer.py), ending with prepare.

A worker of a killed prepare would otherwise go on writing shards for minutes, and race the
re-run that resumes the preparation. A thread watches the worker's parent, prepare itself: once
the worker has been handed to another parent, prepare is gone, and the worker exits at once.

    python -m maepp.data.beam_worker   (Beam's sdk_worker_main, with its arguments and environment)
"""

import os
import sys
import threading
import time


def _end_with(parent: int):
    while os.getppid() == parent:
        time.sleep(0.05)  # 20 checks a second: a worker finishes a short shard in less
    os._exit(1)


if __name__ == "__main__":
    threading.Thread(target=_end_with, args=(os.getppid(),), name="maepp-end-with-prepare", daemon=True).start()
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)
