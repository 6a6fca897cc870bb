"""Chunk latency and one PPO update step of pi0 / pi0.5: our step-wise RL path against lerobot's predict_action_chunk.

    python bench/bench_vla.py --tiny                          # CPU smoke run (tiny widths, 32 px)
    python bench/bench_vla.py --device cuda                   # real size (PaliGemma 3B + 300M expert), bf16 autocast
    python bench/bench_vla.py --device cuda --kind pi05 --batch 32 --ppo-batch 64 --steps 4 --chunk 50

Both paths run on the same model object and weights. "ours" = encode (prefix KV cache once) + K-step ODE chain
through lerobot's denoise_step; "lerobot" = PI0Policy.predict_action_chunk at its stock 10 steps and at K steps.
Real size is timed twice: fp32 weights under bf16 autocast (the RL setup), then after lerobot's own bf16 weight
cast (its stock inference setup). The PPO step is rollout-free: it scores stored chains (mode mixed or noise) with
gradients through the action expert, a clipped surrogate + Huber value loss, AdamW; it reports time and peak memory.
Tokens are padded to a fixed length, so latency does not depend on the tokenizer: without the PaliGemma tokenizer
in the local cache a word-level stand-in is built (noted in the output). Results: table on stdout, JSON under
bench/results/.
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

from pirl_robot.flow import ChainConfig, chain_log_prob, sample_chain
from pirl_robot.models.factory import build_model
from pirl_robot.models.tokenizer import PALIGEMMA_TOKENIZER, TokenizerMissingError, load_tokenizer, \
    train_word_tokenizer
from pirl_robot.spec import CameraSpec, PolicySpec

TASKS = ["pick up the red cube and place it on the green target", "push the cube to the goal"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", nargs="+", default=["pi0", "pi05"], choices=["pi0", "pi05"])
    p.add_argument("--tiny", action="store_true", help="tiny test widths (CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="observations per chunk inference (default 8; tiny 4)")
    p.add_argument("--ppo-batch", type=int, default=None, help="PPO minibatch (default 16; tiny 8)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps K of the RL path")
    p.add_argument("--chunk", type=int, default=None, help="chunk size H (default 50; tiny 8)")
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--image-size", type=int, default=None, help="camera pixels (default 224; tiny 32)")
    p.add_argument("--mode", default="mixed", choices=["mixed", "noise"], help="PPO chain mode")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-autocast", action="store_true", help="fp32 compute at real size")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the PPO step")
    p.add_argument("--tokenizer", default=PALIGEMMA_TOKENIZER)
    p.add_argument("--out", default="bench/results")
    a = p.parse_args()
    a.batch = a.batch or (4 if a.tiny else 8)
    a.ppo_batch = a.ppo_batch or (8 if a.tiny else 16)
    a.chunk = a.chunk or (8 if a.tiny else 50)
    a.image_size = a.image_size or (32 if a.tiny else 224)
    return a


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of fn() in milliseconds."""
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


def make_batch(spec: PolicySpec, b: int, device: torch.device) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    batch = {"state": (torch.rand(b, spec.state_dim, generator=g) * 2 - 1).to(device),
             "instruction": [TASKS[i % 2] for i in range(b)]}
    for c in spec.cameras:
        batch[f"images.{c.name}"] = torch.rand(b, 3, c.height, c.width, generator=g).to(device)
    return batch


def lerobot_batch(model, batch: dict) -> dict:
    out = {f"observation.{k}": v for k, v in batch.items() if k.startswith("images.")}
    out["observation.state"] = batch["state"]
    lang = model.tokenize(batch["instruction"], batch["state"])
    out["observation.language.tokens"], out["observation.language.attention_mask"] = lang["lang_tokens"], \
        lang["lang_mask"]
    return out


def latency(model, spec, args, device, autocast: bool) -> dict[str, float]:
    batch = make_batch(spec, args.batch, device)
    lr = lerobot_batch(model, batch)
    ode = ChainConfig(num_steps=args.steps, mode="ode")
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    model.eval()

    @torch.no_grad()
    def ours():
        sample_chain(model, model.encode(batch), ode)

    @torch.no_grad()
    def ours_pretokenised():  # what a rollout worker does when it stores the tokens with the observation
        sample_chain(model, model.encode({**batch, "lang_tokens": lr["observation.language.tokens"],
                                          "lang_mask": lr["observation.language.attention_mask"]}), ode)

    def theirs(k: int):
        def run():
            model.policy.config.num_inference_steps = k
            with amp:
                model.policy.predict_action_chunk(lr)
        return run

    stock = model.policy.config.num_inference_steps
    out = {f"ours K={args.steps} (incl. tokenise)": timed(ours, device, args.repeats, args.warmup),
           f"ours K={args.steps} (pre-tokenised)": timed(ours_pretokenised, device, args.repeats, args.warmup),
           f"lerobot predict_action_chunk K={stock}": timed(theirs(stock), device, args.repeats, args.warmup),
           f"lerobot predict_action_chunk K={args.steps}": timed(theirs(args.steps), device, args.repeats,
                                                                 args.warmup)}
    model.policy.config.num_inference_steps = stock
    return out


def ppo_step(model, spec, args, device) -> dict[str, float]:
    """One PPO minibatch update on stored chains (the cost the trainer pays per minibatch)."""
    cfg = ChainConfig(num_steps=args.steps, mode=args.mode)
    batch = make_batch(spec, args.ppo_batch, device)
    model.eval()
    with torch.no_grad():
        ctx = model.encode(batch)
        chain = sample_chain(model, ctx, cfg)
        old_values = model.value(ctx, chain.feats_mean)
    adv = torch.randn(args.ppo_batch, device=device)
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

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ms = timed(update, device, args.repeats, args.warmup)
    out = {f"PPO update ({args.mode}, minibatch {args.ppo_batch})": ms}
    if device.type == "cuda":
        out["PPO peak GPU memory (GiB)"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    from pirl_robot.models.tiny_vla import tiny_options

    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tok, tok_note = tokenizer_path(args, Path(tmp))
        spec = make_spec(args)
        for kind in args.kind:
            autocast = device.type == "cuda" and not args.no_autocast and not args.tiny
            opts = (tiny_options(spec, tok, max_state_dim=32, max_action_dim=32) if args.tiny else
                    {"tokenizer": tok, "autocast_bf16": autocast})
            opts["gradient_checkpointing"] = args.checkpointing
            from pirl_robot.models.pi0 import lerobot_policy_class

            lerobot_policy_class(kind)  # imports outside the build timing
            t0 = time.perf_counter()
            with torch.device(device):
                model = build_model(kind, opts, spec)
            n = sum(p.numel() for p in model.parameters())
            rows.append((kind, f"build ({n / 1e6:.1f}M params, s)", time.perf_counter() - t0))
            setup = "bf16 autocast, fp32 weights" if autocast else "fp32"
            for name, v in latency(model, spec, args, device, autocast).items():
                rows.append((kind, f"{name} [{setup}, ms]", v))
            for name, v in ppo_step(model, spec, args, device).items():
                rows.append((kind, f"{name} [{setup}{', ckpt' if args.checkpointing else ''}, ms]"
                             if "memory" not in name else name, v))
            if device.type == "cuda" and not args.tiny:  # lerobot's own bf16 weights, its stock inference setup
                model.policy.model.paligemma_with_expert.to_bfloat16_for_selected_params("bfloat16")
                model.cfg.autocast_bf16 = False
                for name, v in latency(model, spec, args, device, autocast=False).items():
                    rows.append((kind, f"{name} [lerobot bf16 weights, ms]", v))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\ndevice: {dev_name}; batch {args.batch}, chunk {args.chunk}, {args.cameras} x {args.image_size} px "
          f"camera(s), K={args.steps}, {'tiny' if args.tiny else 'real'} widths; tokenizer: {tok_note}\n")
    print("| model | measurement | value |\n|---|---|---|")
    for kind, name, v in rows:
        print(f"| {kind} | {name} | {v:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"bench_vla_{'tiny' if args.tiny else 'real'}_{dev_name.replace(' ', '_')}.json"
    f.write_text(json.dumps({"args": vars(args), "device": dev_name, "tokenizer": tok_note,
                             "rows": [{"model": k, "measurement": n, "value": v} for k, n, v in rows]}, indent=2))
    print(f"\nwritten {f}")


if __name__ == "__main__":
    main()
