"""Process-wide CPU settings for inference beside an editor and other work.

Memory (glibc's allocator): `single_arena` (once, at server start), `release_freed_memory`,
`ResidentTrim` (after each run), `mapped_allocations` (while loading); `release_cold_code`
(libraries' code pages, when the engine goes idle).
Threads: `configure_threads`. The OpenMP wait policy must be PASSIVE (idle threads sleep instead
of spinning for ~200 ms after each parallel region, which would take the cores from the editor
between denoising steps), but OpenMP reads it once, when torch loads it, and importing this
package imports torch: entry points set it themselves before any import (`lsp_server.__main__`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Callable, Iterator

MAX_THREADS = 8  # a 135M model's steps are small matmuls; more threads mostly add synchronisation


def default_threads(cores: int | None = None) -> int:
    """Intra-op threads: every core on a machine of 1-2 cores (a step is compute bound and the
    threads sleep when idle), one core left to the editor from 3 cores on, at most MAX_THREADS."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores if cores <= 2 else cores - 1))


def configure_threads(threads: int | None = None) -> int:
    """Set torch's thread counts: `threads`, else DLSP_THREADS, else OMP_NUM_THREADS when the user
    set it, else `default_threads()`; one inter-op thread (the engine runs one request at a time).
    Returns the intra-op count."""
    import torch

    env = os.environ.get("DLSP_THREADS") or os.environ.get("OMP_NUM_THREADS")
    n = threads or (int(env) if env and env.isdigit() and int(env) > 0 else default_threads())
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel work; then keep what it is
        pass
    return n


class ThreadTuner:
    """Chooses the intra-op thread count per request from measured speed.

    With other work on the machine (a build, a training run, the editor itself), fewer threads
    can be faster: an OpenMP region waits for its slowest thread, and a descheduled thread stalls
    them all (on 2 busy cores, one thread ran a 135M-shape step in ~60% of the time two took).
    On a quiet machine every core wins. So each choice keeps a moving average of milliseconds per
    forward pass, the fastest is used, and every `explore`-th request tries another.

    Kept apart per kind of request (`kind`): a cold one (a prefill of the whole context, ~1 s)
    and a warm one (reuse across keystrokes: a few rows per forward, ~30 ms) differ ~30x in a
    forward's cost and in what threads buy (a prefill's large matmuls split well, a step's
    one-row ones hardly do). One average over both measured the mix of requests each count
    happened to serve, not the count: the server ran cold prefills on the count that had served
    cheap steps (engine vs server on the same cold tasks: 1.03-1.24x apart from run to run).
    """

    def __init__(self, choices: tuple[int, ...], explore: int = 8, alpha: float = 0.3) -> None:
        self.choices, self.explore, self.alpha = tuple(sorted(set(choices))), explore, alpha
        self.ms: dict[str, dict[int, float]] = {}  # kind -> threads -> ms per forward
        self.requests: dict[str, int] = {}

    @classmethod
    def for_machine(cls, cores: int | None = None) -> ThreadTuner:
        top = default_threads(cores)
        return cls((1, top) if top > 1 else (1,))

    def pick(self, kind: str = "warm") -> int:
        n = self.requests[kind] = self.requests.get(kind, 0) + 1
        ms = self.ms.get(kind, {})
        untried = [c for c in self.choices if c not in ms]
        if untried:
            return untried[-1]  # the most threads first: right on a quiet machine
        best = min(self.choices, key=lambda c: ms[c])
        # a cold request on the wrong count costs ~1 s (1 thread: a 1k-token prefill 2.3 s against
        # 1.3 s on 2 idle cores), a warm one ~10 ms: cold ones explore 4x less often
        every = self.explore * (4 if kind == "cold" else 1)
        if len(self.choices) > 1 and n % every == 0:
            others = [c for c in self.choices if c != best]
            return others[(n // every) % len(others)]
        return best

    def record(self, threads: int, ms_per_forward: float, kind: str = "warm") -> None:
        ms = self.ms.setdefault(kind, {})
        old = ms.get(threads)
        ms[threads] = ms_per_forward if old is None else (1 - self.alpha) * old + self.alpha * ms_per_forward


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Hand memory freed by the allocator back to the system (glibc `malloc_trim`); without it the
    float matrices replaced by int8 ones, and a prefill's transient buffers, stay in the process's
    resident set. False where there is no glibc."""
    libc = _libc()
    try:
        return bool(libc.malloc_trim(0)) if libc is not None else False
    except AttributeError:
        return False


MADV_DONTNEED = 4  # Linux madvise(2)


def release_cold_code(maps: str = "/proc/self/maps") -> int:
    """Unmap the pages of shared libraries' machine code from this process (Linux `madvise`
    MADV_DONTNEED on read-only executable file mappings of `.so` files). The code that runs again
    faults back in from the page cache (minor faults, read ahead 16 pages at a time); the rest,
    such as the operator registration torch runs once at import, stops counting in the resident
    set. Measured on the loaded engine: file-backed resident memory 92-101 MB -> 11 MB, ~42 MB
    again after the next fill. A private mapping's page is re-read from its file, so this is safe
    only for pages never written: executable mappings of libraries (no text relocations) are not.
    Off with DLSP_RELEASE_CODE=0. Returns the bytes advised (0 where unsupported)."""
    if os.environ.get("DLSP_RELEASE_CODE", "1") == "0":
        return 0
    libc = _libc()
    try:
        with open(maps, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        madvise = libc.madvise if libc is not None else None
    except (OSError, AttributeError):
        return 0
    if madvise is None:
        return 0
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    total = 0
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[1] != "r-xp" or ".so" not in os.path.basename(parts[5]) \
                or parts[5].endswith("(deleted)"):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if madvise(lo, hi - lo, MADV_DONTNEED) == 0:
            total += hi - lo
    return total


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD_MAX = 32 << 20  # where glibc's own threshold grows once large blocks are freed (64-bit)


@contextlib.contextmanager
def mapped_allocations(threshold: int = 1 << 20) -> Iterator[None]:
    """Inside: every allocation of `threshold` bytes or more gets a mapping of its own (glibc
    `mallopt`), so what a load frees goes back to the system whole instead of leaving holes in
    the heap under what it keeps (the int8 engine: ~30 MB less resident after loading, ~150 MB
    lower peak). After: the thresholds glibc's own adjustment reaches after a load's large frees
    (mapping from `MMAP_THRESHOLD_MAX`, trimming the heap's top from twice that); a small
    threshold while serving costs page faults on every fresh page of every large buffer
    (prefills ran up to ~1.7x slower), and so does a small trim threshold (the heap's top handed
    back after each step). Does nothing without glibc."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, threshold)
    try:
        yield
    finally:
        if mallopt is not None:
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
            mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)


M_ARENA_MAX = -8  # glibc's mallopt parameter


@functools.cache
def single_arena() -> bool:
    """Every thread allocates from glibc's main arena (`mallopt(M_ARENA_MAX, 1)`); once per
    process, before the threads that load the model and run requests start. Returns whether it
    was applied: not without glibc, nor where the user set MALLOC_ARENA_MAX (their choice stands).

    Why: the server loads the model on one thread and runs the engine on another, and glibc gives
    each thread an arena of its own. `malloc_trim` hands back the free pages inside every arena
    but shrinks only the main arena's top: each other arena kept the free top of its heap (up to
    the trim threshold, 64 MB) resident. With a 1k-token document open, after a run that
    prefilled, the process stayed at 515-537 MB with per-thread arenas and at 515 MB with one
    (two documents: 553 vs 532 MB). The engine's allocations come from one thread at a time, so
    the shared arena's lock is not contended (step and prefill times unchanged)."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(mallopt(M_ARENA_MAX, 1))


def resident_bytes() -> int | None:
    """This process's resident set now (Linux `/proc/self/statm`; ~20 us), or None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


TRIM_SLACK = 16 << 20  # growth past the last low point that is handed back (a cache grows ~46 KB a row)


class ResidentTrim:
    """Hands freed memory back after a run when the process grew by more than `slack` bytes past
    its lowest resident size since the last hand-back.

    A run's transient buffers are freed when it ends but stay resident in the allocator's heap
    until `malloc_trim`. Which runs leave them is not known up front: a first prefill does
    (~150 MB at 1k tokens), but so does a keystroke whose reuse plan fails after a growth round,
    or an edit that outgrows the cache's spare rows (a new ~46 MB storage, the old one freed).
    Trimming only after runs that reused nothing left such runs' buffers resident: the server
    stayed ~150 MB above its caches with a document open. Trimming after every run would make the
    next run fault its pages in again. The resident size is the direct measure, and reading it
    costs microseconds. Where it cannot be read, runs that prefilled are trimmed (`prefilled`).

    Args:
        slack: growth in bytes past the low point that triggers a hand-back.
        resident: reads the resident size in bytes (None: unknown).
    """

    def __init__(self, slack: int = TRIM_SLACK, resident: Callable[[], int | None] = resident_bytes) -> None:
        self.slack, self.resident = slack, resident
        self.low = resident()

    def settle(self, release: Callable[[], bool] = release_freed_memory, prefilled: bool = False) -> bool:
        """After a run: hand freed memory back (`release`) if the process grew past the slack.
        Returns whether it did."""
        now = self.resident()
        if now is None:
            return bool(prefilled and release())
        if self.low is not None and now <= self.low + self.slack:
            self.low = min(self.low, now)
            return False
        release()
        self.low = self.resident()
        return True

    def hand_back(self, release: Callable[[], bool] = release_freed_memory) -> bool:
        """Hand freed memory back now, outside a run (a closed document, idle caches narrowed):
        the low point becomes where the process is after it, so the next run's growth is
        measured from there. Returns what `release` did."""
        done = release()
        now = self.resident()
        if now is not None:
            self.low = now if self.low is None else min(self.low, now)
        return done
