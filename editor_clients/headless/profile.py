"""`dlsp profile`: replay typing traces through the real server and report what a user feels.

A trace takes a real source file, removes a few consecutive lines and types them back in
realistic chunks (1-6 characters) with pauses (shorter inside words, longer after punctuation
and at line ends). After every chunk the client asks for an inline completion the way an editor
does (automatic trigger) and cancels the previous request if it is still pending.

Reported: client-side latency of answered requests (p50, p95, p99, max), requests cancelled by
the client and requests the server dropped (cancelled or content-modified errors), the server's
per-stage timings (`dlsp/stats`), and how often a shown suggestion matches what the user typed
next (its first line is a prefix of the rest of the line being typed). Prints a table, writes JSON
and a PNG (latency histogram, CDF, per-stage breakdown).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from editor_clients.headless.client import CONTENT_MODIFIED, REQUEST_CANCELLED, LspClient

STDLIB_FILES = ("textwrap.py", "string.py", "json/encoder.py", "shlex.py", "fractions.py", "heapq.py")


@dataclass(frozen=True)
class Chunk:
    text: str
    pause_s: float  # think time before the next chunk


@dataclass(frozen=True)
class Trace:
    name: str
    text: str  # the document without the lines to type
    at: int  # where typing starts
    typed: str  # what the user types
    chunks: tuple[Chunk, ...]


@dataclass
class Record:
    trace: str
    offset: int  # offset in `typed` after the chunk that triggered the request
    sent: float
    done: float | None = None
    outcome: str = "pending"  # answered | empty | cancelled | dropped | error | timeout
    suggestion: str = ""
    match: bool = False
    matched_chars: int = 0

    @property
    def latency_ms(self) -> float | None:
        return None if self.done is None else (self.done - self.sent) * 1000


@dataclass
class Summary:
    requests: int = 0
    answered: int = 0
    empty: int = 0
    cancelled_by_client: int = 0
    dropped_by_server: int = 0
    errors: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    last_request_latency_ms: dict[str, float] = field(default_factory=dict)
    shown: int = 0
    match_rate: float = 0.0
    mean_matched_chars: float = 0.0


def default_files() -> list[Path]:
    sample = Path(str(resources.files("editor_clients.headless").joinpath("samples/inventory.py")))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [sample] + [stdlib / f for f in STDLIB_FILES if (stdlib / f).is_file()]


def chunk_text(typed: str, rng: random.Random, speed: float) -> tuple[Chunk, ...]:
    """Split `typed` into 1-6 character chunks with human-like pauses (scaled by 1/speed)."""
    out, i = [], 0
    while i < len(typed):
        n = rng.choice((1, 1, 1, 2, 2, 3, 4, 6))
        piece = typed[i:i + n]
        nl = piece.find("\n")
        if nl >= 0:  # a newline (with the next line's indentation) is one chunk of its own
            piece = typed[i:i + nl + 1] if nl > 0 else typed[i:i + 1] + _indent(typed[i + 1:])
        last = piece[-1]
        if last == "\n" or piece.endswith(" ") and piece.strip() == "":
            pause = rng.uniform(0.3, 0.8)
        elif not last.isalnum() and last != "_":
            pause = rng.uniform(0.1, 0.35)
        else:
            pause = rng.uniform(0.04, 0.14)
        out.append(Chunk(piece, pause / speed))
        i += len(piece)
    return tuple(out)


def _indent(s: str) -> str:
    return s[:len(s) - len(s.lstrip(" \t"))]


def make_traces(files: list[Path], n: int, lines: int, seed: int, speed: float) -> list[Trace]:
    """`n` traces drawn deterministically from `files`: each removes `lines` consecutive code
    lines (starting at a non-blank, non-comment line) and types them back."""
    rng = random.Random(seed)
    texts = [(f, f.read_text(encoding="utf-8", errors="replace")) for f in files]
    texts = [(f, t) for f, t in texts if t.count("\n") > lines + 4]
    if not texts:
        raise ValueError("no usable source files for traces")
    traces = []
    for k in range(n):
        path, text = texts[k % len(texts)]
        rows = text.splitlines(keepends=True)
        starts = [i for i in range(2, len(rows) - lines - 1)
                  if rows[i].strip() and not rows[i].lstrip().startswith(("#", '"', "'"))
                  and all(r.strip() for r in rows[i:i + lines])]
        if not starts:
            continue
        i = rng.choice(starts)
        ind = _indent(rows[i])
        at = sum(len(r) for r in rows[:i]) + len(ind)
        typed = "".join(rows[i:i + lines])[len(ind):].rstrip("\n")
        doc = text[:at] + text[at + len(typed):]
        traces.append(Trace(f"{path.name}:{i + 1}", doc, at, typed, chunk_text(typed, rng, speed)))
    return traces


def _match(suggestion: str, rest: str) -> tuple[bool, int]:
    """Is the suggestion's first line a prefix of the rest of the line being typed? Plus the
    number of leading characters they share."""
    first = suggestion.split("\n", 1)[0].rstrip()
    line = rest.split("\n", 1)[0]
    n = 0
    while n < min(len(first), len(line)) and first[n] == line[n]:
        n += 1
    return bool(first) and line.startswith(first), n


def replay(client: LspClient, trace: Trace, timeout: float = 60.0) -> list[Record]:
    """Type one trace; returns a record per inline-completion request."""
    uri = f"file:///profile/{trace.name.replace(':', '_')}"
    doc = client.open(uri, trace.text)
    records: dict[int, Record] = {}
    pending: int | None = None
    at, done_chars = trace.at, 0
    for chunk in trace.chunks:
        client.type(doc, at, chunk.text)
        at += len(chunk.text)
        done_chars += len(chunk.text)
        if pending is not None and pending not in client.received_at:
            client.cancel(pending)
            records[pending].outcome = "cancelled"
        pos = doc.position(at)
        sent = time.perf_counter()
        pending = client.request_async("textDocument/inlineCompletion",
                                       client.inline_params(uri, pos["line"], pos["character"], trigger=2))
        records[pending] = Record(trace.name, done_chars, sent)
        time.sleep(chunk.pause_s)
    # the last request must be answered promptly
    deadline = time.perf_counter() + timeout
    while pending not in client.received_at and time.perf_counter() < deadline:
        time.sleep(0.005)
    for msg_id, rec in records.items():
        msg = client.poll(msg_id)
        if msg is None:
            rec.outcome = "timeout" if rec.outcome == "pending" else rec.outcome
            continue
        rec.done = client.received_at.pop(msg_id, None)
        if "error" in msg:
            code = msg["error"].get("code")
            if rec.outcome != "cancelled":
                rec.outcome = "dropped" if code in (REQUEST_CANCELLED, CONTENT_MODIFIED) else "error"
            continue
        if rec.outcome == "cancelled":  # answered before the cancel arrived: the editor ignores it
            continue
        items = (msg.get("result") or {}).get("items", []) if isinstance(msg.get("result"), dict) else []
        rec.suggestion = items[0]["insertText"] if items else ""
        rec.outcome = "answered" if rec.suggestion else "empty"
        if rec.suggestion:
            rec.match, rec.matched_chars = _match(rec.suggestion, trace.typed[rec.offset:])
    client.close_document(uri)
    return list(records.values())


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def q(p: float) -> float:
        k = (len(v) - 1) * p / 100
        lo, hi = int(k), min(int(k) + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (k - lo)

    return {"p50": q(50), "p95": q(95), "p99": q(99), "max": v[-1], "mean": sum(v) / len(v), "n": len(v)}


def summarize(records: list[Record], last_ids: list[Record]) -> Summary:
    s = Summary(requests=len(records))
    lat = [r.latency_ms for r in records if r.outcome in ("answered", "empty") and r.latency_ms is not None]
    for r in records:
        s.answered += r.outcome == "answered"
        s.empty += r.outcome == "empty"
        s.cancelled_by_client += r.outcome == "cancelled"
        s.dropped_by_server += r.outcome == "dropped"
        s.errors += r.outcome in ("error", "timeout")
    s.latency_ms = percentiles(lat)
    s.last_request_latency_ms = percentiles([r.latency_ms for r in last_ids if r.latency_ms is not None])
    shown = [r for r in records if r.outcome == "answered"]
    s.shown = len(shown)
    if shown:
        s.match_rate = sum(r.match for r in shown) / len(shown)
        s.mean_matched_chars = sum(r.matched_chars for r in shown) / len(shown)
    return s


def plot(records: list[Record], stats: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = sorted(r.latency_ms for r in records if r.outcome in ("answered", "empty") and r.latency_ms is not None)
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    if lat:
        ax[0].hist(lat, bins=min(40, max(5, len(lat) // 3)), color="#4477aa")
        ax[1].plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], color="#4477aa")
    ax[0].set(title="inline completion latency", xlabel="ms (client side)", ylabel="requests")
    ax[1].set(title="latency CDF", xlabel="ms", ylabel="fraction of requests", ylim=(0, 1.02))
    ax[1].grid(alpha=0.3)
    stages = {k: v for k, v in (stats.get("stages") or {}).items() if k not in ("total",)}
    names = sorted(stages, key=lambda k: -stages[k]["p50_ms"])
    y = range(len(names))
    ax[2].barh([i + 0.2 for i in y], [stages[n]["p50_ms"] for n in names], height=0.4, label="p50")
    ax[2].barh([i - 0.2 for i in y], [stages[n]["p95_ms"] for n in names], height=0.4, label="p95")
    ax[2].set_yticks(list(y), names)
    ax[2].set(title="server stages (dlsp/stats)", xlabel="ms")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(s: Summary, stats: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout
    def row(name: str, d: dict[str, float]) -> str:
        if not d:
            return f"{name:<28} {'-':>8} {'-':>8} {'-':>8} {'-':>8} {0:>6}"
        return f"{name:<28} {d['p50']:>8.1f} {d['p95']:>8.1f} {d['p99']:>8.1f} {d['max']:>8.1f} {int(d['n']):>6}"

    print(f"{'latency (ms)':<28} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'n':>6}", file=out)
    print(row("answered requests", s.latency_ms), file=out)
    print(row("last request of a trace", s.last_request_latency_ms), file=out)
    for stage, v in sorted((stats.get("stages") or {}).items()):
        print(f"{'  server: ' + stage:<28} {v['p50_ms']:>8.1f} {v['p95_ms']:>8.1f} {'':>8} {'':>8} {v['count']:>6}",
              file=out)
    print(f"\nrequests {s.requests}: answered {s.answered}, empty {s.empty}, cancelled by client "
          f"{s.cancelled_by_client}, dropped by server {s.dropped_by_server}, errors {s.errors}", file=out)
    print(f"suggestions shown {s.shown}: first line matches what was typed next {100 * s.match_rate:.1f}%, "
          f"mean matching characters {s.mean_matched_chars:.1f}", file=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dlsp profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--device", default=None)
    p.add_argument("--files", nargs="*", default=None, help="source files to derive traces from "
                   "(default: the bundled sample and a few standard-library modules)")
    p.add_argument("--traces", type=int, default=6)
    p.add_argument("--lines", type=int, default=3, help="lines typed per trace")
    p.add_argument("--speed", type=float, default=1.0, help="typing speed factor (2 = pauses halved)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debounce-ms", type=float, default=None, help="server debounce (default: its setting)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    p.add_argument("--out", default="profile.json")
    p.add_argument("--png", default="profile.png")
    p.add_argument("--log", default=None, help="write the server's log (stderr) here")
    a = p.parse_args(argv)

    files = [Path(f) for f in a.files] if a.files else default_files()
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"dlsp profile: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        traces = make_traces(files, a.traces, a.lines, a.seed, a.speed)
    except ValueError as e:
        print(f"dlsp profile: {e}", file=sys.stderr)
        return 2
    args = [*(["--model", a.model] if a.model else []), *(["--device", a.device] if a.device else [])]
    client = LspClient.spawn(*args, stderr_path=Path(a.log) if a.log else None, threads=a.threads)
    try:
        options = {} if a.debounce_ms is None else {"debounceMs": a.debounce_ms}
        client.initialize(options)
        if client.status.get("state") != "ready":
            print(f"dlsp profile: the model did not load: {client.status.get('message')}", file=sys.stderr)
            return 1
        records: list[Record] = []
        last: list[Record] = []
        for tr in traces:
            recs = replay(client, tr)
            records += recs
            if recs:
                last.append(recs[-1])
            print(f"trace {tr.name}: {len(tr.chunks)} chunks, {len(tr.typed)} chars", file=sys.stderr)
        stats = client.stats()
    finally:
        client.close()
    summary = summarize(records, last)
    print_table(summary, stats)
    Path(a.out).write_text(json.dumps({
        "settings": vars(a) | {"files": [str(f) for f in files]}, "model": stats.get("model"),
        "summary": asdict(summary), "server_stats": stats,
        "traces": [{"name": t.name, "chars": len(t.typed), "chunks": len(t.chunks)} for t in traces],
        "requests": [asdict(r) | {"latency_ms": r.latency_ms} for r in records]}, indent=1))
    plot(records, stats, Path(a.png))
    print(f"\nwrote {a.out} and {a.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
