"""Small builders and readers the tests share."""

import functools
import os
import pathlib
import subprocess
import sys
import threading
import time

import flax.linen as nn
import jax
import numpy as np

from maepp import optim, pause_points, sharding
from maepp.configs import audiomaepp, mae
from maepp.models import MaskedAutoencoder, ModelSpec, init_params

CONFIG_FILES = {"macaron_swiglu": audiomaepp, "vit": mae}


# Absolute, on standardised log-mels, between two float64-accurate STFTs (librosa's FFT runs in
# float64: its float64 window promotes the frames; TF's in float64; the JAX sliced DFT exactly,
# in any summation order). What differs is float32 arithmetic after the STFT, which a CPU may
# order differently: each value's rounding (a few ulps of |log-mel| < 32: 2e-6 each) and the
# clip's float32 mean and std, summed pairwise over up to 80,000 values (<= 17 u of the sum of
# |values| < 32 each: 3e-5), divided by a std above 1. Measured: 2.6e-6. The same bound holds for
# crops standardised by a clip's stored float32 statistics, and for the in-step (device) front end
# against the host's: both differ only in that float32 arithmetic.
LOG_MEL_TOLERANCE = 1e-4


def spec_for(size="micro", block_type="macaron_swiglu", **model_overrides):
    config = CONFIG_FILES[block_type].get_config(size)
    for key, value in model_overrides.items():
        node = config.model
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return ModelSpec.from_config(config.model)


def model_and_params(spec, seed=0):
    model = MaskedAutoencoder(spec)
    return model, nn.meta.unbox(init_params(model, jax.random.key(seed)))


def run_module(repo_root, *args):
    """Runs `python -m MODULE ARGS` as a user would; returns stdout, fails the test on error."""
    result = subprocess.run([sys.executable, "-m", *args], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


MICRO = "configs/audiomaepp.py:micro"
# The run tests share (conftest's trained_run): 60 steps, checkpoints and held-out evaluation at 30 and 60.
TRAINED_RUN = [
    "--config.total_steps=60",
    "--config.checkpoint_every=30",
    "--config.log_every=1",
    "--config.warmup_steps=5",
    "--config.evals.held_out.every=30",
    "--config.evals.held_out.source=synthetic:64:1",
    "--config.profile.first_step=20",
]
# The shared run's config file (conftest's probed_config): micro, and a probe evaluator on the
# labelled synthetic `classes` task, added after get_config as the README shows.
PROBE_TASK_CLIPS = {"train": 8, "test": 4}  # per class, written by maepp.downstream.synthetic_tasks
PROBE = dict(type="probe", every=30, shots=6, batch_size=16)
PROBED_CONFIG = """from maepp.configs import audiomaepp


def get_config():
    config = audiomaepp.get_config("micro")
    config.evals.classes = dict(task={task!r}, **{probe!r})
    return config
"""


def write_probed_config(directory):
    """-> the path of a config file adding a probe evaluator to micro, with its task, in directory."""
    from maepp.downstream.synthetic_tasks import write_task

    task = write_task(directory / "classes_task", "classes", PROBE_TASK_CLIPS)
    path = directory / "probed.py"
    path.write_text(PROBED_CONFIG.format(task=str(task), probe=PROBE))
    return path


def ridge_score_of(workdir, step: int, task_dir, features_file, shots: int = PROBE["shots"]) -> float:
    """What maepp.downstream.evaluate's ridge probe scores for a run's checkpoint, in this process."""
    from maepp.downstream import features
    from maepp.downstream.tasks import load_task
    from maepp.weights import store

    task = load_task(task_dir)
    model, params, config, _ = store.load_model(workdir, step)
    embedder = features.features_embedder("encoder", model, params, config.audio.filterbank)
    return features.ridge_score(task, features.task_features(task, embedder, features_file, log=None), shots)[0]


# A short micro run, checkpoints every 4 steps, no evaluation, a batch of 8 clips (a quarter of
# micro's: the steps show what processes do, not what the model learns). The lost-process tests
# (tests/test_train.py) run it as a job of two processes of one device each, with the short
# heartbeat that lets JAX notice a dead process within seconds; the full-disk test as one process.
SHORT_JOB = [
    "--config.total_steps=12",
    "--config.batch_size=8",
    "--config.warmup_steps=1",
    "--config.checkpoint_every=4",
    "--config.log_every=1",
    "--config.evals.held_out.source=",
    "--config.distributed.heartbeat_s=10",
]


def train_command(workdir, *overrides, config=MICRO):
    return [sys.executable, "-m", "maepp.train", "--config", str(config), "--workdir", str(workdir), *overrides]


def fake_devices_environment(count: int, **more) -> dict:
    """This process's environment for a JAX process of `count` fake CPU devices: the count is added
    to the XLA flags the tests run with (conftest), as launch/local.sh adds it."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
    return dict(os.environ, XLA_FLAGS=flags, **more)


# What Intel CPUs with AVX-512 or AMX do by default, forced on any CPU: TensorFlow's oneDNN
# operations, and the start-up lines that announce them (maepp/quiet_start.py).
ONEDNN_ON = {"TF_ENABLE_ONEDNN_OPTS": "1"}


def train(repo_root, workdir, *overrides, quiet=False, config=MICRO):
    """Runs maepp.train; returns its stdout. quiet: it must print nothing on stderr either (the
    libraries' INFO logs and start-up lines are off unless --verbosity asks for them), with
    TensorFlow's oneDNN operations on, whatever the CPU."""
    result = subprocess.run(
        train_command(workdir, *overrides, config=config),
        cwd=repo_root,
        capture_output=True,
        text=True,
        env=dict(os.environ, **ONEDNN_ON) if quiet else None,
    )
    assert result.returncode == 0, f"maepp.train exited {result.returncode}: {result.stderr.strip()[-3000:]}"
    assert not (quiet and result.stderr), f"maepp.train printed on stderr: {result.stderr.strip()[-3000:]}"
    return result.stdout


def logged_scalars(workdir, tag="loss") -> dict:
    """step -> value of a scalar from a run's TensorBoard event files, as maepp.tools.results reads
    them: a step logged twice (a resumed run repeats the steps after its checkpoint) keeps its last value."""
    from maepp.tools.results import scalars

    return scalars(workdir).get(tag, {})


def image_steps(workdir, tag) -> list:
    """The steps at which a run's TensorBoard event files hold an image of this tag, sorted."""
    from tensorboard.backend.event_processing import event_accumulator

    steps = []
    for path in (workdir / "tensorboard").glob("events.out.tfevents.*"):
        events = event_accumulator.EventAccumulator(str(path), size_guidance={"tensors": 0})
        events.Reload()
        steps += [event.step for event in events.Tensors(tag)] if tag in events.Tags()["tensors"] else []
    return sorted(steps)


def saved_params(workdir, step):
    """A checkpoint's parameters on this process's first device, whatever mesh and processes saved them."""
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "state"
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=here),
        ocp.StandardCheckpointer().metadata(path).item_metadata,
    )
    return ocp.StandardCheckpointer().restore(path, target)["params"]


def leaves(tree) -> list:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_trees_equal(tree, reference):
    """Same structure, and every leaf equal bit for bit."""
    assert jax.tree.structure(tree) == jax.tree.structure(reference)
    for a, b in zip(leaves(tree), leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)


def restore_targets(config, mesh):
    """What checkpoints.restore_latest takes after its manager, for the config's model and
    optimizer on this mesh: (state shapes, shardings, the other block layout's shapes, lazily)."""
    model, optimizer = MaskedAutoencoder(ModelSpec.from_config(config.model)), optim.optimizer(config)
    state, shardings = sharding.abstract_state(model, optimizer, mesh)
    return state, shardings, functools.partial(sharding.abstract_state_in_other_layout, model, optimizer, mesh)


class PausePoint:
    """A maepp process held at a named point (maepp/pause_points.py, e.g. "saved@10"): give the
    process paused_at(these points), wait() until it is there, act, then release() it."""

    def __init__(self, directory, point: str):
        self.point = point
        self.marker = pathlib.Path(directory) / f"paused-at-{point.replace('@', '-')}"
        self.environment = paused_at(self)

    def wait(self, process):
        deadline = time.monotonic() + 600  # against a hang only: a loaded machine is slow, never wrong
        while not self.marker.exists():
            assert process.poll() is None, f"the process ended before it reached {self.point}"
            assert time.monotonic() < deadline, f"the process did not reach {self.point} in 10 minutes"
            time.sleep(0.01)

    def release(self):
        self.marker.with_name(self.marker.name + ".released").touch()
        self.marker.unlink(missing_ok=True)


def paused_at(*points: PausePoint) -> dict:
    """The environment variable that holds a process at each of these points."""
    return {pause_points.VARIABLE: ",".join(f"{point.point}:{point.marker}" for point in points)}


def two_at_once(action, refusal) -> tuple:
    """action() in two threads let go together -> (what those that finished returned, the
    `refusal` errors the others raised): two runs racing for one thing."""
    outcomes, start = [], threading.Barrier(2)

    def race():
        start.wait()
        try:
            outcomes.append(action())
        except refusal as error:
            outcomes.append(error)

    racers = [threading.Thread(target=race) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)
    refused = [outcome for outcome in outcomes if isinstance(outcome, refusal)]
    return [outcome for outcome in outcomes if not isinstance(outcome, refusal)], refused
