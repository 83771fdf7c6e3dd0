"""What a growth ladder trains: its settings, and the rules that give every rung its model and batch.

A ladder measures growth's saving at several compute budgets ("rungs") on one corpus. At every rung
the target is the compute-optimal size *for that corpus*, measured first by the ladder's own IsoFLOP
grid (Hoffmann et al. 2022, Approach 2) with the same training settings, so that growth is judged in
the regime of real pre-training (a target larger than compute-optimal makes any smaller model look
good; see :mod:`transformer_grow.compare.regime`).

Shapes. Every model has ``n_layer`` layers (default 4, so that ``progressive`` grows 1 -> 2 -> 4,
``g_stack`` 2 -> 4 and ``midas`` 1 -> 2 -> 3 -> 4) and a width ``d_model`` chosen to land its
non-embedding parameter count near the target: even widths, two heads where the head size ``d/2`` is
even (rotary embeddings rotate pairs), one head otherwise, and ``d_ff = 4 d_model`` (SwiGLU), which
at ``d_model = 32`` is the ``quick``/``dev`` presets' shape. Kaplan et al. 2020 (sec. 3.1) find the
loss at a fixed parameter count nearly independent of the aspect ratio over a wide range, so depth is
held fixed and width carries the scale.

Batch and warmup. Larger budgets train with larger batches, as real runs do: ``batch_size(C)`` is
``max_batch`` sequences at ``reference_flops`` and scales as ``C^0.5`` (rounded to a power of two,
at least ``min_batch``), so every run takes several hundred steps or more. The warmup is
``warmup_fraction`` of a run's steps (at least ``min_warmup``); within a rung every method and budget
fraction shares the full budget's warmup, as the presets do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformer_grow.compare.regime import STDLIB_BYTES_LAW, ComputeOptimalLaw
from transformer_grow.errors import require

# The CLI builds its flags from LadderConfig, and `tgrow scaling` must not import torch: the model, data and
# training configs are imported where they are used.

DEFAULT_BUDGETS = [5e9, 1.58e10, 5e10, 1.58e11, 5e11, 1.58e12]  # 2.5 decades, half a decade apart
DEFAULT_PLANS = ["progressive", "g_stack", "g_stack_duplicate", "midas"]
MIN_WIDTH = 4
MAX_WIDTH = 4096


@dataclass
class LadderConfig:
    """A growth ladder (module docstring); every field is a ``tgrow scaling ladder`` flag.

    Attributes:
        corpus: text file or directory to train on; unset: the embedded stdlib corpus.
        label: the corpus's name in reports (``stdlib``, ``brown``).
        budgets: the rungs' compute budgets in FLOPs (at least two).
        plans: growth plans measured at every rung, each with its small-only control.
        seeds: seeds of every rung's runs.
        fractions: budget fractions at which every method also trains with its own full schedule, for
            the schedule-fair compute multiplier (the full budget always runs).
        grid_points: model sizes of the IsoFLOP grid at each budget.
        grid_span: the grid's sizes run from ``N_guess / grid_span`` to ``N_guess * grid_span`` around
            the prior law's compute-optimal size (widened where the minimum lies at an edge).
        grid_seeds: seeds of the IsoFLOP grid's runs.
        n_layer: layers of every target.
        seq_len: context length of every model.
        lr: peak learning rate (AdamW, cosine schedule).
        max_batch: sequences per step at ``reference_flops``.
        min_batch: the fewest sequences per step.
        reference_flops: the budget at which the batch is ``max_batch``.
        warmup_fraction: warmup as a share of a run's steps.
        min_warmup: the fewest warmup steps.
        n_evals: validation points per run.
        eval_windows: fixed validation windows of every run.
        max_fraction: share of a rung's budget (tokens) the plans spend before their last growth.
    """

    corpus: str | None = None
    label: str = "stdlib"
    budgets: list[float] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    plans: list[str] = field(default_factory=lambda: list(DEFAULT_PLANS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    fractions: list[float] = field(default_factory=lambda: [0.25, 0.5])
    grid_points: int = 7
    grid_span: float = 5.0
    grid_seeds: list[int] = field(default_factory=lambda: [0])
    n_layer: int = 4
    seq_len: int = 128
    lr: float = 3e-3
    max_batch: int = 32
    min_batch: int = 4
    reference_flops: float = 4e12
    warmup_fraction: float = 0.02
    min_warmup: int = 5
    n_evals: int = 16
    eval_windows: int = 64
    max_fraction: float = 0.5

    def validate(self) -> None:
        from transformer_grow.plans.builders import PLAN_NAMES

        require(isinstance(self.budgets, list) and len(self.budgets) >= 2
                and all(isinstance(c, (int, float)) and 1e6 <= c <= 1e24 for c in self.budgets)
                and len(set(self.budgets)) == len(self.budgets),
                f"budgets={self.budgets!r} is not allowed; give at least two distinct FLOP budgets from 1e6 to 1e24")
        require(isinstance(self.plans, list) and self.plans and all(p in PLAN_NAMES and p != "scratch"
                                                                   for p in self.plans),
                f"plans={self.plans!r} is not allowed; choose growth plans from "
                f"{', '.join(p for p in PLAN_NAMES if p != 'scratch')}")
        for name in ("seeds", "grid_seeds"):
            value = getattr(self, name)
            require(isinstance(value, list) and value and len(set(value)) == len(value)
                    and all(isinstance(s, int) and s >= 0 for s in value),
                    f"{name}={value!r} is not allowed; give distinct seeds (integers >= 0)")
        require(isinstance(self.fractions, list) and len(self.fractions) >= 2
                and all(isinstance(f, (int, float)) and 0 < f < 1 for f in self.fractions),
                f"fractions={self.fractions!r} is not allowed; give at least two budget fractions in (0, 1) "
                "(with the full budget, the multiplier's power law is fitted on three budgets or more)")
        for name, least, most in (("grid_points", 3, 64), ("n_layer", 1, 256), ("seq_len", 8, 1 << 16),
                                  ("max_batch", 1, 1 << 16), ("min_batch", 1, 1 << 16), ("min_warmup", 0, 10**6),
                                  ("n_evals", 2, 10_000), ("eval_windows", 1, 1 << 20)):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and least <= value <= most,
                    f"{name}={value!r} is not allowed; it must be an integer from {least} to {most:,}")
        require(self.min_batch <= self.max_batch, f"min_batch={self.min_batch} must not exceed max_batch="
                                                  f"{self.max_batch}")
        for name, low, high in (("grid_span", 1.5, 1e3), ("lr", 1e-6, 1.0), ("warmup_fraction", 0.0, 0.5),
                                ("max_fraction", 0.05, 0.95), ("reference_flops", 1e6, 1e24)):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high,
                    f"{name}={value!r} is not allowed; it must be a number from {low:g} to {high:g}")

    def data_config(self):
        from transformer_grow.data import DataConfig

        return DataConfig(tokenizer="bytes", corpus=self.corpus) if self.corpus else DataConfig(tokenizer="bytes")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    # ------------------------------------------------------------------ rules
    def batch_size(self, flops: float) -> int:
        """Sequences per step at a budget of ``flops`` (module docstring)."""
        raw = self.max_batch * math.sqrt(flops / self.reference_flops)
        return int(min(self.max_batch, max(self.min_batch, 2 ** round(math.log2(max(raw, 1e-9))))))

    def warmup_steps(self, tokens: int, flops: float) -> int:
        steps = tokens / (self.batch_size(flops) * self.seq_len)
        return max(self.min_warmup, round(self.warmup_fraction * steps))

    def train_config(self, tokens: int, flops: float):
        """The training settings (a :class:`~transformer_grow.train.config.TrainConfig`) of a run of ``tokens``
        tokens at the budget ``flops``."""
        from transformer_grow.train.config import TrainConfig

        return TrainConfig(batch_size=self.batch_size(flops), lr=self.lr, warmup_steps=self.warmup_steps(tokens, flops),
                           max_steps=1, device="cpu")

    def model(self, d_model: int, vocab_size: int = 256):
        """The ladder's shape (a :class:`~transformer_grow.model.ModelConfig`) at width ``d_model``."""
        from transformer_grow.model import ModelConfig

        heads = 2 if d_model % 4 == 0 else 1
        return ModelConfig(n_layer=self.n_layer, d_model=d_model, n_head=heads, d_ff=4 * d_model,
                           seq_len=self.seq_len, vocab_size=vocab_size)

    def widths(self, most_params: float, vocab_size: int = 256) -> list[tuple[int, int]]:
        """``(d_model, non-embedding parameters)`` of every even width from ``MIN_WIDTH`` up to the first
        with more than ``most_params`` parameters."""
        from transformer_grow.plans.accounting import param_counts

        out: list[tuple[int, int]] = []
        for d in range(MIN_WIDTH, MAX_WIDTH + 1, 2):
            out.append((d, param_counts(self.model(d, vocab_size))[1]))
            if out[-1][1] > most_params:
                break
        return out

    def nearest_width(self, n_params: float, vocab_size: int = 256) -> tuple[int, int]:
        """The width whose model is closest to ``n_params`` non-embedding parameters (in log space)."""
        return min(self.widths(2 * n_params, vocab_size), key=lambda w: abs(math.log(w[1] / n_params)))


def tokens_for(model, flops: float) -> int:
    """Training tokens that spend ``flops`` on ``model`` (a ``ModelConfig``)."""
    from transformer_grow.plans.accounting import flops_per_token

    return max(1, round(flops / flops_per_token(model)))


PRIOR_LAW: ComputeOptimalLaw = STDLIB_BYTES_LAW  # centres the IsoFLOP grid; the ladder measures its own law
