"""Data-parallel training over processes started by ``torchrun``: who am I, and which rows are mine.

    torchrun --standalone --nproc_per_node 2 -m vaelab train --data mnist5k
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m vaelab train ...

``torchrun`` starts the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in each; :func:`setup` sees them, joins the process group
(gloo on the CPU, NCCL on CUDA, one GPU per local rank) and returns the :class:`World`. Without
them (``python -m vaelab``, ``vaelab.train()``) there is one process and nothing is set up.

The batch is *global*: ``batch_size`` examples per optimizer step whatever the number of
processes. Every process draws the same binarization and permutation of the epoch (seeded by
``(seed, epoch)``), cuts each global batch into contiguous, near-equal shards
(:meth:`World.shard`) and weights its mean loss by ``size * n_rank / n_batch``, so that the
gradients DistributedDataParallel averages are the gradient of the global batch's mean loss,
the same as one process computes, up to float rounding and the reparameterization noise
(drawn per process from ``(seed, epoch, rank)``; rank 0's noise is the single-process noise).
Only rank 0 writes files; checkpoints hold the plain model and optimizer, so a run resumes
with any number of processes.

Example (two processes on one machine, the CPU)::

    >>> world, device = setup("cpu")      # in each process torchrun started
    >>> world.rank, world.size
    (0, 2)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import VaelabError

__all__ = ["World", "setup", "teardown", "world", "launched", "is_main_process", "other_local_rank",
           "error_left_to_local_rank_0", "wait_for_local_rank_0", "ERROR_WAIT_S"]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_JOINED = False  # whether setup() made the process group (and teardown() may end it)


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` training processes (rank 0 writes the files)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: int) -> tuple[int, int]:
        """The ``[start, stop)`` of this process's share of a global batch of ``rows`` examples.

        Contiguous near-equal shards: the first ``rows % size`` ranks get one row more. A rank
        may get none when ``rows < size`` (the last batch of an epoch).

        >>> [World(r, 3).shard(8) for r in range(3)]
        [(0, 3), (3, 6), (6, 8)]
        """
        base, extra = divmod(rows, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for in a single process)."""
        if self.size > 1:
            _barrier()

    def all_sum(self, t: Tensor) -> Tensor:
        """The element-wise sum of ``t`` over the processes (``t`` itself in a single process)."""
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_min(self, t: Tensor) -> Tensor:
        """The element-wise minimum of ``t`` over the processes."""
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object), on every process."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched() -> bool:
    """True when torchrun (or another launcher) set the process-group environment."""
    return all(k in os.environ for k in _ENV)


def world() -> World:
    """The current process group as a :class:`World` (one process when none is set up)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def is_main_process() -> bool:
    """Whether this process is rank 0 (or alone): the one that prints and writes files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


# how long a process other than local rank 0 waits, after an error, for the launcher to end it
# (torchrun ends every process when one exits with an error) before it prints the error itself
ERROR_WAIT_S = 30.0


def other_local_rank() -> int | None:
    """This process's rank when torchrun started it as one of several and it is not local rank 0,
    else None (no launcher, one process, or local rank 0).

    Every process torchrun starts parses the same command line and reads the same files, so the
    lines they would print alike (``--help``, ``--version``, vaelab's one-line warnings, an error
    in the settings) are printed by local rank 0 alone: once per machine (a multi-node run's
    other machines print them on their own terminals). Read from the environment torchrun sets,
    so it holds before the process group is joined."""
    if not launched():
        return None
    try:
        rank, size, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    except ValueError:
        return None
    return rank if size > 1 and local > 0 else None


def error_left_to_local_rank_0(err: BaseException | None = None) -> int | None:
    """This process's rank when it should leave an error's line to local rank 0, else None.

    Under ``torchrun`` with several processes each one parses the same command line and reads
    the same files, so a bad option or setting fails in every process at once: the line is
    printed by local rank 0 only (once per machine; a multi-node run's other machines print it
    on their own terminals). None alone (no launcher, one process, local rank 0), and for an
    error of this process only (``err.this_rank_only``, e.g. a local rank without a GPU)."""
    return None if getattr(err, "this_rank_only", False) else other_local_rank()


def wait_for_local_rank_0(seconds: float | None = None) -> None:
    """After an error left to local rank 0 (:func:`error_left_to_local_rank_0`): wait for it to
    print the line and exit, upon which torchrun ends this process too (SIGTERM, a non-zero
    exit). Exiting at once instead could get local rank 0 ended before it printed (torchrun
    ends the others as soon as one process fails), and the line would be lost. Returns after
    ``seconds`` (:data:`ERROR_WAIT_S`) if nothing ended this process: the error was not
    everyone's (or the launcher ends no one), and the caller prints it itself."""
    time.sleep(ERROR_WAIT_S if seconds is None else seconds)


def setup(device: str | torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes, if any, and pick this process's device.

    ``device`` is the one asked for (``"cpu"``, ``"cuda"``, ...; resolved by the caller). On
    CUDA each process takes the GPU of its local rank and NCCL carries the gradients; on any
    other device gloo does. A group set up already (by the caller) is used as it is. Without
    torchrun's variables, or with ``WORLD_SIZE=1``, returns ``(World(), device)``.
    """
    global _JOINED
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        w = world()
    elif not launched() or int(os.environ["WORLD_SIZE"]) == 1:
        return World(), device
    else:
        if not dist.is_available():
            raise VaelabError("this PyTorch build has no torch.distributed; train in one process")
        w = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            if w.local_rank >= torch.cuda.device_count():
                err = VaelabError(
                    f"local rank {w.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                    "start at most that many processes per node (--nproc_per_node)"
                )
                err.this_rank_only = True  # type: ignore[attr-defined]  # local rank 0 has one: printed here
                raise err
            torch.cuda.set_device(w.local_rank)
        dist.init_process_group(backend=backend)
        _JOINED = True
    if device.type == "cuda":
        device = torch.device("cuda", w.local_rank)
    return w, device


def _barrier() -> None:
    if dist.get_backend() == "nccl":  # NCCL wants to know the GPU
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def teardown() -> None:
    """Leave the process group that :func:`setup` joined (one set up by the caller stays)."""
    global _JOINED
    if _JOINED and dist.is_initialized():
        dist.destroy_process_group()
    _JOINED = False
