"""The adaptive expert count of a dynamic MoE run (DynMoE, Guo et al. 2025, sec. 3.3) and routing reports.

:class:`ExpertController`: every ``interval`` steps it reads what the top-any routers did over the
last ``window`` steps (:class:`~transformer_grow.model.dynmoe.RoutingCounts`) and, per layer,

- removes the experts that received no token in the window (never below ``min_experts``; an expert
  added at the previous decision is spared once, so that it has a window to start firing);
- adds one expert (up to ``max_experts``) when more than ``min_unrouted`` of the layer's tokens fired no
  expert: its routing vector is the mean direction of those tokens, as DynMoE initialises it; otherwise,
  when the busiest expert takes more than ``overload`` times the mean share of assignments, a copy of
  it (FFN weights with symmetry-breaking noise, a perturbed routing vector). Its FFN copies the busiest
  expert (``new_expert="copy"``) or is fresh. ``new_threshold="exact"`` sets its threshold above every
  score (:func:`~transformer_grow.operators.moe.exact_threshold`: the addition is exact and measured;
  the load-balancing loss then lowers the threshold), ``"init"`` to ``moe_threshold_init`` (it fires
  at once, as in DynMoE).

A change runs the growth path of every other event: the trainer's plain model and AdamW state
(``Trainer.unwrap``), the operator (:func:`~transformer_grow.operators.moe.adapt_experts`, its certificate
measured on the run's validation windows), the moments through the parameter map (kept experts carry
theirs, removed experts' are dropped, new ones start at zero), ``Trainer.replace_model``. The manager
records it like a growth event. :class:`RoutingMonitor` reports, for any MoE, the mean active experts
per token and the load balance between two readings.

The MoE growth plans that use it are in :mod:`~transformer_grow.plans.experts`:

* ``upcycle``: the target's dense counterpart (``n_expert=0``) trains on ``growth_fraction`` (default
  ``max_fraction``) of the budget's tokens, then is upcycled to the target MoE (sparse upcycling,
  Komatsuzaki et al. 2022; exact);
* ``dynamic``: ``upcycle`` into a top-any MoE, whose expert count then adapts (:class:`ExpertController`).

The plan-time FLOPs of a top-any MoE assume ``moe_top_k`` active experts per token; the trainer counts
the routers' actual choices (``GPT.routed_flops_per_token``), so a budget in FLOPs is held on measured FLOPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transformer_grow.operators.moe import NewExpert, adapt_experts
from transformer_grow.operators.optimizer import handoff
from transformer_grow.plans.experts import ExpertAdaptation


def moe_layers(model) -> dict[str, torch.nn.Module]:
    """``{block key: MoE layer}`` of a GPT (empty for a dense model)."""
    return {key: block.mlp for key, block in model.blocks.items() if hasattr(block.mlp, "counts")}


def window_stats(counts: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Routing report of one window: per layer and overall, the mean active experts per token, the
    share of tokens that fired no expert, and the load imbalance ``E * sum_e f_e^2`` (``f_e``: share of
    assignments of expert ``e``; 1 when perfectly balanced, ``E`` when one expert takes everything)."""
    layers = {}
    for key, c in counts.items():
        tokens = int(c["tokens"])
        if tokens == 0:
            continue
        load = c["expert_tokens"].double()
        share = load / max(1.0, float(load.sum()))
        layers[key] = {"experts": int(load.numel()), "active": float(c["assignments"]) / tokens,
                       "unrouted": float(c["fallback_tokens"]) / tokens,
                       "imbalance": float(load.numel() * (share**2).sum())}
    if not layers:
        return {}
    mean = {name: sum(v[name] for v in layers.values()) / len(layers) for name in ("active", "unrouted", "imbalance")}
    return {"mean_active_experts": mean["active"], "unrouted": mean["unrouted"], "load_imbalance": mean["imbalance"],
            "experts": [v["experts"] for v in layers.values()], "layers": layers}


class RoutingMonitor:
    """Routing statistics of a model between two readings (any MoE; training forwards only)."""

    def __init__(self):
        self._marks: dict[str, dict] = {}
        self._model_id: int | None = None

    def read(self, model) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
        """``(window_stats, raw counts per layer)`` since the previous reading (or since ``model`` was
        first read: a new model after growth starts its counters from zero)."""
        if id(model) != self._model_id:
            self._marks, self._model_id = {}, id(model)
        counts = {}
        for key, layer in moe_layers(model).items():
            if layer.counts is not None:
                counts[key] = layer.counts.since(self._marks.get(key))
                self._marks[key] = layer.counts.snapshot()
        return window_stats(counts), counts


class ExpertController:
    """Decides and applies expert additions and removals at fixed step intervals (module docstring)."""

    def __init__(self, settings: ExpertAdaptation, seed: int = 0):
        settings.validate()
        self.settings = settings
        self.seed = seed
        self._window: RoutingMonitor | None = None  # marked at the window's start
        self._spared: dict[str, set[int]] = {}  # experts added at the last decision

    def active(self, model) -> bool:
        return self.settings.interval > 0 and model.config.n_expert > 0 and model.config.moe_router == "topany"

    def steps_to_next(self, step: int) -> int:
        """Steps from ``step`` to the next window start or decision (>= 1)."""
        interval, window = self.settings.interval, self.settings.window
        if interval == 0:
            return 1 << 62
        base = (step // interval) * interval
        points = [base + interval - window, base + interval, base + 2 * interval - window]
        return min(p for p in points if p > step) - step

    def after_steps(self, trainer, probe=None) -> dict | None:
        """Call at every :meth:`steps_to_next` boundary: marks a window's start, or decides at an
        interval's end; returns the event of an applied change (else ``None``)."""
        s, step = self.settings, trainer.step
        if not self.active(trainer.model) or step == 0:
            return None
        decision = step % s.interval == 0
        if decision and self._window is not None:
            stats, counts = self._window.read(trainer.model)
            self._window = None
            event = self._decide_and_apply(trainer, stats, counts, probe)
        else:
            event = None  # a window's start, or a decision whose window was not seen (a resume)
        if (step + s.window) % s.interval == 0 or (decision and s.window == s.interval):
            self._window = RoutingMonitor()
            self._window.read(trainer.model)
        return event

    def _decide_and_apply(self, trainer, stats: dict, counts: dict, probe) -> dict | None:
        remove, add = self.decide(trainer.model, counts, trainer.step)
        if not remove and not add:
            self._spared = {}
            return None
        return self.apply(trainer, remove, add, stats, probe)

    def decide(self, model, counts: dict[str, dict[str, torch.Tensor]], step: int = 0
               ) -> tuple[dict[str, list[int]], dict[str, list[NewExpert]]]:
        """Per layer: experts to remove and the expert to add, from one window's raw routing ``counts``."""
        s = self.settings
        remove: dict[str, list[int]] = {}
        add: dict[str, list[NewExpert]] = {}
        generator = torch.Generator().manual_seed(self.seed + step)
        for key, layer in moe_layers(model).items():
            c = counts.get(key)
            if c is None or int(c["tokens"]) == 0:
                continue
            load, n = c["expert_tokens"].cpu(), layer.n_expert
            idle = [e for e in range(n) if int(load[e]) == 0 and e not in self._spared.get(key, set())]
            idle = idle[: max(0, n - s.min_experts)]
            if idle:
                remove[key] = idle
            if n - len(idle) >= s.max_experts:
                continue
            busiest = int(load.argmax())
            share = float(load[busiest]) / max(1, int(load.sum()))
            if float(c["fallback_tokens"]) / int(c["tokens"]) > s.min_unrouted:
                routing = F.normalize(c["fallback_sum"].float().cpu(), dim=0)  # the tokens that needed it
            elif n > 1 and share > s.overload / n:
                vector = layer.router.weight.detach()[busiest].float().cpu()
                routing = vector + torch.randn(vector.shape, generator=generator) * s.noise_std * float(vector.norm())
            else:
                continue
            copy = s.new_expert == "copy"
            add[key] = [NewExpert(copy_of=busiest if copy else None, routing=routing,
                                  threshold=None if s.new_threshold == "exact" else model.config.moe_threshold_init,
                                  noise_std=s.noise_std if copy else 0.0)]
        return remove, add

    def apply(self, trainer, remove, add, stats: dict, probe=None) -> dict:
        """Run the change on the trainer's model (unwrap -> operator -> moments -> replace_model)."""
        plain, state = trainer.unwrap()
        before = plain.config.experts_per_layer()
        try:
            result = adapt_experts(plain, remove, add, seed=self.seed + trainer.step, probe=probe)
            handed = handoff(result, state, "function")
        except BaseException:
            trainer.rewrap(plain, state)
            raise
        rewarmup = trainer.rewarmup  # an ongoing re-warmup after growth goes on
        trainer.replace_model(result.model, handed.optimizer_state)
        trainer.rewarmup = rewarmup
        keys = list(result.model.blocks.keys())
        after = result.model.config.experts_per_layer()
        self._spared = {key: set(range(after[i] - len(add.get(key, [])), after[i])) for i, key in enumerate(keys)
                        if add.get(key)}
        report = result.report
        changes = {key: {"removed": remove.get(key, []), "added": len(add.get(key, []))}
                   for key in keys if remove.get(key) or add.get(key)}
        return {"operator": report.method, "kind": report.kind, "max_abs_dlogits": report.max_abs_dlogits,
                "experts_before": before, "experts": after, "changes": changes, "routing": stats,
                "description": f"{report.method} ({report.kind}): experts per layer {before} -> {after}; "
                               f"|dlogits| {report.max_abs_dlogits:.2g} on the probe; window: "
                               f"{stats.get('mean_active_experts', 0):.2f} active experts/token, "
                               f"{stats.get('unrouted', 0):.1%} unrouted"}
