"""Ranks from SLURM (through submitit), torchrun, or nothing; NCCL on GPU, gloo on CPU.

The same `jobs/train.py` runs alone, under torchrun, under `srun` from an sbatch template,
and inside a submitit job; this module is the one place that tells them apart.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[003-004,007],cpu1` -> `gpu003`."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist[: nodelist.index("]") + 1]
    if "[" not in head:
        return head
    prefix, rng = head.split("[", 1)
    first = rng.rstrip("]").split(",")[0].split("-")[0]
    return prefix + first


def from_environment(env: dict[str, str] | None = None) -> DistInfo:
    """Read rank, world size and rendezvous from torchrun's or SLURM's variables."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, or submitit's TorchDistributedEnvironment.export()
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                        env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    if "SUBMITIT_LOCAL_JOB_ID" in env:  # submitit's local executor with several tasks
        world = int(env.get("SUBMITIT_LOCAL_WORLD_SIZE", env.get("SUBMITIT_LOCAL_NTASKS", "1")))
        rank = int(env.get("SUBMITIT_LOCAL_GLOBAL_RANK", "0"))
        port = 20000 + int(env["SUBMITIT_LOCAL_JOB_ID"]) % 20000
        return DistInfo(rank, world, int(env.get("SUBMITIT_LOCAL_LOCAL_RANK", "0")), "127.0.0.1", port)
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        # SLURM_JOB_ID differs for every array task: two tasks on the same nodes get different ports.
        # MASTER_ADDR/MASTER_PORT, when the batch script sets them (slurm/train-array.sbatch), win.
        port = int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        addr = env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "127.0.0.1")))
        return DistInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), addr, port)
    return DistInfo()


def _first_count(text: str) -> int:
    """SLURM's per-node counts: `4(x2),2` -> 4 (this project's tasks are spread evenly)."""
    head = text.split(",")[0].split("(")[0]
    return int(head) if head.isdigit() else 0


def cpus_for_rank(env: dict[str, str] | None = None) -> tuple[int, str]:
    """(CPUs this rank may use, where that figure came from).

    Without `--cpus-per-task` SLURM sets no SLURM_CPUS_PER_TASK; the job still holds
    SLURM_CPUS_ON_NODE CPUs on this node, shared by its tasks there. Under torchrun the ranks of
    a node share its CPUs. Reading only SLURM_CPUS_PER_TASK and the affinity mask, a rank saw one
    CPU and decoded a whole step's images in the trainer process.
    """
    env = dict(os.environ if env is None else env)
    if int(env.get("SLURM_CPUS_PER_TASK", "0") or 0) > 0:
        return int(env["SLURM_CPUS_PER_TASK"]), "SLURM_CPUS_PER_TASK"
    on_node = int(env.get("SLURM_CPUS_ON_NODE", "0") or 0)
    if on_node > 0 and "SLURM_JOB_ID" in env:
        tasks = _first_count(env.get("SLURM_NTASKS_PER_NODE", "") or env.get("SLURM_TASKS_PER_NODE", "")) or 1
        return max(1, on_node // tasks), f"SLURM_CPUS_ON_NODE={on_node} / {tasks} tasks on the node"
    affinity = len(os.sched_getaffinity(0))
    local = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local > 1:
        return max(1, affinity // local), f"{affinity} CPUs / {local} ranks on the node (LOCAL_WORLD_SIZE)"
    return affinity, f"{affinity} CPUs of this process"


def pick_device(choice: str, info: DistInfo) -> torch.device:
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    torch.cuda.set_device(info.local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cuda", torch.cuda.current_device())


def init(info: DistInfo, device: torch.device, timeout_s: int = 300) -> None:
    """Join the process group when there is more than one rank (a dead peer fails us in timeout_s)."""
    if info.world == 1 or dist.is_initialized():
        return
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{info.master_addr}:{info.master_port}",
                            rank=info.rank, world_size=info.world, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("rank %d/%d on host %s joined (%s) via %s:%d", info.rank, info.world, socket.gethostname(), backend,
             info.master_addr, info.master_port)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over ranks (sizes may differ by rank)."""
    if not dist.is_initialized():
        return t
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    top = int(max(s.item() for s in sizes))
    padded = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Make rank 0's buffers (batch-norm running statistics) every rank's.

    DDP keeps parameters equal but each rank's last forward moves its own running
    statistics; evaluating with them would make a sharded evaluation mix different models.
    """
    if dist.is_initialized():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
