"""Multi-process training with torchrun + DistributedDataParallel, and its one-process twin.

`Dist.from_env()` reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK); with none set it is
a single process and every collective is the identity, so the engine has one code path.
Batches are split so that N processes with per-process batch B/N see exactly the global batch
of one process with batch B (see `GlobalBatches`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.distributed as dist


def _restart_store():
    """The store of a group that torchrun restarted (`--max-restarts`), its keys apart from the
    earlier attempts': torchrun shares its rendezvous TCPStore with the workers and keeps it across
    restarts, so a restarted process could read a dead peer's address left by the attempt before
    and fail to connect to it (gloo: "connectFullMesh failed ... Connection refused").  None where
    nothing was restarted or the workers do not use the agent's store: the default set-up."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    import datetime

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=datetime.timedelta(minutes=10))
    return dist.PrefixStore(f"pamc/restart-{restart}", store)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device_type: str) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            if device_type == "cuda":  # NCCL binds each process to the current device: set it first
                torch.cuda.set_device(local_rank)
            backend = "nccl" if device_type == "cuda" else "gloo"
            store = _restart_store()
            if store is None:
                dist.init_process_group(backend=backend)
            else:
                dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]), world_size=world)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather_cat(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate `x` (first dimension may differ between processes) in rank order."""
        if not self.enabled:
            return x
        size = torch.tensor([x.shape[0]], device=x.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        sizes = [int(s) for s in sizes]
        pad = x.new_zeros((max(sizes) - x.shape[0],) + tuple(x.shape[1:]))
        padded = torch.cat([x, pad]).contiguous()
        if x.requires_grad:  # regularisers over the global batch (EPR, ROLE) need the gradient back
            from torch.distributed.nn.functional import all_gather

            parts = list(all_gather(padded))
        else:
            parts = [torch.zeros_like(padded) for _ in range(self.world_size)]
            dist.all_gather(parts, padded)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of `x` over the processes (a new tensor; `x` is left as it is)."""
        x = x.clone()
        if self.enabled:
            dist.all_reduce(x)
        return x

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of parameters outside DDP (a loss's own, such as ROLE's label
        estimates) over the processes, as DDP does for the model's, so every process takes the
        same optimiser step.  A missing gradient counts as zero, so all processes take part."""
        if not self.enabled:
            return
        for p in params:
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad.div_(self.world_size)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard(self, n: int) -> torch.Tensor:
        """This process's contiguous share of 0..n-1 (for evaluation; gathered back in order)."""
        return torch.tensor_split(torch.arange(n), self.world_size)[self.rank]


_SYNC_BN_WARNED = False


def sync_batchnorm(model: torch.nn.Module, rt) -> torch.nn.Module:
    """The `sync_batchnorm` setting: BatchNorm layers -> `torch.nn.SyncBatchNorm` (statistics over
    the global batch), before DDP wraps the model, when training on CUDA with several processes.

    The converted layers share the parameters and buffers of the old ones, so an optimiser built
    before stays valid and checkpoints keep their names.  A single process has nothing to sync
    (unchanged); on CPU (gloo), where SyncBatchNorm does not run, the model is left as it is, with a
    warning once: each process then normalises with its own share of the batch."""
    global _SYNC_BN_WARNED
    if not rt.dist.enabled:
        return model
    if rt.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if rt.dist.is_main and not _SYNC_BN_WARNED:
        import warnings

        warnings.warn("sync_batchnorm is not applied: SyncBatchNorm needs CUDA; on CPU each process keeps BatchNorm "
                      "statistics of its own share of the batch (a GroupNorm backbone such as scene-cnn-gn avoids it)")
        _SYNC_BN_WARNED = True
    return model


class GlobalBatches:
    """Per-epoch seeded shuffling into global batches, each split across the processes.

    The order depends only on (seed, epoch), so a resumed run and a run on another number of
    processes visit the same global batches.  Every process gets a share of every batch (a
    global batch smaller than the number of processes is dropped, which never happens unless the
    last batch is tiny; the count is reported by `dropped`).
    """

    def __init__(self, n: int, batch_size: int, seed: int, dist_: Dist, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.dist, self.shuffle = n, batch_size, seed, dist_, shuffle
        self.epoch = 1

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def global_batches(self) -> list[torch.Tensor]:
        batches = list(torch.split(self.order(), self.batch_size))
        return [b for b in batches if len(b) >= self.dist.world_size]

    @property
    def dropped(self) -> int:
        return self.n - sum(len(b) for b in self.global_batches())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        """Yields (this process's indices, global batch size)."""
        for batch in self.global_batches():
            yield torch.tensor_split(batch, self.dist.world_size)[self.dist.rank], len(batch)

    def __len__(self) -> int:
        return len(self.global_batches())
