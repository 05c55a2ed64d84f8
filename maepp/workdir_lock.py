"""One live run per workdir: WORKDIR/lock.json names the run holding it (host, pid, start time).

A second run on the same workdir would mix its checkpoints with the first's, so it is refused.
(maepp.export holds its unfinished output's folder the same way: WorkdirLock(folder, holder=..., clash=...).)
On a local (or shared) disk the lease is an flock held for the run's life: the kernel lets go when
the holder dies, however it dies, and a successor takes over at once.

On gs:// the lease is lock.json itself, written only with a precondition on its generation
(google-cloud-storage; GCS serialises writes to one object):
    - taking it creates the object if none exists (if-generation-match 0): of two runs starting
      together exactly one succeeds;
    - the holder renews it every RENEW_S seconds, if it still has the generation it wrote;
    - a run that finds it held watches it: a renewal means a live holder, and the run is
      refused; a lease not renewed for LEASE_S seconds (by the watcher's own clock, or by the
      holder's timestamp) is a dead run's, and is taken over, again on its generation;
    - the holder checks the lease before every save (check_held), so a run whose lease was taken
      stops before it writes another checkpoint.
Whose lease it is, is read from the token in lock.json, never from the generation alone: the
renewal thread changes the generation while the loop checks it, and a write that GCS stored but
whose answer was lost is retried by the client and refused (412) on its own new generation.
The lease lasts $MAEPP_WORKDIR_LEASE_S seconds (60 by default): how long a crashed run keeps its
successor waiting, against how long a run may go without renewing before it is taken for dead.
Process 0 holds it for the whole job.
"""

import fcntl
import json
import os
import socket
import threading
import time
import uuid

from etils import epath

LEASE_S = float(os.environ.get("MAEPP_WORKDIR_LEASE_S", 60))
RENEW_S = LEASE_S / 6


class WorkdirInUse(RuntimeError):
    """Another run holds the workdir, its lock's path is taken by something that is not a lock, or
    the lock cannot be written there."""


class WorkdirLost(RuntimeError):
    """The workdir was taken over by another run while this one held it."""


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {started}"


class _GcsObject:
    """lock.json in a bucket, read and written with generation preconditions."""

    def __init__(self, path: str):
        from google.cloud import storage

        bucket, _, name = path.removeprefix("gs://").partition("/")
        self._bucket, self._name = storage.Client().bucket(bucket), name

    def read(self) -> tuple:
        """-> (the holder it names, its generation), or ({}, None) if there is none."""
        from google.api_core import exceptions

        blob = self._bucket.get_blob(self._name)
        if blob is None:
            return {}, None
        try:
            return json.loads(blob.download_as_bytes(if_generation_match=blob.generation)), blob.generation
        except (exceptions.NotFound, exceptions.PreconditionFailed):  # changed between the two reads
            return self.read()
        except ValueError:
            return {}, blob.generation

    def write(self, text: str, if_generation: int):
        """Writes if the object's generation is `if_generation` (0: if there is none); -> the new
        generation, or None if another writer came first."""
        from google.api_core import exceptions

        blob = self._bucket.blob(self._name)
        try:
            blob.upload_from_string(text, content_type="application/json", if_generation_match=if_generation)
        except exceptions.PreconditionFailed:
            return None
        return blob.generation

    def delete(self, generation: int):
        from google.api_core import exceptions

        try:
            self._bucket.blob(self._name).delete(if_generation_match=generation)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            pass  # not ours any more


RUNS_CLASH = "two runs on one workdir would mix their checkpoints. Stop that run, or give this one another --workdir"


class WorkdirLock:
    """holder: what holds it, as the refusal names it; clash: why two may not, and what to do."""

    def __init__(
        self,
        workdir,
        lease_s: float | None = None,
        renew_s: float | None = None,
        holder: str = "run",
        clash: str = RUNS_CLASH,
    ):
        self.path = epath.Path(workdir) / "lock.json"
        self.holder, self.clash = holder, clash
        scheme = str(workdir).partition("://")[0] if "://" in str(workdir) else ""
        if scheme not in ("", "gs"):
            raise ValueError(
                f"{workdir}: this {holder} keeps its files on a local or shared disk, or on gs:// (a {scheme}:// "
                f"folder could not be held by one {holder} at a time)"
            )
        self.local = not scheme
        self.lease_s, self.renew_s = lease_s or LEASE_S, renew_s or RENEW_S
        self.me = dict(host=socket.gethostname(), pid=os.getpid(), started=time.time(), token=uuid.uuid4().hex)
        self._file = None
        self._stop = threading.Event()
        self._renewal = None
        self._object = None
        self._generation = None
        self.lost = ""  # why the lease was lost, once it is

    def _text(self) -> str:
        return json.dumps(dict(self.me, renewed=time.time()))

    def acquire(self):
        if self.local:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._acquire_flock()
            except OSError as error:  # a read-only disk, no permission, no space: nothing was held
                raise WorkdirInUse(
                    f"{self.path.parent} cannot be written ({error.strerror}: {error.filename}): this {self.holder} "
                    "keeps its lock there and everything it writes; choose a folder this user may write"
                ) from None
        else:
            self._object = _GcsObject(str(self.path))
            self._acquire_lease()
            self._renewal = threading.Thread(target=self._renew, name="maepp-workdir-lease", daemon=True)
            self._renewal.start()

    def _acquire_flock(self):
        flock_path = self.path.with_name("lock")
        for path in (flock_path, self.path):
            if path.is_dir():
                raise WorkdirInUse(f"{path} is a folder where maepp keeps its lock file: move it away")
        while True:
            self._file = open(flock_path, "a+")
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.close()
                raise WorkdirInUse(self._refusal(self._local_holder())) from None
            # A holder that removes the file as it lets go (export's folder) may have done so
            # between our open and our flock: the flock is then on a file no one else will open.
            if flock_path.exists() and os.stat(flock_path).st_ino == os.fstat(self._file.fileno()).st_ino:
                break
            self._file.close()
        partial = self.path.with_name(f"lock.json.{self.me['token']}")
        partial.write_text(self._text())
        partial.replace(self.path)

    def _local_holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _acquire_lease(self):
        holder, generation = self._object.read()
        if generation is None:
            self._generation = self._write_mine(if_generation=0)
            if self._generation is not None:
                return
            holder, generation = self._object.read()  # another run created it first
        seen_at = time.monotonic()
        remaining = self.lease_s - (time.time() - holder.get("renewed", 0))
        if remaining > 0:
            print(
                f"{self.path.parent} is held by {_describe(holder)}: "
                f"waiting up to {min(remaining, self.lease_s):.0f} s "
                f"for its lease to run out (a live run renews it every {self.renew_s:.0f} s)",
                flush=True,
            )
        while remaining > 0:
            time.sleep(min(remaining, self.renew_s / 4))
            holder_now, generation_now = self._object.read()
            if generation_now != generation:
                raise WorkdirInUse(self._refusal(holder_now))
            remaining = min(
                self.lease_s - (time.monotonic() - seen_at), self.lease_s - (time.time() - holder.get("renewed", 0))
            )
        self._generation = self._write_mine(if_generation=generation)
        if self._generation is None:
            raise WorkdirInUse(self._refusal(self._object.read()[0]))
        print(f"took over {self.path} from a {self.holder} that stopped renewing it ({_describe(holder)})", flush=True)

    def _refusal(self, holder: dict) -> str:
        return (
            f"{self.path.parent} is in use by another {self.holder} ({_describe(holder) if holder else 'unknown'}): "
            f"{self.clash}"
        )

    def _is_mine(self, holder: dict) -> bool:
        return holder.get("token") == self.me["token"]

    def _write_mine(self, if_generation: int):
        """Writes this run's lock.json on `if_generation`; -> its new generation, or None if another
        run's lock.json is there (a refused retry of this run's own stored write is not)."""
        generation = self._object.write(self._text(), if_generation=if_generation)
        if generation is None:
            holder, generation = self._object.read()
            if not self._is_mine(holder):
                return None
        return generation

    def _taken_over(self, holder: dict) -> str:
        return f"{self.path} was taken over by another {self.holder} ({_describe(holder) if holder else 'unknown'})"

    def _renew(self):
        while not self._stop.wait(self.renew_s):
            generation = self._write_mine(if_generation=self._generation)
            if generation is None:
                self.lost = self._taken_over(self._object.read()[0])
                return
            self._generation = generation

    def check_held(self):
        """Raises WorkdirLost if another run has taken the workdir: called before every save."""
        if self.local:
            return
        if not self.lost:
            holder, _ = self._object.read()
            if not self._is_mine(holder):
                self.lost = self._taken_over(holder)
        if self.lost:
            raise WorkdirLost(self.lost)

    def release(self, remove_lock_file: bool = False):
        """remove_lock_file: also the flock's file, for a folder that is to go away with its holder."""
        self._stop.set()
        if self._renewal is not None:
            self._renewal.join()  # a renewal under way changes the generation the delete is made on
        if self.local:
            if self._local_holder().get("token") == self.me["token"]:
                self.path.unlink(missing_ok=True)
            if self._file is not None:
                if remove_lock_file:  # while still held: a waiting opener sees it gone (_acquire_flock)
                    self.path.with_name("lock").unlink(missing_ok=True)
                self._file.close()  # lets go of the flock
        elif self._generation is not None and not self.lost:
            self._object.delete(self._generation)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *_):
        self.release()
