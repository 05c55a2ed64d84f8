"""The timing behind `python -m maepp.tools.bench step` (maepp/tools/bench/step.py), without its
flags, so that `bench loop` can time the step in the same process."""

import time

import jax
import numpy as np

from maepp import optim, sharding
from maepp.audio import filterbanks, jax_frontend
from maepp.audio.constants import HOP, N_FFT, crop_span
from maepp.config_checks import check_model
from maepp.hardware import peak_flops
from maepp.models import MaskedAutoencoder, ModelSpec
from maepp.models.counts import train_flops_per_example
from maepp.tools.bench import profile
from maepp.train_step import make_train_step

PROFILED_STEPS = 3


def _xla_flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get("flops", float("nan")))


def _random_inputs(batch_size: int, input_size, waveforms: bool):
    """Log-mels [B, 200, 80], or with waveforms the "device" front end's crops of raw samples."""
    rng = np.random.default_rng(0)
    if not waveforms:
        return rng.standard_normal((batch_size, *input_size), np.float32)
    frames = input_size[0]
    samples = rng.standard_normal((batch_size, crop_span(frames)), np.float32)
    starts = np.arange(frames, dtype=np.int32) * HOP
    first_clip = jax_frontend.frames_log_mel(samples[:1, starts[:, None] + np.arange(N_FFT)])  # [1, frames, 80]
    # White noise: one clip's log-mel stats stand for all.
    mean, std = (np.full(batch_size, float(stat[0]), np.float32) for stat in jax_frontend.clip_stats(first_clip))
    return dict(samples=samples, frame_starts=np.tile(starts, (batch_size, 1)), mean=mean, std=std)


def bench_step(config, n_steps: int, compiler_options=None, profile_dir: str = "") -> dict:
    devices = jax.devices()
    mesh = sharding.make_mesh(config.mesh, devices)
    check_model(config.model)
    model = MaskedAutoencoder(ModelSpec.from_config(config.model))
    optimizer = optim.optimizer(config)
    state, shardings = sharding.create_sharded_state(model, optimizer, mesh, jax.random.key(config.seed))
    to_log_mel = jax_frontend.in_train_step(config.data.frontend, filterbanks.from_config(config))
    batch = jax.device_put(
        _random_inputs(config.batch_size, model.spec.input_size, waveforms=bool(to_log_mel)),
        sharding.batch_sharding(mesh),
    )
    step = sharding.sharded_train_step(make_train_step(model, optimizer, to_log_mel), shardings, mesh)
    rngs = [jax.device_put(jax.random.key(i), sharding.replicated(mesh)) for i in range(n_steps + 2)]

    start = time.perf_counter()
    lowered = step.lower(state, batch, rngs[0])
    compiled = lowered.compile(compiler_options=compiler_options or None)
    compile_s = time.perf_counter() - start
    for rng in rngs[:2]:  # warm-up: first-run allocations and autotuning are not the step
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for rng in rngs[2:]:
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / n_steps
    breakdown = None
    if profile_dir:
        jax.profiler.start_trace(profile_dir)
        for _ in range(PROFILED_STEPS):
            state, metrics = compiled(state, batch, rngs[-1])
        jax.block_until_ready((state, metrics))
        jax.profiler.stop_trace()
        hlo_text = compiled.as_text()
        with open(f"{profile_dir}/module.hlo.txt", "w") as f:  # beside the trace: what its kernels ran
            f.write(hlo_text)
        breakdown = profile.summarise(profile.newest_xplane(profile_dir), hlo_text, PROFILED_STEPS)

    model_flops = train_flops_per_example(model.spec) * config.batch_size
    memory = compiled.memory_analysis()
    peak = peak_flops(devices[0].device_kind)
    achieved = model_flops / step_s / len(devices)
    return dict(
        width=model.spec.encoder.width,
        depth=model.spec.encoder.depth,
        dtype=config.model.dtype,
        frontend=config.data.frontend,
        devices=f"{len(devices)} x {devices[0].device_kind}",
        mesh=list(mesh.shape.values()),
        global_batch=config.batch_size,
        steps=n_steps,
        compile_s=round(compile_s, 1),
        step_ms=round(step_s * 1e3, 2),
        clips_per_s=round(config.batch_size / step_s, 1),
        model_tflop_per_step=round(model_flops / 1e12, 4),
        xla_tflop_per_step=round(_xla_flops(compiled) / 1e12, 4),
        achieved_tflops_per_device=round(achieved / 1e12, 2),
        peak_bf16_tflops_per_device=peak and peak / 1e12,
        mfu=peak and round(achieved / peak, 4),
        memory_gib_per_device=memory and round((memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**30, 3),
        attention=model.spec.attention,
        compiler_options=compiler_options or {},
        final_loss=float(metrics["loss"]),
        profile=breakdown,
    )
