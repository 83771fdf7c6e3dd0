"""FLOP, token and step accounting of growth plans, before and during training.

FLOPs per token are the model's own :meth:`~transformer_grow.model.GPT.flops_per_token`
(Kaplan et al. 2020, Table 1, forward + backward = 3x forward):

    6 * N_nonembedding_active + 6 * d_model * vocab_size + 6 * n_layer * seq_len * d_attn

Every stage trains with the same number of tokens per optimizer step (``tokens_per_step``, the
baseline's ``batch_size * seq_len``); a stage with a shorter context takes proportionally more
sequences per step. A stage's FLOPs are its tokens times its model's FLOPs per token; a plan's
total includes the small models' FLOPs. A growth event that trains (a LiGO operator,
:mod:`~transformer_grow.run.ligo_phase`) adds its phase's steps, tokens and FLOPs to the stage it
starts (``growth_*``), and the last stage takes what is left after them.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import torch

from transformer_grow.errors import require
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.plans.ligo import ligo_phase_cost
from transformer_grow.plans.plan import GrowthPlan, describe_config

FLOPS_FORMULA = ("FLOPs/token = 6*N_nonembedding(active) + 6*d_model*vocab + 6*n_layer*seq_len*d_attn "
                 "(Kaplan et al. 2020, forward+backward; output head counted)")


@functools.lru_cache(maxsize=256)
def _model_counts(config_json: str) -> tuple[int, int, int]:
    with torch.device("meta"):  # no memory, no initialisation cost
        model = GPT(ModelConfig.from_dict(json.loads(config_json)))
    return model.flops_per_token(), model.num_params(non_embedding=False), model.num_params(non_embedding=True)


def _key(config: ModelConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def flops_per_token(config: ModelConfig) -> int:
    """Training FLOPs per token of a model with ``config`` at its ``seq_len``."""
    return _model_counts(_key(config))[0]


def param_counts(config: ModelConfig) -> tuple[int, int]:
    """``(all parameters, non-embedding parameters)`` of a model with ``config``."""
    _, total, non_embedding = _model_counts(_key(config))
    return total, non_embedding


def stage_batch_size(config: ModelConfig, tokens_per_step: int) -> int:
    """Sequences per step of a stage, keeping ``tokens_per_step`` fixed across stages."""
    require(tokens_per_step % config.seq_len == 0,
            f"tokens per step ({tokens_per_step}) is not divisible by seq_len={config.seq_len}; every stage "
            "trains on the same number of tokens per step, so the stage's seq_len must divide it")
    return tokens_per_step // config.seq_len


@dataclass
class StageAccount:
    """Planned steps, tokens and FLOPs of one stage."""

    index: int
    name: str
    config: ModelConfig
    batch_size: int  # sequences per step
    steps: int
    tokens: int
    flops_per_token: int
    flops: int
    params: int
    params_nonembedding: int
    upper_bound: bool = False  # ends by a trigger: these are its latest values
    # the growth event's own training before this stage (a LiGO phase): batches drawn, tokens, FLOPs
    growth_steps: int = 0
    growth_tokens: int = 0
    growth_flops: int = 0

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "model": describe_config(self.config),
                "batch_size": self.batch_size, "steps": self.steps, "tokens": self.tokens,
                "flops_per_token": self.flops_per_token, "flops": self.flops, "params": self.params,
                "params_nonembedding": self.params_nonembedding, "upper_bound": self.upper_bound,
                "growth_steps": self.growth_steps, "growth_tokens": self.growth_tokens,
                "growth_flops": self.growth_flops}


@dataclass
class PlanAccount:
    """Planned accounting of a whole plan (the trigger stage of an ``adaptive`` plan at its latest)."""

    plan_name: str
    budget_mode: str
    budget: float  # FLOPs or tokens, per budget_mode
    tokens_per_step: int
    stages: list[StageAccount]

    @property
    def total_steps(self) -> int:
        return sum(s.steps + s.growth_steps for s in self.stages)

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens + s.growth_tokens for s in self.stages)

    @property
    def total_flops(self) -> int:
        return sum(s.flops + s.growth_flops for s in self.stages)

    def table(self) -> list[str]:
        """Aligned text lines: one row per stage and a total."""
        header = f"{'stage':<14} {'model':<44} {'params':>10} {'non-emb':>10} {'steps':>7} {'tokens':>12} " \
                 f"{'FLOPs/tok':>11} {'FLOPs':>10}"
        rows = [header, "-" * len(header)]
        for s in self.stages:
            mark = " (latest; trigger)" if s.upper_bound else ""
            if s.growth_steps or s.growth_flops:
                rows.append(f"{'  growth phase':<14} {'operator training (LiGO)':<44} {'':>10} {'':>10} "
                            f"{s.growth_steps:>7,} {s.growth_tokens:>12,} {'':>11} {s.growth_flops:>10.4g}")
            rows.append(f"{s.name[:14]:<14} {describe_config(s.config):<44} {s.params:>10,} "
                        f"{s.params_nonembedding:>10,} {s.steps:>7,} {s.tokens:>12,} {s.flops_per_token:>11.4g} "
                        f"{s.flops:>10.4g}{mark}")
        rows.append(f"{'total':<14} {'':<44} {'':>10} {'':>10} {self.total_steps:>7,} {self.total_tokens:>12,} "
                    f"{'':>11} {self.total_flops:>10.4g}")
        unit = "FLOPs" if self.budget_mode == "flops" else "tokens"
        rows.append(f"budget: {self.budget:.4g} {unit} (budget_mode={self.budget_mode}); "
                    f"{self.tokens_per_step:,} tokens per step")
        return rows

    def to_dict(self) -> dict:
        return {"plan": self.plan_name, "budget_mode": self.budget_mode, "budget": self.budget,
                "tokens_per_step": self.tokens_per_step, "total_steps": self.total_steps,
                "total_tokens": self.total_tokens, "total_flops": self.total_flops,
                "stages": [s.to_dict() for s in self.stages]}


def steps_for_tokens(tokens: int, tokens_per_step: int) -> int:
    """Whole steps closest to ``tokens`` (at least one)."""
    return max(1, round(tokens / tokens_per_step))


def steps_for_rest(budget: float, spent: float, cost_per_step: float) -> int:
    """Whole steps of the last stage that bring the spent amount closest to the budget (>= 1)."""
    return max(1, round((budget - spent) / cost_per_step))


def account_plan(plan: GrowthPlan, tokens_per_step: int) -> PlanAccount:
    """Steps, tokens and FLOPs of every stage of ``plan`` at ``tokens_per_step`` tokens per step.

    Stage token counts are rounded to whole steps; the last stage takes the steps that bring the
    total closest to the budget. A trigger stage is accounted at its latest end (``max_fraction``).
    """
    plan.validate(flops_per_token)
    require(isinstance(tokens_per_step, int) and tokens_per_step > 0,
            f"tokens_per_step={tokens_per_step!r} must be a positive integer")
    budget = plan.budget_amount(flops_per_token)
    stages: list[StageAccount] = []
    spent = 0.0
    for i, stage in enumerate(plan.stages):
        fpt = flops_per_token(stage.model)
        phase = None
        if stage.growth is not None and stage.growth.method == "ligo":  # trains before the stage's own steps
            phase = ligo_phase_cost(plan.stages[i - 1].model, stage.model, stage.growth.options, tokens_per_step)
            spent += phase.flops if plan.budget_mode == "flops" else phase.tokens
        unit_cost = fpt * tokens_per_step if plan.budget_mode == "flops" else tokens_per_step
        last = i == len(plan.stages) - 1
        if stage.trigger is not None:
            steps = max(1, math.floor(stage.trigger.max_fraction * budget / unit_cost))
        elif stage.tokens is not None and not (last and plan.budget_tokens is not None):
            steps = steps_for_tokens(stage.tokens, tokens_per_step)
        else:
            steps = steps_for_rest(budget, spent, unit_cost)
        spent += steps * unit_cost
        params, non_embedding = param_counts(stage.model)
        stages.append(StageAccount(i, stage.label(i), stage.model, stage_batch_size(stage.model, tokens_per_step),
                                   steps, steps * tokens_per_step, fpt, steps * tokens_per_step * fpt, params,
                                   non_embedding, upper_bound=stage.trigger is not None))
        if phase is not None:
            stages[-1].growth_steps, stages[-1].growth_tokens, stages[-1].growth_flops = \
                phase.steps, phase.tokens, phase.flops
    return PlanAccount(plan.name, plan.budget_mode, budget, tokens_per_step, stages)
