"""Top-k routed mixture-of-experts feed-forward layer.

Routing (Shazeer et al. 2017; Fedus et al. 2021, Switch Transformer): a linear router gives one logit
per expert, a softmax over *all* experts gives probabilities ``p``, each token goes to the ``top_k``
experts with the largest ``p``, and their outputs are combined with the chosen probabilities
**renormalised over the chosen k** (``w_j = p_j / sum_chosen p``). Because the combine weights sum to
one, experts that are copies of one FFN return exactly that FFN's output: dense -> MoE upcycling
(Komatsuzaki et al. 2022) is function-preserving.

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
    """Switch Transformer auxiliary loss (Fedus et al. 2021, eq. 4): ``n_expert * sum_i f_i * P_i``.

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
        combine = (top_probs / top_probs.sum(dim=-1, keepdim=True)).to(x.dtype)  # renormalised over chosen

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
