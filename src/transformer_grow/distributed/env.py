"""Process-group setup for ``torchrun``: ranks, devices, backends, barriers and the per-rank data view.

``torchrun --nproc_per_node N ...`` starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`init_distributed` reads them, picks the device of this
process (``cuda:LOCAL_RANK`` on CUDA, the CPU otherwise) and the backend that goes with it (NCCL on
CUDA, gloo on the CPU), and joins the default process group. :func:`shutdown_distributed` waits at a
barrier for every rank before destroying the group, so that no rank tears down communication while
another is still using it.

>>> with distributed_session(device="auto") as env:      # under torchrun
...     trainer = Trainer(config, train_config, data, parallel=DataParallel("ddp", env))
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from transformer_grow.errors import ConfigError, require

BACKEND_FOR_DEVICE = {"cpu": "gloo", "cuda": "nccl"}
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job: its rank, the number of ranks, its device and backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0 writes metrics, checkpoints and console output."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank reaches this point."""
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def all_reduce_mean(self, values: Sequence[float]) -> list[float]:
        """The mean over ranks of each of ``values`` (computed in float64), on every rank."""
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return (tensor / self.world_size).tolist()

    @classmethod
    def current(cls) -> DistEnv:
        """The environment of the already initialised default process group."""
        require(dist.is_available() and dist.is_initialized(),
                "no torch.distributed process group is initialised: launch with torchrun and call "
                "init_distributed() (or use distributed_session()) before building a distributed trainer")
        backend = str(dist.get_backend())
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        if backend == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        return cls(rank, world_size, local_rank, device, backend)


def torchrun_ranks(environ: dict[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the variables torchrun sets; :class:`ConfigError` if absent."""
    environ = os.environ if environ is None else environ
    missing = [name for name in TORCHRUN_VARIABLES if name not in environ]
    require(not missing,
            f"distributed training needs the torchrun environment variables {', '.join(TORCHRUN_VARIABLES)} "
            f"(missing: {', '.join(missing)}); launch with: torchrun --nproc_per_node N -m "
            "transformer_grow.cli.main train --strategy ddp ...")
    values = {}
    for name in TORCHRUN_VARIABLES:
        try:
            values[name] = int(environ[name])
        except ValueError:
            raise ConfigError(f"{name}={environ[name]!r} is not an integer") from None
    rank, world_size, local_rank = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    require(world_size >= 1, f"WORLD_SIZE={world_size} must be >= 1")
    require(0 <= rank < world_size, f"RANK={rank} must lie in [0, {world_size - 1}] for WORLD_SIZE={world_size}")
    require(local_rank >= 0, f"LOCAL_RANK={local_rank} must be >= 0")
    return rank, world_size, local_rank


def resolve_dist_device(name: str, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank``: ``cuda:LOCAL_RANK`` or the CPU.

    ``"auto"`` takes CUDA when torch sees a GPU. MPS has no torch.distributed backend here.
    """
    allowed = ("auto", "cpu", "cuda")
    require(name in allowed, f"device={name!r} is not allowed for distributed training; choose one of "
            f"{', '.join(map(repr, allowed))}")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    require(torch.cuda.is_available(), "device='cuda' is not available on this machine (no CUDA GPU visible to "
            "torch); choose 'auto' or 'cpu'")
    count = torch.cuda.device_count()
    require(local_rank < count, f"LOCAL_RANK={local_rank} has no GPU: torch sees {count} GPU(s) on this node; "
            f"start at most {count} processes per node (torchrun --nproc_per_node {count})")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistEnv:
    """Join the default process group from torchrun's environment variables and return this rank's env.

    The backend follows the device: NCCL for ``cuda:LOCAL_RANK`` (also made the current CUDA
    device), gloo for the CPU. If the group is already initialised (e.g. by a launcher), it is
    checked against the environment and reused.
    """
    rank, world_size, local_rank = torchrun_ranks()
    target = resolve_dist_device(device, local_rank)
    backend = BACKEND_FOR_DEVICE[target.type]
    require(dist.is_available(), "this torch build has no torch.distributed support")
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if dist.is_initialized():
        have = str(dist.get_backend())
        require(have == backend, f"the process group uses backend {have!r}, but device {str(target)!r} needs "
                f"{backend!r}; initialise it with {backend!r} or choose the matching device")
        require((dist.get_rank(), dist.get_world_size()) == (rank, world_size),
                f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, the environment says "
                f"RANK={rank} of WORLD_SIZE={world_size}")
    else:
        kwargs: dict[str, Any] = {"device_id": target} if target.type == "cuda" else {}
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s),
                                **kwargs)
    return DistEnv(rank, world_size, local_rank, target, backend)


def shutdown_distributed(env: DistEnv | None = None, wait: bool = True) -> None:
    """Barrier (unless ``wait=False``, e.g. after an error on this rank), then destroy the process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        (env or DistEnv.current()).barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistEnv]:
    """``init_distributed`` on entry; on a normal exit a barrier, then the group is destroyed.

    On an exception the group is destroyed without the barrier (the other ranks may never reach
    it); torchrun then stops the remaining processes. A session entered while a group already
    exists reuses that group and leaves it to its owner (re-creating the default group in the same
    processes is not reliable: stale rendezvous keys can make a rank connect to the old group).
    """
    owner = not (dist.is_available() and dist.is_initialized())
    env = init_distributed(device, timeout_s)
    try:
        yield env
    except BaseException:
        if owner:
            shutdown_distributed(env, wait=False)
        raise
    if owner:
        shutdown_distributed(env)


@contextlib.contextmanager
def main_rank_first(env: DistEnv | None) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. tokenising into a shared cache), then the others do.
    With ``env=None`` (one process) the block just runs."""
    if env is not None and not env.is_main:
        env.barrier()
    yield
    if env is not None and env.is_main:
        env.barrier()


def check_batch_split(batch_size: int, grad_accum: int, world_size: int) -> None:
    """Every rank must take the same share of the global batch, split into equal micro-batches."""
    require(batch_size % (world_size * grad_accum) == 0,
            f"batch_size={batch_size} is not divisible by world_size * grad_accum = {world_size} * {grad_accum}; "
            f"every rank takes batch_size / world_size sequences in grad_accum equal micro-batches: choose a "
            f"batch size that is a multiple of {world_size * grad_accum}")


class RankData:
    """A view of token data that hands this rank its contiguous slice of every global batch.

    ``batch(step, batch_size, seq_len, seed)`` is the data's ``batch`` with this view's ``rank`` and
    ``world_size``: all ranks together see exactly the single-process batch of ``batch_size``
    sequences. Everything else (``val_windows``, ``vocab_size``, ``fingerprint``...) is the data's own.
    """

    def __init__(self, data: Any, rank: int, world_size: int):
        require(isinstance(world_size, int) and world_size >= 1, f"world_size={world_size!r} must be >= 1")
        require(isinstance(rank, int) and 0 <= rank < world_size,
                f"rank={rank!r} must lie in [0, {world_size - 1}] for world_size={world_size}")
        self.data, self.rank, self.world_size = data, rank, world_size

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.batch(step, batch_size, seq_len, seed, rank=self.rank, world_size=self.world_size)

    def __getattr__(self, name: str) -> Any:
        if name == "data":  # not yet set (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.data, name)
