"""What every experiment config shares: the pretraining recipe (docs/reference.md#pretraining-recipe)
and the micro CPU mode.

Its numbers: AdamW betas (0.9, 0.95), weight decay 0.05,
lr = 1.5e-4 x global batch / 256, global batch 1024, 100 epochs of AudioSet, 10 of them warmup.
"""

import ml_collections


def pretraining_config(model: ml_collections.ConfigDict, micro: bool = False) -> ml_collections.ConfigDict:
    """The experiment config around a model section; micro: the CPU demo's batch and schedule."""
    config = ml_collections.ConfigDict()
    config.model = model
    config.seed = 0
    # source: "synthetic" (embedded procedural audio), "synthetic:N[:SEED]", "folder:PATH",
    # "prepared:DIR" (a dataset maepp.data.prepare wrote) or "tfds:NAME[:SPLIT]" (prepared in data_dir).
    # frontend: where training crops become log-mels: "host" (tf.data) or "device" (in the train
    # step; for hosts too slow for the STFT, best with prepared pcm or flac clips, whose stats are stored).
    # prefetch: global batches made ahead on a background thread and placed on the devices.
    # damaged_clips: a prepared log_mel clip holding what no clip can (a value not finite, or
    # beyond what its standardisation allows): "stop" the run naming it, or "skip" and count it.
    # shuffle: the training order (maepp/data/order.py, docs/data.md#the-order): "clips" reads each
    # crop on its own; "blocks" reads block_clips consecutive stored clips at once, shuffled within
    # windows of window_blocks blocks, the batch's rows in `streams` streams (it divides batch_size;
    # every process count dividing it reads disjoint blocks); "auto": blocks for prepared data in a
    # bucket (reads it can serve), clips for local data (the better shuffle, at no cost there).
    config.data = ml_collections.ConfigDict(
        dict(
            source="synthetic",
            data_dir="",
            frontend="host",
            prefetch=2,
            damaged_clips="stop",
            shuffle="auto",
            block_clips=128,
            window_blocks=4,
            streams=16,
        )
    )
    # The mel filterbank of every log-mel (maepp/audio/filterbanks.py): "torchaudio", as the release
    # built it, or "librosa"; prepared clips must have been made with the same one.
    config.audio = ml_collections.ConfigDict(dict(filterbank="torchaudio"))
    config.batch_size = 1024  # global
    # Device mesh (maepp/sharding.py): data parallel by default; -1 takes the remaining devices.
    # data, fsdp, model: the mesh inside one slice (or node); dcn_*: how many slices (TPU
    # multi-slice) or nodes (GPU nodes: set a dcn_* above 1; under Slurm a node's tasks share
    # SLURM_NODEID, elsewhere a process is a node) each axis spans, data parallel across them by
    # default (-1: the slices left over).
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1, dcn_data=-1, dcn_fsdp=1, dcn_model=1))
    config.optimizer = ml_collections.ConfigDict(
        dict(base_learning_rate=1.5e-4, b1=0.9, b2=0.95, weight_decay=0.05, grad_clip=0.0, accumulate_steps=1)
    )
    # AudioSet: ~2.05M clips / 1024 = 2002 steps per epoch; 100 epochs, 10 of them warmup.
    config.total_steps = 200_200
    config.warmup_steps = 20_020
    config.log_every = 100
    config.checkpoint_every = 2000
    config.keep_checkpoints = 3  # the newest ones...
    config.keep_period = 20_000  # ...and every keep_period-th step
    config.max_nonfinite_steps = 10  # non-finite steps in a row before the run stops (checked at log steps)
    config.steps_in_flight = 2  # dispatched steps the host may run ahead of the devices
    # XLA's compiled programs, kept for the next start (a restart after a preemption compiles
    # nothing again): "auto" is $JAX_COMPILATION_CACHE_DIR where set (empty: none), else
    # WORKDIR/compile_cache; a path (local or gs://) names the folder; "" keeps none.
    config.compile_cache_dir = "auto"
    # A multi-process job (jax.distributed): a process whose heartbeats stop for heartbeat_s is
    # taken for dead, and every other process stops, naming it (maepp/distributed.py); at the end
    # each waits up to shutdown_s for the slowest to finish its last save.
    config.distributed = ml_collections.ConfigDict(dict(heartbeat_s=60, shutdown_s=300))
    # Evaluators, each run every `every` steps and at the last (maepp/evaluators/, docs/training.md):
    # held_out: the reconstruction loss and pictures on held-out clips (source: as data.source
    # names clips, "" = none); "auto" is the split `prepare --holdout` kept out of a prepared
    # training dataset, else "synthetic:256:1", 256 procedural clips from a seed the training
    # clips do not use. A config file adds more after get_config, e.g. a linear probe on a task:
    #   config.evals.kw = dict(type="probe", task="/data/speech_commands", every=5000, shots=16)
    config.evals = ml_collections.ConfigDict(
        dict(
            held_out=dict(type="held_out", source="auto", every=10_000, batch_size=1024),  # batch: global
        )
    )
    # clu's Profile action: a jax.profiler trace of num_steps steps from first_step (0 = never),
    # then again every every_secs; it lands in WORKDIR/tensorboard (TensorBoard's profile tab).
    config.profile = ml_collections.ConfigDict(dict(first_step=100, num_steps=5, every_secs=3600.0))
    if micro:
        # CPU demo: a small batch; the tiny model takes a higher rate (peak lr 1e-3).
        config.batch_size = 32
        config.optimizer.base_learning_rate = 8e-3
        config.total_steps = 300
        config.warmup_steps = 30
        config.log_every = 10
        config.checkpoint_every = 100
        config.keep_period = 0
        config.evals.held_out.update(every=100, batch_size=32)
        config.profile.first_step = 0  # a trace is 36 MB here: on a small disk it crowds out checkpoints
    return config
