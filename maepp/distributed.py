"""Joining a multi-process job through JAX's own runtime (jax.distributed).

Explicit flags win; otherwise a multi-process cluster environment that JAX can read (Slurm,
Open MPI, GKE TPU workers) is detected and jax.distributed.initialize() takes its coordinator,
process count and id from it. A single process needs nothing.
"""

import functools
import os
import socket

import jax
import numpy as np
from jax.experimental import multihost_utils


def cluster_processes() -> int:
    """How many processes the surrounding cluster environment says this job has (1 if none)."""
    for variable in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len(workers.split(",")) if workers else 1


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    force=False,
    heartbeat_s: int = 60,
    shutdown_s: int = 300,
):
    """Calls jax.distributed.initialize when the job has (or is told it has) several processes.

    force: initialise with whatever JAX detects (e.g. a TPU VM pod slice, where the worker list
    comes from the metadata server rather than the environment). heartbeat_s, shutdown_s:
    config.distributed (configs/common.py).
    """
    timeouts = dict(heartbeat_timeout_seconds=heartbeat_s, shutdown_timeout_seconds=shutdown_s)
    if coordinator or num_processes or process_id is not None:
        if not (coordinator and num_processes and process_id is not None):
            raise ValueError("--coordinator, --num_processes and --process_id go together")
        jax.distributed.initialize(coordinator, num_processes, process_id, **timeouts)
    elif force or cluster_processes() > 1:
        jax.distributed.initialize(**timeouts)


@functools.cache
def process_nodes() -> tuple:
    """Each process's node, in process order: from SLURM_NODEID where Slurm starts several tasks
    (one per GPU, as launch/slurm.sbatch does), gathered from every process once; elsewhere each
    process is a node of its own (a TPU VM worker, a process per GPU node, a local simulation)."""
    if jax.process_count() == 1 or not os.environ.get("SLURM_NODEID", "").isdigit():
        return tuple(range(jax.process_count()))
    return tuple(int(node) for node in every_process([int(os.environ["SLURM_NODEID"])])[:, 0])


def every_process(values) -> np.ndarray:
    """This process's numbers [k] -> every process's [processes, k] float32, in process order: a
    collective, so every process calls it at the same point of the run."""
    values = np.asarray(values, np.float32)  # what the devices gather without x64
    if jax.process_count() == 1:
        return values[None]
    return np.asarray(multihost_utils.process_allgather(values)).reshape(jax.process_count(), -1)


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 the operating system has just handed out: for a coordinator or a
    server of this machine's own, never a fixed number another job may hold."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
