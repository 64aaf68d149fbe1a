"""Data-parallel training across processes started by ``torchrun`` (one per GPU, or per CPU process).

Gradient synchronisation follows StyleGAN3's training loop rather than wrapping modules in
``DistributedDataParallel``: after each backward, every rank averages one flattened buffer of its
gradients with a single ``all_reduce``. DDP's bucketed hooks assume one ordinary backward per
iteration; a backward that holds only the gradient penalty (``autograd.grad(create_graph=True)``)
gives silently wrong gradients on its first step and then "Expected to have finished reduction"
(checked with torch 2.14.1 + gloo, see the field notes). Averaging after backward is correct for
any loss, penalty-only steps included, and needs no wrapper around the critic.

The data side: every rank draws the same seeded permutation each epoch, takes its own slice of each
global batch (``train.batch_size`` images in all), and keeps its own random stream for noise.

``World`` is what the rest of the code needs to know; ``World()`` is a single process, for which
every function here is a no-op.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# torchrun sets these for every process it starts (single- or multi-node).
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs to MLflow and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _TORCHRUN_ENV)


def world_from_env() -> World:
    """The process's place in the job, from torchrun's environment (a single process without it)."""
    if not launched_by_torchrun():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def init(world: World, cuda: bool) -> torch.device | None:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this rank's CUDA device, if any."""
    if not world.distributed:
        return None
    device = None
    if cuda:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # torchrun's rendezvous put MASTER_ADDR/PORT in the environment.
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30),
                                device_id=device)
    return device


def shutdown(world: World) -> None:
    """Meet at a barrier, then leave the group: tearing down without one aborted intermittently."""
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_module(module: torch.nn.Module, world: World) -> None:
    """Give every rank rank 0's parameters and buffers (the same seed already makes them equal;
    this guards against anything that made them drift, e.g. a different torch build)."""
    if not world.distributed:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(parameters, world: World) -> None:
    """Average the ``.grad`` of ``parameters`` over all ranks, in place, with one ``all_reduce``.

    Every rank runs the same code path, so the same parameters have gradients everywhere; a
    parameter without one keeps none.
    """
    if not world.distributed:
        return
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= world.size
    for p, synced in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(synced.view_as(p.grad))


def mean_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """Element-wise mean of ``values`` across ranks (a copy; the input itself when single)."""
    if not world.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world.size


def relaunch(nproc_per_node: int, script: str) -> None:
    """Replace this process by ``torchrun --standalone --nproc_per_node=N script`` (the same
    Python and arguments): ``python stages/train.py`` under DVC then runs N processes. Multi-node
    jobs call torchrun themselves (``--nnodes``, ``--rdzv-endpoint``); this is not used then."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            script, *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, args)
