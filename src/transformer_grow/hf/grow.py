"""Grow a Hugging Face model: convert, grow with our operators, convert back, measure HF against HF.

``grow_hf(model, target, **grow_kwargs)`` runs :func:`~transformer_grow.operators.grow` on the converted
model and certifies the whole chain on one probe, in fp32 and eval mode: the conversion (HF source vs
our GPT), the growth (our report), the export (our grown GPT vs the grown HF model) and end to end
(HF source vs grown HF model, the number a user cares about). A declared-``exact`` growth whose
end-to-end max |dlogits| exceeds ``exact_tol`` raises :class:`GrowthCertificateError`, as in ``grow``; a
measurement that is not finite raises whatever ``exact_tol`` (NaN is never a certificate), and a source
model whose own logits are not finite is refused before anything is grown.

``save_grown(growth, out)`` writes ``save_pretrained`` safetensors plus ``growth_record.json`` (source,
operators, measured preservation), reloads the directory with ``AutoModelForCausalLM`` (BERT:
``AutoModelForMaskedLM``) and records that the reloaded model gives the logits that were measured.

The losses in the record are next-token cross-entropies on the probe for a causal LM; for a masked LM
(BERT, bidirectional) the cross-entropy of every position's own token on the unmasked probe (what the
MLM head predicts; the max |dlogits| is the certificate either way).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transformer_grow.errors import require
from transformer_grow.hf.convert import FamilyInfo, from_hf, hf_logits, loader_class, state_from_hf, state_to_hf, to_hf
from transformer_grow.io import atomic_replace_dir, atomic_write_json
from transformer_grow.model import ModelConfig
from transformer_grow.operators import grow, grow_optimizer_state
from transformer_grow.operators.build import probe_for
from transformer_grow.operators.report import EXACT_TOL, GrowthCertificateError, GrowthResult, fp32_context
from transformer_grow.optim_state import StateByName

RECORD_FILE = "growth_record.json"


@dataclass
class HFGrowth:
    """A grown ``transformers`` model, our growth result behind it, and its record."""

    model: nn.Module  # the grown transformers model
    result: GrowthResult  # our grown GPT, the parameter map and our report
    info: FamilyInfo  # the source family (to_hf of result.model gives ``model``)
    record: dict[str, Any]  # what growth_record.json holds
    probe: torch.Tensor  # the probe tokens [B, T] everything was measured on
    optimizer_state: StateByName | None = None  # AdamW state by the grown model's parameter names


def _fp32_copy(model: nn.Module) -> nn.Module:
    return model if next(model.parameters()).dtype == torch.float32 else copy.deepcopy(model).float()


@torch.no_grad()
def _gpt_logits(gpt: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    was_training = gpt.training
    gpt.eval()
    try:
        return _fp32_copy(gpt)(tokens.to(next(gpt.parameters()).device)).logits.float()
    finally:
        gpt.train(was_training)


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.to(logits.device).reshape(-1)))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b.to(a.device)).abs().max())


def source_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The source model's fp32 eval logits on the probe; :class:`ConfigError` unless every one is finite
    (a model whose function is NaN or inf somewhere has nothing to preserve or certify)."""
    with fp32_context({p.device.type for p in model.parameters()}):
        logits = hf_logits(_fp32_copy(model), tokens)
    require(bool(torch.isfinite(logits).all()),
            f"{type(model).__name__}: its logits on the probe are not finite (NaN or inf: weights too large for "
            "fp32?); nothing can be certified on it")
    return logits


def grow_hf(
    model: nn.Module,
    target: ModelConfig | dict | str,
    method: str | None = None,
    *,
    seq_len: int | None = None,
    probe=None,
    optimizer_state: StateByName | None = None,
    exact_tol: float | None = EXACT_TOL,
    source: str | None = None,
    **grow_kwargs,
) -> HFGrowth:
    """Grow the ``transformers`` model ``model`` to ``target`` (our config, a dict of our field names or a
    preset; see :func:`~transformer_grow.operators.grow`) and convert the result back.

    ``optimizer_state``: AdamW state keyed by ``model``'s parameter names
    (:func:`~transformer_grow.optim_state.optimizer_state_by_name`); it is mapped through the key map
    and the growth's parameter map and returned keyed by the grown model's names.
    ``source``: how to name the source model in the record (a path; default its class).
    """
    gpt, info = from_hf(model, seq_len)
    probe_batch = probe_for(gpt.config, probe)
    x, y = probe_batch.batch
    if not gpt.config.causal:  # a masked LM predicts each position's own token (module docstring)
        y = x
    devices = {p.device.type for p in model.parameters()}
    before = source_logits(model, x)
    with fp32_context(devices):
        conversion = _max_diff(before, _gpt_logits(gpt, x))
    if exact_tol is not None:
        require(conversion <= exact_tol, f"conversion of {info.hf_class}: max|dlogits|={conversion:.3g} exceeds "
                                         f"exact_tol={exact_tol:g}; the model uses math we do not reproduce")
    result = grow(gpt, target, method, probe=probe, exact_tol=exact_tol, **grow_kwargs)
    grown = to_hf(result.model, info)
    with fp32_context(devices):
        ours_after = _gpt_logits(result.model, x)
        after = hf_logits(_fp32_copy(grown), x)
    report = result.report
    preservation = {
        "kind": report.kind,
        "max_abs_dlogits": _max_diff(after, before),  # HF source vs grown HF model
        "loss_old": _loss(before, y),
        "loss_new": _loss(after, y),
        "conversion_max_abs_dlogits": conversion,  # HF source vs our GPT
        "growth_max_abs_dlogits": report.max_abs_dlogits,  # our GPT vs our grown GPT
        "export_max_abs_dlogits": _max_diff(after, ours_after),  # our grown GPT vs grown HF model
        "probe": dict(probe_batch.info),
        "tolerance": exact_tol,
    }
    preservation["dloss"] = preservation["loss_new"] - preservation["loss_old"]
    record = {
        "source": source or info.hf_class,
        "source_class": info.hf_class,
        "grown_class": type(grown).__name__,
        "family": info.family,
        "seq_len": info.seq_len,
        "operators": report.method,
        "preservation": preservation,
        "report": report.to_dict(),
        "notes": list(info.notes),
    }
    measured = {k: v for k, v in preservation.items() if isinstance(v, float) and k != "tolerance"}
    if not all(math.isfinite(v) for v in measured.values()):  # never a certificate, whatever exact_tol
        raise GrowthCertificateError(
            f"{report.method} on {info.hf_class}: the grown model is not finite ("
            + ", ".join(f"{k}={v:.3g}" for k, v in measured.items() if not math.isfinite(v)) + ")", report)
    if exact_tol is not None and report.kind == "exact" and preservation["max_abs_dlogits"] > exact_tol:
        raise GrowthCertificateError(
            f"{report.method} on {info.hf_class}: HF max|dlogits|={preservation['max_abs_dlogits']:.3g} exceeds "
            f"exact_tol={exact_tol:g} (fp32): declared 'exact' but the exported function changed", report)
    state = None
    if optimizer_state is not None:
        ours = state_from_hf(optimizer_state, gpt, info)
        state = state_to_hf(grow_optimizer_state(ours, result.param_map), result.model, info)
    return HFGrowth(grown, result, info, record, x, state)


def save_grown(growth: HFGrowth, out: str | Path) -> dict[str, Any]:
    """Write the grown model (``save_pretrained``: config + safetensors) and ``growth_record.json`` to
    ``out``; reload it with ``AutoModelForCausalLM`` (BERT: ``AutoModelForMaskedLM``; safetensors only)
    and record its max |dlogits| against the grown model on the probe (``reload_max_abs_dlogits``, 0 up
    to fp32 rounding; above ``EXACT_TOL`` or not finite raises :class:`GrowthCertificateError`). The
    directory is written beside ``out`` and moved into place once verified: ``out`` is never left
    half-written. Returns the record."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        growth.model.save_pretrained(tmp)
        reloaded = loader_class(growth.result.model.config, growth.info).from_pretrained(
            tmp, local_files_only=True, use_safetensors=True)
        with fp32_context({"cpu"} | {p.device.type for p in growth.model.parameters()}):
            expected = hf_logits(_fp32_copy(growth.model), growth.probe)
            got = hf_logits(_fp32_copy(reloaded), growth.probe)
        record = dict(growth.record)
        record["reload_class"] = type(reloaded).__name__
        record["reload_max_abs_dlogits"] = _max_diff(got, expected)
        if not record["reload_max_abs_dlogits"] <= EXACT_TOL:  # NaN fails too
            raise GrowthCertificateError(
                f"the saved {record['grown_class']} does not reload to the measured model: max|dlogits|="
                f"{record['reload_max_abs_dlogits']:.3g} > {EXACT_TOL:g}", growth.result.report)
        atomic_write_json(tmp / RECORD_FILE, record)
        atomic_replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record
