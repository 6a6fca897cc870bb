"""What a deploy node pays at start-up for pi0's fast path, and the batch-1 latency it then gets.

    python bench/bench_vla_start.py --device cuda                     # CUDA graphs only (nothing compiled)
    python bench/bench_vla_start.py --device cuda --compile           # + torch.compile; run twice: cold, then warm
    python bench/bench_vla_start.py --tiny --device cpu               # smoke run of the script itself

One process = one start: build the model at real size (random weights), `prepare_inference()` (bf16 weights, fast
path), then the first chunk (CUDA-graph capture, and compilation with --compile: inductor's artefacts land in
TORCHINDUCTOR_CACHE_DIR, default ~/.cache/pirl_robot/inductor, so a second start reads them back), then the median
latency of batch-1 chunks at K=4 and K=10. Prints one table row; appends it as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pirl_robot.flow import ChainConfig, sample_chain
from pirl_robot.models.factory import build_model
from pirl_robot.models.tokenizer import train_word_tokenizer
from pirl_robot.spec import CameraSpec, PolicySpec

TASKS = ["pick up the red cube and place it on the green target", "push the cube to the goal"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:5]))
    p.add_argument("--kind", default="pi0", choices=["pi0", "pi05"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the graphed prefix and step")
    p.add_argument("--tiny", action="store_true", help="tiny widths (CPU smoke run)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="bench/results/vla_start.jsonl")
    a = p.parse_args()
    t_start = time.perf_counter()
    device = torch.device(a.device)
    size = 32 if a.tiny else 224
    spec = PolicySpec(state_names=tuple(f"q{i}" for i in range(8)), action_names=tuple(f"a{i}" for i in range(7)),
                      cameras=(CameraSpec("cam0", size, size), CameraSpec("cam1", size, size)),
                      chunk_size=8 if a.tiny else 50, exec_horizon=8 if a.tiny else 50, instruction=TASKS[0])
    with tempfile.TemporaryDirectory() as tmp:
        tok = str(train_word_tokenizer(TASKS, Path(tmp) / "tok"))
        if a.tiny:
            from pirl_robot.models.tiny_vla import tiny_options
            opts = tiny_options(spec, tok)
        else:
            opts = {"tokenizer": tok}
        t0 = time.perf_counter()
        with torch.device(device):
            model = build_model(a.kind, {**opts, "fast_path": "on", "compile": a.compile}, spec).eval()
        model.prepare_inference()
        build_s = time.perf_counter() - t0
        g = torch.Generator().manual_seed(0)
        batch = {"state": (torch.rand(1, 8, generator=g) * 2 - 1).to(device),
                 **{f"images.cam{i}": torch.rand(1, 3, size, size, generator=g).to(device) for i in range(2)}}
        batch.update(model.tokenize([TASKS[0]], batch["state"]))

        def chunk(k: int):
            with torch.no_grad():
                out = sample_chain(model, model.encode(batch), ChainConfig(num_steps=k, mode="ode")).actions
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        t0 = time.perf_counter()
        chunk(4)
        first_s = time.perf_counter() - t0
        row = {"model": a.kind, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "compile": a.compile, "build_s": build_s, "first_chunk_s": first_s}
        for k in (4, 10):
            chunk(k)
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                chunk(k)
                times.append((time.perf_counter() - t0) * 1e3)
            row[f"batch1_K{k}_ms"] = statistics.median(times)
    row["process_s"] = time.perf_counter() - t_start
    print("| model | compile | build s | first chunk s (capture/compile) | b1 K=4 ms | b1 K=10 ms | whole start s |")
    print(f"| {row['model']} | {row['compile']} | {build_s:.1f} | {first_s:.1f} | {row['batch1_K4_ms']:.2f} | "
          f"{row['batch1_K10_ms']:.2f} | {row['process_s']:.1f} |", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
