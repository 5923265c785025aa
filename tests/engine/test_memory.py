"""Process memory: one malloc arena, and freed buffers handed back after runs that grew the process."""

from __future__ import annotations

import sys

import pytest
import torch

from engine import runtime
from engine.runtime import M_ARENA_MAX, ResidentTrim, resident_bytes, single_arena


class _Readings:
    """A resident-size reader that replays fixed values (bytes)."""

    def __init__(self, *values: int | None) -> None:
        self.values = list(values)

    def __call__(self) -> int | None:
        return self.values.pop(0)


def test_a_run_that_grew_the_process_past_the_slack_is_trimmed_once():
    trims = []
    trim = ResidentTrim(slack=100, resident=_Readings(1000, 1050, 1300, 1020, 1090, 1130, 1040))
    release = lambda: trims.append(1) or True  # noqa: E731
    assert not trim.settle(release)  # 1050: within the slack of 1000
    assert trim.settle(release) and trims == [1]  # 1300: trimmed; the new low is read after it (1020)
    assert trim.low == 1020
    assert not trim.settle(release)  # 1090 <= 1020 + 100
    assert trim.settle(release) and trims == [1, 1]  # 1130 > 1120


def test_the_low_point_follows_the_process_down():
    """After memory went back elsewhere (a closed document), growth counts from the new low."""
    trims = []
    trim = ResidentTrim(slack=100, resident=_Readings(1000, 600, 750, 720))
    release = lambda: trims.append(1) or True  # noqa: E731
    assert not trim.settle(release) and trim.low == 600
    assert trim.settle(release) and trims == [1] and trim.low == 720  # 750 > 600 + 100


def test_a_hand_back_elsewhere_lowers_the_low_point_at_once():
    """A closed document's cache handed back outside `settle`: the next run that leaves 60 of its
    own freed bytes resident is measured from the new low and trimmed (not from the old one)."""
    trims = []
    trim = ResidentTrim(slack=50, resident=_Readings(1000, 940, 1000, 930))
    release = lambda: trims.append(1) or True  # noqa: E731
    assert trim.hand_back(release) and trims == [1]  # the close's hand-back: 940 after it
    assert trim.low == 940
    assert trim.settle(release) and trims == [1, 1]  # 1000 > 940 + 50
    assert trim.low == 930


def test_without_a_resident_size_runs_that_prefilled_are_trimmed():
    trims = []
    trim = ResidentTrim(slack=100, resident=lambda: None)
    release = lambda: trims.append(1) or True  # noqa: E731
    assert not trim.settle(release, prefilled=False) and trims == []
    assert trim.settle(release, prefilled=True) and trims == [1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_resident_bytes_sees_touched_memory():
    before = resident_bytes()
    block = torch.ones(64 << 18)  # 64 MB of float32, every page written
    after = resident_bytes()
    assert before is not None and after is not None and after - before >= 48 << 20
    del block


class _Libc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


@pytest.fixture
def fake_libc(monkeypatch):
    libc = _Libc()
    monkeypatch.setattr(runtime, "_libc", lambda: libc)
    single_arena.cache_clear()
    yield libc
    single_arena.cache_clear()


def test_single_arena_is_set_once_per_process(fake_libc, monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert single_arena() and single_arena()
    assert fake_libc.calls == [(M_ARENA_MAX, 1)]


def test_single_arena_leaves_a_users_malloc_arena_max_alone(fake_libc, monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not single_arena() and fake_libc.calls == []


def test_the_server_sets_one_arena_before_its_threads_start(monkeypatch):
    """`lsp_server.__main__` applies it before anything else runs (here: a bad --model ends it
    right after the process-wide settings)."""
    import logging

    import lsp_server.__main__ as entry

    order = []
    monkeypatch.setattr(runtime, "single_arena", lambda: order.append("arena") or True)
    monkeypatch.setattr(runtime, "configure_threads", lambda threads=None: order.append("threads") or 1)
    handlers, interval = logging.getLogger().handlers[:], sys.getswitchinterval()
    try:
        assert entry.main(["--model", "/no/such/dir"]) == 2
    finally:
        logging.getLogger().handlers[:] = handlers
        sys.setswitchinterval(interval)
    assert order == ["arena", "threads"]


class _Madvise:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.argtypes = self.restype = None

    def __call__(self, addr: int, length: int, advice: int) -> int:
        self.calls.append((addr, length, advice))
        return 0


def test_only_library_code_is_released(monkeypatch, tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "1000-3000 r-xp 00000000 08:01 11 /usr/lib/libtorch_cpu.so\n"  # library code: released
        "3000-4000 r--p 00002000 08:01 11 /usr/lib/libtorch_cpu.so\n"  # read-only data (relocated): kept
        "4000-5000 rw-p 00003000 08:01 11 /usr/lib/libtorch_cpu.so\n"  # written data: kept
        "5000-6000 r-xp 00000000 08:01 12 /usr/lib/libc.so.6\n"  # versioned name: released
        "6000-7000 r-xp 00000000 00:00 0 \n"  # anonymous code (a JIT's): kept
        "7000-8000 r-xp 00000000 08:01 13 /usr/bin/python3.11\n"  # not a library: kept
        "8000-9000 r-xp 00000000 08:01 14 /tmp/old.so (deleted)\n"  # its file is gone: kept
        "9000-a000 rw-p 00000000 00:00 0 [heap]\n")
    madvise = _Madvise()

    class Libc:
        pass

    libc = Libc()
    libc.madvise = madvise
    monkeypatch.setattr(runtime, "_libc", lambda: libc)
    monkeypatch.delenv("DLSP_RELEASE_CODE", raising=False)
    assert runtime.release_cold_code(str(maps)) == 0x2000 + 0x1000
    assert madvise.calls == [(0x1000, 0x2000, runtime.MADV_DONTNEED), (0x5000, 0x1000, runtime.MADV_DONTNEED)]
    monkeypatch.setenv("DLSP_RELEASE_CODE", "0")
    assert runtime.release_cold_code(str(maps)) == 0 and len(madvise.calls) == 2
    monkeypatch.delenv("DLSP_RELEASE_CODE")
    assert runtime.release_cold_code(str(tmp_path / "missing")) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and madvise")
def test_released_code_leaves_the_resident_set_and_still_runs():
    """In a fresh process: torch's library code mapped at import stops counting as resident, and
    the ops it runs afterwards compute what they did before."""
    import subprocess

    script = (
        "import torch\n"
        "from engine.runtime import release_cold_code\n"
        "def rss_file():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssFile'))\n"
        "torch.manual_seed(0); a = torch.randn(64, 64)\n"
        "before = (a @ a).softmax(-1)\n"
        "r0 = rss_file(); n = release_cold_code(); r1 = rss_file()\n"
        "after = (a @ a).softmax(-1)\n"
        "print(n, r0, r1, torch.equal(before, after))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    n, r0, r1, same = out.stdout.split()
    assert int(n) > 0 and same == "True"
    assert int(r1) < int(r0) - 10_000  # kB: torch's code pages (tens of MB) left the resident set
