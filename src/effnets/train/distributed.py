"""torchrun DDP: process group (gloo on CPU, NCCL on CUDA), a resumable distributed sampler,
SyncBatchNorm, BN statistics averaged across ranks, rank-0-only side effects."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); otherwise a
    single process.  Each rank uses ``cuda:LOCAL_RANK`` when CUDA is used, and NCCL; on CPU, gloo."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        from ..errors import ConfigError
        raise ConfigError("device cuda requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ResumableSampler(Sampler):
    """Shuffled (by ``seed + epoch``) or ordered indices, split across ranks like
    DistributedSampler (padded to a multiple of the world size, rank r takes r::world), with a
    ``start`` offset so a resumed run skips the samples its epoch already consumed."""

    def __init__(self, n: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world_size
        self.pad = pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if self.pad and self.world > 1:
            total = math.ceil(self.n / self.world) * self.world
            idx += idx[:total - self.n]
        return idx[self.rank::self.world]

    def num_samples(self) -> int:
        return len(self._indices())

    def __iter__(self):
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples() - self.start)


def convert_sync_bn(model: nn.Module) -> nn.Module:
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


@torch.no_grad()
def average_bn_stats(model: nn.Module, info: DistInfo) -> None:
    """Make every rank's BN running mean/var the average over ranks (without SyncBN each rank
    has its own estimate), so evaluation and checkpoints see one model."""
    if not info.enabled:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(info.world_size)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
