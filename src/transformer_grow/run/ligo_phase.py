"""The LiGO phase of a growth event: learn the growth operator on the run's data, then train on.

A growth event with ``method="ligo"`` (:func:`transformer_grow.run.event.grow_trainer`) does, in place
of a fixed operator (Wang et al. 2023, Sec. 3 and 4.1):

1. build a :class:`~transformer_grow.operators.ligo.LiGO` from the trainer's model, initialised as the fixed
   operator it is named after (``depth``, default ``stack``; ``width``, default ``clone``);
2. train the operator only (the small model frozen) for ``ligo_steps`` steps with its own AdamW
   (``ligo_lr``, no weight decay) on the grown model's language-model loss, on the run's next training
   batches (:meth:`Trainer.draw_batch`: the data position advances, so the grown model never sees them
   again and a resumed run reads the same data); under data parallelism the operator's gradients are
   averaged over ranks, so every rank learns the same operator;
3. materialise the plain grown model and hand it to the trainer with its AdamW state fresh
   (``optimizer="fresh"``) or mapped through the operator's *initial* (stack/clone) parameter map
   (``optimizer="carry"``; see :meth:`LiGO.materialise` for why that is an approximation).

FLOPs of the phase, counted in the run's budget (:meth:`Trainer.add_spent`) and in the plan-time
estimate (:func:`ligo_phase_cost`, used by :mod:`~transformer_grow.plans.accounting`)::

    steps * (tokens_per_step * flops_per_token(grown model) + materialisation_per_step) + materialisation_once

``flops_per_token`` is the trainer's count (6 N + head + attention: a forward and a backward through
the materialised weights, Kaplan et al. 2020); ``materialisation_per_step`` the forward, recomputation
and backward of the operator's matrix products and ``materialisation_once`` the final forward (formulas
in :mod:`transformer_grow.operators.ligo`). Tokens: ``steps * tokens_per_step``.

Memory: the report's ``ligo_bound_bytes`` is small model + grown model (fp32) + operator, what the phase
may hold besides activations, AdamW moments of the operator and one parameter type's intermediates;
on CUDA ``ligo_peak_bytes`` is the measured peak of the phase (``torch.cuda.max_memory_allocated``).

Number of steps: the paper trains the operator ~100 steps of runs a thousand times longer. Our
budgets are small, so by default (``ligo_steps=None``) the phase takes 1% of the baseline's tokens
(``ligo_tokens``, set by the plan), rounded to whole steps, at least 1 and at most the paper's 100.
"""

from __future__ import annotations

from typing import Any

import torch

from transformer_grow.device import autocast
from transformer_grow.errors import require
from transformer_grow.model import ModelConfig
from transformer_grow.operators.ligo import DEFAULT_LIGO_LR, LiGO, operator_step
from transformer_grow.operators.optimizer import handoff
from transformer_grow.operators.report import GrowthResult
from transformer_grow.plans.ligo import ligo_operator_options, ligo_steps_for


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _average_over_ranks(world_size: int):
    if world_size == 1:
        return None

    def reduce(params: list[torch.Tensor]) -> None:
        for p in params:
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)

    return reduce


def grow_trainer_ligo(trainer, target: ModelConfig | dict | str, *, optimizer: str = "carry",
                      rewarmup_steps: int = 0, seed: int = 0, batch_size: int | None = None,
                      preserve: str = "function", dynamics_relax: str = "never", probe=None,
                      **options: Any) -> GrowthResult:
    """The LiGO growth event (module docstring) on ``trainer``; arguments as
    :func:`~transformer_grow.run.event.grow_trainer`, plus ``ligo_steps``, ``ligo_lr``,
    ``ligo_tokens`` and the operator's ``depth``/``width`` inits. The report's ``options`` record the
    phase (steps, tokens, FLOPs, loss of the grown model on the first and the last batch)."""
    require(preserve == "function", f"preserve={preserve!r} is not allowed with method 'ligo': the learned map "
                                    "is not the fixed operator whose training dynamics 'dynamics' preserves")
    require(trainer.objective is None,
            "method 'ligo' trains the operator on the next-token loss; this run's objective is masked LM")
    exact_tol = options.pop("exact_tol", None)
    operator_options = ligo_operator_options(options)
    lr = options.get("ligo_lr", DEFAULT_LIGO_LR)
    require(isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr <= 1,
            f"ligo_lr={lr!r} is not allowed; it must be a number in (0, 1]")
    batch = batch_size or trainer.config.batch_size
    world = trainer.parallel.world_size
    plain, state = trainer.unwrap()
    losses: list[float] = []
    spent = [0, 0]  # tokens, FLOPs: counted even if the phase fails after drawing batches
    cuda = trainer.device.type == "cuda"
    if cuda:  # the phase's peak memory (module docstring of operators/ligo.py: small + large + operator + activations)
        torch.cuda.reset_peak_memory_stats(trainer.device)
    try:
        with trainer.timed():
            operator = LiGO(plain, target, seed=seed, **operator_options)  # every refusal before any batch
            bound = _bytes(plain.parameters()) + _bytes(operator.parameters()) + sum(
                4 * p.numel() for p in operator._held["skeleton"].parameters())  # fp32 grown weights
            steps = ligo_steps_for(options, batch * operator.config.seq_len)
            per_token = operator._held["skeleton"].flops_per_token()
            opt = torch.optim.AdamW(operator.parameters(), lr=lr, weight_decay=0.0)
            reduce = _average_over_ranks(world)
            for _ in range(steps):
                x, y = trainer.draw_batch(batch)
                spent[0] += x.numel() * world
                spent[1] += x.numel() * world * per_token + operator.flops(training=True)
                losses.append(operator_step(operator, opt, x, y,
                                            lambda: autocast(trainer.device, trainer.autocast_dtype), reduce))
            del opt
            spent[1] += operator.flops(training=False)
            result = operator.materialise(probe=probe, exact_tol=exact_tol, seed=seed)
            del operator
            handed = handoff(result, state, preserve) if optimizer == "carry" else None
    except BaseException:
        trainer.add_spent(*spent)
        trainer.rewrap(plain, state)  # the old model trains on
        raise
    tokens, flops = spent
    trainer.add_spent(tokens, flops)
    phase = {"ligo_steps": steps, "ligo_lr": lr, "ligo_tokens": tokens, "ligo_flops": flops,
             "ligo_loss_first": losses[0] if losses else None, "ligo_loss_last": losses[-1] if losses else None,
             "optimizer": optimizer, "ligo_bound_bytes": bound,
             "ligo_peak_bytes": torch.cuda.max_memory_allocated(trainer.device) if cuda else None}
    result.report.options.update(preserve=preserve, **phase)
    trainer.log(event="ligo", **phase)
    trainer.replace_model(result.model, None if handed is None else handed.optimizer_state,
                          rewarmup_steps=rewarmup_steps, batch_size=batch_size, relax=dynamics_relax)
    return result
