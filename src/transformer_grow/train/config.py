"""Typed training configuration.

:class:`TrainConfig` holds every setting of the optimisation loop (budget, optimiser, schedule,
evaluation, logging, checkpointing, device). :meth:`TrainConfig.validate` refuses bad values with a
:class:`~transformer_grow.errors.ConfigError` naming the value and what is allowed, before any work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from dataclasses import dataclass, field
from typing import Any

from transformer_grow.errors import ConfigError, choice, require

SCHEDULES = ("cosine", "wsd", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "bf16")
OBJECTIVES = ("auto", "clm", "mlm")  # see transformer_grow.train.mlm


# Upper bounds: far beyond any run of this library, low enough that a mistyped value (1e11 sequences
# per batch) is refused here rather than in an allocation, and that counts stay within int64.
MAX_COUNTS = {"batch_size": 1 << 24, "grad_accum": 1 << 24, "eval_windows": 1 << 20, "eval_batch_size": 1 << 24,
              "max_steps": 10**12, "max_tokens": 10**18, "warmup_steps": 10**12, "eval_interval": 10**12,
              "log_interval": 10**12, "ckpt_interval": 10**12, "seed": 2**63 - 1, "stall_steps": 10**6,
              "keep_checkpoints": 10**6}


MAX_LR = 1e6  # also of weight_decay: far above any that trains; 1e30 is a typo
MAX_GRAD_CLIP = 1e12
MAX_HEALTH_RATIO = 1e12  # of spike_ratio and max_weight_growth: 1e30 is a typo, not a threshold

# Settings that only watch a run (divergence thresholds, how many checkpoints to keep): they never change a
# trajectory, so they are no part of a run's identity and may change on any resume.
OBSERVATION_FIELDS = ("spike_ratio", "stall_steps", "max_weight_growth", "keep_checkpoints")
# Settings added after runs were recorded: to_dict() leaves them out at their defaults, so that the
# config files, checkpoints and fingerprints (growth runs, comparisons, grids) of earlier runs stay valid.
LATER_FIELDS = (*OBSERVATION_FIELDS, "skip_batches")
_SKIP_RANGE = re.compile(r"^([0-9]+):([0-9]+)$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainConfig:
    """Settings of one training run.

    Budget: ``max_steps`` and/or ``max_tokens`` (at least one); training stops at whichever comes
    first. One step consumes ``batch_size * seq_len`` tokens (``batch_size`` sequences, split into
    ``grad_accum`` micro-batches of ``batch_size // grad_accum``).

    Optimiser: AdamW (Loshchilov & Hutter 2019) with ``beta1``, ``beta2``; weight decay applies to
    parameters with 2 or more dimensions only (matmul weights and embeddings), not to norm weights or
    biases: the nanoGPT convention. ``grad_clip`` caps the global gradient L2 norm (0 disables).

    Schedule (see :mod:`transformer_grow.train.schedule`): linear warmup over ``warmup_steps`` to
    ``lr``, then ``"cosine"`` decay to ``lr * min_lr_ratio`` at the last step, ``"wsd"``
    (warmup-stable-decay: constant, then linear decay to ``lr * min_lr_ratio`` over the last
    ``decay_frac`` of the steps) or ``"constant"``.

    Intervals are in optimizer steps; ``eval_interval=0`` / ``ckpt_interval=0`` mean "only at the
    end". ``seed`` fixes model initialisation and the data order.

    ``device``: ``"auto"`` picks CUDA, then MPS, then CPU. ``dtype``: ``"auto"`` is bf16 autocast on
    CUDA GPUs that support it and fp32 elsewhere; ``"bf16"`` forces bf16 autocast (also on CPU, opt-in);
    ``"fp32"`` disables autocast. Parameters and optimizer state are always fp32; evaluation is fp32.

    Attributes:
        batch_size: global batch: sequences per optimizer step.
        grad_accum: micro-batches per step (must divide ``batch_size``).
        max_steps: stop after this many optimizer steps.
        max_tokens: stop after this many training tokens (e.g. 10M); with ``max_steps``, whichever
            comes first.
        lr: peak learning rate.
        min_lr_ratio: final learning rate as a fraction of the peak.
        warmup_steps: linear warmup steps.
        schedule: learning-rate schedule: ``cosine``, ``wsd`` (warmup-stable-decay) or ``constant``.
        decay_frac: ``wsd``: fraction of the steps spent decaying.
        weight_decay: AdamW weight decay (on matrices and embeddings only).
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: clip the global gradient norm to this (0: no clipping).
        eval_interval: evaluate every N steps (0: only at the end).
        eval_windows: number of fixed validation windows.
        eval_batch_size: windows per evaluation batch; default the micro-batch size.
        log_interval: write a metrics record every N steps.
        ckpt_interval: checkpoint every N steps (0: only at the end).
        tensorboard: also log to TensorBoard in the run directory's ``tensorboard/`` (needs the
            ``tensorboard`` package).
        seed: seed of the model initialisation and the data order.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.
        dtype: ``auto`` (bf16 autocast on CUDA, else fp32), ``fp32`` or ``bf16`` (bf16 on CPU is opt-in).
        compile: ``torch.compile`` the model.
        objective: ``auto`` (``clm`` for a causal model, ``mlm`` for a bidirectional one), ``clm`` (next-token
            prediction) or ``mlm`` (masked language modelling, BERT; Devlin et al. 2019).
        mask_token_id: ``mlm``: the ``[MASK]`` input id; default the model's last id, which must then lie
            outside the data's vocabulary.
        mlm_probability: ``mlm``: share of positions chosen for prediction (80% masked, 10% random, 10% kept).
        spike_ratio: stop as diverged when a step's loss exceeds this multiple of the median loss of the
            recent steps (and lies at least 1 nat above it); 0: off.
        stall_steps: stop as diverged when the loss sits at the uniform value ln(vocab_size) (to 1e-5) for
            this many steps in a row: the output no longer depends on the input; 0: off.
        max_weight_growth: stop as diverged when the global weight norm exceeds this multiple of its value
            at the start of the run (or after growth); 0: off.
        keep_checkpoints: checkpoints kept in the run directory's ``checkpoints/`` (besides the initial
            one at step 0), each with its loss and health, to resume from after a divergence; 0: only the
            latest in ``checkpoint/``.
        skip_batches: data batches never trained on, as ranges ``A:B`` of batch numbers (the step numbers
            of a run without skips), e.g. ``17:20`` after a loss spike there; later steps take the next
            batches.
    """

    # Budget and batch.
    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int | None = None
    max_tokens: int | None = None
    # Optimiser and schedule.
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"
    decay_frac: float = 0.2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # Evaluation, logging, checkpoints.
    eval_interval: int = 200
    eval_windows: int = 64
    eval_batch_size: int | None = None  # default: the micro-batch size
    log_interval: int = 10
    ckpt_interval: int = 500
    tensorboard: bool = False
    # Reproducibility and hardware.
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    # Objective (masked LM for bidirectional models).
    objective: str = "auto"
    mask_token_id: int | None = None
    mlm_probability: float = 0.15
    # Divergence: observation only (thresholds), the checkpoints to recover from, batches to skip.
    spike_ratio: float = 3.0
    stall_steps: int = 5
    max_weight_growth: float = 100.0
    keep_checkpoints: int = 3
    skip_batches: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate(budget=False)  # a config may leave the budget to its user (GrowthManager's budget=)

    @property
    def micro_batch_size(self) -> int:
        """Sequences per forward/backward pass: ``batch_size // grad_accum``."""
        return self.batch_size // self.grad_accum

    def total_steps(self, seq_len: int) -> int:
        """Length of the run in optimizer steps for sequences of ``seq_len`` tokens."""
        steps = []
        if self.max_steps is not None:
            steps.append(self.max_steps)
        if self.max_tokens is not None:
            steps.append(math.ceil(self.max_tokens / (self.batch_size * seq_len)))
        return min(steps)

    def validate(self, budget: bool = True) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting; with ``budget``, also when neither
        ``max_steps`` nor ``max_tokens`` is set (what a :class:`Trainer` needs; a construction does not ask)."""
        for name in ("batch_size", "grad_accum", "eval_windows", "log_interval"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 1, f"{name}={value!r} is not allowed; it must be an integer >= 1")
        for name in ("warmup_steps", "eval_interval", "ckpt_interval", "seed", "stall_steps", "keep_checkpoints"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 0, f"{name}={value!r} is not allowed; it must be an integer >= 0")
        for name, most in MAX_COUNTS.items():
            value = getattr(self, name)
            require(not _is_int(value) or value <= most,
                    f"{name}={value!r} is not allowed; it must be at most {most:,}")
        require(self.batch_size % self.grad_accum == 0,
                f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}; "
                "choose grad_accum dividing batch_size")
        require(not budget or self.max_steps is not None or self.max_tokens is not None,
                "no training budget: set max_steps (--max-steps) and/or max_tokens (--max-tokens)")
        for name in ("max_steps", "max_tokens"):
            value = getattr(self, name)
            require(value is None or (_is_int(value) and value >= 1),
                    f"{name}={value!r} is not allowed; it must be a positive integer (or unset)")
        if self.eval_batch_size is not None:
            require(_is_int(self.eval_batch_size) and self.eval_batch_size >= 1,
                    f"eval_batch_size={self.eval_batch_size!r} is not allowed; it must be an integer >= 1 (or unset)")
        require(_is_number(self.lr) and 0 < self.lr <= MAX_LR,
                f"lr={self.lr!r} is not allowed; it must be a number > 0 and at most {MAX_LR:g}")
        require(_is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
                f"min_lr_ratio={self.min_lr_ratio!r} is not allowed; it must lie in [0, 1]")
        require(_is_number(self.decay_frac) and 0 < self.decay_frac <= 1,
                f"decay_frac={self.decay_frac!r} is not allowed; it must lie in (0, 1]")
        require(_is_number(self.weight_decay) and 0 <= self.weight_decay <= MAX_LR,
                f"weight_decay={self.weight_decay!r} is not allowed; it must be a number from 0 to {MAX_LR:g}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            require(_is_number(value) and 0 <= value < 1, f"{name}={value!r} is not allowed; it must lie in [0, 1)")
        require(_is_number(self.grad_clip) and 0 <= self.grad_clip <= MAX_GRAD_CLIP,
                f"grad_clip={self.grad_clip!r} is not allowed; it must be a number from 0 (no clipping) to "
                f"{MAX_GRAD_CLIP:g}")
        choice("schedule", self.schedule, SCHEDULES)
        choice("device", self.device, DEVICES)
        choice("dtype", self.dtype, DTYPES)
        choice("objective", self.objective, OBJECTIVES)
        require(self.mask_token_id is None or (_is_int(self.mask_token_id) and 0 <= self.mask_token_id < 1 << 32),
                f"mask_token_id={self.mask_token_id!r} is not allowed; it must be a token id >= 0 (or unset)")
        require(_is_number(self.mlm_probability) and 0 < self.mlm_probability < 1,
                f"mlm_probability={self.mlm_probability!r} is not allowed; it must lie in (0, 1)")
        for name in ("spike_ratio", "max_weight_growth"):
            value = getattr(self, name)
            require(_is_number(value) and 0 <= value <= MAX_HEALTH_RATIO,
                    f"{name}={value!r} is not allowed; it must be a number from 0 (off) to {MAX_HEALTH_RATIO:g}")
        require(self.spike_ratio == 0 or self.spike_ratio > 1,
                f"spike_ratio={self.spike_ratio!r} is not allowed; it must be above 1 (or 0: off)")
        require(self.max_weight_growth == 0 or self.max_weight_growth > 1,
                f"max_weight_growth={self.max_weight_growth!r} is not allowed; it must be above 1 (or 0: off)")
        self.skip_ranges()  # refuses a malformed or overlapping range
        for name in ("compile", "tensorboard"):
            value = getattr(self, name)
            require(isinstance(value, bool), f"{name}={value!r} is not allowed; it must be true or false")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("tensorboard=True needs the 'tensorboard' package, which is not installed; "
                              "run: pip install tensorboard (or leave TensorBoard off)")

    def skip_ranges(self) -> list[tuple[int, int]]:
        """``skip_batches`` as sorted ``(first, last)`` batch numbers (1-based, inclusive)."""
        require(isinstance(self.skip_batches, list),
                f"skip_batches={self.skip_batches!r} is not allowed; it must be a list of ranges A:B")
        ranges = []
        for item in self.skip_batches:
            match = _SKIP_RANGE.match(item) if isinstance(item, str) else None
            first, last = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
            require(match is not None and 1 <= first <= last <= MAX_COUNTS["max_steps"],
                    f"skip_batches entry {item!r} is not allowed; it must be a range A:B of batch numbers with "
                    f"1 <= A <= B <= {MAX_COUNTS['max_steps']:,} (e.g. 17:20)")
            ranges.append((first, last))
        ranges.sort()
        for (a, b), (c, d) in zip(ranges, ranges[1:]):
            require(c > b, f"skip_batches ranges {a}:{b} and {c}:{d} overlap; give each batch once")
        return ranges

    def batch_index(self, step: int) -> int:
        """The data batch (0-based, as ``data.batch`` takes it) of 0-based step ``step``: ``step`` itself,
        moved past every ``skip_batches`` range it reaches."""
        index = step
        for first, last in self.skip_ranges():
            if index + 1 >= first:
                index += last - first + 1
        return index

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied."""
        unknown = set(changes) - field_names()
        if unknown:
            raise ConfigError(f"unknown train setting(s): {', '.join(sorted(unknown))}; "
                              f"allowed: {', '.join(sorted(field_names()))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(TrainConfig):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if f.name in LATER_FIELDS and d[f.name] == default:
                del d[f.name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        unknown = set(d) - field_names()
        if unknown:
            raise ConfigError(f"unknown train setting(s): {', '.join(sorted(unknown))}; "
                              f"allowed: {', '.join(sorted(field_names()))}")
        return cls(**d)


def field_names() -> set[str]:
    """Names of all :class:`TrainConfig` settings."""
    return {f.name for f in dataclasses.fields(TrainConfig)}
