"""Global batches made on a background thread and put on the devices ahead of the steps that take them.

The train loop then never waits for tf.data or a host-to-device copy while the queue holds a
batch; `wait_s` is the time it did wait, the input pipeline's share of the run's wall time.
"""

import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Iterator over make_item() results, `depth` of them made ahead on a daemon thread.

    make_item raises StopIteration at the end; any other error reaches the consumer at the item
    where it happened. close() stops the thread; being a daemon, it never holds up an exit.
    """

    def __init__(self, make_item: Callable[[], Any], depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self._make_item = make_item
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.wait_s = 0.0  # time __next__ spent waiting for an item
        self._thread = threading.Thread(target=self._fill, name="maepp-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self):
        try:
            while self._put(self._make_item()):
                pass
        except BaseException as error:  # noqa: BLE001 - StopIteration included: the consumer re-raises it
            self._put(_Failed(error))

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        item = self._queue.get()
        self.wait_s += time.perf_counter() - start
        if isinstance(item, _Failed):
            self._queue.put(item)  # later calls fail the same way
            raise item.error
        return item

    def close(self, timeout_s: float = 5.0):
        self._stop.set()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._thread.join(timeout_s)
