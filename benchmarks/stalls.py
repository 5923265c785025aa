"""Event-loop stalls: how long the server takes to answer an unrelated request (`dlsp/stats`) while
it works on something heavy, against its idle answer time measured in the same run (issue 12).

Cases (the sizes of the issue's hostile test):

  * a code action inside parentheses nested 2k, 4k, 8k, 16k deep;
  * an inline completion inside 16k nesting, and after 32k unclosed `(`;
  * a 5 MB file: one ranged keystroke, and one `didChange` with 300 ranges.

For each case the heavy message is sent, then after `--lag` ms the unrelated request; its answer
time is compared with the idle one (median of `--idle` requests); the `during` column counts the
probes answered while the heavy request was still running (a probe answered after it measured
nothing). Target: within 2x at every
size (a floor of 1 ms absorbs timer noise when the idle time is a fraction of a millisecond).

    python benchmarks/stalls.py [--model DIR] [--repeat 3] [--out benchmarks/results/stalls.json] [--strict]

Prints a table and writes JSON. Exit 0 whatever the target says, unless --strict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editor_clients.headless.client import LspClient  # noqa: E402

TARGET = 2.0
FLOOR_MS = 1.0


def answer_ms(client: LspClient) -> float:
    """Milliseconds until an unrelated request sent now is answered."""
    t0 = time.perf_counter()
    msg_id = client.request_async("dlsp/stats", None)
    client.wait(msg_id, timeout=600)
    return (client.received_at.get(msg_id, time.perf_counter()) - t0) * 1e3


def idle_ms(client: LspClient, n: int) -> float:
    return statistics.median(answer_ms(client) for _ in range(n))


def _nested(depth: int, r: int = 0) -> tuple[str, int, int]:
    """Text nested `depth` deep; `r` makes each round's text (and context) distinct, so no
    round is answered from the server's context cache."""
    text = f"def f{r}():\n    x = " + "(" * depth + "1" + ")" * depth + "\n"
    return text, 1, text.splitlines()[1].index("1")


def _code_action(client: LspClient, uri: str, line: int, col: int) -> int:
    pos = {"line": line, "character": col}
    return client.request_async("textDocument/codeAction", {
        "textDocument": {"uri": uri}, "context": {"diagnostics": []}, "range": {"start": pos, "end": pos}})


def cases(big_lines: int) -> list[tuple[str, Callable[[LspClient, int], int | None]]]:
    """(name, start(client, round) -> id of the heavy request or None for a notification)."""
    out: list[tuple[str, Callable[[LspClient, int], int | None]]] = []
    for depth in (2000, 4000, 8000, 16000):
        def action(client: LspClient, r: int, depth: int = depth) -> int:
            text, line, col = _nested(depth, r)
            uri = f"file:///bench/deep{depth}_{r}.py"
            client.open(uri, text)
            return _code_action(client, uri, line, col)
        out.append((f"code action, nesting {depth}", action))

    def inline_deep(client: LspClient, r: int) -> int:
        text, line, col = _nested(16000, r)
        uri = f"file:///bench/inline_deep_{r}.py"
        client.open(uri, text)
        return client.request_async("textDocument/inlineCompletion", client.inline_params(uri, line, col))

    def inline_open(client: LspClient, r: int) -> int:
        uri = f"file:///bench/open_{r}.py"
        head = f"x{r} = "
        client.open(uri, head + "(" * 32000)
        return client.request_async("textDocument/inlineCompletion", client.inline_params(uri, 0, len(head) + 32000))

    big = "def g(x):\n    return x + 1\n\n" * big_lines

    def keystroke(client: LspClient, r: int) -> None:
        uri = f"file:///bench/big_{r}.py"
        client.open(uri, big)
        answer_ms(client)  # the open itself is not the case
        client.change(uri, 2, [{"range": {"start": {"line": 7, "character": 0},
                                          "end": {"line": 7, "character": 0}}, "text": "#"}])
        return None

    def ranges300(client: LspClient, r: int) -> None:
        uri = f"file:///bench/big300_{r}.py"
        client.open(uri, big)
        answer_ms(client)
        client.change(uri, 2, [{"range": {"start": {"line": 3 * i, "character": 0},
                                          "end": {"line": 3 * i, "character": 0}}, "text": "#"} for i in range(300)])
        return None

    out += [("inline completion, nesting 16000", inline_deep), ("inline completion, 32000 unclosed (", inline_open),
            (f"5 MB file ({len(big) / 1e6:.1f} MB), one keystroke", keystroke),
            ("5 MB file, one didChange with 300 ranges", ranges300)]
    return out


def run(client: LspClient, repeat: int, lag_ms: float, idle_n: int, big_lines: int) -> dict[str, Any]:
    rows = []
    for name, start in cases(big_lines):
        samples, work, overlap = [], [], 0
        for r in range(repeat):
            base = idle_ms(client, idle_n)
            t0 = time.perf_counter()
            heavy = start(client, r)
            time.sleep(lag_ms / 1e3)
            busy = answer_ms(client)
            probed = time.perf_counter()
            if heavy is not None:
                client.wait(heavy, timeout=600)
                done = client.received_at.get(heavy, time.perf_counter())
                work.append((done - t0) * 1e3)
                overlap += done > probed  # the probe was answered while the heavy request ran
            samples.append((base, busy))
        base = statistics.median(b for b, _ in samples)
        busy = statistics.median(s for _, s in samples)
        ratio = busy / max(base, FLOOR_MS)
        rows.append({"case": name, "idle_ms": round(base, 3), "answer_ms": round(busy, 3),
                     "ratio": round(ratio, 2), "pass": ratio <= TARGET,
                     "heavy_request_ms": round(statistics.median(work), 1) if work else None,
                     "probes_during_heavy": f"{overlap}/{repeat}" if work else None})
    return {"target": f"answer time <= {TARGET}x idle (idle floored at {FLOOR_MS} ms)", "cases": rows,
            "pass": all(r["pass"] for r in rows)}


def table(report: dict[str, Any]) -> str:
    lines = [f"{'case':<44} {'idle ms':>8} {'busy ms':>8} {'ratio':>6}  {'heavy ms':>9}  {'during':>6}  target"]
    for r in report["cases"]:
        heavy = f"{r['heavy_request_ms']:.1f}" if r["heavy_request_ms"] is not None else "-"
        during = r["probes_during_heavy"] or "-"
        lines.append(f"{r['case']:<44} {r['idle_ms']:>8.2f} {r['answer_ms']:>8.2f} {r['ratio']:>6.2f}  {heavy:>9}  {during:>6}  "
                     f"{'PASS' if r['pass'] else 'FAIL'}")
    lines.append(f"target: {report['target']}: {'PASS' if report['pass'] else 'FAIL'}")
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="stalls", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--idle", type=int, default=15, help="requests for the idle baseline")
    p.add_argument("--lag", type=float, default=2.0, help="ms between the heavy message and the probe")
    p.add_argument("--big-lines", type=int, default=180_000, help="3-line functions in the big file (~5 MB)")
    p.add_argument("--out", default="benchmarks/results/stalls.json")
    p.add_argument("--strict", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(list(sys.argv[1:] if argv is None else argv))
    args = ["--device", "cpu"] + (["--model", a.model] if a.model else [])
    client = LspClient.spawn(*args)
    try:
        client.initialize({"debounceMs": 0})
        report = run(client, a.repeat, a.lag, a.idle, a.big_lines)
    finally:
        client.close()
    print(table(report))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 1 if a.strict and not report["pass"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
