"""One line when a multi-process job loses a process, in place of a traceback or JAX's abort.

A process of a jax.distributed job that dies is noticed by the others in one of two ways. A
collective under way with it fails in Python (on CPUs Gloo's "Connection reset by peer"):
lost_process() recognises the error, and maepp.train prints job_lost()'s line in place of the
traceback. Otherwise JAX's runtime ends every other process from C++
(an abort: its own log lines, "Terminating process because the JAX distributed service detected
fatal errors", then a dump of every thread), which nothing in Python can catch. So each process
of such a job sends its stderr through a watcher process (watch_stderr): the watcher passes every
line on, except the runtime's C++ log lines, which it holds back for a few seconds. When
they turn out to be that fatal report, the watcher keeps the report in a file and, once the
process has ended, prints one line: which process stopped answering, the newest complete
checkpoint, and the command that resumes. A launcher with --max_restarts (launch/) then starts
the job again.

    python -m maepp.job_watch REPORT_PREFIX CHECKPOINTS_DIR COMMAND   (started by watch_stderr)
"""

import os
import re
import select
import subprocess
import sys
import tempfile
import time

# A log line of the C++ runtime: "E1205 01:05:44.317601 25053 file.cc:1549] ...". Any such line
# is held, not only the coordination service's: gRPC's own lines about the lost connection can
# come first.
_RUNTIME_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]")
_FATAL = "Terminating process because the JAX distributed service detected fatal errors"
_UNHEALTHY = re.compile(r"tasks are unhealthy \(stopped sending heartbeats\):\s*([\d,\s]+)")
_COORDINATOR_GONE = "Failed to send RPC to coordination service"
HOLD_S = 10.0  # how long those lines wait for the fatal line that may follow them (long: a loaded machine)


def watch_stderr(checkpoints_dir, command: str):
    """Sends this process's stderr (file descriptor 2, so JAX's C++ lines too) through a watcher."""
    console = os.dup(2)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "maepp.job_watch", f"maepp-job-lost-{os.getpid()}-", str(checkpoints_dir), command],
        stdin=subprocess.PIPE,
        stdout=console,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(console)
    sys.stderr.flush()
    os.dup2(watcher.stdin.fileno(), 2)
    watcher.stdin.close()  # fd 2 holds the pipe now: the watcher's input ends when this process does


_COLLECTIVE_LOST = re.compile(
    r"(Gloo|NCCL|nccl).*(Connection reset by peer|Connection closed by peer|remote process "
    r"exited|Socket closed|Broken pipe)",
    re.S,
)


def lost_process(error: BaseException) -> str:
    """In words, the lost process an error says a collective failed for; "" for any other error."""
    found = _COLLECTIVE_LOST.search(str(error))
    return f"a collective failed: another process of the job stopped ({found.group(0)[-60:]})" if found else ""


def job_lost(what: str, newest: str, command: str) -> str:
    """The one line a process of a job that lost another prints."""
    return (
        f"maepp.train: {what}; this process stopped too. The newest complete checkpoint is {newest}; the same "
        f"command resumes from it (a launcher's --max_restarts does so itself): {command}"
    )


def who_stopped(report: str) -> str:
    """Which process JAX's fatal report names, in words."""
    unhealthy = _UNHEALTHY.search(report)
    if unhealthy:
        ids = [int(n) for n in re.findall(r"\d+", unhealthy.group(1))]
        return f"process{'es' if len(ids) > 1 else ''} {', '.join(map(str, ids))} stopped answering"
    if _COORDINATOR_GONE in report:
        return "process 0 (the job's coordinator) stopped answering"
    return "another process of the job failed"


def _newest(checkpoints_dir: str) -> str:
    import orbax.checkpoint as ocp

    steps = ocp.utils.checkpoint_steps(checkpoints_dir)
    return f"{f'step {max(steps)}' if steps else 'none'} in {checkpoints_dir}"


def _watch(prefix: str, checkpoints_dir: str, command: str):
    source, out = sys.stdin.buffer, sys.stdout.buffer
    held, hold_until, fatal, pending = [], 0.0, False, b""
    while True:
        ready, _, _ = select.select([source], [], [], 0.5)
        chunk = os.read(source.fileno(), 65536) if ready else None
        lines = []
        if chunk:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            lines = [line + b"\n" for line in lines]
        elif chunk == b"":  # the process has ended
            lines, pending = ([pending] if pending else []), b""
        for line in lines:
            text = line.decode(errors="replace")
            if held or fatal or _RUNTIME_LINE.match(text):
                held.append(text)
                fatal = fatal or _FATAL in text
                hold_until = hold_until or time.monotonic() + HOLD_S
            else:
                out.write(line)
        if held and not fatal and (chunk == b"" or time.monotonic() > hold_until):
            out.write("".join(held).encode())
            held, hold_until = [], 0.0
        out.flush()
        if chunk == b"":
            break
    if fatal:
        report = "".join(held)
        with tempfile.NamedTemporaryFile("w", prefix=prefix, suffix=".txt", delete=False) as file:
            file.write(report)
        what = f"{who_stopped(report)} (JAX's report: {file.name})"
        out.write(f"\n{job_lost(what, _newest(checkpoints_dir), command)}\n".encode())
        out.flush()


if __name__ == "__main__":
    import signal

    # The terminal's Ctrl-C and a scheduler's SIGTERM are for the training process; the watcher
    # ends when it does (end of input).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _watch(*sys.argv[1:4])
