"""The recorder's commit worker: one process (or a thread, for tests) that turns closed episode journals into
datasets (record/commit.py), replaced, and the jobs it dropped redone, when it dies.

    pool = CommitPool("process", log)              # log(level, msg)
    pool.start()                                   # from the thread that will submit: the worker dies with it
    pool.submit(commit_quietly, journal_dir, True) # results -> pool.committed; failures -> pool.errors, logged
    pool.wait()                                    # every job done (a worker that died meanwhile is replaced once)
    pool.shutdown()

A commit runs in another process so video encoding and parquet writing never hold the recorder's GIL while the
robot runs the next episode; the worker dies with its parent (a kill -9 of the node leaves no writer behind,
and the journal it was committing is recovered on the next start).
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

from pirl_robot.process import die_with_parent
from pirl_robot.record.commit import CommitResult, commit_journal, recover


def _worker_init() -> None:
    """In the commit process: die with the recorder, stay below the control loop, load lerobot once."""
    die_with_parent()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.nice(10)  # commits may take their time, ticks may not
    import lerobot.datasets.lerobot_dataset  # noqa: F401


def commit_quietly(journal: Path, rrd: bool) -> CommitResult:
    return commit_journal(journal, rrd=rrd, log=lambda *a: None)


def recover_quietly(record_dir: Path, rrd: bool, exclude: Path) -> list[CommitResult]:
    return recover(record_dir, rrd=rrd, log=lambda *a: None, exclude=exclude)


class CommitPool:
    def __init__(self, run_in: str, log: Callable[[str, str], None]):
        if run_in not in ("process", "thread"):
            raise ValueError("commit_in must be 'process' or 'thread'")
        self.run_in, self.log = run_in, log
        self.committed: list[CommitResult] = []
        self.errors = 0
        self._pool: Executor | None = None
        self._futures: list[Future] = []
        self._jobs: dict[Future, tuple] = {}  # what each job was (redone if its worker dies)

    def start(self) -> None:
        self._pool = self._new_pool()

    def _new_pool(self) -> Executor:
        if self.run_in == "thread":
            return ThreadPoolExecutor(1, thread_name_prefix="commit")
        import multiprocessing

        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)

    def submit(self, fn, *args) -> None:
        try:
            fut = self._pool.submit(fn, *args)
        except BrokenProcessPool:
            self._redo_broken()
            fut = self._pool.submit(fn, *args)
        fut.add_done_callback(self._on_done)
        self._futures.append(fut)
        self._jobs[fut] = (fn, *args)

    def _redo_broken(self) -> None:
        """The worker died (killed, out of memory): start another and redo the jobs it dropped."""
        lost = [(f, job) for f, job in self._jobs.items() if f.done() and isinstance(f.exception(), BrokenProcessPool)]
        if not lost and not getattr(self._pool, "_broken", False):
            return
        self.log("warn", f"the commit worker died; starting a new one and redoing {len(lost)} job(s)")
        self._pool.shutdown(wait=False)
        self._pool = self._new_pool()
        for f, job in lost:
            del self._jobs[f]
            self._futures.remove(f)
            self.submit(*job)

    def _on_done(self, fut: Future) -> None:
        try:
            res = fut.result()
        except BrokenProcessPool:
            return  # redone by a new worker (_redo_broken)
        except Exception as e:
            self.errors += 1
            self.log("error", f"commit failed: {type(e).__name__}: {e} (the journal is kept and committed on the "
                              f"next start)")
            return
        for r in res if isinstance(res, list) else [res]:
            self.committed.append(r)
            self.log("warn" if r.status in ("recovered", "discarded", "failed") else "info", r.message)

    def wait(self) -> None:
        for _ in range(2):  # a worker that died while we waited is replaced once
            for fut in list(self._futures):
                try:
                    fut.result()
                except Exception:
                    pass  # logged by _on_done
            if not any(isinstance(f.exception(), BrokenProcessPool) for f in self._futures if f.done()):
                break
            self._redo_broken()
        self._futures = [f for f in self._futures if not f.done()]
        self._jobs = {f: j for f, j in self._jobs.items() if not f.done() or
                      isinstance(f.exception(), BrokenProcessPool)}

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
