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

Dispatch is sparse: the (token, expert) assignments are sorted by expert and every expert runs once
on just its tokens; no expert computes on tokens that were not routed to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transformer_grow.model.config import ModelConfig
from transformer_grow.model.layers import MLP


def load_balancing_loss(probs: torch.Tensor, expert_index: torch.Tensor, n_expert: int) -> torch.Tensor:
    """Switch Transformer auxiliary loss (Fedus et al. 2022, eq. 4): ``n_expert * sum_i f_i * P_i``.

    ``probs`` [N, E] are the router probabilities of N tokens, ``expert_index`` [N, k] the chosen
    experts. ``f_i`` is the fraction of the N*k routing assignments that went to expert i (for k = 1
    the fraction of tokens, as in the paper), ``P_i`` the mean router probability of expert i. It is
    1 under perfectly uniform routing and grows as routing concentrates; only ``P`` carries gradient.
    """
    counts = torch.bincount(expert_index.reshape(-1), minlength=n_expert).to(probs.dtype)
    fraction = counts / expert_index.numel()
    mean_prob = probs.mean(dim=0)
    return n_expert * torch.sum(fraction * mean_prob)


class MoE(nn.Module):
    """``n_expert`` :class:`MLP` experts behind a softmax top-k router.

    After every forward, ``aux_loss`` holds the load-balancing loss of that call (unscaled; the
    trainer multiplies it by ``moe_aux_loss_coef``) and ``expert_load`` the number of routing
    assignments each expert received (a detached diagnostic, e.g. to check a new expert is unused).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_expert = config.n_expert
        self.top_k = config.moe_top_k
        self.router = nn.Linear(config.d_model, config.n_expert, bias=False)
        self.experts = nn.ModuleList([MLP(config) for _ in range(config.n_expert)])
        self.aux_loss = torch.zeros(())
        self.expert_load = torch.zeros(config.n_expert, dtype=torch.long)

    def init_parameters(self, config: ModelConfig) -> None:
        """Router init: N(0, init_std), like the other linears (called by ``GPT.init_weights``)."""
        nn.init.normal_(self.router.weight, 0.0, config.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # [N, d]
        probs = F.softmax(self.router(tokens).float(), dim=-1)  # [N, E], fp32 for a stable softmax
        top_probs, top_index = probs.topk(self.top_k, dim=-1)  # [N, k]
        # Renormalised over the chosen experts in value, Switch gradient through p (module docstring).
        combine = (top_probs / top_probs.sum(dim=-1, keepdim=True).detach()).to(x.dtype)

        flat_expert = top_index.reshape(-1)  # [N*k], assignment a = token a // k
        order = torch.argsort(flat_expert, stable=True)
        load = torch.bincount(flat_expert, minlength=self.n_expert)
        token_of = order // self.top_k  # tokens sorted by the expert they go to
        weight_of = combine.reshape(-1)[order]
        out = torch.zeros_like(tokens)
        start = 0
        for expert, count in zip(self.experts, load.tolist()):
            if count:
                idx = token_of[start : start + count]
                y = expert(tokens.index_select(0, idx)) * weight_of[start : start + count, None]
                out.index_add_(0, idx, y)
            start += count

        self.aux_loss = load_balancing_loss(probs, top_index, self.n_expert)
        self.expert_load = load.detach()
        return out.reshape(shape)
