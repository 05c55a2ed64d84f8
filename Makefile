# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
CONFIG ?= configs/audiomaepp.py:micro
WORKDIR ?= runs/demo

.PHONY: train test venv summary clean

# The venv is rebuilt whenever requirements.txt or setup.py is newer than it.
$(STAMP): requirements.txt setup.py
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	# The [hear] extra's validator, without its dependencies: it asks for the `tensorflow`
	# distribution, which tensorflow-cpu above provides under another name.
	$(PY) -m pip install --quiet --no-deps hearvalidator==2021.0.2
	# The [tpu] extra: libtpu (about 700 MB) for maepp.compile_check, at the version jax names.
	$(PY) -m pip install --quiet "jax[tpu]==$$(sed -n 's/^jax==//p' requirements.txt)"
	touch $(STAMP)

venv: $(STAMP)

# The demo runs on the CPU; without JAX_PLATFORMS, JAX would first probe the libtpu installed
# for compile_check and log its complaints about finding no TPU.
train: $(STAMP)
	JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} $(PY) -m maepp.train --config $(CONFIG) --workdir $(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

summary: $(STAMP)
	$(PY) -m maepp.summary --config configs/audiomaepp.py:base

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
