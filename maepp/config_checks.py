"""A training config checked before anything is built or compiled: every mistake found here is
one line naming the field, its value and what it must be."""
from maepp.audio import filterbanks


def _fail(field: str, value, must: str):
    raise ValueError(f"config.{field}={value!r}: {must}")


def check_train_config(config, n_devices: int, batch_devices: int):
    """batch_devices: how many ways the mesh splits a batch (data x fsdp)."""
    for field, meaning in (("total_steps", "steps to train"), ("log_every", "steps between log lines"),
                           ("checkpoint_every", "steps between checkpoints"), ("eval_every", "steps between evaluations"),
                           ("keep_checkpoints", "checkpoints kept; 0 would keep none, not even the last"),
                           ("max_nonfinite_steps", "non-finite steps in a row before the run stops"),
                           ("steps_in_flight", "steps dispatched ahead"), ("data.prefetch", "batches made ahead")):
        value = config[field.split(".")[0]][field.split(".")[1]] if "." in field else config[field]
        if not isinstance(value, int) or value < 1:
            _fail(field, value, f"must be a whole number of at least 1 ({meaning})")
    if not 0 <= config.warmup_steps < config.total_steps:
        _fail("warmup_steps", config.warmup_steps, f"must be in [0, config.total_steps={config.total_steps})")
    for field, value in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
        if field == "eval_batch_size" and not config.data.eval_source:
            continue
        if not isinstance(value, int) or value < 1:
            _fail(field, value, "must be a whole number of clips, at least 1 (global, over all devices)")
        if value % batch_devices:
            _fail(field, value, f"must be a multiple of {batch_devices}: the mesh splits a batch {batch_devices} ways "
                                f"over {n_devices} devices")
    opt = config.optimizer
    if not (isinstance(opt.base_learning_rate, (int, float)) and opt.base_learning_rate > 0):
        _fail("optimizer.base_learning_rate", opt.base_learning_rate, "must be a positive number")
    if not opt.weight_decay >= 0:
        _fail("optimizer.weight_decay", opt.weight_decay, "must be 0 or more")
    for field in ("b1", "b2"):
        if not 0 <= opt[field] < 1:
            _fail(f"optimizer.{field}", opt[field], "must be in [0, 1)")
    if not opt.grad_clip >= 0:
        _fail("optimizer.grad_clip", opt.grad_clip, "must be 0 (off) or a positive norm")
    if config.model.get("swiglu_norm") == "pallas" and n_devices > 1:
        _fail("model.swiglu_norm", "pallas", f"runs on one device only, not {n_devices}: its kernels carry no "
              "sharding rule; use 'auto' (the kernels on one GPU, XLA's ops on a mesh) or 'xla'")
    filterbanks.from_config(config)
