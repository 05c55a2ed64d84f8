"""maepp: AudioMAE++ masked audio autoencoders in JAX/Flax.

Importing maepp keeps TensorFlow's start-up lines off the console, which must happen before
TensorFlow loads: TF_CPP_MIN_LOG_LEVEL=2 (errors only, unless set already; processes maepp
starts, such as Beam workers and multi-process jobs, inherit it) and maepp.quiet_start for the
lines that variable does not reach.
"""

import os

from maepp import quiet_start

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
quiet_start.install()
