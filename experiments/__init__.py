"""Experiments that reproduce the paper, in the style of the flax examples.

Every experiment is a module with the logic in ``run(config, workdir)`` and a thin
``main(argv=None)``; its budgets are named presets in :mod:`experiments.configs`
(``smoke`` for the tests, ``quick`` for a 2-core CPU, ``full`` for accelerators, the
default), picked with ``--config NAME`` (``--quick`` is ``--config quick``). Run them from
the repository root:

- :mod:`experiments.table1`: Table I, every scenario without and with its approximated
  matrices::

      python -m experiments.table1 --quick --out runs/table1

- :mod:`experiments.table2`: Table II, 16-bit / 4 servers with five selections of
  approximated matrices, with the error values::

      python -m experiments.table2 --quick --out runs/table2

- :mod:`experiments.accelerator_check`: train 8b8s to projected 100 % and time a 16b4s
  evaluation on the accelerators (about 8 minutes on a GPU)::

      python -m experiments.accelerator_check --out runs/accelerator_check

- :mod:`experiments.training_dynamics`: why training stalls short of 100 %: accuracy,
  per-symbol errors and margins over the epochs, and the inputs that stay wrong, for the
  paper's uniform sampling and the focused presets (plus any finished run directory)::

      python -m experiments.training_dynamics --quick --run-dir 8b8s=runs/8b8s

Shared pieces: :mod:`experiments.configs` (presets), :mod:`experiments.tables` (rows,
budgets, runs, markdown and figure of both tables), :mod:`experiments.devices` (the data
mesh). The paper's numbers are read from :mod:`optinc_jax.paper`, never typed here.
From Python: ``experiments.table1.run(experiments.configs.table_preset("quick"), "runs/t1")``.
"""
