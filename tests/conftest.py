import atexit
import gc
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import tempfile

# One compilation cache for the whole session, shared with the maepp processes tests start:
# they compile the same micro model again and again. Fresh per session, so nothing stale.
# pytest-xdist's workers inherit the variable from the process that starts them, so they share it.
if "MAEPP_TEST_JAX_CACHE" not in os.environ:
    os.environ["MAEPP_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="maepp-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["MAEPP_TEST_JAX_CACHE"], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["MAEPP_TEST_JAX_CACHE"]
# Every program, not only those that took over a second to compile (jax's default): a maepp.train
# start compiles about 20 small ones, 2 s of CPU that the cache saves each later process.
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
# Tests compute on the CPU (8 fake devices), also on a machine that has an accelerator.
os.environ["JAX_PLATFORMS"] = "cpu"
# LLVM at -O0, not XLA's -O3, for every program the tests and their processes compile: tests
# compile far more than they run. Measured on a 2-core AMD EPYC (2026-12-05), the micro model's
# train step (batch 32, 2 fake devices) compiles in 3.1 CPU-s instead of 5.0 at -O2 (the setting
# before) and runs in 0.26 s instead of 0.14; the suite took 1,444 CPU-s instead of 1,578, with
# that day's other changes. Runs compared bit for bit are all made under these flags.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax
import pytest
from filelock import FileLock

from maepp import program

# A suite started in the background by a script (`make test &` without job control) inherits SIGINT
# ignored, and so would every process the tests start: Python then never turns Ctrl-C into
# KeyboardInterrupt, and the tests that send one to maepp.export or prepare fail. With Python's own
# handler here, the processes started from pytest's get SIGINT's default disposition again.
signal.signal(signal.SIGINT, signal.default_int_handler)

# The tests trace and compile as maepp's programs do, and collect garbage as rarely.
gc.set_threshold(*program.GC_THRESHOLDS)

# Eight fake CPU devices for the sharding tests; set before any backend starts.
jax.config.update("jax_num_cpu_devices", 8)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session")
def trained_run(repo_root, tmp_path_factory, worker_id):
    """A micro run's workdir (maepp.train, tests/helpers.py TRAINED_RUN, with a probe evaluator:
    probed_config), made once per session and shared by pytest-xdist's workers (the first to need
    it trains, the others wait).

    It trains in a folder of its own, renamed to trained_run only once finished: a failed attempt
    leaves nothing a later one could take for a finished run. Its failure is recorded, and every
    test that needs the run fails with that first message, not with a consequence of it.
    MAEPP_TEST_SHARED_RUN_OVERRIDES adds --config overrides (tests/test_shared_run.py breaks it so).
    """
    from tests.helpers import TRAINED_RUN, train, write_probed_config

    session_dir = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # each worker has its own directory inside the session's
        session_dir = session_dir.parent
    workdir, attempt = session_dir / "trained_run", session_dir / "trained_run.attempt"
    failure = session_dir / "trained_run.failed"
    with FileLock(str(session_dir / "trained_run.lock")):
        if not workdir.exists() and not failure.exists():
            shutil.rmtree(attempt, ignore_errors=True)
            (session_dir / "probe").mkdir(exist_ok=True)
            config = write_probed_config(session_dir / "probe")
            extra = shlex.split(os.environ.get("MAEPP_TEST_SHARED_RUN_OVERRIDES", ""))
            try:
                out = train(repo_root, attempt, *TRAINED_RUN, *extra, quiet=True, config=config)
                last = out.strip().splitlines()[-1] if out.strip() else "nothing"
                assert "stopped at step 60" in out, f"maepp.train did not stop at step 60; its last line: {last}"
            except AssertionError as error:
                failure.write_text(str(error).strip() or "no message")
            else:
                attempt.rename(workdir)
        if failure.exists():
            pytest.fail(f"the shared run (tests/conftest.py trained_run) failed: {failure.read_text()}", pytrace=False)
    return workdir


@pytest.fixture(scope="session")
def probed_config(trained_run):
    """The shared run's config file: micro with a probe evaluator (tests/helpers.py PROBED_CONFIG)."""
    return trained_run.parent / "probe" / "probed.py"


def pytest_configure(config):
    config.addinivalue_line("markers", "long(seconds): a test that takes about this long on a 2-core machine")
    config.addinivalue_line(
        "markers",
        "e2e: an end-to-end test: it starts processes (maepp's programs, JAX jobs, "
        "a GCS API server) or trains a run in its own; `make test-fast` runs the "
        "others",
    )


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request, monkeypatch):
    """The unit tier (`make test-fast`, tests not marked e2e) runs in this process: a test that
    starts one must be marked e2e, or it fails here. (A test that trains a run in this process
    through maepp.train_loop.train is end to end too, and marked so.)"""
    if request.node.get_closest_marker("e2e") is not None:
        return

    def refuse(*args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts a process ({args[0] if args else kwargs}): mark it pytest.mark.e2e"
        )

    monkeypatch.setattr(subprocess, "Popen", refuse)


def pytest_collection_modifyitems(items):
    """Tests marked long go first, longest first. pytest-xdist hands tests out in this order (after
    its groups of several tests): started last, a two-minute test runs alone on one worker while
    the other idles."""

    def seconds(item):
        mark = item.get_closest_marker("long")
        return mark.kwargs["seconds"] if mark else 0

    items.sort(key=lambda item: -seconds(item))
