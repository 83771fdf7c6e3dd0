"""DynMoE top-any gating (Guo et al. 2025, "Dynamic Mixture of Experts: An Auto-Tuning Approach for
Efficient Transformer Models", ICLR 2025, sec. 3: top-any gating and its auxiliary losses).

Every expert ``e`` has a routing vector ``w_e`` and a learned threshold ``G_e``. A token ``x`` scores
each expert by cosine similarity and fires every expert whose sigmoid gate passes the threshold's:

    s_e = <x, w_e> / (|x| |w_e|)                        (in [-1, 1])
    a_e = sigmoid(s_e / t) - sigmoid(G_e / t)           (t: moe_temperature)
    g_e = step(a_e)  forward,   d g_e = d relu(a_e)  backward  (straight-through estimator)

so expert ``e`` fires exactly when ``s_e > G_e``; the sigmoid only shapes the gradient. The gradient
passes the step as if it were the identity on ``relu(a_e)``, as DynMoE's own gate does (a sign whose
backward returns its input gradient): fired experts pass the LM-loss gradient to their routing vector
and threshold, unfired ones (whose output was never computed) pass none. The ``k = sum_e g_e`` fired
experts are combined with equal weights ``g_e / sg(k)`` (value ``1/k``; ``sg``: stop-gradient).

No token is dropped: a token for which no expert fires goes, with weight 1, to its *best* expert, the
one closest to firing (largest margin ``s_e - G_e``); DynMoE routes such tokens to their top-1 expert
at evaluation and records them to create new experts during training (sec. 3.3). Using the margin
rather than the raw score is our choice: an expert whose threshold is above every score then never
receives a token, firing or fallback, so adding one is exact (:mod:`transformer_grow.operators.moe`). There is
no capacity factor: each expert computes exactly the tokens routed to it (DynMoE's adaptive capacity).

Auxiliary losses (one ``aux_loss`` per layer; the trainer scales it by ``moe_aux_loss_coef``):

- load balance, Switch form (Fedus et al. 2022, eq. 4) ``E * sum_e f_e P_e``: ``f_e`` the share of
  routing assignments that went to ``e`` (fallbacks included), ``P_e`` the mean of the router's soft
  preference ``softmax_e((s_e - G_e) / t)``. 1 under uniform routing. Its gradient through the
  softmax also lowers the threshold of an expert that receives nothing, which lets an expert added
  with an unreachable threshold start to fire;
- diversity (DynMoE's orthogonality loss on the routing vectors): ``|W_n W_n^T - I|_F`` with ``W_n``
  the row-normalised routing vectors; zero when they are orthonormal;
- sparsity on the number of active experts: ``mean_tokens(k) / E`` through the straight-through
  gates (raises the thresholds of fired experts).

``aux_loss = balance + moe_diversity_weight * diversity + moe_sparsity_weight * sparsity``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# An expert added with a threshold this far above every score (cosine <= 1) neither fires nor wins a
# fallback (operators/moe.py: exact_threshold); the margin also covers rounding in the cosine.
UNREACHABLE_MARGIN = 0.05


@dataclass
class Routing:
    """One layer's routing of ``N`` tokens: ``A`` (token, expert, weight) assignments."""

    token_index: torch.Tensor  # [A] long
    expert_index: torch.Tensor  # [A] long
    weight: torch.Tensor  # [A] combine weights (carry the router's gradient)
    fallback: torch.Tensor  # [N] bool: no expert fired; routed to its best expert
    aux_loss: torch.Tensor  # scalar
    terms: dict[str, torch.Tensor]  # the unweighted auxiliary terms (detached)


def straight_through_gate(margin_gate: torch.Tensor) -> torch.Tensor:
    """``step(a)`` forward and ``d relu(a)`` backward (DynMoE's gate): 1 where ``a > 0``, else 0."""
    positive = F.relu(margin_gate)
    return positive + ((margin_gate > 0).to(positive.dtype) - positive).detach()


def balance_loss(probs: torch.Tensor, expert_index: torch.Tensor, n_expert: int) -> torch.Tensor:
    """Switch Transformer load balancing (Fedus et al. 2022, eq. 4) ``n_expert * sum_e f_e * P_e`` over
    any number of assignments per token: ``f_e`` is the share of the assignments ``expert_index`` that
    went to ``e`` (no gradient), ``P_e`` the mean of ``probs[:, e]`` over tokens."""
    counts = torch.bincount(expert_index.reshape(-1), minlength=n_expert).to(probs.dtype)
    fraction = counts / max(1, expert_index.numel())
    return n_expert * torch.sum(fraction * probs.mean(dim=0))


def diversity_loss(weight: torch.Tensor) -> torch.Tensor:
    """``|W_n W_n^T - I|_F`` of the row-normalised routing vectors ``weight`` [E, d] (DynMoE)."""
    unit = F.normalize(weight.float(), dim=-1)
    gram = unit @ unit.T
    return torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype))


class TopAnyRouter(nn.Module):
    """Routing vectors ``weight`` [E, d] and thresholds ``threshold`` [E] of DynMoE's top-any gate."""

    def __init__(self, d_model: int, n_expert: int, temperature: float, threshold_init: float,
                 diversity_weight: float = 1.0, sparsity_weight: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_expert, d_model))
        self.threshold = nn.Parameter(torch.empty(n_expert))
        self.temperature = temperature
        self.threshold_init = threshold_init
        self.diversity_weight = diversity_weight
        self.sparsity_weight = sparsity_weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DynMoE's init: orthogonal routing vectors (orthonormal rows while ``E <= d``), thresholds at
        ``moe_threshold_init`` (0: an expert fires for tokens within 90 degrees of its vector)."""
        if self.weight.device.type != "meta":
            nn.init.orthogonal_(self.weight)
        self.threshold.fill_(self.threshold_init)

    def scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cosine similarity [N, E] of every token with every routing vector (fp32)."""
        return F.normalize(tokens.float(), dim=-1) @ F.normalize(self.weight.float(), dim=-1).T

    def forward(self, tokens: torch.Tensor) -> Routing:
        n_expert, t = self.weight.shape[0], self.temperature
        scores = self.scores(tokens)  # [N, E]
        threshold = self.threshold.float()
        gate = straight_through_gate(torch.sigmoid(scores / t) - torch.sigmoid(threshold / t))
        fired = gate.detach() > 0
        count = fired.sum(dim=-1)  # k per token
        combine = gate / count.clamp(min=1).unsqueeze(-1).to(gate.dtype)  # 1/k over the fired experts
        token_index, expert_index = fired.nonzero(as_tuple=True)
        weight = combine[token_index, expert_index]
        margin = scores - threshold
        fallback = count == 0
        if bool(fallback.any()):  # no token dropped: its best (closest to firing) expert, weight 1
            lost = fallback.nonzero().flatten()
            token_index = torch.cat([token_index, lost])
            expert_index = torch.cat([expert_index, margin[lost].argmax(dim=-1)])
            weight = torch.cat([weight, torch.ones(lost.numel(), device=weight.device, dtype=weight.dtype)])
        probs = F.softmax(margin / t, dim=-1)
        terms = {
            "balance": balance_loss(probs, expert_index, n_expert),
            "diversity": diversity_loss(self.weight),
            "sparsity": gate.sum(dim=-1).mean() / n_expert,
        }
        aux = terms["balance"] + self.diversity_weight * terms["diversity"] + self.sparsity_weight * terms["sparsity"]
        return Routing(token_index, expert_index, weight, fallback, aux, {k: v.detach() for k, v in terms.items()})


class RoutingCounts:
    """What a layer's router did over its training forwards (cumulative; readers keep their own marks).

    ``tokens``: tokens routed; ``assignments``: (token, expert) pairs computed (FLOPs are measured from
    them); ``expert_tokens`` [E]: assignments per expert; ``fallback_tokens``: tokens no expert fired
    for; ``fallback_sum`` [d]: the sum of their unit-normalised inputs (DynMoE initialises a new
    expert's routing vector from the tokens that needed it, sec. 3.3).
    """

    def __init__(self, n_expert: int, d_model: int, device: torch.device):
        self.tokens = torch.zeros((), dtype=torch.long, device=device)
        self.assignments = torch.zeros((), dtype=torch.long, device=device)
        self.expert_tokens = torch.zeros(n_expert, dtype=torch.long, device=device)
        self.fallback_tokens = torch.zeros((), dtype=torch.long, device=device)
        self.fallback_sum = torch.zeros(d_model, dtype=torch.float32, device=device)

    @torch.no_grad()
    def add(self, tokens: torch.Tensor, load: torch.Tensor, fallback: torch.Tensor | None) -> None:
        self.tokens += tokens.shape[0]
        self.assignments += load.sum()
        self.expert_tokens += load
        if fallback is not None:
            self.fallback_tokens += fallback.sum()
            self.fallback_sum += (F.normalize(tokens.float(), dim=-1) * fallback.unsqueeze(-1)).sum(dim=0)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of the counters (a reader's mark)."""
        return {name: value.clone() for name, value in vars(self).items()}

    def since(self, mark: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The counters minus ``mark`` (``None``: since the layer was built)."""
        now = self.snapshot()
        return now if mark is None else {name: now[name] - mark[name] for name in now}
