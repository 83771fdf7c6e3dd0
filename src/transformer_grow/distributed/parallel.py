"""How a trainer's model is spread over processes: one object the trainer calls where training differs.

The :class:`~transformer_grow.train.Trainer` has one code path; its ``parallel`` decides the few
things that depend on the process layout (the way torchtitan hands a model to a ``parallelize_fn``
instead of subclassing its trainer):

=====================  ==============================  ===============================================
hook                   :class:`Parallel` (one process)  :class:`DataParallel` (DDP / FSDP2, torchrun)
=====================  ==============================  ===============================================
``device``             the config's device             this rank's device (``cuda:LOCAL_RANK`` or CPU)
``local_data``         the data                        :class:`RankData`: this rank's batch slice
``wrap``               move (and compile) the model    wrap it in a :class:`DistributedModel`
``check``              nothing                         the wrapped parameters are unchanged
``mean_over_ranks``    the values                      all-reduced means (the global batch's loss)
``unwrap``             the model, AdamW state by name  release the wrapper; full model and state
``gather_state``       CPU copies                      full state on rank 0 (FSDP: all-gathered)
``is_main``            true                            rank 0 only: it writes metrics and checkpoints
=====================  ==============================  ===============================================

Under :class:`DataParallel` every rank must make the same calls in the same order (train,
evaluate, save, grow): several hooks are collectives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from transformer_grow.device import resolve_device
from transformer_grow.distributed.env import DistEnv, RankData, check_batch_split
from transformer_grow.distributed.guard import WrappedModelChanged, ensure_unwrapped
from transformer_grow.distributed.wrap import STRATEGIES, DistributedModel, empty_gpt_like
from transformer_grow.errors import choice, require
from transformer_grow.model import GPT
from transformer_grow.optim_state import StateByName, load_optimizer_state_by_name, optimizer_state_by_name

ModelState = dict[str, torch.Tensor]
# A train config (transformer_grow.train.TrainConfig, a layer above): batch_size, grad_accum, device, replace().
TrainConfig = TypeVar("TrainConfig")


class Parallel:
    """One process: the model trains where the config says; every hook is the plain operation."""

    world_size = 1
    rank = 0  # this process's rank (seeds per-rank random streams, e.g. the masked-LM masks)

    @property
    def is_main(self) -> bool:
        """Whether this process writes metrics, checkpoints and console output."""
        return True

    @property
    def live(self) -> bool:
        """Whether the model handed to :meth:`wrap` can train (``False`` after :meth:`unwrap` releases a wrapper)."""
        return True

    def configure(self, train_config: TrainConfig) -> tuple[TrainConfig, torch.device]:
        """Check ``train_config`` against this layout (batch split, device); return the config to
        train with and the device this process trains on."""
        self.check_batch(train_config.batch_size, train_config.grad_accum)
        return train_config, resolve_device(train_config.device)

    def check_batch(self, batch_size: int, grad_accum: int) -> None:
        """Refuse a global batch that does not split into this layout's equal micro-batches."""
        check_batch_split(batch_size, grad_accum, self.world_size)

    def local_data(self, data: Any) -> Any:
        """The view of ``data`` whose ``batch`` gives this process its share of every global batch."""
        return data

    def wrap(self, model: GPT, device: torch.device, compile: bool) -> tuple[GPT, Callable[..., Any]]:
        """``(the model the optimizer steps, what the training step calls)`` for ``model``."""
        model = model.to(device)
        return model, torch.compile(model) if compile else model

    def check(self, model: GPT) -> None:
        """Before every step: refuse a model that cannot train as it is (nothing to check here)."""

    def start_step(self, micro_batches: int) -> None:
        """A training step of ``micro_batches`` forward/backward passes begins."""

    def mean_over_ranks(self, values: Sequence[float]) -> list[float]:
        """The mean over processes of each value (here: the values)."""
        return list(values)

    def unwrap(self, model: GPT, optimizer: torch.optim.Optimizer) -> tuple[GPT, StateByName]:
        """The plain full model and its AdamW state by name, e.g. to grow them."""
        return model, optimizer_state_by_name(model, optimizer)

    def load_optimizer_state(self, model: GPT, optimizer: torch.optim.Optimizer, state: StateByName) -> None:
        """Install AdamW state by name (full tensors) into ``optimizer`` over the wrapped ``model``."""
        load_optimizer_state_by_name(model, optimizer, state)

    def gather_state(self, model: GPT, optimizer: torch.optim.Optimizer) -> tuple[ModelState, StateByName] | None:
        """CPU copies of the full model state and AdamW state by name, for a checkpoint; ``None`` on
        processes that do not write checkpoints."""
        model_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        optimizer_state = {name: {k: v.cpu() for k, v in entry.items()}  # already copies
                           for name, entry in optimizer_state_by_name(model, optimizer).items()}
        return model_state, optimizer_state

    def barrier(self) -> None:
        """Wait for every process (here: nothing to wait for)."""


class DataParallel(Parallel):
    """Data parallelism over ``env.world_size`` ranks with torch's ``"ddp"`` or ``"fsdp"`` (FSDP2) wrapper.

    - **Data**: rank ``r`` takes its contiguous slice of every global batch, so the ranks together
      see exactly the single-process batch; ``batch_size`` is the global batch.
    - **Loss**: all-reduced, so every rank logs the global batch's mean.
    - **Checkpoints**: the full model and optimizer state in the single-process format (FSDP:
      gathered to rank 0), so a distributed run resumes with or without distribution.
    - **Growth**: never on a live wrapper. :meth:`unwrap` releases it and returns the plain full
      model (identical on every rank); the grown model is wrapped anew by :meth:`wrap`. Before every
      step :meth:`check` compares the wrapped parameters with those at wrap time
      (:class:`~transformer_grow.distributed.guard.WrappedModelChanged` if they changed).

    ``env`` defaults to :meth:`DistEnv.current` (the initialised process group).
    """

    def __init__(self, strategy: str, env: DistEnv | None = None):
        choice("strategy", strategy, STRATEGIES)
        self.strategy = strategy
        self.env = env or DistEnv.current()
        self.world_size, self.rank = self.env.world_size, self.env.rank
        self.wrapped: DistributedModel | None = None  # the current model's wrapper
        self._ddp_forward: _SyncOnLastMicroBatch | None = None

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def live(self) -> bool:
        return self.wrapped is not None and not self.wrapped.released

    def configure(self, train_config: TrainConfig) -> tuple[TrainConfig, torch.device]:
        """The process group decides the device: ``train_config.device`` must be ``"auto"`` or its type."""
        self.check_batch(train_config.batch_size, train_config.grad_accum)
        env = self.env
        require(train_config.device in ("auto", env.device.type),
                f"device={train_config.device!r} does not match the process group's device {str(env.device)!r} "
                f"(backend {env.backend}); use device='auto' or {env.device.type!r}")
        if resolve_device(train_config.device).type != env.device.type:  # e.g. "auto" on a GPU host, gloo job
            train_config = train_config.replace(device=env.device.type)
        return train_config, env.device

    def local_data(self, data: Any) -> Any:
        return data if isinstance(data, RankData) else RankData(data, self.env.rank, self.env.world_size)

    def wrap(self, model: GPT, device: torch.device, compile: bool) -> tuple[GPT, Callable[..., Any]]:
        """Wrap ``model`` (plain, identical on every rank), releasing the previous wrapper."""
        if self.wrapped is not None:
            self.wrapped.release()
        ensure_unwrapped(model, action="train (pass the plain model; the trainer wraps it)")
        self.wrapped = DistributedModel(model, self.strategy, self.env)
        local, self._ddp_forward = self.wrapped.local, None
        if self.strategy == "ddp":  # DDP's forward arms the gradient all-reduce: call the wrapper
            module = self.wrapped.module
            if compile:
                return local, torch.compile(module)
            self._ddp_forward = _SyncOnLastMicroBatch(module)
            return local, self._ddp_forward
        return local, torch.compile(local) if compile else local  # FSDP2 hooks live on the model itself

    def check(self, model: GPT) -> None:
        if self.wrapped is None or model is not self.wrapped.local:
            raise WrappedModelChanged("trainer.model was replaced without replace_model(); the new model is not "
                                      "wrapped and its gradients would not be synchronised")
        self.wrapped.check_unchanged()

    def start_step(self, micro_batches: int) -> None:
        if self._ddp_forward is not None:
            self._ddp_forward.start_step(micro_batches)

    def mean_over_ranks(self, values: Sequence[float]) -> list[float]:
        return self.env.all_reduce_mean(values)

    def unwrap(self, model: GPT, optimizer: torch.optim.Optimizer) -> tuple[GPT, StateByName]:
        """Release the wrapper; the plain full model and AdamW state by name on every rank (a collective).
        Training refuses to step until a model is wrapped again."""
        self.check(model)
        state = self.wrapped.full_optimizer_state(optimizer)
        return self.wrapped.unwrap(), state

    def load_optimizer_state(self, model: GPT, optimizer: torch.optim.Optimizer, state: StateByName) -> None:
        self.wrapped.load_optimizer_state(optimizer, state)  # FSDP: sharded like the parameters

    def gather_state(self, model: GPT, optimizer: torch.optim.Optimizer) -> tuple[ModelState, StateByName] | None:
        """The full state on rank 0, ``None`` elsewhere; every rank must call it (FSDP all-gathers)."""
        if self.strategy == "ddp":  # every replica is the full model: rank 0 copies its own
            return super().gather_state(model, optimizer) if self.env.is_main else None
        model_state = self.wrapped.full_model_state(main_only=True)
        optimizer_state = self.wrapped.full_optimizer_state(optimizer, main_only=True)
        if not self.env.is_main:
            return None
        plain = empty_gpt_like(model, torch.device("cpu"))  # checks the gathered keys and shapes
        plain.load_state_dict(model_state)
        return {k: v.detach().to("cpu", copy=True) for k, v in plain.state_dict().items()}, optimizer_state

    def barrier(self) -> None:
        self.env.barrier()


class _SyncOnLastMicroBatch:
    """Calls a DDP module so that only the last of a step's ``grad_accum`` micro-batches all-reduces
    gradients in its backward (what ``DistributedDataParallel.no_sync()`` does for the others)."""

    def __init__(self, ddp: torch.nn.Module):
        self.ddp, self.micro_batches, self.calls = ddp, 1, 0

    def start_step(self, micro_batches: int) -> None:
        self.micro_batches, self.calls = micro_batches, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.ddp.require_backward_grad_sync = self.calls >= self.micro_batches
        return self.ddp(*args, **kwargs)
