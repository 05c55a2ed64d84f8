"""What a training run evaluates as it goes: the held-out reconstruction loss and its pictures."""
