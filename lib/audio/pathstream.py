"""Lists of paths read as they come, and featurized in input order as they are read.

``find ... | ae-score MODEL -`` must not wait for (nor hold) the whole list: a
:class:`PathSource` hands out the paths read so far, and :func:`iter_features_stream` keeps
a bounded window of them in flight in the featurize workers (``aekit.audio.featurize``), yielding
results in input order. When the list pauses (the writer is slow) and every path read so far
has been yielded, it yields :data:`IDLE`, so that a caller can write what it holds before it
waits. Nothing per input is kept after its result is yielded: memory does not grow with the
length of the list.

Sources: :class:`LineReader` reads a file descriptor (a pipe, a file, a terminal) without
blocking, one path a line; :class:`IterSource` wraps any iterable of paths, read as the work
needs it (it may block, and is then never idle).
"""

from __future__ import annotations

import os
import select
from collections import deque
from pathlib import Path, PurePath
from typing import Iterable, Iterator

from aekit.errors import InputError

#: Yielded by :func:`iter_features_stream` when the list has no path ready and every path
#: read so far has been yielded.
IDLE = None

READ_AHEAD = 4096  # paths read ahead of the work, at most (plus one read's worth)
MAX_LINE = 1 << 20  # bytes: a longer "line" is not a list of paths
READ_CHUNK = 1 << 16


class PathSource:
    """Paths handed out as they become available: :meth:`take` never blocks (it returns what
    has been read), :meth:`wait` blocks until more may be available. Iterating blocks."""

    eof = False  # no path is left beyond those buffered
    count = 0  # paths handed out so far

    def take(self, k: int) -> list[str]:
        raise NotImplementedError

    def remaining(self) -> int | None:
        """How many paths are left, when the end of the list has been read; else None."""
        return 0 if self.eof else None

    def fileno(self) -> int | None:
        """A descriptor that becomes readable when :meth:`take` may return more; None: the
        source is read as needed (take may block) and is never idle."""
        return None

    def wait(self, timeout: float | None = None) -> None:
        pass

    def __iter__(self) -> Iterator[str]:
        while True:
            got = self.take(1)
            if got:
                yield got[0]
            elif self.eof:
                return
            else:
                self.wait(None)


class LineReader(PathSource):
    """Paths read from a file descriptor, one a line, without blocking and without holding
    the list: only the line end (LF or CRLF) is removed, empty lines are skipped, a UTF-8
    byte order mark before the first line is dropped; names are decoded as UTF-8 with
    undecodable bytes kept as surrogates (as ``os.fsdecode``), like a list read from stdin
    (``aekit.audio.decode.discover``). At most READ_AHEAD paths are read ahead of what is taken."""

    def __init__(self, fd: int, read_ahead: int = READ_AHEAD):
        self.fd = fd
        self.read_ahead = max(1, int(read_ahead))
        self.lines: deque[str] = deque()
        self.partial = b""
        self.first = True
        self.eof_read = False  # the descriptor reached its end
        self.line_no = 0

    @property
    def eof(self) -> bool:
        return self.eof_read and not self.lines

    def _line(self, raw: bytes) -> None:
        self.line_no += 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        line = raw.decode("utf-8", "surrogateescape")
        if self.first:
            line = line.removeprefix("\ufeff")
            self.first = False
        if line:
            self.lines.append(line)

    def _fill(self) -> None:
        while not self.eof_read and len(self.lines) < self.read_ahead:
            try:
                readable, _, _ = select.select([self.fd], [], [], 0)
            except (OSError, ValueError):  # not selectable: read (a regular file never blocks)
                readable = [self.fd]
            if not readable:
                return
            chunk = os.read(self.fd, READ_CHUNK)
            if not chunk:
                self.eof_read = True
                if self.partial:
                    self._line(self.partial)
                    self.partial = b""
                return
            parts = (self.partial + chunk).split(b"\n")
            self.partial = parts.pop()
            if len(self.partial) > MAX_LINE:
                raise InputError(f"line {self.line_no + len(parts) + 1} of the list of paths "
                                 f"is longer than {MAX_LINE:,} bytes: not a list of paths")
            for raw in parts:
                self._line(raw)

    def take(self, k: int) -> list[str]:
        self._fill()
        out = []
        while self.lines and len(out) < k:
            out.append(self.lines.popleft())
        self.count += len(out)
        return out

    def remaining(self) -> int | None:
        self._fill()
        return len(self.lines) if self.eof_read else None

    def fileno(self) -> int | None:
        return None if self.eof_read else self.fd

    def wait(self, timeout: float | None = None) -> None:
        if self.eof_read or self.lines:
            return
        try:
            select.select([self.fd], [], [], timeout)
        except (OSError, ValueError):
            pass


class IterSource(PathSource):
    """Any iterable of paths (str, bytes or os.PathLike), read as the work needs it: taking
    ``k`` paths reads ``k`` (blocking if the iterable blocks)."""

    def __init__(self, paths: Iterable):
        self.it = iter(paths)
        self.eof = False

    def take(self, k: int) -> list[str]:
        out = []
        while len(out) < k and not self.eof:
            try:
                p = next(self.it)
            except StopIteration:
                self.eof = True
                break
            out.append(as_path(p))
        self.count += len(out)
        return out



def as_path(p) -> str:
    """One path as a str (bytes as os.fsdecode gives them); TypeError for anything else."""
    if isinstance(p, bytes):
        return os.fsdecode(p)
    try:
        return str(os.fspath(p))
    except TypeError:
        raise TypeError(f"a path must be a str, bytes or os.PathLike, got {type(p).__name__}"
                        ) from None


def stdin_paths(stream) -> PathSource:
    """The list of paths on ``stream`` (sys.stdin): a :class:`LineReader` of its descriptor,
    or, for a stream without one (an in-memory stream), its lines read as needed."""
    if stream is None:  # stdin closed
        return IterSource(())
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        fd = None
    if fd is not None:
        return LineReader(fd)
    from aekit.audio.decode import _list_lines

    return IterSource(p for p in _list_lines(stream) if p)


def listed_id(path: str, root: str | os.PathLike | None = None) -> str:
    """The id of a path from a list that is not held (ae-score -): the path as listed,
    normalized (``./a/b.wav`` -> ``a/b``), or relative to ``root`` when given (InputError
    when it is not under it), without extension, '/'-separated."""
    if root is None:
        rel = PurePath(os.path.normpath(path))
    else:
        a, r = Path(os.path.abspath(path)), Path(os.path.abspath(root))
        if not a.is_relative_to(r):
            raise InputError(f"{a} is not under the id root {r}")
        rel = a.relative_to(r)
    if rel.name in ("", ".", "..") or not rel.suffix:
        return rel.as_posix()
    return rel.with_suffix("").as_posix()


# ------------------------------------------------------------------ featurize a stream

def iter_features_stream(paths, params, jobs: int | None = None, *,
                         stall_timeout: float | None = None):
    """Featurize the paths of ``paths`` (a :class:`PathSource`, or any iterable of paths) as
    they are read; yield one ``aekit.audio.featurize.Featurized`` per path in input order (index =
    position in the list), and :data:`IDLE` when the source has no path ready and everything
    read so far has been yielded.

    At most ``IN_FLIGHT_PER_JOB * jobs`` tasks of up to ``TASK_FILES`` paths are in flight; a
    task is sent short when the source has nothing more ready. Workers, their watchdog
    (``stall_timeout``) and their ending are those of ``aekit.audio.featurize.iter_features``
    (``jobs=1``: in this process, no watchdog).
    """
    import torch

    from aekit.audio import featurize as fz

    source = paths if isinstance(paths, PathSource) else IterSource(paths)
    params.check()
    jobs = max(1, int(jobs or fz.available_cpus()))
    stall = fz.stall_limit(stall_timeout)
    fz._preload()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as iter_features: no OpenMP pool in the parent beside workers
    try:
        frontend = params.frontend()
        frontend.warm_up()
        pool = None if jobs == 1 else fz._Workers(jobs, frontend, {}, stall, send_tasks=True)
    finally:
        torch.set_num_threads(threads)

    index = 0

    def next_task() -> list[tuple[int, str]]:
        nonlocal index
        left = source.remaining()  # known once the end of the list is read
        k = fz.TASK_FILES if left is None else max(1, min(fz.TASK_FILES, left // (4 * jobs)))
        got = source.take(k)  # guided sizes at the end, as make_tasks
        task = list(enumerate(got, index))
        index += len(got)
        return task

    def items(result) -> list:
        ok, feats, failed = result
        out = [fz.Featurized(i, p, feats[k], m, None) for k, (i, p, m) in enumerate(ok)]
        out += [fz.Featurized(i, p, None, None, r) for i, p, r in failed]
        return sorted(out, key=lambda it: it.index)

    if pool is None:
        state = fz._worker_state(frontend)
        fresh = False  # something yielded since the last IDLE
        while True:
            task = next_task()
            if task:
                yield from items(fz._process(task, state))
                fresh = True
            elif source.eof:
                return
            elif fresh:
                yield IDLE
                fresh = False
            else:
                source.wait(None)
        return

    window = fz.IN_FLIGHT_PER_JOB * jobs
    done: dict[int, object] = {}  # results that came before an earlier task's
    sent = nxt = 0  # tasks sent; the next task to yield
    fresh = ok = False
    try:
        while True:
            while sent - nxt < window:
                task = next_task()
                if not task:
                    break
                pool.tasks[sent] = task
                pool.submit(sent)
                sent += 1
            if nxt in done:
                result = done.pop(nxt)
                del pool.tasks[nxt]
                nxt += 1
                yield from items(result)
                fresh = True
                pool.resume()
                continue
            if nxt == sent:  # nothing in flight: the source has nothing ready
                if source.eof:
                    break
                if fresh:
                    yield IDLE
                    fresh = False
                    continue
                source.wait(min(1.0, stall))
                continue
            fd = source.fileno() if sent - nxt < window else None
            for m, result in pool.collect([] if fd is None else [fd]):
                done[m] = result
        ok = True
    finally:  # complete; or an error, Ctrl-C, or the caller closed the generator
        pool.stop(ok)
