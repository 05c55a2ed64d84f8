import atexit
import os
import pathlib
import shutil
import sys
import tempfile

# One compilation cache for the whole session, shared with the maepp processes tests start:
# they compile the same micro model again and again. Fresh per session, so nothing stale.
os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="maepp-test-jax-cache-")
atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402  (after the cache variable, which jax reads at import)
import pytest  # noqa: E402

# Eight fake CPU devices for the sharding tests (STACK.md); set before any backend starts.
jax.config.update("jax_num_cpu_devices", 8)

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the configs/ directory, imported as a package by the tests


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session")
def trained_run(repo_root, tmp_path_factory):
    """A micro run's workdir (maepp.train, tests/helpers.py TRAINED_RUN), made once per session."""
    from tests.helpers import TRAINED_RUN, train

    workdir = tmp_path_factory.mktemp("trained_run")
    assert "stopped at step 60" in train(repo_root, workdir, *TRAINED_RUN)
    return workdir
