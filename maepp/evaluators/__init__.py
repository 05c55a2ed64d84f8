"""What a training run evaluates as it goes (config.evals): the held-out reconstruction loss and
its pictures, and linear probes on labelled tasks."""
