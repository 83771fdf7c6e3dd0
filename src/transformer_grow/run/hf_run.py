"""Hugging Face architectures in growth runs: as the target, as the starting model, and out again.

A run of an HF family trains our :class:`~transformer_grow.model.GPT` (the conversion is native,
:mod:`transformer_grow.hf`), so FLOP accounting, checkpoints (safetensors + JSON) and reports are the
ones of every run. The family is recorded in the run: the trainer checkpoint's driver state
``hf_family`` and ``result.json`` hold :class:`~transformer_grow.hf.FamilyInfo` as a dict, and
:func:`export_run` (``tgrow hf export RUN --out DIR``) writes the checkpointed model as
``save_pretrained`` output, reloads it with ``AutoModelForCausalLM`` (BERT: ``AutoModelForMaskedLM``)
and records that its logits equal ours.

``transformers`` is imported only when one of these functions runs: plain GPT runs do not need it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from transformer_grow.errors import ConfigError, require
from transformer_grow.io import DuplicateKeyError, atomic_write_json, load_json
from transformer_grow.model import GPT, ModelConfig

FAMILY_KEY = "hf_family"  # driver-state key and result.json field of the family record
EXPORT_RECORD = "export_record.json"
PROBE_SEED = 1234


def is_hf_model(obj: Any) -> bool:
    """Whether ``obj`` is a ``transformers`` model (not importing transformers to ask)."""
    return isinstance(obj, torch.nn.Module) and hasattr(obj, "config") and hasattr(obj.config, "model_type")


def is_hf_config(obj: Any) -> bool:
    """Whether ``obj`` is a ``transformers`` config object, or a dict of one (it names its model_type)."""
    if isinstance(obj, dict):
        return "model_type" in obj
    return hasattr(obj, "model_type") and hasattr(obj, "to_dict") and not isinstance(obj, torch.nn.Module)


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def read_hf_config(spec: Any) -> dict[str, Any]:
    """A config dict from a ``transformers`` config, a dict, inline JSON, a ``config.json`` file or a
    ``save_pretrained`` directory."""
    if isinstance(spec, dict):
        return dict(spec)
    if hasattr(spec, "to_dict"):
        return spec.to_dict()
    require(isinstance(spec, (str, Path)), f"an HF config must be a transformers config, a dict, JSON or a path; "
                                           f"got {type(spec).__name__}")
    text = str(spec).strip()
    if text.startswith("{"):
        try:
            return load_json(text)
        except (json.JSONDecodeError, DuplicateKeyError) as e:
            raise ConfigError(f"--hf-config inline JSON does not parse: {e}") from None
    path = Path(text)
    path = path / "config.json" if path.is_dir() else path
    require(path.is_file(), f"HF config {text!r} is neither inline JSON, a config.json file nor a directory holding "
                            "one")
    try:
        return load_json(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, DuplicateKeyError) as e:
        raise ConfigError(f"HF config {str(path)!r} is not JSON: {e}") from None


def hf_target(spec: Any, seq_len: int | None = None) -> tuple[ModelConfig, dict[str, Any]]:
    """Our :class:`ModelConfig` for the HF architecture ``spec`` (see :func:`read_hf_config`) and the
    family record; ``seq_len``: the context to train at (RoPE families; default as in ``from_hf``)."""
    import transformers

    from transformer_grow.hf import FAMILIES, FamilyInfo

    d = read_hf_config(spec)
    kind = d.get("model_type")
    by_type = {name: family for name, family in FAMILIES.items()}
    require(kind in by_type, f"HF model_type={kind!r} is not supported; choose one of {', '.join(map(repr, by_type))}")
    family = by_type[kind]
    arch = (d.get("architectures") or [family.hf_class])[0]
    require(arch == family.hf_class, f"HF architectures={arch!r} is not supported for model_type={kind!r}; "
                                     f"allowed: {family.hf_class!r}")
    fields = {k: v for k, v in d.items() if k != "model_type"}
    try:
        config = getattr(transformers, family.config_class)(**fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{family.config_class} refuses this config: {' '.join(str(e).split())}") from None
    ours = ModelConfig(**family.read_config(config, seq_len))
    info = FamilyInfo(family.name, family.hf_class, _json_safe(config.to_dict()), ours.seq_len)
    return ours, _json_safe(info.to_dict())


def gpt_from_hf(model: torch.nn.Module, seq_len: int | None = None) -> tuple[GPT, dict[str, Any]]:
    """Our fp32 GPT computing ``model``'s function, and its family record."""
    from transformer_grow.hf import from_hf

    gpt, info = from_hf(model, seq_len)
    return gpt.float(), _json_safe(info.to_dict())


def check_exportable(config: ModelConfig, family: dict[str, Any]) -> None:
    """:class:`ConfigError` unless a GPT of ``config`` can be exported to ``family`` (before any training)."""
    from transformer_grow.hf import FamilyInfo
    from transformer_grow.hf.convert import hf_config_for

    hf_config_for(config, FamilyInfo.from_dict(family))


def to_hf_model(gpt: GPT, family: dict[str, Any]) -> torch.nn.Module:
    """The ``transformers`` model of ``family`` computing ``gpt``'s function (eval mode, as loaded)."""
    from transformer_grow.hf import FamilyInfo, to_hf

    info = FamilyInfo.from_dict({**family, "seq_len": gpt.config.seq_len})
    return to_hf(gpt, info).eval()


def export_run(run: str | Path, out: str | Path, family: str | None = None) -> dict[str, Any]:
    """Write the model of the run (or checkpoint) ``run`` to ``out`` as ``save_pretrained`` output.

    The family is the run's record (``hf_family``), or ``family`` (a family name such as ``llama``, for
    runs of our own models: that family's ``transformers`` defaults fill what our config does not say).
    The directory is reloaded with ``AutoModelForCausalLM`` (BERT: ``AutoModelForMaskedLM``) and its fp32
    logits on a probe are compared with our model's; ``out/export_record.json`` records the result.
    Returns the record.
    """

    from transformer_grow.hf import FAMILIES, FamilyInfo, hf_logits, loader_class
    from transformer_grow.operators.report import EXACT_TOL, fp32_context
    from transformer_grow.train.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint_dir

    out = Path(out)
    require(not out.exists() or (out.is_dir() and not any(out.iterdir())),
            f"--out {str(out)!r} is not an empty directory; choose another")
    ckpt_dir = resolve_checkpoint_dir(run)
    ckpt = load_checkpoint(ckpt_dir)
    recorded = (ckpt.train_state.get("extra") or {}).get(FAMILY_KEY)
    if family is not None:
        require(family in FAMILIES, f"family={family!r} is not allowed; choose one of {', '.join(map(repr, FAMILIES))}")
        require(recorded is None or recorded["family"] == family or FAMILIES[recorded["family"]].moe_family == family,
                f"run {str(run)!r} is a {recorded and recorded['family']} run; family={family!r} does not fit it")
    if recorded is None:
        require(family is not None, f"run {str(run)!r} records no Hugging Face family (it trained one of our own "
                                    f"models); name one to export to: {', '.join(FAMILIES)}")
        recorded = FamilyInfo.new(family, ckpt.model_config).to_dict()
    gpt = model_from_checkpoint(ckpt).float().eval()
    hf = to_hf_model(gpt, recorded)
    hf.save_pretrained(out)
    reloaded = loader_class(gpt.config, FamilyInfo.from_dict({**recorded, "seq_len": gpt.config.seq_len})
                            ).from_pretrained(out, use_safetensors=True)
    probe = torch.randint(0, gpt.config.vocab_size, (2, gpt.config.seq_len),
                          generator=torch.Generator().manual_seed(PROBE_SEED))
    with fp32_context({"cpu"}), torch.no_grad():
        ours = gpt(probe).logits.float()
        theirs = hf_logits(reloaded, probe)
    diff = float((ours - theirs).abs().max())
    record = {"run": str(run), "checkpoint": str(ckpt_dir), "step": ckpt.train_state.get("step"),
              "family": recorded["family"], "hf_class": type(reloaded).__name__,
              "model": ckpt.model_config.to_dict(), "max_abs_dlogits": diff, "tolerance": EXACT_TOL,
              "probe": {"seed": PROBE_SEED, "shape": list(probe.shape)}}
    atomic_write_json(out / EXPORT_RECORD, record)
    require(diff <= EXACT_TOL, f"the exported {record['hf_class']} differs from the run's model: max|dlogits|="
                               f"{diff:.3g} > {EXACT_TOL:g}")
    return record
