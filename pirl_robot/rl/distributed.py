"""torch.distributed for `pirl train` under torchrun: one process per GPU (or per CPU slot), each with its own
env batch; the learner synchronised by DDP (small flow policy) or FSDP2 (pi0 / pi0.5, see ``shard_pi0``).

    torchrun --nproc_per_node 4 -m pirl_robot.cli train +experiment=pushcube_gpu      # 1 node x 4 GPUs
    python -m torch.distributed.run --nproc_per_node 2 -m pirl_robot.cli train env.sim_backend=physx_cpu \
        env.num_envs=1                                                                 # 2 CPU ranks (gloo)

``Dist.from_env`` reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...); without them it is
the single-process ``Dist()`` and every helper here is a no-op. Backend: nccl on CUDA, gloo on the CPU.
A rank that dies makes the collectives of the others fail within ``timeout_s``; torchrun then stops the job and
names the failed rank, and rerunning the same command resumes from the last rank-0 checkpoint.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


class RankFailure(RuntimeError):
    """A collective failed: another rank died or stopped answering."""


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str, timeout_s: float = 600.0) -> "Dist":
        """Join torchrun's process group (env:// rendezvous) when launched by torchrun with WORLD_SIZE > 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s),
                                    device_id=torch.device("cuda", local) if cuda else None)
        return cls(rank=rank, world_size=world, local_rank=local)

    def device(self, device: str) -> str:
        """This rank's device for a configured one: `cuda` -> `cuda:<local rank>`."""
        return f"cuda:{self.local_rank}" if self.enabled and device == "cuda" else device

    # --- collectives (no-ops on one process) --------------------------------------------------------------
    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Per-key mean over the ranks that report the key (a rank may lack one: GRPO's empty minibatches)."""
        if not self.enabled:
            return stats
        merged: dict[str, list[float]] = {}
        for part in self.gather(stats):
            for k, v in part.items():
                merged.setdefault(k, []).append(float(v))
        return {k: sum(v) / len(v) for k, v in merged.items()}

    def sum_int(self, x: int) -> int:
        return self._reduce_int(x, dist.ReduceOp.SUM)

    def min_int(self, x: int) -> int:
        return self._reduce_int(x, dist.ReduceOp.MIN)

    def any(self, flag: bool) -> bool:
        return bool(self._reduce_int(int(flag), dist.ReduceOp.MAX))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's obj, in rank order (picklable objects: episode stats)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._call(dist.all_gather_object, out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            self._call(dist.barrier)

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def _reduce_int(self, x: int, op) -> int:
        if not self.enabled:
            return int(x)
        t = torch.tensor([int(x)], dtype=torch.int64, device=self._comm_device())
        self._call(dist.all_reduce, t, op=op)
        return int(t.item())

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, dist.DistError) as e:
            raise RankFailure(f"rank {self.rank}/{self.world_size}: {fn.__name__} failed, another rank died or "
                              f"stopped answering ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


def wrap_ddp(module: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DDP over `module` (its forward computes the loss) when running on several ranks; else the module itself.
    DDP broadcasts rank 0's parameters at construction, so every rank starts from the same weights."""
    if not d.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = next(module.parameters()).device
    return DDP(module, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True)


def shard_trainable(model: torch.nn.Module) -> list[torch.nn.Module]:
    """FSDP2 for a VLA learner (pi0 / pi0.5): ``fully_shard`` every parameter-holding leaf module whose
    parameters all train (action expert, projections, noise net, value head); frozen modules (the VLM backbone
    with train_expert_only) stay whole on every rank, as they need no gradient synchronisation.

    Leaves, not larger blocks: lerobot's pi0 calls its expert's layers one by one (never the expert's own
    forward), and FSDP2 gathers a module's parameters in that module's forward hook. Returns the sharded
    modules. Raises if a module holds trainable parameters of its own next to frozen children."""
    from torch.distributed.fsdp import fully_shard

    for p in model.parameters():  # the trainable parts start from rank 0's values (SFT may differ on GPUs)
        if p.requires_grad:
            dist.broadcast(p.data, src=0)
    sharded = []
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if not own or not all(p.requires_grad for p in own):
            if any(p.requires_grad for p in own):
                raise ValueError(f"module {name or type(model).__name__} mixes trainable and frozen parameters")
            continue
        fully_shard(m)
        sharded.append(m)
    return sharded


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """Full (unsharded, CPU) model and optimizer state dicts of a sharded model: a collective, every rank calls
    it; rank 0 writes them. Loading is ``load_full_state`` (any world size, sharded or not)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return model_sd, optim_sd


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict) -> None:
    """Scatter full state dicts (from ``full_state`` or a single-process checkpoint) into a sharded model."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(model, model_sd, options=opts)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))


@contextmanager
def gathered(modules: list[torch.nn.Module]):
    """Sharded modules held whole for a stretch of forwards that ranks do not run in step (rollouts and
    evaluation: episodes end at different chunks on each rank): one all-gather now, none inside."""
    for m in modules:
        m.set_reshard_after_forward(False)
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True)
