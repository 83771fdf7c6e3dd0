"""DistributedModel: owns the DDP / FSDP2 wrapper of one model, from wrap to unwrap.

Growth under distribution goes through this object and never through a live wrapper (DDP's
gradient reducer and FSDP's shards are fixed at wrap time; see :mod:`transformer_grow.distributed.guard`)::

    state = dm.full_optimizer_state(optimizer)   # AdamW moments by parameter name, full tensors
    plain = dm.unwrap()                          # a plain GPT with the full parameters, on every rank
    result = grow(plain, target, seed=seed)      # identical on every rank (same seed, same values)
    dm = DistributedModel(result.model, "fsdp", env)           # wrap anew
    optimizer = build_optimizer(dm.local, config, env.device)
    dm.load_optimizer_state(optimizer, grow_optimizer_state(state, result.param_map))

Strategies, both torch's own wrappers:

- ``"ddp"``: ``torch.nn.parallel.DistributedDataParallel``; every rank holds the full model, DDP
  broadcasts rank 0's parameters at construction and averages gradients in backward.
- ``"fsdp"``: FSDP2, ``torch.distributed.fsdp.fully_shard`` on every Transformer block and then on
  the root, over a 1-D device mesh of all ranks. Parameters become ``DTensor`` shards (dim 0).
  Before sharding, rank 0's values are broadcast (the FSDP2 counterpart of DDP's construction-time
  broadcast). The full model state is gathered with
  ``torch.distributed.checkpoint.state_dict.get_model_state_dict(full_state_dict=True)``.
  AdamW moments are gathered with ``DTensor.full_tensor()`` and sharded with
  ``distribute_tensor`` by parameter name: DCP's ``get/set_optimizer_state_dict`` would first
  initialise an optimizer without state by taking a zero-learning-rate step, which sets AdamW's step
  count to 1 and changes its bias correction.

:meth:`check_unchanged` (called before every training step) raises
:class:`~transformer_grow.distributed.guard.WrappedModelChanged` if parameters were added, removed
or replaced since wrapping, or if the wrapper was released.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from transformer_grow.distributed.env import DistEnv
from transformer_grow.distributed.guard import (
    ParameterSignature,
    WrappedModelChanged,
    ensure_unwrapped,
    mark_live,
    mark_released,
)
from transformer_grow.errors import choice, require
from transformer_grow.model import GPT
from transformer_grow.optim_state import STATE_KEYS, StateByName, load_optimizer_state_by_name, optimizer_state_by_name

STRATEGIES = ("ddp", "fsdp")
WRAPPER_NAMES = {"ddp": "DistributedDataParallel", "fsdp": "FSDP2 (fully_shard)"}


def _is_dtensor(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def empty_gpt_like(model: GPT, device: torch.device) -> GPT:
    """A GPT with ``model``'s config and block keys on ``device``, built on the meta device (no init,
    no use of the global RNG); parameters are uninitialised, buffers are copied from ``model``."""
    with torch.device("meta"):
        plain = GPT(model.config, block_keys=model.block_keys)
    plain = plain.to_empty(device=device)
    with torch.no_grad():  # buffers (e.g. RoPE tables) are plain tensors on every rank, also under FSDP2
        for name, buffer in model.named_buffers():
            plain.get_buffer(name).copy_(buffer)
    return plain


class DistributedModel:
    """One model wrapped for data-parallel training with ``strategy`` (``"ddp"`` or ``"fsdp"``).

    Attributes:
        module: what the training step calls (the DDP wrapper, or the sharded model).
        local: the ``GPT`` the optimizer steps (DDP: the wrapped module; FSDP: the sharded model).
    """

    def __init__(self, model: GPT, strategy: str, env: DistEnv):
        choice("strategy", strategy, STRATEGIES)
        ensure_unwrapped(model, action="wrap")
        self.strategy, self.env = strategy, env
        self.wrapper = WRAPPER_NAMES[strategy]
        self.released = False
        model = model.to(env.device)
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # Buffers (RoPE tables) are constants: no per-step broadcast. MoE experts that get no
            # tokens in a step have no gradient: DDP must look for unused parameters then.
            self.module: nn.Module = DistributedDataParallel(
                model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                forward_sync_buffers=False, find_unused_parameters=bool(model.config.n_expert))
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            # fully_shard takes each block's parameters as its own; blocks that share tensors (cross-layer
            # sharing) would be sharded twice. DDP handles shared parameters; FSDP2 of them is not supported.
            require(model.config.share == "none", f"share={model.config.share!r}: FSDP2 shards every block's "
                    "own parameters and cannot shard tensors that several blocks share; use parallel='ddp', or "
                    "unshare the model first")
            self._broadcast_from_main(model)
            mesh = init_device_mesh(env.device.type, (env.world_size,))
            for block in model.blocks.values():
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            self.module = model
        self.local: GPT = model
        mark_live(model, self.wrapper)
        self._signature = ParameterSignature.of(model)

    @staticmethod
    def _broadcast_from_main(model: nn.Module) -> None:
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor.data, src=0)

    # ---------------------------------------------------------------- guard
    def check_unchanged(self) -> None:
        """Raise :class:`WrappedModelChanged` if the wrapper was released or the parameters changed."""
        if self.released:
            raise WrappedModelChanged(f"the {self.wrapper} wrapper was released (the model was unwrapped, e.g. "
                                      "for growth); wrap the grown or original model anew before training")
        if self.strategy == "fsdp":
            self.module.reshard()  # e.g. after a no-grad forward, the root's parameters can still be unsharded
        self._signature.check(self.local, self.wrapper)

    # ----------------------------------------------------------- full state
    def full_model_state(self, main_only: bool = False) -> dict[str, torch.Tensor]:
        """The full (unsharded) model state dict.

        ``main_only``: CPU copies on rank 0 and ``{}`` on the other ranks (for checkpoints);
        otherwise the full tensors on every rank, on this rank's device (for growth). A collective
        under FSDP: every rank must call it.
        """
        self._require_live()
        if self.strategy == "ddp":
            if main_only and not self.env.is_main:
                return {}
            return {k: (v.detach().cpu().clone() if main_only else v.detach())
                    for k, v in self.local.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=main_only)
        return get_model_state_dict(self.module, options=options)

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer, main_only: bool = False) -> StateByName:
        """AdamW state by parameter name with full tensors (see :func:`optimizer_state_by_name`).

        ``main_only``: CPU copies on rank 0 and ``{}`` elsewhere; otherwise full tensors on every
        rank. A collective under FSDP (the moments are all-gathered in parameter order).
        """
        self._require_live()
        if self.strategy == "ddp" and main_only and not self.env.is_main:
            return {}  # no collective under DDP: the other ranks need not copy anything

        def full_copy(value: torch.Tensor) -> torch.Tensor:
            if _is_dtensor(value):
                value = value.full_tensor()  # all-gather: every rank takes part
            return value.cpu().clone() if main_only else value.clone()

        state = optimizer_state_by_name(self.local, optimizer, copy=full_copy)
        if main_only and not self.env.is_main:
            return {}
        return state

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: StateByName) -> None:
        """Install AdamW state by name (full tensors, identical on every rank) into ``optimizer``.

        DDP: as :func:`load_optimizer_state_by_name`. FSDP: each moment is sharded like its
        parameter with ``distribute_tensor`` (a collective, in parameter order).
        """
        self._require_live()
        if self.strategy == "ddp":
            load_optimizer_state_by_name(self.local, optimizer, state)
            return
        from torch.distributed.tensor import distribute_tensor

        params = dict(self.local.named_parameters())
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise ValueError(f"optimizer state names {unknown[0]!r}, which is not a parameter of the model")
        managed = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        for name, param in params.items():
            entry = state.get(name)
            if entry is None:
                continue
            if id(param) not in managed:
                raise ValueError(f"parameter {name!r} is not managed by this optimizer")
            missing = [k for k in STATE_KEYS if k not in entry]
            if missing:
                raise ValueError(f"optimizer state of {name!r} lacks {missing}")
            moments = {}
            for key in ("exp_avg", "exp_avg_sq"):
                full = torch.as_tensor(entry[key]).detach()
                if tuple(full.shape) != tuple(param.shape):
                    raise ValueError(f"optimizer state {name}.{key} has shape {tuple(full.shape)}, but the "
                                     f"parameter has shape {tuple(param.shape)}")
                full = full.to(self.env.device, param.dtype)
                moments[key] = distribute_tensor(full, param.device_mesh, param.placements)
            group = managed[id(param)]
            step = torch.as_tensor(entry["step"]).detach().to(dtype=torch.float32).reshape(())
            on_device = group.get("fused") or group.get("capturable")
            optimizer.state[param] = {"step": (step.to(self.env.device) if on_device else step.cpu()).clone(),
                                      **moments}

    def shard_plain_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """FSDP: re-install state that was loaded as full plain tensors (by a by-name loader that does
        not know about DTensor, e.g. in ``Trainer.resume``) as shards. No-op for DDP."""
        if self.strategy != "fsdp":
            return
        plain = {}
        for name, param in self.local.named_parameters():
            entry = optimizer.state.get(param)
            if entry and "exp_avg" in entry and not _is_dtensor(entry["exp_avg"]):
                plain[name] = dict(entry)
                del optimizer.state[param]
        if plain:
            self.load_optimizer_state(optimizer, plain)

    # --------------------------------------------------------------- unwrap
    def unwrap(self) -> GPT:
        """End the wrapper's life and return a plain GPT with the full parameters on every rank.

        DDP: the wrapped module itself. FSDP: a new GPT loaded from the gathered full state (the
        sharded model stays sharded and is no longer used). Afterwards :meth:`check_unchanged`
        raises, so a training step cannot run on a released wrapper.
        """
        self._require_live()
        if self.strategy == "ddp":
            plain = self.local
        else:
            state = self.full_model_state()
            plain = empty_gpt_like(self.local, self.env.device)
            plain.load_state_dict(state)
            plain.train(self.local.training)
        self.release()
        return plain

    def release(self) -> None:
        """Mark the wrapper dead (idempotent); its model may then be grown or wrapped again (DDP)."""
        if not self.released:
            self.released = True
            mark_released(self.local)
            if self.strategy == "ddp":
                self.module = None  # drop the DDP reducer and its hooks

    def _require_live(self) -> None:
        if self.released:
            raise WrappedModelChanged(f"the {self.wrapper} wrapper was released; wrap the model anew")
