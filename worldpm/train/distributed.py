"""Who am I in the job: rank, world size, device; and the few collectives the trainer needs.

The same `python -m worldpm.train` runs on every rank under torchrun (`--nproc_per_node`, `--nnodes/--node_rank`),
`deepspeed --no_local_rank` (hostfile), SLURM `srun`, or Hydra's submitit launcher: all of them end up setting RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT, which is all this module reads (SLURM's own variables are translated when a task was
started without them). One process with no launcher gets a world of one on a free local port.
"""
from __future__ import annotations

import atexit
import logging
import os
import subprocess
from dataclasses import dataclass

import torch

from worldpm.errors import UserError
from worldpm.ports import free_port

log = logging.getLogger("worldpm.train")


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False  # a torch.distributed process group exists

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _scheduler_ntasks() -> int:
    return int(os.environ.get("SLURM_NTASKS") or os.environ.get("SUBMITIT_LOCAL_NTASKS") or 1)


def _from_scheduler() -> None:
    """SLURM tasks (srun, submitit) and submitit's local tasks carry their own rank variables, not torch's: translate them."""
    if "RANK" in os.environ:
        return
    ntasks = _scheduler_ntasks()
    if ntasks <= 1 or not ("SLURM_PROCID" in os.environ or "SUBMITIT_LOCAL_GLOBALID" in os.environ):
        return
    try:  # submitit knows the master node and picks a job-specific port
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return
    except Exception as exc:  # a plain `srun python -m worldpm.train`, outside submitit
        if "SLURM_PROCID" not in os.environ:
            raise UserError(f"cannot read the rank of this submitit task: {exc}") from None
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "127.0.0.1")
    try:
        master = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True).stdout.split()[0]
    except Exception:
        master = nodes.split(",")[0]
    os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                      LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"), MASTER_ADDR=os.environ.get("MASTER_ADDR", master),
                      MASTER_PORT=os.environ.get("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000)))


def init(use_deepspeed: bool, shm_comm: bool = False) -> Dist:
    """Join the job. With deepspeed=null this is one process and no process group."""
    _from_scheduler()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # transformers may import deepspeed; say CPU before it guesses
    if not use_deepspeed:
        if world > 1:
            raise UserError(f"deepspeed=null trains in one process, but this job has WORLD_SIZE={world}; "
                            "use deepspeed=zero1|zero2|zero3 under a launcher")
        return Dist(device=torch.device("cuda", 0) if cuda else torch.device("cpu"))
    if "RANK" not in os.environ:  # one process, no launcher: a world of one (else DeepSpeed looks for MPI)
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    os.environ.setdefault("LOCAL_RANK", "0")
    import deepspeed
    import deepspeed.ops

    if not shm_comm:
        # DeepSpeed would JIT-compile its shared-memory all-reduce (~40 s) on the first CPU run; gloo does the job
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=None)
        # One process group for the life of the process: Hydra's sequential multirun calls run() again in this process, and
        # DeepSpeed cannot re-create its groups after destroy_process_group. It is destroyed at exit.
        atexit.register(_destroy)
    dist = Dist(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]), local_rank=local_rank,
                device=torch.device("cuda", local_rank) if cuda else torch.device("cpu"), initialized=True)
    return dist


def barrier(dist: Dist) -> None:
    if dist.initialized:
        torch.distributed.barrier()


def all_reduce(tensor: torch.Tensor, dist: Dist, op: str = "sum") -> torch.Tensor:
    """In place; float64 sums on the communication device so metrics add up exactly enough across ranks."""
    if dist.initialized and dist.world_size > 1:
        red = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}[op]
        moved = tensor.to(dist.device)
        torch.distributed.all_reduce(moved, op=red)
        tensor.copy_(moved.to(tensor.device))
    return tensor


def broadcast_object(obj, dist: Dist):
    if not (dist.initialized and dist.world_size > 1):
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _destroy() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main_first(dist: Dist, fn):
    """Run `fn` on rank 0, then on the other ranks (which then find rank 0's caches). A failure on rank 0 becomes the same
    one-line error on every rank instead of a hang."""
    if not (dist.initialized and dist.world_size > 1):
        return fn()
    if dist.is_main:
        try:
            result = fn()
        except UserError as exc:
            broadcast_object(str(exc), dist)
            raise
        except BaseException as exc:
            broadcast_object(f"rank 0 failed: {type(exc).__name__}: {exc}", dist)
            raise
        broadcast_object(None, dist)
        return result
    failure = broadcast_object(None, dist)
    if failure is not None:
        raise UserError(failure)
    return fn()
