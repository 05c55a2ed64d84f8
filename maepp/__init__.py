"""maepp: AudioMAE++ masked audio autoencoders in JAX/Flax."""
