"""Trained tiny models for the growth tests (imported by tests/test_grow_*.py).

Exactness must hold on *trained* weights, not just the init (init weights are small and symmetric
enough to hide mistakes). Each covering config is a 4-layer model trained for a few hundred AdamW
steps on the bytes of a few stdlib ``.py`` files, once per test session (cached in memory).
The configs cover every architecture option pairwise: LayerNorm/RMSNorm, GELU/SwiGLU,
RoPE/learned positions, tied/untied head, with/without biases, MHA/GQA, plus an MoE model.
"""

from __future__ import annotations

import contextlib
import functools
import sysconfig
from pathlib import Path

import pytest
import torch

from transformer_grow.model import GPT, ModelConfig

SEQ = 32
BATCH = 8
STEPS = 200
STDLIB_FILES = ("textwrap.py", "dataclasses.py", "argparse.py")

BASE = {"n_layer": 4, "d_model": 32, "n_head": 4, "vocab_size": 256, "seq_len": SEQ}
CONFIGS: dict[str, dict] = {
    "ln_gelu_learned_tied_bias": {
        "norm": "layernorm",
        "mlp": "gelu",
        "pos": "learned",
        "tie_embeddings": True,
        "bias": True,
    },
    "rms_swiglu_rope_untied_gqa": {
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "pos": "rope",
        "tie_embeddings": False,
        "bias": False,
        "n_kv_head": 2,
    },
    "ln_swiglu_rope_tied_gqa": {
        "norm": "layernorm",
        "mlp": "swiglu",
        "pos": "rope",
        "tie_embeddings": True,
        "bias": False,
        "n_kv_head": 2,
    },
    "rms_gelu_learned_untied_bias": {
        "norm": "rmsnorm",
        "mlp": "gelu",
        "pos": "learned",
        "tie_embeddings": False,
        "bias": True,
    },
    "ln_gelu_rope_untied_bias_gqa": {
        "norm": "layernorm",
        "mlp": "gelu",
        "pos": "rope",
        "tie_embeddings": False,
        "bias": True,
        "n_kv_head": 2,
    },
    "rms_swiglu_learned_tied_bias": {
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "pos": "learned",
        "tie_embeddings": True,
        "bias": True,
    },
}
MOE_CONFIG = {
    "norm": "rmsnorm",
    "mlp": "swiglu",
    "pos": "rope",
    "tie_embeddings": True,
    "bias": False,
    "n_expert": 4,
    "moe_top_k": 2,
}
DENSE_NAMES = tuple(CONFIGS)
RMS_NAMES = tuple(n for n, c in CONFIGS.items() if c["norm"] == "rmsnorm")
LEARNED_NAMES = tuple(n for n, c in CONFIGS.items() if c["pos"] == "learned")


def config(name: str) -> ModelConfig:
    extra = MOE_CONFIG if name == "moe" else CONFIGS[name]
    return ModelConfig(**BASE, **extra)


@contextlib.contextmanager
def one_thread():
    """Tiny tensors: one intra-op thread avoids spin-waiting on the shared 2-core machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def single_thread():
    """Import into a test module to run each of its tests with one intra-op thread."""
    with one_thread():
        yield


@functools.lru_cache(maxsize=1)
def corpus() -> torch.Tensor:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join((stdlib / f).read_bytes() for f in STDLIB_FILES)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def batch(seed: int, size: int = BATCH, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the corpus: the first 90% for training, the rest held out."""
    data = corpus()
    cut = int(0.9 * len(data))
    lo, hi = (0, cut) if split == "train" else (cut, len(data))
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(lo, hi - SEQ - 1, (size,), generator=g)
    windows = torch.stack([data[s : s + SEQ + 1] for s in starts.tolist()])
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def probe() -> tuple[torch.Tensor, torch.Tensor]:
    """A held-out batch of real text for measuring preservation."""
    return batch(seed=99, size=8, split="val")


def train(model: torch.nn.Module, steps: int, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """AdamW steps on training windows; returns the losses (aux loss included for MoE)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    with one_thread():
        for step in range(steps):
            x, y = batch(seed * 100_000 + step)
            out = model(x, y)
            loss = out.loss + model.config.moe_aux_loss_coef * out.aux_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(out.loss.item())
    model.eval()
    return losses


@functools.cache
def _trained(name: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(config(name))
    train(model, STEPS)
    return model


def trained(name: str) -> GPT:
    """The trained model of covering config ``name`` (shared: tests must not modify it)."""
    return _trained(name)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, seeds=range(3)) -> float:
    model.eval()
    return sum(float(model(*batch(1000 + s, split="val")).loss) for s in seeds) / len(seeds)


@pytest.fixture(scope="session")
def trained_models() -> dict[str, GPT]:
    """All covering models, trained once per session."""
    return {name: trained(name) for name in (*DENSE_NAMES, "moe")}
