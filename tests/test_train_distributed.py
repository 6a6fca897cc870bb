"""`pirl train` on the batched env class (env.sim_backend=physx_cpu) and under torchrun with 2 gloo ranks:
replicas stay identical after DDP updates, metrics and evaluation pool both ranks, rank 0 writes the one
checkpoint, which resumes on 1 rank; a killed rank stops the job with a clear error and a rerun resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pirl_robot.train import main as train_main

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[1]


def tiny(tmp_path, demos):
    return [f"output_dir={tmp_path}/run", f"demos.root={demos}", "demos.episodes=2", "env.sim_backend=physx_cpu",
            "env.num_envs=1", "sft.steps=10", "eval.episodes=4", "eval.every=0", "save_every=1", "progress=false",
            "policy.model.hidden=32", "algo.chunks_per_env=2", "algo.minibatch_size=4", "algo.update_epochs=1"]


def torchrun(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pirl_robot.cli", "train", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return tmp_path_factory.mktemp("demos") / "pushcube_2"


def test_pirl_train_runs_end_to_end_on_the_batched_env_class(tmp_path, demos):
    assert train_main(tiny(tmp_path, demos) + ["rl.iterations=2"]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["env_steps"] > 0 and summary["rl_episodes"] == 4
    lo, hi = summary["rl_ci95"]
    assert 0.0 <= lo <= summary["rl_success"] <= hi <= 1.0  # the Wilson interval


def test_two_gloo_ranks_stay_identical_pool_metrics_and_resume_on_one_rank(tmp_path, demos):
    proc = torchrun(tiny(tmp_path, demos) + ["rl.iterations=2"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    run = tmp_path / "run"
    train = [r for r in rows(run) if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2] and all(r["ranks"] == 2 for r in train)
    for r in train:  # after every DDP update the two replicas hold the same parameters, bit for bit
        assert len(r["rank_param_sums"]) == 2 and r["rank_param_sums"][0] == r["rank_param_sums"][1]
    evals = [r for r in rows(run) if r["kind"] == "eval"]
    assert [(r["tag"], r["episodes"]) for r in evals] == [("sft", 4), ("final", 4)]  # 2 seeds per rank, pooled
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last", "sft"]
    assert not list((run / "checkpoints" / "last").glob("*.tmp"))
    # The 2-rank checkpoint resumes on one process.
    assert train_main(tiny(tmp_path, demos) + ["rl.iterations=3"]) == 0
    train = [r for r in rows(run) if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2, 3] and "ranks" not in train[-1]
    assert json.loads((run / "summary.json").read_text())["iterations"] == 3


@pytest.mark.slow
def test_a_killed_rank_stops_the_job_clearly_and_a_rerun_resumes(tmp_path, demos):
    run = tmp_path / "run"
    proc = torchrun(tiny(tmp_path, demos) + ["rl.iterations=200"], start_new_session=True)
    try:
        state = run / "checkpoints" / "last" / "trainer_state.pt"
        deadline = time.time() + 400
        while not state.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert state.exists(), "no checkpoint written"
        os.kill(_rank_pid(proc.pid, rank=1), signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "ChildFailedError" in out and "Signal 9 (SIGKILL)" in out, out[-3000:]
    print(out[-2500:])
    done = max(r["iteration"] for r in rows(run) if r["kind"] == "train")
    assert done < 200
    proc = torchrun(tiny(tmp_path, demos) + [f"rl.iterations={done + 1}"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert [r["iteration"] for r in rows(run) if r["kind"] == "train"] == list(range(1, done + 2))
    assert [r["tag"] for r in rows(run) if r["kind"] == "eval"] == ["sft", "final"]  # resumed, not restarted


def _rank_pid(launcher: int, rank: int) -> int:
    """The worker process torchrun started for `rank` (its environment says RANK=<rank>)."""
    for child in Path(f"/proc/{launcher}/task").glob("*/children"):
        for pid in child.read_text().split():
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in env:
                return int(pid)
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher}")


def test_the_gpu_preset_composes_and_says_why_it_cannot_run_without_a_gpu(tmp_path):
    import torch

    from pirl_robot.config import compose
    from sim import factory
    from sim.maniskill.batched import PhysXGpuMissing

    cfg = compose("train", ["+experiment=pushcube_gpu"])
    assert (cfg.env.sim_backend, cfg.env.num_envs, cfg.device) == ("physx_cuda", 320, "cuda")
    assert factory.sim_backend(cfg.env) == "physx_cuda"
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the refusal below is for machines without one")
    with pytest.raises(PhysXGpuMissing, match="needs a CUDA GPU"):
        factory.make_vector_env(cfg.env, num_envs=2, device="cpu")


@pytest.mark.slow
def test_tiny_pi0_learner_sharded_with_fsdp2_over_two_gloo_ranks(tmp_path, demos):
    """pi0 (tiny widths, frozen backbone: train_expert_only) under torchrun: FSDP2 shards the trainable parts,
    the replicas agree after updates, and the checkpoint (full weights, name-keyed optimizer) resumes on 1 rank."""
    from pirl_robot.models.tokenizer import train_word_tokenizer
    from sim.maniskill.config import INSTRUCTIONS

    tok = train_word_tokenizer([INSTRUCTIONS["PushCube-v1"]], tmp_path / "tokenizer")
    args = [f"output_dir={tmp_path}/run", f"demos.root={tmp_path}/demos_rgb", "demos.episodes=2",
            "env=maniskill_pushcube_rgb", "env.sim_backend=physx_cpu", "env.num_envs=1", "policy=pi0_tiny",
            f"policy.model.tokenizer={tok}", "sft.steps=5", "eval.episodes=2", "eval.every=0", "save_every=1",
            "progress=false", "algo.chunks_per_env=2", "algo.minibatch_size=4", "algo.update_epochs=1"]
    proc = torchrun(args + ["rl.iterations=2"])
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-5000:]
    run = tmp_path / "run"
    train = [r for r in rows(run) if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2]
    for r in train:
        assert r["ranks"] == 2 and r["rank_param_sums"][0] == r["rank_param_sums"][1] and r["grad_norm"] > 0
    assert train_main(args + ["rl.iterations=3"]) == 0
    assert [r["iteration"] for r in rows(run) if r["kind"] == "train"] == [1, 2, 3]
