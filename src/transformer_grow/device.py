"""Device selection (CUDA > MPS > CPU), bf16 autocast, and RNG state capture for exact resume."""

from __future__ import annotations

import base64
import contextlib
from typing import Any

import torch

from transformer_grow.errors import ConfigError


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA if available, else MPS, else CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not available on this machine (no CUDA GPU visible to torch); "
                          "choose 'auto' or 'cpu'")
    if name == "mps" and not mps_available():
        raise ConfigError("device='mps' is not available on this machine; choose 'auto' or 'cpu'")
    return torch.device(name)


def resolve_autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training, or ``None`` for plain fp32.

    ``"auto"``: bf16 on CUDA GPUs with bf16 support, fp32 elsewhere. ``"bf16"``: bf16 anywhere.
    On the CPU bf16 is an explicit opt-in because whether it helps depends on the CPU: with native
    bf16 instructions (AVX512-BF16, AMX) it is faster (measured by ``benchmarks/throughput.py --models
    ours-llama,ours-llama-bf16``: 1.65x the fp32 tokens/s on this project's AVX512-BF16 CPU, one
    thread); without them bf16 matmuls lack hardware support and may be slower than fp32 (not
    measured here). Measure on your CPU before opting in.
    """
    if dtype == "fp32":
        return None
    if dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("dtype='bf16' is not supported by this CUDA GPU; choose 'fp32' or 'auto'")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A context manager running the forward pass in ``dtype`` autocast (or a no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _encode(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """Torch's global CPU (and CUDA) generator states, base64-encoded for JSON."""
    state: dict[str, Any] = {"torch_cpu": _encode(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = [_encode(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any] | None) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only where the GPUs are there)."""
    if not state:
        return
    torch.set_rng_state(_decode(state["torch_cpu"]))
    cuda_states = state.get("torch_cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_decode(s) for s in cuda_states])
