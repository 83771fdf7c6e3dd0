"""Guards against changing a model under a live DDP/FSDP wrapper.

A block appended to a model wrapped by ``DistributedDataParallel`` is invisible to DDP's gradient
reducer: its gradients are never averaged across ranks and the replicas silently drift apart. FSDP2
shards parameters at wrap time; a module added afterwards is not sharded at all. So:

- :func:`ensure_unwrapped` refuses a wrapped module (a ``DistributedDataParallel``, a module sharded
  by ``fully_shard``, a model with ``DTensor`` parameters, or a plain module that a live wrapper
  still owns) with a :class:`ConfigError` saying how to grow instead: unwrap, grow the plain model,
  wrap the grown model anew. Growth entry points call it before touching a model.
- :class:`ParameterSignature` records the parameter set at wrap time; :meth:`~ParameterSignature.check`
  before every step raises :class:`WrappedModelChanged` when parameters were added, removed or
  replaced since.

This module imports nothing from the rest of the package, so growth operators can import it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from torch import nn

from transformer_grow.errors import ConfigError

_LIVE_WRAPPERS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

HOW_TO_GROW = ("unwrap it first (Trainer.unwrap(), or grow_trainer() in transformer_grow.run.event), grow "
               "the plain model, and wrap the grown model anew: "
               "a block added to a live wrapper would train with unsynchronised gradients")


class WrappedModelChanged(RuntimeError):
    """The parameters of a model changed while a DDP/FSDP wrapper was live (or after it was released)."""


def mark_live(module: nn.Module, wrapper: str) -> None:
    """Record that ``module`` is owned by a live ``wrapper`` (e.g. ``"DistributedDataParallel"``)."""
    _LIVE_WRAPPERS[module] = wrapper


def mark_released(module: nn.Module) -> None:
    """Record that no live wrapper owns ``module`` any more."""
    _LIVE_WRAPPERS.pop(module, None)


def _is_dtensor(tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch build without torch.distributed
        return False
    return isinstance(tensor, DTensor)


def wrapper_name(model: nn.Module) -> str | None:
    """What wraps ``model`` for distributed training, or ``None`` for a plain module."""
    try:
        from torch.distributed.fsdp import FSDPModule
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:  # a torch build without torch.distributed: nothing can be wrapped
        return _LIVE_WRAPPERS.get(model)
    if isinstance(model, DistributedDataParallel):
        return "DistributedDataParallel"
    if any(isinstance(m, FSDPModule) for m in model.modules()):
        return "FSDP2 (fully_shard)"
    if any(_is_dtensor(p) for p in model.parameters()):
        return "DTensor-sharded parameters"
    live = _LIVE_WRAPPERS.get(model)
    return None if live is None else f"a live {live} wrapper"


def ensure_unwrapped(model: nn.Module, action: str = "grow") -> None:
    """Raise :class:`ConfigError` unless ``model`` is a plain module that no live wrapper owns."""
    wrapper = wrapper_name(model)
    if wrapper is not None:
        raise ConfigError(f"cannot {action} a model wrapped for distributed training ({type(model).__name__} "
                          f"under {wrapper}); {HOW_TO_GROW}")


@dataclass(frozen=True)
class ParameterSignature:
    """Names, object ids and shapes of a module's parameters at one moment."""

    entries: tuple[tuple[str, int, tuple[int, ...]], ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParameterSignature:
        return cls(tuple((name, id(p), tuple(p.shape)) for name, p in module.named_parameters()))

    def check(self, module: nn.Module, wrapper: str) -> None:
        """Raise :class:`WrappedModelChanged` if ``module``'s parameters differ from this signature."""
        now = ParameterSignature.of(module)
        if now == self:
            return
        before = {name: (ident, shape) for name, ident, shape in self.entries}
        after = {name: (ident, shape) for name, ident, shape in now.entries}
        added = [name for name in after if name not in before]  # in the model's parameter order
        removed = [name for name in before if name not in after]
        replaced = [name for name in after if name in before and before[name] != after[name]]

        def show(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")

        changes = "; ".join(f"{what}: {show(names)}" for what, names in
                            (("added", added), ("removed", removed), ("replaced", replaced)) if names)
        raise WrappedModelChanged(f"the parameters of the model changed while it was wrapped by {wrapper} "
                                  f"({changes}); {HOW_TO_GROW}")
