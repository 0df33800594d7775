"""Floor 4, network: what is built from OptINC units inside a distributed-training system.

What lives here (as the open issues build it): the cascade of OptINC units past one
unit's server count (a cascade of units is itself a unit), OptINC as a JAX collective (a
drop-in ``pmean`` for ``shard_map`` training steps), the simulated ring all-reduce baseline,
the communication-volume and latency cost models of the paper's Fig. 6 and 7, and the
models trained through them. What it may import: every floor below it (photonics,
encoding, learning), ``optinc_jax.scenarios``, ``optinc_jax.paper`` and the ground-floor
validators; never the CLI, and nothing in ``src`` imports ``experiments``, ``benchmarks`` or
``tests``. A test parses every import and enforces this.
"""
