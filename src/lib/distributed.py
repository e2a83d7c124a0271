"""Training on several processes with PyTorch's own engine: torchrun starts them,
torch.distributed joins them (NCCL between GPUs, gloo between CPUs), DDP averages gradients.

`train.processes` above 1 makes `python -m src.train <variant>` start torchrun on this machine
with that many processes; a run already under torchrun (several machines: docs/parallel.md)
takes its processes from torchrun's environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from src.lib.errors import UserError


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the run's: torchrun's RANK, WORLD_SIZE and LOCAL_RANK
    (how many share this machine's CPUs: device.cpu_share)."""
    rank: int = 0
    count: int = 1
    local_rank: int = 0  # its GPU on this machine

    @property
    def main(self) -> bool:
        """Only the main process logs, validates and writes."""
        return self.rank == 0


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def launch(module: str, args: list[str], processes: int) -> None:
    """`python -m module args` as `processes` processes on this machine, under torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={processes}", "-m", module, *args]
    # torchrun sets OMP_NUM_THREADS=1 unless told. Each process starts from this one's default
    # (the physical cores, or the user's OMP_NUM_THREADS) and takes its share (device.set_threads).
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads()), **os.environ}
    if subprocess.run(cmd, env=env).returncode:
        raise UserError(f"{module} {' '.join(args)}: one of its {processes} processes failed; "
                        "its error is above")


_claimed = []  # the lock file of the GPU this process trains on, held until it ends


def free_gpu(count: int) -> int:
    """The first of `count` GPUs that no other training on this machine holds (an exclusive
    lock on a file per GPU, which the system releases when the process ends), so that
    experiments the queue runs side by side spread over the GPUs; GPU 0 when all are held."""
    import fcntl  # POSIX only; several GPUs on Windows share GPU 0
    for index in range(count):
        lock = open(Path(tempfile.gettempdir()) / f"chest-ct-train-gpu{index}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        _claimed.append(lock)
        return index
    return 0


def join(device: torch.device) -> tuple[Processes, torch.device]:
    """This process's place among the run's, and its device: under torchrun, the process group
    is joined and each process takes the GPU of its local rank; alone, a free GPU."""
    if not under_torchrun():
        if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
            device = torch.device("cuda", free_gpu(torch.cuda.device_count()))
            torch.cuda.set_device(device)
        return Processes(), device
    procs = Processes(*(int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")))
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"train.processes: several processes run on CUDA GPUs or the CPU, not "
                        f"{device.type}; set train.device=cpu or train.processes=1")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return procs, device


def leave(procs: Processes) -> None:
    if procs.count > 1:
        dist.barrier()  # no process leaves while another still writes
        dist.destroy_process_group()


def data_parallel(head: nn.Module, procs: Processes, device: torch.device) -> nn.Module:
    """The trained head under DDP: gradients averaged over the processes after every backward.
    On GPUs its training BatchNorm layers are synchronized, so that they normalize over the
    whole batch as one process would; gloo has no SyncBatchNorm, so on the CPU each process
    normalizes its own share (and DDP gives every process the first one's running statistics)."""
    if procs.count == 1:
        return head
    if device.type == "cuda":
        head = nn.SyncBatchNorm.convert_sync_batchnorm(head)
    return nn.parallel.DistributedDataParallel(
        head, device_ids=[device.index] if device.type == "cuda" else None)


def from_main(value, procs: Processes):
    """The main process's `value` on every process (what it validated, so that every process
    stops at the same epoch)."""
    if procs.count == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def summed(tensor: torch.Tensor, procs: Processes) -> torch.Tensor:
    """`tensor` summed over the processes."""
    if procs.count > 1:
        dist.all_reduce(tensor)
    return tensor
