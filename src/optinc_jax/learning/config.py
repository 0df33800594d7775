"""Training configuration: what determines a run, its optimizer and its schedules.

:class:`TrainConfig` is a frozen, hashable value: it is a static argument of the jitted
training epoch (:func:`optinc_jax.learning.step.train_epoch`), which builds its optimizer
from it, so equal configurations share one compilation. Every field is validated when the
config is made; nothing is clamped into range.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import jax
import optax

from optinc_jax.learning.loss import STAGE2_LOSSES, Stage2Loss
from optinc_jax.learning.onn import layer_leaf
from optinc_jax.photonics.area import parse_approx
from optinc_jax.photonics.nonideal import NOISE_MODELS
from optinc_jax.scenarios import Scenario, as_scenario, scenario_from_json, training_preset
from optinc_jax.validation import require_choice, require_int, require_real

__all__ = [
    "ApproxSide",
    "Schedule",
    "TrainConfig",
    "learning_rate_schedule",
    "make_optimizer",
    "projection_due",
    "steps_per_epoch",
]

Schedule = Literal["onecycle", "cosine", "constant"]
"""Learning-rate schedules: warm-up then cosine to ~0 (``onecycle``), warm-up cosine decay
(``cosine``), or ``constant``."""

ApproxSide = Literal["left", "right"]
"""Side of the diagonal in the approximation: ``diag(d) U`` or ``U diag(d)``."""

MAX_SEED = 2**32 - 1
"""Largest seed: the PRNG key takes an unsigned 32-bit seed."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (all of it lands in ``result.json``).

    The defaults train the default scenario (8b4s, every matrix approximated) to a
    projected 100 % on a 2-core CPU: measured at epoch 90 (seed 0) and 100 (seed 1) of
    130. Batch 128 beat 256 and 64 there (256: 99.98 % after 150 epochs; 64: 99.93 % after
    60); a 100-epoch schedule reached 100 % only at epoch 96.

    Attributes:
        scenario: a :class:`~optinc_jax.scenarios.Scenario` value, or the name of a
            registered one (see :mod:`optinc_jax.scenarios`).
        approx: weight matrices to approximate: ``None`` for the scenario's own selection,
            ``"none"``, ``"all"``, a list such as ``"4-6"`` / ``"2,3"``, or a tuple of
            1-based indices.
        epochs: maximum number of epochs.
        batch_size: samples per optimizer step.
        steps_per_epoch: optimizer steps per epoch; ``None`` for one pass over the data
            (``size // batch_size`` steps; a batch larger than the dataset is refused).
        learning_rate: peak learning rate of Adam.
        schedule: ``"onecycle"`` (warm-up then cosine to ~0), ``"cosine"`` (warm-up
            cosine decay) or ``"constant"``.
        warmup_fraction: share of all steps spent warming up, in ``[0, 1)``; the
            ``onecycle`` schedule needs it positive.
        switch_epoch: E1, first epoch of loss stage 2.
        stage2: stage-2 loss, one of :data:`Stage2Loss`. Differs from the paper: the
            default ``"hybrid"`` keeps the per-symbol term beside the paper's
            reconstruction MSE (the paper's alone, ``"literal"``, has a null space).
        symbol_weight_base: stage-1 weights ``w_k`` proportional to ``base**k``. Differs
            from the paper (``w_k ~ 2^k``, i.e. base 2): measured on 8b4s (no
            approximation, 40 epochs) base 1 reached 99.8 %, base 0.5 97.6 %, base 2
            88.7 %, base 4 31.9 %: the least significant symbol is the hard one, so the
            default is uniform weights.
        project_every: projection period in epochs.
        project_start: epoch before which no projection happens.
        condition_until: the epoch through which the matrices the scenario approximates
            but this run keeps full (``approx="none"`` or a subset) are projected too, on
            the same schedule; from then on they train freely. A conditioning step: the
            projected rows of 8b8s ended lower than the free ones on every recipe, but
            released at epoch 370 of 400 the free matrices ended no better (988 wrong
            against 978; README, "Training recipe"). The 8b8s preset conditions through
            its last epoch, so only the finishing and the refit see free matrices.
            Differs from the paper (its rows without approximation train without
            projection); 0 (the default) never.
        revive_until: the epoch through which, after every epoch, the hidden units dead
            on a draw of the dataset are re-initialized before the projection
            (:func:`~optinc_jax.learning.revival.revive_dead_units`, ReDo; not in the
            paper); 0 (the default) never. Each revival's counts go to
            ``history["revived_units"]``.
        approx_side: ``"left"`` (``diag(d) U``, the paper's) or ``"right"`` (``U diag(d)``,
            the diagonal on the input side, the same MZIs; the 8b4s preset's, where it
            reached 100 % sooner: README, "Training recipe").
        refine_steps: alternating least-squares refinements of each projection.
        eval_every: exhaustive evaluation period in epochs (also at the last epoch).
        stage1_eval_every: the evaluation period while loss stage 1 trains (epochs up to
            ``switch_epoch``, which is then evaluated too); ``None`` (the default):
            ``eval_every``. Stage 1's evaluations draw the accuracy curve (and the focused
            draw's hard set); each is a forward pass over the whole grid, about a sixth of
            an 8b4s epoch's time, so a longer period there shortens a run that first
            reaches 100 % in stage 2 (:meth:`evaluation_due`); a 100 % between two
            stage-1 evaluations goes unseen. Not in the paper (which does not say how
            often it evaluates).
        eval_chunk_size: samples per evaluation chunk (``None``: the backend's default,
            :func:`optinc_jax.learning.evaluate.default_chunk_size`).
        checkpoint_every: checkpoint period in epochs (also at the end).
        stop_at_full_accuracy: stop at the first evaluation with projected 100 %.
        seed: initialization and sampling seed, in ``[0, 2^32)``.
        noise_model: non-ideality of a noise-aware fine-tuning of the deployed circuit
            after training (a key of :data:`~optinc_jax.photonics.nonideal.NOISE_MODELS`),
            or ``None`` for none. Not in the paper; see
            :mod:`optinc_jax.learning.finetune`.
        noise_strength: its strength in the model's unit, ``>= 0``.
        noise_epochs: fine-tuning epochs; ``>= 1`` with a ``noise_model``, ``0`` without.
        noise_learning_rate: the fine-tuning's peak Adam learning rate, ``>= 0``.
        focus_fraction: share of every minibatch drawn from the inputs that are wrong or
            within ``focus_margin`` of a receiver threshold, rescored at every evaluation
            (:mod:`optinc_jax.learning.focus`), in ``[0, 1)``; 0 samples uniformly. Not in
            the paper (uniform sampling). ``checkpoint_every`` must then be a multiple of
            ``eval_every`` (and of ``stage1_eval_every``).
        balance_fraction: share of every minibatch drawn with every target equally
            likely (a target uniformly, then one of its inputs;
            :mod:`optinc_jax.learning.balance`), in ``[0, 1)``; with ``focus_fraction``
            the two shares must leave room for uniform draws. Not in the paper (uniform
            sampling); 0 (the default) never.
        focus_margin: the decision margin, in symbol units, below which an input counts
            as hard; in ``(0, 0.5]``.
        stop_margin: stop only at an evaluation that is 100 % *and* whose smallest
            decision margin (symbol units) is at least this, in ``[0, 0.5]``;
            ``first_full_accuracy`` still records the first 100 %. 0 stops at the first
            100 %. Not in the paper (it stops at its epoch count).
        symbol_tolerance: dead zone of the per-symbol loss term, in symbol units, in
            ``[0, 0.5)``: outputs within it of their symbol cost nothing
            (:func:`~optinc_jax.learning.loss.weighted_symbol_mse`). Differs from the
            paper (plain MSE, 0, the default).
        stage2_tolerance: the dead zone of loss stage 2 alone, in ``[0, 0.5)``; ``None``
            (the default): ``symbol_tolerance``. A stage-2 dead zone lets the last epochs
            work on the outputs near or past a threshold only, as the focused draw does
            for the inputs. Differs from the paper (plain MSE).
        refit_iterations: after the last epoch (and the finishing) of a run that has not
            reached 100 %, the last weight matrix is re-solved over the whole dataset for
            the receiver's decisions
            (:func:`~optinc_jax.learning.refit.refit_last_layer`, this many
            Newton iterations); 0 (the default) never. Not in the paper (gradient
            descent only). Needs a free last matrix.
        refit_tolerance: the refit's dead zone in symbol units, in ``(0, 0.5)``.
        finish_rounds: after the last epoch (before the refit), this many rounds of the
            hinge finishing, every matrix trained on the exact gradient of the receiver
            hinge over the whole dataset
            (:func:`~optinc_jax.learning.finish.finish_on_hard_set`); 0 (the default)
            never. Not in the paper (its schedule ends the run).
        finish_steps: Adam steps per finishing round, ``>= 1``.
        finish_learning_rate: the finishing's constant Adam step, ``> 0``.
        finish_tolerance: the finishing hinge's dead zone in symbol units, in ``(0, 0.5)``.
        finish_slack: how far inside that dead zone an input is still trained on, in
            ``[0, finish_tolerance]``.
        finish_balance: weigh every target equally in the finishing's hinge
            (:func:`~optinc_jax.learning.balance.class_weights`) instead of every input.
            Not in the paper; ``False`` (the default) sums over the inputs.
        finish_backtrack: in ``[0, 1)``: a finishing round whose steps raised the
            whole-grid hinge is undone and the next steps start again from where it
            started, with the Adam step multiplied by this factor; 0 (the default) never
            (a constant step). Not in the paper.
        restore_best: after the last epoch, the network continues from the scored epoch with
            the fewest wrong inputs (the latest among equals) rather than from the last
            one, when that one is worse: the finishing, the refit and the result start
            from it. Every epoch is scored exhaustively anyway; the best network is
            checkpointed with the state, so a resumed run restores the same one. Not in the
            paper (its run ends with the last network); ``False`` (the default) keeps the
            last. Measured on 8b8s (README, "Training recipe", item 22): at the end of the
            schedule the wrong count jumps between epochs at a learning rate of about 1e-5
            (one CPU: seed 2 went from 8 wrong at epoch 239 to 240 for its last 11 epochs).
        leak_start: the hidden activations' negative slope in the first epoch, in
            ``[0, 1)``, falling linearly to 0 at epoch ``leak_until``
            (:meth:`leak_at`, :func:`~optinc_jax.learning.onn.leaky_relu`): a training
            aid against units that die early; every evaluation, projection, finishing
            and the result use the plain ReLU. Not in the paper (ReLU throughout); 0
            (the default) never. Measured on 8b8s, it ended worse than the preset
            (README, "Training recipe", item 15).
        leak_until: the number of epochs the leak lasts, ``>= 1`` with a ``leak_start``.
        bias_learning_rate_scale: the biases' learning rate as a multiple of the
            kernels', ``> 0`` (:func:`make_optimizer`). Below 1 the biases move more
            slowly than Adam's per-parameter steps would move them, so fewer ReLUs are
            pushed off every input early; measured, that kept more units alive and
            trained worse on 8b8s and 8b4s (README, "Training recipe", item 16). Not in
            the paper (one learning rate); 1 (the default) is the paper's.
        pad_levels: virtual levels of the most significant input added on each side of
            the scenario's grid for training, ``>= 0``
            (:class:`~optinc_jax.encoding.padded_grid.PaddedGrid`). The steps, the
            focused draws and their scoring use the padded set; the accuracy, the first
            100 %, the stop, the finishing and the refit judge the real grid alone. Not in
            the paper (the grid alone); 0 (the default) pads nothing. The 8b8s preset
            pads four levels (measured there and in README, "Training recipe", item 19).
        pad_continued_values: with ``pad_levels``, the values of ``floor(S / N)`` beyond
            each end over which the least significant target symbol continues its sawtooth
            before it holds its value at the end, as every other symbol does, ``>= 0``
            (:class:`~optinc_jax.encoding.padded_grid.PaddedGrid`); ``None`` (the default):
            throughout the padding. Not in the paper (no padding). Measured on 8b8s, seed
            0, one CPU (README, "Training recipe", item 21): 0, 8 and 16 ended at 89, 23
            and 33 wrong inputs where the preset's ``None`` ended at 22, so the preset
            keeps ``None``.
        stage2_learning_rate_scale: the learning rate of loss stage 2 as a multiple of the
            schedule's, ``> 0`` (:func:`make_optimizer`; Adam's moments carry over). Not in
            the paper (one schedule); 1 (the default) is the paper's. The 8b4s preset's
            0.5 reached 100 % earlier than 1 for 8 of 9 seeds (README, "Not reached yet",
            the twice-as-fast ``make demo``). The 8b8s preset's 0.5 (since 2026-12-07):
            seeds 1 and 2 at 100 % on one CPU, seed 0 at 11 wrong against 22 with 1 (README,
            "Presets").
        adam_eps: Adam's epsilon in the training epochs, ``> 0`` (the finishing and the
            noise fine-tuning keep optax's). A larger one damps the steps of weights whose
            gradients have been near zero for a while (the dead zones of stage 2 make
            many). The paper does not say; 1e-8 (the default) is optax's. Measured on
            8b4s: 1e-5 left the median epoch of the first 100 % unchanged (the same README
            paragraph).

    The ``noise_*``, ``focus_*``, ``stop_margin``, ``symbol_tolerance``,
    ``stage2_tolerance``, ``condition_until``, ``revive_until``, ``balance_fraction``,
    ``refit_*``, ``finish_*``, ``restore_best``, ``leak_*``, ``bias_learning_rate_scale``,
    ``pad_levels``, ``pad_continued_values``, ``stage2_learning_rate_scale``, ``adam_eps``
    and ``stage1_eval_every`` fields are optional in records: :meth:`to_json` writes each
    only when it differs from its default, so records of runs without fine-tuning, focus or
    a dead zone are those of earlier versions (and such runs resume), and
    :meth:`from_json` fills in the defaults.
    """

    scenario: str | Scenario = "8b4s"
    approx: str | tuple[int, ...] | None = None
    epochs: int = 130
    batch_size: int = 128
    steps_per_epoch: int | None = None
    learning_rate: float = 3e-3
    schedule: Schedule = "onecycle"
    warmup_fraction: float = 0.2
    switch_epoch: int = 80
    stage2: Stage2Loss = "hybrid"
    symbol_weight_base: float = 1.0
    project_every: int = 1
    project_start: int = 0
    approx_side: ApproxSide = "left"
    refine_steps: int = 0
    eval_every: int = 1
    stage1_eval_every: int | None = None
    eval_chunk_size: int | None = None
    checkpoint_every: int = 10
    stop_at_full_accuracy: bool = True
    seed: int = 0
    noise_model: str | None = None
    noise_strength: float = 0.0
    noise_epochs: int = 0
    noise_learning_rate: float = 2e-4
    focus_fraction: float = 0.0
    balance_fraction: float = 0.0
    focus_margin: float = 0.25
    stop_margin: float = 0.0
    symbol_tolerance: float = 0.0
    stage2_tolerance: float | None = None
    condition_until: int = 0
    revive_until: int = 0
    refit_iterations: int = 0
    refit_tolerance: float = 0.35
    finish_rounds: int = 0
    finish_steps: int = 5
    finish_learning_rate: float = 1e-4
    finish_tolerance: float = 0.35
    finish_slack: float = 0.1
    finish_balance: bool = False
    finish_backtrack: float = 0.0
    restore_best: bool = False
    leak_start: float = 0.0
    leak_until: int = 0
    bias_learning_rate_scale: float = 1.0
    pad_levels: int = 0
    pad_continued_values: int | None = None
    stage2_learning_rate_scale: float = 1.0
    adam_eps: float = 1e-8

    def __post_init__(self):
        """Validates every field (one ``ValueError`` naming the field)."""
        scenario = as_scenario(self.scenario)
        if not isinstance(self.approx, str | type(None)):
            if not isinstance(self.approx, Sequence):
                raise ValueError(f"approx must be None, a string or indices, got {self.approx!r}")
            object.__setattr__(self, "approx", tuple(self.approx))
        if self.approx is not None:
            parse_approx(self.approx, scenario.num_matrices)
        for name in ("epochs", "batch_size", "project_every", "eval_every", "checkpoint_every"):
            require_int(name, getattr(self, name), 1)
        for name in (
            "switch_epoch",
            "project_start",
            "refine_steps",
            "condition_until",
            "revive_until",
        ):
            require_int(name, getattr(self, name), 0)
        for name in ("steps_per_epoch", "eval_chunk_size", "stage1_eval_every"):
            if getattr(self, name) is not None:
                require_int(name, getattr(self, name), 1)
        require_int("seed", self.seed, 0, MAX_SEED)
        require_real("learning_rate", self.learning_rate, low=0.0, low_inclusive=False)
        require_real("symbol_weight_base", self.symbol_weight_base, low=0.0, low_inclusive=False)
        require_choice("schedule", self.schedule, get_args(Schedule))
        require_choice("stage2", self.stage2, STAGE2_LOSSES)
        require_choice("approx_side", self.approx_side, get_args(ApproxSide))
        require_real(
            "warmup_fraction", self.warmup_fraction, low=0.0, high=1.0, high_inclusive=False
        )
        if self.schedule == "onecycle" and self.warmup_fraction == 0:
            raise ValueError(
                "warmup_fraction must be > 0 with the 'onecycle' schedule (its warm-up share), "
                "got 0; use schedule='cosine' or 'constant' for no warm-up"
            )
        if not isinstance(self.stop_at_full_accuracy, bool):
            raise ValueError(
                f"stop_at_full_accuracy must be a bool, got {self.stop_at_full_accuracy!r}"
            )
        self._validate_noise()
        require_real("focus_fraction", self.focus_fraction, low=0.0, high=1.0, high_inclusive=False)
        require_real(
            "balance_fraction", self.balance_fraction, low=0.0, high=1.0, high_inclusive=False
        )
        if self.focus_fraction + self.balance_fraction >= 1.0:
            raise ValueError(
                f"focus_fraction ({self.focus_fraction}) + balance_fraction "
                f"({self.balance_fraction}) must be below 1 (room for uniform draws)"
            )
        require_real("focus_margin", self.focus_margin, low=0.0, high=0.5, low_inclusive=False)
        require_real("stop_margin", self.stop_margin, low=0.0, high=0.5)
        require_real(
            "symbol_tolerance", self.symbol_tolerance, low=0.0, high=0.5, high_inclusive=False
        )
        if self.stage2_tolerance is not None:
            require_real(
                "stage2_tolerance", self.stage2_tolerance, low=0.0, high=0.5, high_inclusive=False
            )
        require_int("refit_iterations", self.refit_iterations, 0)
        require_real(
            "refit_tolerance",
            self.refit_tolerance,
            low=0.0,
            high=0.5,
            low_inclusive=False,
            high_inclusive=False,
        )
        require_int("finish_rounds", self.finish_rounds, 0)
        require_int("finish_steps", self.finish_steps, 1)
        require_real(
            "finish_learning_rate", self.finish_learning_rate, low=0.0, low_inclusive=False
        )
        require_real(
            "finish_tolerance",
            self.finish_tolerance,
            low=0.0,
            high=0.5,
            low_inclusive=False,
            high_inclusive=False,
        )
        require_real("finish_slack", self.finish_slack, low=0.0, high=self.finish_tolerance)
        if not isinstance(self.finish_balance, bool):
            raise ValueError(f"finish_balance must be a bool, got {self.finish_balance!r}")
        if not isinstance(self.restore_best, bool):
            raise ValueError(f"restore_best must be a bool, got {self.restore_best!r}")
        require_real(
            "finish_backtrack", self.finish_backtrack, low=0.0, high=1.0, high_inclusive=False
        )
        require_real("leak_start", self.leak_start, low=0.0, high=1.0, high_inclusive=False)
        require_int("leak_until", self.leak_until, 0)
        if (self.leak_start > 0) != (self.leak_until > 0):
            raise ValueError(
                f"leak_start ({self.leak_start}) and leak_until ({self.leak_until}) must be "
                "both positive (an annealed leak) or both 0 (none)"
            )
        require_real(
            "bias_learning_rate_scale", self.bias_learning_rate_scale, low=0.0, low_inclusive=False
        )
        require_int("pad_levels", self.pad_levels, 0)
        if self.pad_continued_values is not None:
            require_int("pad_continued_values", self.pad_continued_values, 0)
            if not self.pad_levels:
                raise ValueError(
                    f"pad_continued_values={self.pad_continued_values} shapes the targets of "
                    "padded levels; it needs pad_levels > 0"
                )
        require_real(
            "stage2_learning_rate_scale",
            self.stage2_learning_rate_scale,
            low=0.0,
            low_inclusive=False,
        )
        require_real("adam_eps", self.adam_eps, low=0.0, low_inclusive=False)
        last_matrix = scenario.num_matrices
        if self.refit_iterations and last_matrix in self.approx_layers():
            raise ValueError(
                f"refit_iterations={self.refit_iterations} re-solves weight matrix "
                f"{last_matrix}, which approx {list(self.approx_layers())} keeps diagonal x "
                "unitary; refit only a run whose last matrix is free"
            )
        for name in ("eval_every", "stage1_eval_every"):
            period = getattr(self, name)
            if self.focus_fraction > 0 and period is not None and self.checkpoint_every % period:
                # The hard set is rescored at every evaluation and rebuilt from the
                # checkpoint on resume, so a checkpoint must fall on an evaluation epoch.
                raise ValueError(
                    f"checkpoint_every ({self.checkpoint_every}) must be a multiple of {name} "
                    f"({period}) with focus_fraction > 0"
                )

    def _validate_noise(self) -> None:
        """Checks the ``noise_*`` fields (one ``ValueError`` naming the field)."""
        require_int("noise_epochs", self.noise_epochs, 0)
        require_real("noise_learning_rate", self.noise_learning_rate, low=0.0)
        strength = require_real("noise_strength", self.noise_strength, low=0.0)
        if self.noise_model is None:
            if self.noise_epochs or strength:
                raise ValueError(
                    "noise_model must be set when noise_epochs or noise_strength is, got "
                    f"noise_model=None with noise_epochs={self.noise_epochs}, "
                    f"noise_strength={self.noise_strength}"
                )
            return
        require_choice("noise_model", self.noise_model, tuple(NOISE_MODELS))
        if self.noise_epochs == 0:
            raise ValueError(
                f"noise_epochs must be >= 1 with noise_model={self.noise_model!r}, got 0"
            )
        noise = NOISE_MODELS[self.noise_model]
        if noise.integer and strength != int(strength):
            raise ValueError(
                f"noise_strength must be a whole number of {noise.unit} for noise_model "
                f"{self.noise_model!r}, got {self.noise_strength}"
            )

    @classmethod
    def for_scenario(cls, scenario: str | Scenario, **overrides) -> "TrainConfig":
        """The config of a scenario's training preset, with some fields changed.

        Args:
            scenario: a registered name or a scenario value; its preset is
                :func:`~optinc_jax.scenarios.training_preset` (none: the defaults).
            **overrides: fields that replace the preset's (``None`` values are ignored,
                as a command line passes unset options).

        Returns:
            The validated config.

        Raises:
            ValueError: on an unknown scenario, an unknown field or an invalid value.

        Examples:
            >>> TrainConfig.for_scenario("8b8s", seed=3).focus_fraction
            0.25
        """
        fields = {field.name for field in dataclasses.fields(cls)} - {"scenario"}
        given = {key: value for key, value in overrides.items() if value is not None}
        values = {**training_preset(as_scenario(scenario)), **given}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown} for scenario {scenario!r}")
        return cls(scenario=scenario, **values)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def tolerance_of(self, stage: int) -> float:
        """The dead zone of the per-symbol loss term in loss stage ``stage`` (1 or 2).

        Examples:
            >>> TrainConfig(symbol_tolerance=0.1, stage2_tolerance=0.3).tolerance_of(1)
            0.1
            >>> TrainConfig(symbol_tolerance=0.1).tolerance_of(2)
            0.1
        """
        if stage == 2 and self.stage2_tolerance is not None:
            return self.stage2_tolerance
        return self.symbol_tolerance

    def evaluation_due(self, epoch: int) -> bool:
        """Whether the run evaluates its projected network after ``epoch`` (1-based) epochs.

        Every ``eval_every`` epochs and after the last; while loss stage 1 trains (epochs
        up to ``switch_epoch``) every ``stage1_eval_every`` epochs instead when that is set,
        and after the last stage-1 epoch.

        Examples:
            >>> config = TrainConfig(epochs=12, switch_epoch=7, stage1_eval_every=3)
            >>> [epoch for epoch in range(1, 13) if config.evaluation_due(epoch)]
            [3, 6, 7, 8, 9, 10, 11, 12]
            >>> config = TrainConfig(epochs=12, switch_epoch=7, eval_every=5)
            >>> [epoch for epoch in range(1, 13) if config.evaluation_due(epoch)]
            [5, 10, 12]
        """
        if epoch == self.epochs:
            return True
        if self.stage1_eval_every is not None and epoch <= self.switch_epoch:
            return epoch % self.stage1_eval_every == 0 or epoch == self.switch_epoch
        return epoch % self.eval_every == 0

    def leak_at(self, epoch: int) -> float | None:
        """The hidden activations' negative slope while training epoch ``epoch`` (0-based).

        Linear from ``leak_start`` at epoch 0 to 0 at ``leak_until``; ``None`` (plain
        ReLU) from then on and for a run without a leak.

        Examples:
            >>> config = TrainConfig(leak_start=0.5, leak_until=4)
            >>> [config.leak_at(epoch) for epoch in range(5)]
            [0.5, 0.375, 0.25, 0.125, None]
        """
        if epoch >= self.leak_until:
            return None
        return self.leak_start * (self.leak_until - epoch) / self.leak_until

    def resolved_scenario(self) -> Scenario:
        """The scenario value (a registered name is looked up)."""
        return as_scenario(self.scenario)

    def approx_layers(self) -> tuple[int, ...]:
        """The 1-based approximated weight matrices this config selects."""
        scenario = self.resolved_scenario()
        if self.approx is None:
            return scenario.approx
        return parse_approx(self.approx, scenario.num_matrices)

    def conditioned_layers(self, epoch: int) -> tuple[int, ...]:
        """The 1-based matrices projected after ``epoch`` (1-based) epochs, if due at all.

        The run's approximated matrices, and through ``condition_until`` also those the
        scenario approximates but the run keeps full; sorted.

        Examples:
            >>> config = TrainConfig(approx="4-6", condition_until=2)
            >>> config.conditioned_layers(2), config.conditioned_layers(3)
            ((1, 2, 3, 4, 5, 6), (4, 5, 6))
        """
        approx = self.approx_layers()
        if epoch > self.condition_until:
            return approx
        return tuple(sorted(set(approx) | set(self.resolved_scenario().approx)))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; :meth:`from_json` is the inverse.

        A scenario value is written out in full, a registered name as the name.
        """
        document = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        for name, default in _OPTIONAL_FIELDS.items():
            if document[name] == default:
                del document[name]
        if isinstance(self.scenario, Scenario):
            document["scenario"] = self.scenario.to_json()
        if isinstance(self.approx, tuple):
            document["approx"] = list(self.approx)
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> "TrainConfig":
        """The config of :meth:`to_json`.

        Args:
            document: a dict with exactly the fields of :class:`TrainConfig`, the optional
                ``noise_*`` fields allowed to be absent (their defaults).

        Returns:
            The validated config.

        Raises:
            ValueError: on missing or extra keys (a record of another version) or an invalid
                field.
        """
        fields = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(document, Mapping):
            raise ValueError(f"a TrainConfig record must be a JSON object, got {document!r}")
        missing = sorted(fields - set(document) - set(_OPTIONAL_FIELDS))
        extra = sorted(set(document) - fields)
        if missing or extra:
            raise ValueError(
                f"the TrainConfig record does not match this version: missing keys {missing}, "
                f"unknown keys {extra}"
            )
        values = dict(document)
        if isinstance(values["scenario"], Mapping):
            values["scenario"] = scenario_from_json(values["scenario"])
        if isinstance(values["approx"], list):
            values["approx"] = tuple(values["approx"])
        return cls(**values)


_OPTIONAL_FIELDS: dict[str, Any] = {
    field.name: field.default
    for field in dataclasses.fields(TrainConfig)
    if field.name.startswith(
        (
            "noise_",
            "focus_",
            "stop_margin",
            "symbol_tolerance",
            "stage2_tolerance",
            "condition_until",
            "revive_until",
            "balance_fraction",
            "refit_",
            "finish_",
            "restore_best",
            "leak_",
            "bias_learning_rate_scale",
            "pad_levels",
            "pad_continued_values",
            "stage2_learning_rate_scale",
            "adam_eps",
            "stage1_eval_every",
        )
    )
}
"""Fields a record may lack (added after the first version), with their defaults."""


def steps_per_epoch(config: TrainConfig, dataset_size: int) -> int:
    """Optimizer steps per epoch: the configured number, or one pass over the data.

    Args:
        config: the run's configuration.
        dataset_size: samples in the training set.

    Returns:
        ``config.steps_per_epoch``, or ``dataset_size // config.batch_size``.

    Raises:
        ValueError: if one pass is asked for and the batch is larger than the dataset.
    """
    if config.steps_per_epoch is not None:
        return config.steps_per_epoch
    if config.batch_size > dataset_size:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the dataset ({dataset_size} "
            "samples): one pass would be zero steps; use a smaller batch or set steps_per_epoch"
        )
    return dataset_size // config.batch_size


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """The learning rate of every optimizer step.

    Args:
        config: the run's configuration (``schedule``, ``learning_rate``,
            ``warmup_fraction``).
        total_steps: optimizer steps of the whole run (``epochs x steps_per_epoch``).

    Returns:
        An optax schedule.

    Raises:
        ValueError: if ``total_steps < 1``.
    """
    total_steps = require_int("total_steps", total_steps, 1)
    if config.schedule == "constant":
        schedule = optax.constant_schedule(config.learning_rate)
    elif config.schedule == "cosine":
        # floor(f T) < T for f < 1: the decay always has at least one step.
        warmup = int(config.warmup_fraction * total_steps)
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, warmup, total_steps
        )
    else:
        schedule = optax.cosine_onecycle_schedule(
            total_steps, config.learning_rate, pct_start=config.warmup_fraction
        )

    def in_full_precision(count):
        # optax's piecewise schedules pick their piece with a float32 dot product, which a
        # GPU's default precision would round to TensorFloat-32 (10 mantissa bits).
        with jax.default_matmul_precision("highest"):
            return schedule(count)

    return in_full_precision


def make_optimizer(
    config: TrainConfig, total_steps: int, *, stage: int = 1
) -> optax.GradientTransformation:
    """Adam with the config's learning-rate schedule; biases scaled by the config's factor.

    With ``stage2_learning_rate_scale`` other than 1 every update is multiplied by it in
    stage 2 (by 1 in stage 1: both stages then keep one optimizer-state structure).

    With ``bias_learning_rate_scale`` 1 (the default, the paper's single learning rate)
    this is plain ``optax.adam``; otherwise Adam's update of every ``layers/<i>/bias``
    leaf is multiplied by that factor (Adam's moments are those of plain Adam).

    Args:
        config: the run's configuration.
        total_steps: optimizer steps of the whole run.
        stage: the loss stage the optimizer steps in, 1 or 2.

    Returns:
        The optax transformation; built again from equal arguments it behaves identically,
        so the jitted epoch can build it inside (keyed by the config's value).
    """
    stage = require_choice("stage", stage, (1, 2))
    adam = optax.adam(learning_rate_schedule(config, total_steps), eps=config.adam_eps)
    if config.stage2_learning_rate_scale != 1.0:
        factor = config.stage2_learning_rate_scale if stage == 2 else 1.0
        adam = optax.chain(adam, optax.scale(factor))
    if config.bias_learning_rate_scale == 1.0:
        return adam

    def label(path, _leaf) -> str:
        leaf = layer_leaf(path)
        return "bias" if leaf is not None and leaf[1] == "bias" else "other"

    def labels(params):
        return jax.tree_util.tree_map_with_path(label, params)

    biases_scaled = optax.multi_transform(
        {"bias": optax.scale(config.bias_learning_rate_scale), "other": optax.identity()}, labels
    )
    return optax.chain(adam, biases_scaled)


def projection_due(config: TrainConfig, epoch: int) -> bool:
    """Whether the parameters are projected after ``epoch`` (1-based) epochs.

    Args:
        config: the run's configuration (``project_start``, ``project_every``).
        epoch: epochs completed.

    Returns:
        True every ``project_every`` epochs counted from ``project_start``.

    Examples:
        >>> [projection_due(TrainConfig(project_every=2, project_start=1), e) for e in range(5)]
        [False, False, False, True, False]
    """
    done = epoch - config.project_start
    return done >= config.project_every and done % config.project_every == 0
