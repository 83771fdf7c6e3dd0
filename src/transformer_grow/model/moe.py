"""Top-k routed mixture-of-experts feed-forward layer.

Routing (Shazeer et al. 2017; Fedus et al. 2022, Switch Transformer): a linear router gives one logit
per expert, a softmax over *all* experts gives probabilities ``p``, and each token goes to the
``top_k`` experts with the largest ``p``. The chosen outputs are combined with weights

    w_j = p_j / sg(S),   S = sum_{i chosen} p_i,   sg = stop-gradient (``detach``).

Forward, ``w_j`` is the probability renormalised over the chosen experts, so the weights sum to one and
experts that are copies of one FFN return exactly that FFN's output: dense -> MoE upcycling
(Komatsuzaki et al. 2022) is function-preserving. Backward, ``dw_j = dp_j / S``: the router receives the
Switch Transformer gradient (output multiplied by the router probability, Fedus et al. 2022, eq. 2),
scaled by the constant 1/S. Plain renormalisation ``p_j / S`` would give ``dw = dp_j/S - p_j dS/S^2``,
which is *zero* for top-1 (``w = 1`` whatever the router says) and, after upcycling, zero for any k
(identical experts: ``sum_j w_j E(x) = E(x)``); so the router never learned from the LM loss. With the
stop-gradient, top-1 is ``p / sg(p)`` (value exactly 1, gradient ``dp / p``) and identical experts give
the router ``E(x) dS / S``: the LM loss moves the router from the first step.

``moe_router="topany"`` replaces the softmax top-k router by DynMoE's top-any gate
(:mod:`transformer_grow.model.dynmoe`): a variable number of experts per token, learned thresholds.

Dispatch is sparse and drops nothing: the (token, expert) assignments are sorted by expert and every
expert runs once on exactly its tokens (no capacity limit); no expert computes on tokens that were not
routed to it. A layer may hold its own number of experts (``moe_layer_experts``: a dynamic MoE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transformer_grow.model.config import ModelConfig
from transformer_grow.model.dynmoe import RoutingCounts, TopAnyRouter, balance_loss
from transformer_grow.model.layers import MLP

# The Switch Transformer balance loss (Fedus et al. 2022, eq. 4), shared by both routers.
load_balancing_loss = balance_loss


def dispatch(tokens: torch.Tensor, experts: nn.ModuleList, token_index: torch.Tensor, expert_index: torch.Tensor,
             weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``out[n] = sum over assignments (n, e, w) of w * expert_e(tokens[n])``, each expert run once on
    its tokens; returns ``(out, load)`` with ``load[e]`` the assignments of expert ``e``."""
    order = torch.argsort(expert_index, stable=True)
    load = torch.bincount(expert_index, minlength=len(experts))
    token_of = token_index[order]  # tokens sorted by the expert they go to
    weight_of = weight[order].to(tokens.dtype)
    out = torch.zeros_like(tokens)
    start = 0
    for expert, count in zip(experts, load.tolist()):
        if count:
            idx = token_of[start : start + count]
            y = expert(tokens.index_select(0, idx)) * weight_of[start : start + count, None]
            out.index_add_(0, idx, y)
        start += count
    return out, load


class MoE(nn.Module):
    """``n_expert`` :class:`MLP` experts behind a softmax top-k router or DynMoE's top-any gate.

    After every forward, ``aux_loss`` holds the auxiliary loss of that call (unscaled; the trainer
    multiplies it by ``moe_aux_loss_coef``), ``aux_terms`` its unweighted parts, and ``expert_load``
    the number of routing assignments each expert received (a detached diagnostic, e.g. to check a
    new expert is unused). Training forwards also add to ``counts`` (:class:`RoutingCounts`: measured
    active experts per token, window statistics of the dynamic expert count).
    """

    def __init__(self, config: ModelConfig, n_expert: int | None = None):
        super().__init__()
        self.n_expert = config.n_expert if n_expert is None else n_expert
        self.top_k = min(config.moe_top_k, self.n_expert)
        self.top_any = config.moe_router == "topany"
        if self.top_any:
            self.router = TopAnyRouter(config.d_model, self.n_expert, config.moe_temperature,
                                       config.moe_threshold_init, config.moe_diversity_weight,
                                       config.moe_sparsity_weight)
        else:
            self.router = nn.Linear(config.d_model, self.n_expert, bias=False)
        self.experts = nn.ModuleList([MLP(config) for _ in range(self.n_expert)])
        self.aux_loss = torch.zeros(())
        self.aux_terms: dict[str, torch.Tensor] = {}
        self.expert_load = torch.zeros(self.n_expert, dtype=torch.long)
        self.counts: RoutingCounts | None = None  # created on the first training forward, on its device

    def init_parameters(self, config: ModelConfig) -> None:
        """Router init (called by ``GPT.init_weights``): N(0, init_std) like the other linears, or
        DynMoE's orthogonal routing vectors and initial thresholds (top-any)."""
        if self.top_any:
            self.router.reset_parameters()
        else:
            nn.init.normal_(self.router.weight, 0.0, config.init_std)

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(token_index, expert_index, weight, fallback)`` assignments of ``tokens`` [N, d]; sets the aux loss."""
        if self.top_any:
            routing = self.router(tokens)
            self.aux_loss, self.aux_terms = routing.aux_loss, routing.terms
            return routing.token_index, routing.expert_index, routing.weight, routing.fallback
        probs = F.softmax(self.router(tokens).float(), dim=-1)  # [N, E], fp32 for a stable softmax
        top_probs, top_index = probs.topk(self.top_k, dim=-1)  # [N, k]
        # Renormalised over the chosen experts in value, Switch gradient through p (module docstring).
        combine = top_probs / top_probs.sum(dim=-1, keepdim=True).detach()
        self.aux_loss = load_balancing_loss(probs, top_index, self.n_expert)
        self.aux_terms = {"balance": self.aux_loss.detach()}
        token_index = torch.arange(tokens.shape[0], device=tokens.device).repeat_interleave(self.top_k)
        return token_index, top_index.reshape(-1), combine.reshape(-1), None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # [N, d]
        token_index, expert_index, weight, fallback = self.route(tokens)
        out, load = dispatch(tokens, self.experts, token_index, expert_index, weight)
        self.expert_load = load.detach()
        if self.training:
            if self.counts is None or self.counts.tokens.device != x.device:
                self.counts = RoutingCounts(self.n_expert, shape[-1], x.device)
            self.counts.add(tokens.detach(), self.expert_load, fallback)
        return out.reshape(shape)
