"""CUDA graphs for pi0 / pi0.5's fast path: one captured prefix encode and one captured denoising step per input
signature, replayed with a few hundred microseconds of launch cost instead of ~6,000 kernel launches per chunk.

    graphs = PrefixGraphs(inner, "pi0", autocast)          # built by PiVLA on first CUDA use
    ctx = graphs.encode(images, img_masks, tokens, lang_mask, state, mask_free)   # FastContext, static buffers
    v, feats = graphs.step(ctx, x_t, t)                    # fresh tensors (the static outputs are cloned)

With compile=True the two functions first go through torch.compile (inductor fuses the norms, rope, residuals and
casts that dominate a batch-1 step; compile_mode "max-autotune-no-cudagraphs" also times GEMM tiles for the
small-M shapes of a batch-1 step); its artefacts are cached on disk (TORCHINDUCTOR_CACHE_DIR, default
~/.cache/pirl_robot/inductor), so only the first start of a machine pays the compilation.

A signature is the shapes and dtypes of the inputs (batch size, token length; images arrive already resized to the
model's resolution) and whether the prefix is mask-free (pi0_fast.drop_padding). A new one is captured on first
use; beyond `max_entries` the least recently used entry is dropped, and its contexts then fail `check_fresh()`
instead of reading another batch's buffers. Weights are read in place at every replay, so optimiser steps on the
same parameters are seen without recapture.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from pirl_robot.models import pi0_fast
from pirl_robot.models.pi0_fast import FastContext

log = logging.getLogger(__name__)


@dataclass
class GraphEntry:
    inputs: list[torch.Tensor]
    encode_graph: torch.cuda.CUDAGraph
    ctx: FastContext
    generation: int = 0
    step_graph: torch.cuda.CUDAGraph | None = None
    step_io: dict[str, torch.Tensor] = field(default_factory=dict)
    capture_s: float = 0.0


def _capture(fn: Callable, pool) -> tuple[torch.cuda.CUDAGraph, object]:
    """Warm fn up on a side stream (cuBLAS / SDPA pick their kernels there), then capture it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


class PrefixGraphs:
    def __init__(self, inner, kind: str, autocast: Callable[[], contextlib.AbstractContextManager],
                 max_entries: int = 8, compile: bool = False, compile_mode: str = "default"):
        self.inner, self.kind, self.autocast, self.max_entries = inner, kind, autocast, max_entries
        self.entries: OrderedDict[tuple, GraphEntry] = OrderedDict()
        self.pool = torch.cuda.graph_pool_handle()
        self.encode_fn, self.step_fn = pi0_fast.encode_prefix, pi0_fast.denoise_step
        if compile:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "pirl_robot" / "inductor"))
            self.encode_fn = torch.compile(self.encode_fn, dynamic=False, mode=compile_mode)
            self.step_fn = torch.compile(self.step_fn, dynamic=False, mode=compile_mode)

    def encode(self, images: list[torch.Tensor], img_masks: list[torch.Tensor], tokens: torch.Tensor,
               lang_mask: torch.Tensor, state: torch.Tensor | None, mask_free: bool = False) -> FastContext:
        inputs = [*images, *img_masks, tokens, lang_mask] + ([] if state is None else [state])
        key = (len(images), mask_free) + tuple((tuple(x.shape), x.dtype) for x in inputs)
        entry = self.entries.get(key)
        if entry is None:
            entry = self._capture_encode(key, inputs, len(images), state is not None, mask_free)
        self.entries.move_to_end(key)
        for static, x in zip(entry.inputs, inputs):
            static.copy_(x)
        entry.encode_graph.replay()
        entry.generation += 1
        return replace(entry.ctx, graph=entry, generation=entry.generation)

    def step(self, ctx: FastContext, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.check_fresh()
        entry: GraphEntry = ctx.graph
        if entry.step_graph is None or entry.step_io["x"].shape != x.shape:
            self._capture_step(entry, x, t)
        io = entry.step_io
        io["x"].copy_(x)
        io["t"].copy_(t)
        entry.step_graph.replay()
        return io["v"].clone(), io["feats"].clone()

    def _capture_encode(self, key: tuple, inputs: list[torch.Tensor], n_img: int, has_state: bool,
                        mask_free: bool) -> GraphEntry:
        if len(self.entries) >= self.max_entries:
            _, old = self.entries.popitem(last=False)
            old.generation = -1  # its contexts are stale from now on
            log.warning("CUDA graph cache full (%d signatures): dropped the oldest", self.max_entries)
        t0 = time.perf_counter()
        static = [x.clone() for x in inputs]

        def run():
            with torch.no_grad(), self.autocast():
                return self.encode_fn(self.inner, self.kind, static[:n_img], static[n_img:2 * n_img],
                                      static[2 * n_img], static[2 * n_img + 1],
                                      static[2 * n_img + 2] if has_state else None, mask_free)

        graph, ctx = _capture(run, self.pool)
        entry = GraphEntry(static, graph, ctx)
        entry.capture_s = time.perf_counter() - t0
        self.entries[key] = entry
        log.info("captured the prefix graph for %s in %.2f s", key[2][0], entry.capture_s)
        return entry

    def _capture_step(self, entry: GraphEntry, x: torch.Tensor, t: torch.Tensor) -> None:
        t0 = time.perf_counter()
        io = {"x": x.detach().clone(), "t": t.detach().clone().contiguous()}
        ctx = replace(entry.ctx, graph=None)

        def run():
            with torch.no_grad(), self.autocast():
                return self.step_fn(self.inner, self.kind, ctx, io["x"], io["t"])

        entry.step_graph, (io["v"], io["feats"]) = _capture(run, self.pool)
        entry.step_io = io
        entry.capture_s += time.perf_counter() - t0

    def capture_seconds(self) -> float:
        return sum(e.capture_s for e in self.entries.values())
