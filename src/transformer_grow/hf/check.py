"""What is exact for one Hugging Face model: run every operator with a small target and measure it.

:func:`check_operators` grows the model by each operator (one step past its current size: one more
block, one more head group, twice the FFN, ...), exports the result to the model's family and
measures max |dlogits| of the source HF model against the grown HF model on one probe. An operator
whose result the family cannot hold (heads growth on GPT-2, experts on a family with no MoE class)
is reported with the reason instead of a number. ``tgrow hf check PATH`` prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from transformer_grow.errors import ConfigError
from transformer_grow.hf.convert import from_hf
from transformer_grow.hf.grow import grow_hf, source_logits
from transformer_grow.model import ModelConfig
from transformer_grow.operators.build import probe_for
from transformer_grow.operators.report import GrowthCertificateError


@dataclass
class OperatorCheck:
    """One operator on one model: its declared kind and measured end-to-end preservation."""

    operator: str  # e.g. "depth=insert_zero"
    target: dict[str, Any]  # the sizes it grew to (our field names)
    kind: str | None = None  # declared: exact, approximate, none (None: not run)
    max_abs_dlogits: float | None = None  # HF source vs grown HF model, fp32
    dloss: float | None = None
    grown_class: str | None = None
    refused: str | None = None  # why the operator or its export does not apply
    failed: str | None = None  # the measurement certifies nothing (not finite): never reported as a kind

    def line(self) -> str:
        if self.failed:
            return f"{self.operator:<22} {'FAILED':<12} {self.failed}"
        if self.refused:
            return f"{self.operator:<22} {'-':<12} not available: {self.refused}"
        return (f"{self.operator:<22} {self.kind:<12} max|dlogits|={self.max_abs_dlogits:.3g} "
                f"dloss={self.dloss:+.4g} -> {self.grown_class}")


def operator_probes(cfg: ModelConfig) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(operator, target, grow options)`` for every operator, each a small step past ``cfg``."""
    L, group = cfg.n_layer, cfg.n_head // cfg.n_kv_head
    wider = {"d_model": cfg.d_model + group * cfg.head_dim}  # a whole kv group of heads more, where d_attn = d
    probes: list[tuple[str, dict, dict]] = []
    for method in ("stack", "duplicate", "interleave"):
        probes.append((f"depth={method}", {"n_layer": 2 * L}, {"depth": method}))
    for method in ("insert_zero", "insert_random"):
        probes.append((f"depth={method}", {"n_layer": L + 1}, {"depth": method}))
    probes.append(("depth=layer_map", {"n_layer": L + 1},
                   {"depth": "layer_map", "layer_sources": [*range(L), L - 1]}))
    probes.append(("width=clone", {"d_model": 2 * cfg.d_model}, {"width": "clone"}))
    for method in ("net2net", "zero_pad", "random_pad"):
        probes.append((f"width={method}", wider, {"width": method}))
    # Twice the heads (GQA group kept): LlamaConfig requires the head count to divide hidden_size.
    probes.append(("heads=zero", {"n_head": 2 * cfg.n_head, "n_kv_head": 2 * cfg.n_kv_head}, {"heads": "zero"}))
    for method in ("zero", "split"):
        probes.append((f"ffn={method}", {"d_ff": 2 * cfg.d_ff}, {"ffn": method}))
    if cfg.pos == "learned":
        for method in ("copy", "tile", "interpolate"):
            probes.append((f"seq={method}", {"seq_len": 2 * cfg.seq_len}, {"seq": method}))
    else:
        probes.append(("seq=rope", {"seq_len": 2 * cfg.seq_len}, {}))
        probes.append(("seq=rope_scale", {"seq_len": 2 * cfg.seq_len, "rope_scale": 2 * cfg.rope_scale}, {}))
    if cfg.n_expert:
        probes.append(("experts=add", {"n_expert": cfg.n_expert + 2}, {"experts": "add"}))
    else:
        probes.append(("experts=upcycle", {"n_expert": 4, "moe_top_k": 2}, {"experts": "upcycle"}))
    return probes


def check_operators(model: nn.Module, *, seq_len: int | None = None, probe=None, seed: int = 0) -> list[OperatorCheck]:
    """Run every operator of :func:`operator_probes` on ``model`` (untouched) and measure each."""
    gpt, _ = from_hf(model, seq_len)  # refuses an unsupported or non-finite model before any operator runs
    source_logits(model, probe_for(gpt.config, probe).batch[0])  # and one whose function is not finite
    results = []
    for operator, target, options in operator_probes(gpt.config):
        check = OperatorCheck(operator, target)
        try:
            growth = grow_hf(model, target, seq_len=seq_len, probe=probe, exact_tol=None, seed=seed, **options)
        except GrowthCertificateError as e:  # not finite: a failure, not a property of the family
            check.failed = " ".join(str(e).split())
        except ConfigError as e:
            check.refused = " ".join(str(e).split())
        else:
            p = growth.record["preservation"]
            check.kind, check.max_abs_dlogits, check.dloss = p["kind"], p["max_abs_dlogits"], p["dloss"]
            check.grown_class = growth.record["grown_class"]
        results.append(check)
    return results
