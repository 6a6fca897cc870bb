"""SDPA kernels at pi0's attention shapes: which one the fast path should use (PiVLAConfig.attention).

    python bench/bench_attention.py                  # on a CUDA machine, a few seconds
    python bench/bench_attention.py --batch 1 8 64 --calls 50

Shapes (PaliGemma's Gemma 2B and the 300M expert: 8 query heads, 1 key/value head, head_dim 256):
  prefix   every prefix token (2 cameras x 256 + 48 language tokens = 560) over the prefix, key padding mask
  step     the action expert's suffix (chunk 50 + pi0's state token = 51) over prefix + suffix (611 keys)
Each kernel is replayed from a CUDA graph of --calls back-to-back calls, so the figure is GPU time per call
without Python or launch overhead. "flash (no mask)" is what the fast path's mask-free prefix runs (no prefix token
is padding: pi0 with one instruction per batch, see pi0_fast.drop_padding); with padding the mask is needed, which
flash does not take.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
           "math": SDPBackend.MATH, "flash (no mask)": SDPBackend.FLASH_ATTENTION}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.split("\n")[1:4]))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    p.add_argument("--calls", type=int, default=20, help="calls per captured graph")
    p.add_argument("--replays", type=int, default=20)
    return p.parse_args()


def time_kernel(kernel: SDPBackend, q, k, v, mask, calls: int, replays: int) -> float | str:
    """GPU microseconds per call, or why the kernel refused the inputs."""
    def run():
        with sdpa_kernel(kernel):
            for _ in range(calls):
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    try:
        run()  # warm-up (and the refusal, if any) outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
    except RuntimeError as e:
        return f"refused: {str(e).splitlines()[0][:60]}"
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (replays * calls)


def main() -> None:
    args = parse()
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention times CUDA kernels: run it on a machine with a GPU")
    print(f"device: {torch.cuda.get_device_name()}, bf16, 8 query heads / 1 kv head, head_dim 256\n")
    print("| shape | batch | " + " | ".join(KERNELS) + " |\n|---|---|" + "---|" * len(KERNELS))
    for name, s, t in (("prefix", 560, 560), ("step", 51, 611)):
        for b in args.batch:
            q = torch.randn(b, 8, s, 256, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(b, 1, t, 256, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            pad = torch.ones(b, t, dtype=torch.bool, device="cuda")
            pad[:, t - 20:t - 10] = False  # some padded language tokens
            mask = torch.where(pad, 0.0, -2.3819763e38).to(torch.bfloat16)[:, None, None, :].expand(b, 1, s, t)
            cells = []
            for label, kernel in KERNELS.items():
                us = time_kernel(kernel, q, k, v, None if "no mask" in label else mask, args.calls, args.replays)
                cells.append(f"{us:.1f} us" if isinstance(us, float) else us)
            print(f"| {name} ({s} x {t}) | {b} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
