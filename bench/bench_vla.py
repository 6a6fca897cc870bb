"""pi0 / pi0.5 chunk latency, throughput, MFU and the PPO update: lerobot's eager path against our fast path.

    python bench/bench_vla.py --tiny                          # CPU smoke run (tiny widths, 32 px): a few seconds
    python bench/bench_vla.py --device cuda                   # real size (PaliGemma 3B + 300M expert), < 8 min
    python bench/bench_vla.py --device cuda --kind pi0 --batch 1 8 --steps 4 --no-lerobot
    python bench/bench_vla.py --device cuda --kind pi0 --fast-only --attention auto math --compile 1 64
    python bench/bench_vla.py --device cuda --kind pi0 --fast-only --batch 1 --no-ppo --compile 1 \
        --compile-mode max-autotune-no-cudagraphs              # batch-1 deploy latency, GEMM tiles autotuned

Paths, on one model object and one set of weights (random; real widths):
  eager fp32+amp  lerobot's embed_prefix / denoise_step with fp32 weights under bf16 autocast (today's RL setup)
  eager bf16      the same after lerobot's own bf16 weight cast (its stock inference setup)
  fast bf16       models/pi0_fast.py (static K/V buffers, SDPA, masks built once, fused q/k/v and gate/up GEMMs,
                  no masks where no prefix token is padding: batch 1 here) with bf16 weights, replayed as CUDA
                  graphs (one capture per batch size; the capture time is the start-up cost, printed)
  lerobot         PI0Policy.predict_action_chunk at its stock K=10 (batch <= 8), for reference
For every batch and K: median ms per chunk, chunks/s, the prefix's and the chunk's TFLOP/s and MFU (FLOPs counted
by torch's FlopCounterMode on the same call; peak = the GPU's dense bf16 datasheet rate). The PPO update (stored
chains, clipped surrogate + Huber value loss, AdamW, minibatch --ppo-batch) runs eager (fp32 backbone, prefix with
autograd bookkeeping) and fast (bf16 frozen backbone, prefix rebuilt without gradients, suffix through SDPA), with
time, TFLOP/s, MFU and peak memory. Results: a table on stdout, JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pirl_robot.flow import ChainConfig, chain_log_prob, sample_chain
from pirl_robot.models.factory import build_model
from pirl_robot.models.pi0 import COMPILE_MODES
from pirl_robot.models.pi0_fast import ATTENTION_BACKENDS
from pirl_robot.models.tokenizer import PALIGEMMA_TOKENIZER, TokenizerMissingError, load_tokenizer, \
    train_word_tokenizer
from pirl_robot.spec import CameraSpec, PolicySpec

TASKS = ["pick up the red cube and place it on the green target", "push the cube to the goal"]
DENSE_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:5]))
    p.add_argument("--kind", nargs="+", default=["pi0", "pi05"], choices=["pi0", "pi05"])
    p.add_argument("--tiny", action="store_true", help="tiny test widths (CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="observations per chunk (default 1 8 64)")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 10], help="denoising steps K")
    p.add_argument("--ppo-batch", type=int, nargs="+", default=None, help="PPO minibatches (default 16; tiny 8)")
    p.add_argument("--chunk", type=int, default=None, help="chunk size H (default 50; tiny 8)")
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--image-size", type=int, default=None, help="camera pixels (default 224; tiny 32)")
    p.add_argument("--mode", default="mixed", choices=["mixed", "noise"], help="PPO chain mode")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-lerobot", action="store_true", help="skip predict_action_chunk")
    p.add_argument("--fast-only", action="store_true", help="time the fast path only (no eager rows)")
    p.add_argument("--compile-ppo", action="store_true",
                   help="also time the fast PPO update with the prefix rebuild under torch.compile")
    p.add_argument("--attention", nargs="+", default=["auto"], choices=sorted(ATTENTION_BACKENDS),
                   help="SDPA kernels to time the fast path with (PiVLAConfig.attention)")
    p.add_argument("--compile", type=int, nargs="*", default=None, metavar="BATCH",
                   help="also time the fast path under torch.compile (PiVLAConfig.compile) at these batches "
                        "(default: 1); compiling costs about a minute per batch size on first use")
    p.add_argument("--compile-mode", default="default", choices=list(COMPILE_MODES),
                   help="torch.compile mode of the --compile rows (PiVLAConfig.compile_mode)")
    p.add_argument("--no-ppo", action="store_true", help="skip the PPO update rows")
    p.add_argument("--tokenizer", default=PALIGEMMA_TOKENIZER)
    p.add_argument("--out", default="bench/results")
    a = p.parse_args()
    a.batch = a.batch or ([1, 4] if a.tiny else [1, 8, 64])
    a.ppo_batch = a.ppo_batch or [8 if a.tiny else 16]
    if a.compile is not None and not a.compile:
        a.compile = [1]
    a.chunk = a.chunk or (8 if a.tiny else 50)
    a.image_size = a.image_size or (32 if a.tiny else 224)
    return a


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of fn() in milliseconds (the GPU drained before and after each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def fast_flops(model, fn) -> float:
    """FLOPs of fn on the fast path, counted once without graphs and with the math attention kernel (the counter
    cannot size cuDNN's grouped-query attention; the arithmetic is the same)."""
    saved = model.cfg.attention, model.cfg.cuda_graphs
    model.cfg.attention, model.cfg.cuda_graphs = "math", False
    try:
        return flops(fn)
    finally:
        model.cfg.attention, model.cfg.cuda_graphs = saved


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DENSE_BF16_TFLOPS.items() if k in name), None)


def tokenizer_path(args, tmp: Path) -> tuple[str, str]:
    if not args.tiny:
        try:
            load_tokenizer(args.tokenizer)
            return args.tokenizer, args.tokenizer
        except TokenizerMissingError:
            pass
    return str(train_word_tokenizer(TASKS, tmp / "tok")), "word-level stand-in (same padded length)"


def make_spec(args) -> PolicySpec:
    cams = tuple(CameraSpec(f"cam{i}", args.image_size, args.image_size) for i in range(args.cameras))
    return PolicySpec(state_names=tuple(f"q{i}" for i in range(8)), action_names=tuple(f"a{i}" for i in range(7)),
                      cameras=cams, chunk_size=args.chunk, exec_horizon=args.chunk, instruction=TASKS[0])


def make_batch(model, spec: PolicySpec, b: int, device: torch.device) -> dict:
    """Observations with pre-tokenised prompts (what a rollout worker stores), so tokenising is not timed."""
    g = torch.Generator(device="cpu").manual_seed(b)
    batch = {"state": (torch.rand(b, spec.state_dim, generator=g) * 2 - 1).to(device)}
    for c in spec.cameras:
        batch[f"images.{c.name}"] = torch.rand(b, 3, c.height, c.width, generator=g).to(device)
    batch.update(model.tokenize([TASKS[i % 2] for i in range(b)], batch["state"]))
    return batch


def lerobot_batch(batch: dict) -> dict:
    out = {f"observation.{k}": v for k, v in batch.items() if k.startswith("images.")}
    out["observation.state"] = batch["state"]
    out["observation.language.tokens"], out["observation.language.attention_mask"] = batch["lang_tokens"], \
        batch["lang_mask"]
    return out


class Table:
    def __init__(self, peak: float | None):
        self.rows: list[dict] = []
        self.peak = peak

    def add(self, kind: str, path: str, what: str, b: int, k: int | None, ms: float, flop: float | None = None,
            **extra) -> None:
        row = {"model": kind, "path": path, "measure": what, "batch": b, "K": k, "ms": ms,
               "per_s": 1e3 / ms * (b if what == "chunk" else 1)}
        if flop:
            row["tflops"] = flop / (ms * 1e-3) / 1e12
            row["mfu"] = row["tflops"] / self.peak if self.peak else None
        row.update(extra)
        self.rows.append(row)
        print(self.format(row), flush=True)

    @staticmethod
    def format(r: dict) -> str:
        tf = f"{r['tflops']:.1f}" if r.get("tflops") else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        mem = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
        rate = f"{r['per_s']:.1f}"
        return (f"| {r['model']} | {r['path']} | {r['measure']} | {r['batch']} | {r['K'] or '-'} | {r['ms']:.2f} | "
                f"{rate} | {tf} | {mfu} | {mem} |")


def bench_chunks(model, spec, args, device, table: Table, kind: str, path: str,
                 batches: list[int] | None = None) -> None:
    """Chunk latency per batch and K, and the prefix alone (encode) per batch."""
    model.eval()
    for b in batches or args.batch:
        batch = make_batch(model, spec, b, device)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.encode(batch)  # first call: captures the prefix graph on the fast path
        sync(device)
        first_ms = (time.perf_counter() - t0) * 1e3
        graphs_before = model._graphs.capture_seconds() if getattr(model, "_graphs", None) else 0.0

        def encode():
            with torch.no_grad():
                return model.encode(batch)

        key = (kind, "prefix", b)
        if key not in table_flop_cache:
            table_flop_cache[key] = flops(encode) if "fast" not in path else fast_flops(model, encode)
        ms = timed(encode, device, args.repeats, args.warmup)
        table.add(kind, path, "prefix", b, None, ms, table_flop_cache[key], first_call_ms=first_ms)
        for k in args.steps:
            ode = ChainConfig(num_steps=k, mode="ode")

            def chunk():
                with torch.no_grad():
                    return sample_chain(model, model.encode(batch), ode)

            key = (kind, "chunk", b, k)
            if key not in table_flop_cache:
                table_flop_cache[key] = flops(chunk) if "fast" not in path else fast_flops(model, chunk)
            ms = timed(chunk, device, args.repeats, args.warmup)
            table.add(kind, path, "chunk", b, k, ms, table_flop_cache[key])
        if getattr(model, "_graphs", None):
            table.rows[-1]["graph_capture_s"] = model._graphs.capture_seconds() - graphs_before
        if device.type == "cuda":
            torch.cuda.empty_cache()


table_flop_cache: dict[tuple, float] = {}


def bench_lerobot(model, spec, args, device, table: Table, kind: str, autocast: bool) -> None:
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    stock = model.policy.config.num_inference_steps
    for b in [b for b in args.batch if b <= 8]:
        lr = lerobot_batch(make_batch(model, spec, b, device))

        def run():
            with amp, torch.no_grad():
                model.policy.predict_action_chunk(lr)

        table.add(kind, "lerobot predict_action_chunk", "chunk", b, stock, timed(run, device, args.repeats,
                                                                                 args.warmup))


def bench_ppo(model, spec, args, device, table: Table, kind: str, path: str) -> None:
    for b in [] if args.no_ppo else args.ppo_batch:
        bench_ppo_batch(model, spec, args, device, table, kind, path, b)


def bench_ppo_batch(model, spec, args, device, table: Table, kind: str, path: str, mb: int) -> None:
    """One PPO minibatch update on stored chains (the cost the trainer pays per minibatch)."""
    cfg = ChainConfig(num_steps=args.steps[0], mode=args.mode)
    batch = make_batch(model, spec, mb, device)
    model.eval()
    with torch.no_grad():
        ctx = model.encode(batch)
        chain = sample_chain(model, ctx, cfg)
        old_values = model.value(ctx, chain.feats_mean)
    adv = torch.randn(mb, device=device)
    returns = old_values + torch.randn_like(old_values)
    opt = torch.optim.AdamW([{"params": model.policy_parameters(), "lr": 5e-6},
                             {"params": model.value_parameters(), "lr": 1e-4}], betas=(0.9, 0.95),
                            weight_decay=0.01)

    def update():
        model.train()
        opt.zero_grad(set_to_none=True)
        ctx = model.encode(batch)
        out = chain_log_prob(model, ctx, chain, cfg)
        ratio = (out["logp"] - chain.logp).exp()
        pg = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
        value = model.value(ctx, out["feats_mean"])
        v_clip = old_values + (value - old_values).clamp(-0.2, 0.2)
        v_loss = torch.max(torch.nn.functional.huber_loss(value, returns, reduction="none"),
                           torch.nn.functional.huber_loss(v_clip, returns, reduction="none")).mean()
        (pg + v_loss - 0.005 * out["entropy"].mean()).backward()
        torch.nn.utils.clip_grad_norm_(model.policy_parameters() + model.value_parameters(), 1.0)
        opt.step()

    update()
    key = (kind, "ppo", mb)
    if key not in table_flop_cache:
        table_flop_cache[key] = flops(update) if "fast" not in path else fast_flops(model, update)
    f = table_flop_cache[key]
    if device.type == "cuda":  # after the counting pass, whose math attention holds every score matrix
        torch.cuda.reset_peak_memory_stats(device)
    ms = timed(update, device, args.repeats, args.warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    table.add(kind, path, f"PPO update ({args.mode})", mb, cfg.num_steps, ms, f, peak_gib=peak)
    del opt
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    from pirl_robot.models.pi0 import lerobot_policy_class
    from pirl_robot.models.tiny_vla import tiny_options

    table = Table(peak_tflops(device))
    started = time.perf_counter()
    print("| model | path | measure | batch | K | ms | chunks/s (updates/s) | TFLOP/s | MFU | peak GiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok, tok_note = tokenizer_path(args, Path(tmp))
        spec = make_spec(args)
        for kind in args.kind:
            real_gpu = device.type == "cuda" and not args.tiny
            opts = (tiny_options(spec, tok, max_state_dim=32, max_action_dim=32) if args.tiny else
                    {"tokenizer": tok, "autocast_bf16": real_gpu})
            lerobot_policy_class(kind)  # imports outside the build timing
            t0 = time.perf_counter()
            with torch.device(device):
                model = build_model(kind, {**opts, "fast_path": "off"}, spec)
            n = sum(p.numel() for p in model.parameters())
            print(f"{kind}: built {n / 1e6:.1f}M params in {time.perf_counter() - t0:.1f} s", flush=True)
            amp = "fp32+amp" if real_gpu else "fp32"
            if not args.fast_only:
                bench_ppo(model, spec, args, device, table, kind, f"eager {amp}")
                bench_chunks(model, spec, args, device, table, kind, f"eager {amp}")
            model.policy.model.paligemma_with_expert.paligemma.to(torch.bfloat16)  # frozen: no fp32 master needed
            model.cfg.fast_path, model.cfg.autocast_bf16 = "on", True
            model._graphs = None  # a cast replaces the weights' storage: graphs captured before it are void
            bench_ppo(model, spec, args, device, table, kind, "fast, bf16 backbone")
            if args.compile_ppo:  # the frozen prefix, rebuilt without gradients, goes through the compiled graph
                model.cfg.compile, model._graphs = True, None
                bench_ppo(model, spec, args, device, table, kind, "fast, bf16 backbone + compiled prefix")
                model.cfg.compile, model._graphs = False, None
            if real_gpu and not args.fast_only:  # lerobot's own bf16 cast (vision, norms fp32), its stock setup
                model.policy.model.paligemma_with_expert.to_bfloat16_for_selected_params("bfloat16")
                model.cfg.fast_path, model.cfg.autocast_bf16 = "off", False
                if not args.no_lerobot:
                    bench_lerobot(model, spec, args, device, table, kind, autocast=False)
                bench_chunks(model, spec, args, device, table, kind, "eager bf16")
                model.policy.model.paligemma_with_expert.to(torch.bfloat16)
                model.cfg.autocast_bf16 = True
                model._graphs = None
            if args.fast_only:
                model.policy.model.paligemma_with_expert.to(torch.bfloat16)
                model._graphs = None
            model.cfg.fast_path = "on"
            fast = "fast bf16" + (" + CUDA graphs" if device.type == "cuda" else "")
            for attention in args.attention:
                model.cfg.attention, model._graphs = attention, None  # graphs hold the kernels chosen at capture
                bench_chunks(model, spec, args, device, table, kind, f"{fast} [{attention}]")
            if args.compile:  # with the kernel that gave the fastest smallest-batch chunk above
                rows = [r for r in table.rows if r["model"] == kind and r["path"].startswith(f"{fast} [")
                        and r["measure"] == "chunk" and r["batch"] == min(args.batch) and r["K"] == args.steps[0]]
                best = min(rows, key=lambda r: r["ms"])["path"] if rows else f"[{args.attention[0]}]"
                model.cfg.attention = best[best.rindex("[") + 1:-1]
                model.cfg.compile, model.cfg.compile_mode, model._graphs = True, args.compile_mode, None
                mode = "" if args.compile_mode == "default" else f" {args.compile_mode}"
                bench_chunks(model, spec, args, device, table, kind,
                             f"{fast} + compile{mode} [{model.cfg.attention}]", batches=args.compile)
                model.cfg.compile, model.cfg.compile_mode, model._graphs = False, "default", None
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\ndevice: {dev_name}; chunk {args.chunk}, {args.cameras} x {args.image_size} px camera(s), "
          f"{'tiny' if args.tiny else 'real'} widths; tokenizer: {tok_note}; MFU against "
          f"{table.peak or '-'} TFLOP/s dense bf16; total {time.perf_counter() - started:.0f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"bench_vla_{'tiny' if args.tiny else 'real'}_{dev_name.replace(' ', '_')}.json"
    f.write_text(json.dumps({"args": vars(args), "device": dev_name, "tokenizer": tok_note, "rows": table.rows},
                            indent=2))
    print(f"written {f}")


if __name__ == "__main__":
    main()
