"""Converting a trained model into a cross-layer-shared one, choosing what to share from the model.

:func:`convert` takes a trained unshared GPT and a parameter budget and returns a shared model
(:mod:`transformer_grow.model.sharing`, ``share="custom"``) with a report of what it saved and what
it cost, measured before any retraining. Four steps:

1. **Layer similarity** :func:`layer_similarity`, an ``N x N`` matrix ``S``:
   ``weights``: the cosine of two layers' weight matrices of the shared parts, averaged over the
   matrices; ``outputs``: how interchangeable two layers are on a probe batch, the cosine between
   layer ``i``'s residual update and the update layer ``j``'s weights make on layer ``i``'s input
   (averaged over tokens, symmetrised).
2. **Groups** :func:`choose_groups`: ``M`` groups minimising the k-means objective of the layers'
   similarity, ``cost(g) = |g| - sum_{i,j in g} S_ij / |g|`` (for cosines this is exactly the sum of
   squared distances of the unit-normalised layers to their group mean). ``greedy``: agglomerative,
   always merging the two groups whose merge raises the cost least (Ward 1963), any layers may group;
   ``contiguous``: the optimal partition into ``M`` runs of consecutive layers by dynamic programming
   (Bellman 1961; the ``sequence`` pattern of Takase & Kiyono 2021 with learned boundaries).
   :func:`convert` takes the largest ``M`` whose stored parameters fit the budget.
3. **Shared weights**: the average of the group's weights, the least-squares choice for one tensor
   standing in for several (the group's centroid).
4. **Relaxed sharing** (Bae et al. 2024, sec. 3.2): each layer of a group gets a rank-``r`` delta
   ``B_l A_l`` from the truncated SVD of ``W_l - W_shared`` (``B = U_r sqrt(S_r)``,
   ``A = sqrt(S_r) V_r^T``), the best rank-``r`` approximation in Frobenius norm (Eckart & Young
   1936). At full rank (``r >= min(in, out)`` of every matrix) with per-layer norms the conversion is
   exact; at lower ranks the error falls as the rank grows.

The budget ``params`` is the fraction of the weight matrices of the model's layers (its blocks: what
sharing can store once; the embeddings are not shared) to keep, so ``0.5`` of an ``N``-layer model
admits ``N / 2`` shared blocks. LoRA factors count against it; norm weights and biases (``O(d_model)``
per layer, kept per layer for exactness) do not, or per-layer norms alone would rule out ``N / 2``.
The report gives the blocks' full counts, the non-embedding (Kaplan et al. 2020's ``N``) and totals.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transformer_grow.distributed.guard import ensure_unwrapped
from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.model.sharing import SHARE_PARTS, LoRALinear, canonical, layer_groups, shares
from transformer_grow.operators.adapter import GPTAdapter
from transformer_grow.operators.build import probe_for
from transformer_grow.operators.report import measure

SIMILARITIES = ("weights", "outputs")
GROUPINGS = ("greedy", "contiguous")


# --------------------------------------------------------------------------- similarity
def _probe_config(config: ModelConfig, parts: str, share_norms: bool) -> ModelConfig:
    """A config whose sharing settings say which block parameters are shared (for :func:`shares`)."""
    return config.replace(share="all", share_groups=1, share_parts=parts, share_norms=share_norms)


@torch.no_grad()
def layer_similarity(model: GPT, parts: str = "block", method: str = "weights", probe=None,
                     share_norms: bool = False) -> torch.Tensor:
    """``S`` [n_layer, n_layer] (float64, symmetric, diagonal 1) of ``model``'s layers (module docstring)."""
    choice("parts", parts, SHARE_PARTS)
    choice("similarity", method, SIMILARITIES)
    blocks = list(model.blocks.values())
    if method == "weights":
        cfg = _probe_config(model.config, parts, share_norms)
        names = [n for n, p in blocks[0].named_parameters() if p.dim() >= 2 and shares(cfg, n)]
        flat = [torch.stack([b.get_parameter(n).detach().double().flatten() for b in blocks]) for n in names]
        unit = [F.normalize(f, dim=1) for f in flat]
        return sum(u @ u.T for u in unit) / len(unit)
    require(model.config.norm_placement == "pre",
            "similarity='outputs' needs a pre-norm model; use similarity='weights'")
    x, _ = probe_for(model.config, probe).batch
    inputs: list[torch.Tensor] = []
    hooks = [b.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach())) for b in blocks]
    was_training = model.training
    model.eval()
    try:
        model(x.to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    n = len(blocks)
    sim = torch.ones(n, n, dtype=torch.float64)
    updates = [[_update(blocks[j], blocks[i] if not share_norms else blocks[j], inputs[i], model.rope, parts)
                for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(n):
            sim[i, j] = F.cosine_similarity(updates[i][i].double(), updates[i][j].double(), dim=-1).mean()
    return (sim + sim.T) / 2


def _update(weights: nn.Module, norms: nn.Module, x: torch.Tensor, rope, parts: str) -> torch.Tensor:
    """The residual update of a pre-norm block with ``weights``' sublayers and ``norms``' norms on ``x``
    (for ``ffn``: of the FFN sublayer on its own input, after ``norms``' layer's attention)."""
    if parts == "attn":
        return weights.attn(norms.attn_norm(x), rope)
    if parts == "ffn":
        h = x + norms.attn(norms.attn_norm(x), rope)
        return weights.mlp(norms.mlp_norm(h))
    h = x + weights.attn(norms.attn_norm(x), rope)
    return h + weights.mlp(norms.mlp_norm(h)) - x


# --------------------------------------------------------------------------- groups
def group_cost(sim: torch.Tensor, members: list[int]) -> float:
    """``|g| - sum_{i,j in g} S_ij / |g|``: the k-means objective of one group (module docstring)."""
    idx = torch.tensor(members)
    return len(members) - float(sim[idx][:, idx].sum()) / len(members)


def choose_groups(sim: torch.Tensor, n_groups: int, grouping: str = "greedy") -> list[int]:
    """The group of every layer (numbered in order of first use): ``n_groups`` groups of low cost."""
    choice("grouping", grouping, GROUPINGS)
    n = sim.shape[0]
    require(isinstance(n_groups, int) and 1 <= n_groups <= n,
            f"n_groups={n_groups!r} is not allowed; it must be an integer from 1 to n_layer={n}")
    if grouping == "contiguous":
        return _contiguous(sim, n_groups)
    groups = [[i] for i in range(n)]
    cost = [0.0] * n
    while len(groups) > n_groups:
        best = None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                merged = group_cost(sim, groups[a] + groups[b])
                rise = merged - cost[a] - cost[b]
                if best is None or rise < best[0] - 1e-12:
                    best = (rise, a, b, merged)
        _, a, b, merged = best
        groups[a], cost[a] = sorted(groups[a] + groups[b]), merged
        del groups[b], cost[b]
    assignment = [0] * n
    for g, members in enumerate(groups):
        for i in members:
            assignment[i] = g
    return canonical(assignment)


def _contiguous(sim: torch.Tensor, m: int) -> list[int]:
    """Optimal split of layers 0..n-1 into ``m`` runs: ``best[k][j]`` = least cost of the first ``j``
    layers in ``k`` runs = ``min_i best[k-1][i] + cost(i..j-1)``."""
    n = sim.shape[0]
    seg = [[group_cost(sim, list(range(i, j))) if j > i else 0.0 for j in range(n + 1)] for i in range(n + 1)]
    best = [[math.inf] * (n + 1) for _ in range(m + 1)]
    cut = [[0] * (n + 1) for _ in range(m + 1)]
    best[0][0] = 0.0
    for k in range(1, m + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                value = best[k - 1][i] + seg[i][j]
                if value < best[k][j] - 1e-12:
                    best[k][j], cut[k][j] = value, i
    bounds, j = [], n
    for k in range(m, 0, -1):
        bounds.append((cut[k][j], j))
        j = cut[k][j]
    assignment = [0] * n
    for g, (i, j) in enumerate(reversed(bounds)):
        assignment[i:j] = [g] * (j - i)
    return assignment


# --------------------------------------------------------------------------- conversion
def shared_config(config: ModelConfig, groups: list[int], parts: str = "block", share_norms: bool = False,
                  lora_rank: int = 0) -> ModelConfig:
    """``config`` sharing by the layer assignment ``groups`` (``share="custom"``)."""
    groups = canonical(list(groups))
    return config.replace(share="custom", share_layers=groups, share_groups=max(groups) + 1, share_parts=parts,
                          share_norms=share_norms, share_lora_rank=lora_rank)


def block_params(model: GPT) -> int:
    """Parameters the blocks store (each shared tensor once)."""
    return sum(p.numel() for p in model.blocks.parameters())


def budget_params(model: GPT) -> int:
    """What the budget counts: the blocks' stored weight matrices (LoRA factors included)."""
    return sum(p.numel() for p in model.blocks.parameters() if p.dim() >= 2)


def stored_params(config: ModelConfig) -> int:
    """:func:`budget_params` of a model of ``config`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        return budget_params(GPT(config))


@torch.no_grad()
def share_weights(model: GPT, config: ModelConfig) -> GPT:
    """A model of the shared ``config`` from ``model``: each shared tensor the average of its group's,
    each LoRA delta the truncated SVD of the layer's difference from it, everything else copied."""
    ref = next(model.parameters())
    new = GPT(config, block_keys=model.block_keys).to(device=ref.device, dtype=ref.dtype)
    old = dict(model.named_parameters())
    keys, groups = model.block_keys, layer_groups(config)
    members = {g: [keys[i] for i in range(len(keys)) if groups[i] == g] for g in set(groups)}
    group_of = dict(zip(keys, groups))
    for name, param in new.named_parameters():
        if name.endswith((".lora_A", ".lora_B")):
            continue
        _, key, suffix = name.split(".", 2) if name.startswith("blocks.") else (None, None, name)
        if key is not None and shares(config, suffix) and len(members[group_of[key]]) > 1:
            param.copy_(torch.stack([old[f"blocks.{k}.{suffix}"].double() for k in members[group_of[key]]]).mean(0))
        else:
            param.copy_(old[name])
    for name, module in new.named_modules():
        if isinstance(module, LoRALinear):
            delta = old[f"{name}.weight"].double() - module.weight.double()
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            r, root = module.rank, s[: module.rank].sqrt()
            module.lora_B.copy_(u[:, :r] * root)
            module.lora_A.copy_(root[:, None] * vh[:r])
    new.train(model.training)
    return new


@dataclass
class ShareReport:
    """What :func:`convert` chose and what it cost, measured before retraining."""

    groups: list[int]
    parts: str
    share_norms: bool
    lora_rank: int
    similarity: str
    grouping: str
    params_budget: float  # fraction of the blocks' parameters asked for
    blocks_before: int  # parameters of the blocks
    blocks_after: int
    params_before: int  # non-embedding
    params_after: int
    total_before: int  # with embeddings
    total_after: int
    similarity_matrix: list[list[float]] = field(default_factory=list)
    max_abs_dlogits: float | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    dloss: float | None = None
    probe: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def saved(self) -> float:
        """Share of the blocks' parameters saved."""
        return 1 - self.blocks_after / self.blocks_before

    def to_dict(self) -> dict[str, Any]:
        return {**copy.deepcopy(asdict(self)), "saved": self.saved, "n_groups": max(self.groups) + 1}

    def summary(self) -> str:
        measured = "" if self.loss_before is None else \
            f"; loss {self.loss_before:.4f} -> {self.loss_after:.4f} (dloss {self.dloss:+.4g}, " \
            f"max|dlogits| {self.max_abs_dlogits:.3g}) before retraining"
        return (f"shared {len(self.groups)} layers as {max(self.groups) + 1} blocks {self.groups} (parts={self.parts}, "
                f"lora_rank={self.lora_rank}): block params {self.blocks_before:,} -> {self.blocks_after:,} "
                f"({self.saved:.1%} saved; non-embedding {self.params_before:,} -> {self.params_after:,}, total "
                f"{self.total_before:,} -> {self.total_after:,}){measured}")


@dataclass
class ShareResult:
    model: GPT
    report: ShareReport


def convert(model: GPT, params: float = 0.5, *, n_groups: int | None = None, parts: str = "block",
            share_norms: bool = False, lora_rank: int = 0, similarity: str = "weights", grouping: str = "greedy",
            probe=None, measure_loss: bool = True) -> ShareResult:
    """Share ``model``'s layers within a budget of ``params`` x its blocks' parameters (or in
    exactly ``n_groups`` stored blocks); the input model is untouched. See the module docstring.

    ``probe``: real validation windows (``[batch, time + 1]``) or ``(x, y)``; ``None``: seeded random
    tokens at the full seq_len. It serves the ``outputs`` similarity and the measured loss change."""
    ensure_unwrapped(model)
    require(isinstance(model, GPT), f"conversion to a shared model works on our GPT, not {type(model).__name__}")
    config = model.config
    require(config.share == "none", f"the model is already shared (share={config.share!r}); unshare it first")
    require(config.n_expert == 0, "cross-layer sharing of mixture-of-experts models is not supported (n_expert > 0)")
    require(config.n_layer >= 2, f"sharing needs at least 2 layers; the model has n_layer={config.n_layer}")
    choice("parts", parts, SHARE_PARTS)
    choice("similarity", similarity, SIMILARITIES)
    choice("grouping", grouping, GROUPINGS)
    require(isinstance(lora_rank, int) and not isinstance(lora_rank, bool) and lora_rank >= 0,
            f"lora_rank={lora_rank!r} is not allowed; it must be an integer >= 0")
    require(n_groups is not None or (isinstance(params, (int, float)) and 0 < params < 1),
            f"params={params!r} is not allowed; give the fraction of the layers' parameters to keep, in (0, 1)")
    checked = probe_for(config, probe)  # validated before any work
    sim = layer_similarity(model, parts, similarity, checked.batch, share_norms)
    before = budget_params(model)
    if n_groups is not None:
        groups = choose_groups(sim, n_groups, grouping)
        target = shared_config(config, groups, parts, share_norms, lora_rank)
    else:
        budget = params * before
        target = None
        for m in range(config.n_layer - 1, 0, -1):
            groups = choose_groups(sim, m, grouping)
            candidate = shared_config(config, groups, parts, share_norms, lora_rank)
            if stored_params(candidate) <= budget:
                target = candidate
                break
        if target is None:
            least = stored_params(candidate)
            raise ConfigError(f"params={params:g} keeps {int(budget):,} of the layers' {before:,} matrix weights; the "
                              f"fewest with parts={parts}, lora_rank={lora_rank} is {least:,} ({least / before:.1%}): "
                              "allow more, share more parts (block) or lower the LoRA rank")
    shared = share_weights(model, target)
    report = ShareReport(groups=list(target.share_layers), parts=parts, share_norms=share_norms, lora_rank=lora_rank,
                         similarity=similarity, grouping=grouping,
                         params_budget=float(params) if n_groups is None else budget_params(shared) / before,
                         blocks_before=block_params(model), blocks_after=block_params(shared),
                         params_before=model.num_params(non_embedding=True),
                         params_after=shared.num_params(non_embedding=True),
                         total_before=model.num_params(non_embedding=False),
                         total_after=shared.num_params(non_embedding=False),
                         similarity_matrix=[[round(float(v), 6) for v in row] for row in sim],
                         probe=dict(checked.info))
    if share_norms:
        report.notes.append("norms shared (averaged): the conversion is not exact at any LoRA rank")
    if lora_rank:
        full = max(min(m.in_features, m.out_features) for m in shared.modules() if isinstance(m, LoRALinear)) \
            if any(isinstance(m, LoRALinear) for m in shared.modules()) else 0
        if full and lora_rank < full:
            report.notes.append(f"LoRA rank {lora_rank} < {full} (full rank of the largest delta): approximate")
    if measure_loss:
        numbers = measure(GPTAdapter(), model, shared, checked.batch)
        report.max_abs_dlogits, report.dloss = numbers["max_abs_dlogits"], numbers["dloss"]
        report.loss_before, report.loss_after = numbers["loss_old"], numbers["loss_new"]
    return ShareResult(shared, report)
