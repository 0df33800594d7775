"""Floor 2, encoding: how gradients become light and light becomes an average again.

What lives here: SwitchML-style block quantization of float gradients into B-bit offset
binary (``quantize``), PAM4 symbols (``pam4``), the optical units around the ONN
(preprocessing, receiver, reconstruction, splitting: ``units``) and the exhaustive
datasets with the small ``Dataset`` protocol that the trainer and the evaluator consume
(``dataset``). What it may import: the photonics floor (today it needs nothing of it),
``optinc_jax.scenarios``, ``optinc_jax.paper`` and the ground-floor validators
(``optinc_jax.validation``); never the learning or network floors. A test parses every
import and enforces this.
"""
