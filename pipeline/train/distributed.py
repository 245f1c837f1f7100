"""Inside one rank of a multi-process training run (``torch.distributed``, started by ``torchrun``): which
rank this is and on which device, and the few collective calls the training loop needs.

The loop (:mod:`pipeline.train.loop`) stays one loop: with a :class:`DistContext` it wraps the model in
``DistributedDataParallel`` (gradients all-reduced at every step), takes its rank's share of the bucketed
batches (:func:`pipeline.train.loader.rank_batch_order`), and agrees with the other ranks through the
helpers here. Rank 0 alone evaluates, writes checkpoints and the result; the others wait on a broadcast
or a barrier, so every rank makes the same decision (stop, keep going) at the same step.

gloo on CPU (several processes share the machine's cores), nccl on CUDA (one GPU per rank:
``cuda:LOCAL_RANK``). How the ranks are launched is :mod:`pipeline.train.ddp_main`'s job.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from pipeline.core.errors import InputError
from pipeline.model.device import pick_device

# Rank 0 evaluates and calibrates while the others wait: a long timeout, as a rank that dies is caught by
# torchrun (it stops the whole group) rather than by this timeout.
COLLECTIVE_TIMEOUT = dt.timedelta(hours=1)
STOPS = ("completed", "early_stopping", "time_budget")    # what rank 0 tells the others after an epoch


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank (0 = the writer), world size, local rank, device, backend."""
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes checkpoints, the best weights and the result."""
        return self.rank == 0


def check_nproc(nproc: int, optimizer: str = "adam", device: str = "auto") -> None:
    """Refuse a process count that cannot train (``InputError`` naming ``nproc``), before any data is read:
    not a positive int; more than one with L-BFGS (a full-batch fit of the whole split: nothing to share
    out); more than the GPUs there are on CUDA; several on MPS or on one named GPU (``cuda:1``)."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise _nproc_error("an int >= 1", nproc)
    if nproc == 1:
        return
    if optimizer == "lbfgs":
        raise _nproc_error("1 with optimizer 'lbfgs': L-BFGS fits the whole training split at once "
                           "(full batch), there are no batches to share out between processes", nproc)
    dev = pick_device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise _nproc_error(f"1 with device {device!r}: several processes take one GPU each "
                               "(--device cuda or auto)", nproc)
        if nproc > torch.cuda.device_count():
            raise _nproc_error(f"<= {torch.cuda.device_count()}, the GPUs on this machine (one per "
                               "process)", nproc)
    elif dev.type != "cpu":
        raise _nproc_error(f"1 on {dev.type} (multi-process training runs on cpu or cuda)", nproc)


def _nproc_error(need: str, value) -> InputError:
    """Worded as :func:`pipeline.core.options.option_error`, for a flag that is not a ``--set`` field."""
    return InputError(f"invalid nproc (--nproc): must be {need}, got {value!r}")


def rank_device(device: str, local_rank: int) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when ``device`` resolves to CUDA, else the CPU."""
    dev = pick_device(device)
    if dev.type == "cuda":
        return torch.device("cuda", local_rank)
    if dev.type != "cpu":
        raise InputError(f"multi-process training runs on cpu or cuda, not {dev.type} (--device)")
    return dev


def join_process_group(device: str) -> DistContext:
    """Join the group ``torchrun`` set up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous in the
    environment): nccl on CUDA, gloo on CPU."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = rank_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    tdist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=dev, backend=backend)


def leave_process_group() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def wrap_model(net: torch.nn.Module, ctx: DistContext, frozen_start: bool = False) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``net`` (which stays the module that is saved and evaluated).

    ``frozen_start``: some parameters get no gradient in the first epochs (the embedding under
    ``freeze_embed_epochs``), so DDP must look for unused parameters (an extra pass over the graph per
    step, paid only then). Buffers are synced once, at the start, not before every step: the only ones (the
    n-gram NB scale, the positional table) are computed alike on every rank and never trained."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=frozen_start,
                                   forward_sync_buffers=False)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed dropout for (seed, epoch, rank): ranks draw different masks, and a resumed epoch draws exactly
    the masks it would have drawn (one rank's RNG state in the checkpoint could not restore every rank's)."""
    torch.manual_seed((seed * 1_000_003 + epoch * 1_009 + rank) % 2**63)


def _tensor(ctx: DistContext, values, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=ctx.device)


def sum_over_ranks(ctx: DistContext, values: list[float]) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (the epoch's loss sum, correct answers, rows, tokens)."""
    t = _tensor(ctx, values)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t.tolist()


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank if it is True on any (out of time: all ranks stop at the same step)."""
    t = _tensor(ctx, [int(flag)], torch.int32)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def share_stop(ctx: DistContext, stopped: str | None) -> str:
    """Rank 0's verdict after an epoch (one of ``STOPS``), received by every rank."""
    t = _tensor(ctx, [STOPS.index(stopped) if ctx.writer else 0], torch.int32)
    tdist.broadcast(t, src=0)
    return STOPS[int(t.item())]


def barrier(ctx: DistContext | None) -> None:
    if ctx is None:
        return
    if ctx.backend == "nccl":
        tdist.barrier(device_ids=[ctx.device.index])
    else:
        tdist.barrier()


@contextlib.contextmanager
def writer_first(ctx: DistContext | None):
    """Run the block on rank 0 first, then on the others: rank 0 may delete a broken checkpoint or result,
    and the others must see the run directory after that, not during it. Nothing without ``ctx``."""
    if ctx is not None and not ctx.writer:
        barrier(ctx)
    yield
    if ctx is not None and ctx.writer:
        barrier(ctx)
