"""The worker processes of featurization: a pool with its own pipes per worker, a watchdog
that fails a run whose worker makes no progress, and an ending that leaves no worker behind.
What each worker runs is ``aekit.audio.featurize._worker_main``."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import sys
import time
from typing import Iterator, Sequence

import numpy as np

from aekit.errors import DataError, InputError

STALL_TIMEOUT_ENV = "AEKIT_STALL_TIMEOUT"
DEFAULT_STALL_TIMEOUT = 600.0  # seconds without progress on one input before a run is failed
STOP_WAIT = 10.0  # seconds workers get to exit after their last task before they are killed


def stall_limit(value: float | str | None = None) -> float:
    """The watchdog's limit in seconds: ``value``, else $AEKIT_STALL_TIMEOUT, else
    DEFAULT_STALL_TIMEOUT (10 minutes). Must be a positive number."""
    if value is None:
        value = os.environ.get(STALL_TIMEOUT_ENV) or DEFAULT_STALL_TIMEOUT
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not (t > 0 and np.isfinite(t)):
        raise InputError(f"bad stall timeout {value!r} ({STALL_TIMEOUT_ENV}): "
                         "expected a positive number of seconds")
    return t


def exit_with_parent(parent: int) -> None:
    """In a worker (Linux): SIGKILL when the parent dies, even by SIGKILL, so that no orphan
    keeps working; a parent already gone ends the worker at once."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


class WorkerPool:
    """``n`` worker processes, each with its own task pipe and result pipe (no lock shared
    between processes), and a watchdog: :meth:`results` fails with one line naming the input
    when a busy worker makes no progress for ``stall`` seconds. :meth:`stop` ends them: after
    a complete run, a stop message and a join (killed after STOP_WAIT seconds if need be); on
    an error, Ctrl-C or an early close, SIGKILL at once (nothing a killed worker held can
    block anyone) and a join, so that no worker outlives the call."""

    def __init__(self, n: int, frontend, tasks: list | dict, stall: float,
                 send_tasks: bool = False):
        from multiprocessing.sharedctypes import RawArray

        # fork is cheapest (workers inherit the imports, the frontend and the task list); on
        # macOS, where forking a process with threads is unsafe, and elsewhere, spawn.
        # send_tasks: the tasks are made after the workers start (a stream of paths):
        # ``tasks`` is then a dict {number: task} the caller fills, and each task is sent.
        forked = sys.platform.startswith("linux")
        ctx = mp.get_context("fork" if forked else "spawn")
        self.tasks, self.stall, self.forked = tasks, stall, forked and not send_tasks
        self.progress = RawArray("q", 2 * n)  # per worker: input index in work, files started
        self.procs, self.inboxes, self.outboxes = [], [], []
        self.busy: list[list[int]] = [[] for _ in range(n)]  # task numbers sent, not returned
        self.seen = [(0, time.monotonic())] * n  # (progress count, when it last changed)
        gc.freeze()  # forked workers' collections then leave the parent's objects (pages) alone
        try:
            for slot in range(n):
                task_r, task_w = ctx.Pipe(duplex=False)
                res_r, res_w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=self.target, daemon=True, name=f"aekit-featurize-{slot}",
                                args=(slot, frontend, tasks if self.forked else None, task_r,
                                      res_w, self.progress, os.getpid(),
                                      [*self.inboxes, *self.outboxes] if forked else []))
                self.procs.append(p)
                self.inboxes.append(task_w)
                self.outboxes.append(res_r)
                p.start()
                task_r.close()  # the worker's ends: the parent keeps only its own
                res_w.close()
        except BaseException:
            self.stop(ok=False)
            raise
        finally:
            gc.unfreeze()

    def submit(self, n: int) -> None:
        """Send task ``n`` to the worker with the fewest tasks outstanding."""
        slot = min(range(len(self.procs)), key=lambda s: len(self.busy[s]))
        if not self.busy[slot]:
            self.seen[slot] = (self.progress[2 * slot + 1], time.monotonic())
        self.busy[slot].append(n)
        self.inboxes[slot].send((n, None if self.forked else self.tasks[n]))

    def resume(self) -> None:
        """The caller had the results meanwhile: time spent there is no worker's stall."""
        now = time.monotonic()
        self.seen = [(c, now) for c, _ in self.seen]

    def results(self) -> Iterator[tuple[int, object]]:
        """(task number, result) as they arrive, until every task sent has come back;
        DataError when a worker dies or makes no progress for ``stall`` seconds."""
        from multiprocessing.connection import wait

        while any(self.busy):
            conns = {c: s for s, c in enumerate(self.outboxes)}
            ends = {p.sentinel: s for s, p in enumerate(self.procs)}
            ready = wait([*conns, *ends], timeout=min(1.0, self.stall))
            for r in ready:  # results first: a worker may have sent one and then died
                if r in conns:
                    slot = conns[r]
                    try:
                        n, result, exc = r.recv()
                    except (EOFError, OSError):
                        self._died(slot)
                    if exc is not None:
                        raise exc
                    self.busy[slot].remove(n)
                    self.seen[slot] = (self.progress[2 * slot + 1], time.monotonic())
                    yield n, result
            for r in ready:
                if r in ends and not self.outboxes[ends[r]].poll():
                    self._died(ends[r])
            self._watch()

    def collect(self, extra: Sequence = (), timeout: float | None = None) -> list:
        """One round of :meth:`results` that does not wait for every task: the (task number,
        result) pairs that arrive within ``timeout`` seconds (default min(1, stall)), or at
        once when one of ``extra`` (file descriptors: an input being read) becomes ready.
        Same failures as :meth:`results`: a dead worker or the watchdog's stall."""
        from multiprocessing.connection import wait

        conns = {c: s for s, c in enumerate(self.outboxes)}
        ends = {p.sentinel: s for s, p in enumerate(self.procs)}
        ready = wait([*conns, *ends, *extra],
                     timeout=min(1.0, self.stall) if timeout is None else timeout)
        got = []
        for r in ready:  # results first: a worker may have sent one and then died
            if r in conns:
                slot = conns[r]
                try:
                    n, result, exc = r.recv()
                except (EOFError, OSError):
                    self._died(slot)
                if exc is not None:
                    raise exc
                self.busy[slot].remove(n)
                self.seen[slot] = (self.progress[2 * slot + 1], time.monotonic())
                got.append((n, result))
        for r in ready:
            if r in ends and not self.outboxes[ends[r]].poll():
                self._died(ends[r])
        self._watch()
        return got

    def _watch(self) -> None:
        now = time.monotonic()
        for slot, tasks in enumerate(self.busy):
            if not tasks:
                continue
            count, since = self.seen[slot]
            current = self.progress[2 * slot + 1]
            if current != count:
                self.seen[slot] = (current, now)
            elif now - since > self.stall:
                index = self.progress[2 * slot]
                path = next((p for i, p in self.tasks[tasks[0]] if i == index),
                            self.tasks[tasks[0]][0][1])
                raise DataError(f"{path}: no progress for {self.stall:g} s on this input (a "
                                f"stuck decoder?); stopped (${STALL_TIMEOUT_ENV} sets the limit "
                                "in seconds)")

    def _died(self, slot: int) -> None:
        import signal

        p = self.procs[slot]
        p.join(timeout=STOP_WAIT)
        code = p.exitcode
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
               and -code in signal.Signals._value2member_map_ else f"exit status {code}")
        raise DataError(f"a worker process died ({how}; out of memory?); no output written")

    def stop(self, ok: bool) -> None:
        """End every worker and reap it: see the class docstring."""
        try:
            if ok:
                for inbox in self.inboxes:
                    try:
                        inbox.send(None)
                    except (OSError, ValueError):
                        pass
                deadline = time.monotonic() + STOP_WAIT
                for p in self.procs:
                    p.join(timeout=max(0.0, deadline - time.monotonic()))
        finally:  # whatever happened above (a second Ctrl-C), no worker is left running
            for p in self.procs:
                if p.exitcode is None:
                    try:
                        p.kill()
                    except (OSError, AttributeError, ValueError):
                        pass
            for p in self.procs:
                try:
                    p.join(timeout=STOP_WAIT)
                except (OSError, ValueError, AssertionError):
                    pass
            for c in [*self.inboxes, *self.outboxes]:
                c.close()
            self.inboxes, self.outboxes = [], []
