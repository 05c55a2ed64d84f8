"""One live run per workdir: WORKDIR/lock.json names the run holding it (host, pid, start time).

A second run on the same workdir would mix its checkpoints with the first's, so it is refused.
On a local disk the lease is an flock held for the run's life: the kernel lets go when the holder
dies, however it dies, and a successor takes over at once. Elsewhere (gs://) the holder renews
lock.json every RENEW_S seconds; a lease not renewed for LEASE_S is a crashed run's, and is taken.
Process 0 holds it for the whole job.
"""
import fcntl
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
from etils import epath

LEASE_S = 180.0
RENEW_S = 30.0


class WorkdirInUse(RuntimeError):
    pass


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {started}"


class WorkdirLock:
    def __init__(self, workdir):
        self.path = epath.Path(workdir) / "lock.json"
        self.local = "://" not in str(workdir)
        self.me = dict(host=socket.gethostname(), pid=os.getpid(), started=time.time(), token=uuid.uuid4().hex)
        self._file = None
        self._stop = threading.Event()

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _write(self):
        partial = self.path.with_name(f"lock.json.{self.me['token']}")
        partial.write_text(json.dumps(dict(self.me, renewed=time.time())))
        partial.replace(self.path)

    def acquire(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.local:
            self._file = open(self.path.with_name("lock"), "a+")  # noqa: SIM115 - held for the run
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.close()
                raise WorkdirInUse(self._refusal(self._holder())) from None
        else:
            holder = self._holder()
            if holder and time.time() - holder.get("renewed", 0) < LEASE_S:
                raise WorkdirInUse(self._refusal(holder))
            if holder:
                logging.warning("taking over %s from a run that stopped renewing it (%s)", self.path, _describe(holder))
        self._write()
        if not self.local:
            threading.Thread(target=self._renew, name="maepp-workdir-lease", daemon=True).start()

    def _refusal(self, holder: dict) -> str:
        return (f"{self.path.parent} is in use by another run ({_describe(holder) if holder else 'unknown'}): two runs "
                "on one workdir would mix their checkpoints. Stop that run, or give this one another --workdir")

    def _renew(self):
        while not self._stop.wait(RENEW_S):
            if self._holder().get("token") != self.me["token"]:
                logging.error("%s was taken over by another run; this run no longer holds its workdir", self.path)
                return
            self._write()

    def release(self):
        self._stop.set()
        if self._holder().get("token") == self.me["token"]:
            self.path.unlink(missing_ok=True)
        if self._file is not None:
            self._file.close()  # lets go of the flock

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *_):
        self.release()
