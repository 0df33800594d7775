"""Floor 3, learning: the optical neural network (ONN), its training and its evaluation.

What lives here: the Flax NNX ONN and its value-keyed pure forward (``onn``), the
two-stage loss (``loss``), the diagonal x unitary projection of weights (``projection``),
the last-layer refit for the receiver (``refit``), the hinge finishing of every matrix
(``finish``), counting and re-initializing dead ReLU units (``revival``), target-balanced
sampling (``balance``), the training
configuration and
schedules (``config``), one jitted training epoch on any
dataset (``step``), runs with resume and reload (``trainer``), exact exhaustive evaluation
(``evaluate``), atomic checkpoints (``checkpoint``), export to plain arrays (``export``) and
the JSON record, figure and atomic JSON writer (``reporting``) and the machine a result
came from (``machine``). What it may import: the
photonics and encoding floors, ``optinc_jax.scenarios``, ``optinc_jax.paper`` and the
ground-floor validators; never the network floor or the CLI. A test parses every import
and enforces this.
"""
