# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
CONFIG ?= configs/audiomaepp.py:micro
WORKDIR ?= runs/demo
JAX_VERSION := $(shell sed -n 's/^jax==//p' requirements.txt)

.PHONY: train test test-fast lint venv summary clean

# The venv is rebuilt whenever requirements.txt, setup.py or pyproject.toml is newer than it.
$(STAMP): requirements.txt setup.py pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# pip compiles each module's bytecode as it installs, on one core: this install took 92 s here
	# with it, 29 s without; compileall then does it in 25 s on every core. (A file that is not
	# Python 3.11, such as torch's py312 test helpers, stays uncompiled, as pip leaves it.)
	$(PY) -m pip install --quiet --no-compile -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	# What is left runs as three jobs at once (here 35 s instead of 50 s of one after another):
	# - maepp.tools.compile_check's compilers for hardware this machine lacks, at the versions jax
	#   names: libtpu (jax[tpu]) and the CUDA plugin without CUDA (jax[cuda12-local]), about 1.2 GB.
	#   They go to their own folder, which only compile_check puts on its path: in the environment
	#   itself they would make every other jax program probe for a TPU and a GPU at start-up.
	# - librosa compiles its numba kernels when its modules first load (about 16 s here) and caches
	#   them in site-packages. Done once now: otherwise every process of the first run or test
	#   session that loads librosa before the cache exists compiles them again.
	# - The [hear] extra's validator, without its dependencies (it asks for the `tensorflow`
	#   distribution, which tensorflow-cpu above provides under another name), then every module's
	#   bytecode, with compileall on every core, but for the compilers' folder, still being written,
	#   and the tests of other projects, which nothing imports (a fifth of the files).
	$(PY) -m pip install --quiet --no-compile --no-deps --target $(VENV)/aot-plugins \
		"$$($(PY) -c 'import importlib.metadata as m; print(next(r.split(";")[0] for r in m.requires("jax") if r.startswith("libtpu")))')" \
		"jax-cuda12-plugin==$(JAX_VERSION)" "jax-cuda12-pjrt==$(JAX_VERSION)" & compilers=$$!; \
	$(PY) -c "import librosa.core.audio, librosa.util.utils" & kernels=$$!; \
	$(PY) -m pip install --quiet --no-deps hearvalidator==2021.0.2 \
		&& $(PY) -c "import compileall, re; compileall.compile_dir('$(VENV)', quiet=2, workers=0, rx=re.compile(r'aot-plugins|/tests?/|_test\.py$$'))" \
		&& wait $$compilers && wait $$kernels
	touch $(STAMP)

venv: $(STAMP)

train: $(STAMP)
	$(PY) -m maepp.train --config $(CONFIG) --workdir $(WORKDIR)

# Everything: the linter, then both tiers of tests (pytest.mark.e2e: tests that start processes or
# train a run end to end).
# Three workers on two cores: end-to-end tests spend much of their time waiting on the processes
# they start, and a third worker fills those waits (pytest alone, 2-core AMD EPYC VM, 2026-12-03: 12m40 with two, 11m40
# with three).
test: lint
	$(PY) -m pytest -q -n 3 --dist loadgroup --durations=10 tests

# The unit tier alone: tests of parts, in pytest's own processes.
test-fast: lint
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not e2e" tests

# ruff's rules and its formatting (pyproject.toml): a file the formatter would change fails too.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

summary: $(STAMP)
	$(PY) -m maepp.tools.summary --config configs/audiomaepp.py:base

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
