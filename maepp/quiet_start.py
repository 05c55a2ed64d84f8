"""TensorFlow's (and jax's CUDA plugin's) start-up notices kept off a maepp program's console, on every CPU.

TensorFlow's C++ libraries log a few notices while they load, through absl, before anything can
configure absl: on CPUs with AVX-512 or AMX (or with TF_ENABLE_ONEDNN_OPTS=1) that oneDNN's
custom operations are on, each preceded by absl's "All log messages before
absl::InitializeLog()" warning. TF_CPP_MIN_LOG_LEVEL does not reach them. So while TensorFlow
is first imported, by maepp or by any library, file descriptor 2 goes to a temporary file;
afterwards every line of it that is not one of those notices is written to stderr again, so no
warning or error is lost.

install() sets this up without importing TensorFlow: `--help` and a refused config stay fast.
maepp.tools.compile_check loads jax's CUDA plugin on a machine without CUDA, whose libraries say
so the same way; notices_kept_off() keeps them off around what loads them.
"""

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile

# Start-up notices, recognised by what they say: they carry no advice for a maepp user.
NOTICES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on.",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Could not find cuda drivers on your machine, GPU will not be used.",
)


def _loud_lines(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not any(n in line for n in NOTICES))


@contextlib.contextmanager
def notices_kept_off():
    """While it lasts, file descriptor 2 goes to a temporary file; then every line of it that is
    not a start-up notice is written to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            sys.stderr.write(_loud_lines(caught.read().decode(errors="replace")))
            sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """The tensorflow package's own loader, its module run with stderr caught."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with notices_kept_off():
            self._loader.exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, ...: the package's own loader
        return getattr(self._loader, name)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds the tensorflow package as Python would, and hands it _QuietLoader. It stays on
    sys.meta_path: libraries ask for the package's spec without importing it (to see whether it
    is installed), and a finder that left then would miss the import itself."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install():
    """Quiets TensorFlow's first import from now on (nothing, if it is imported already)."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
