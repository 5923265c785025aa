"""`dlsp demo`: a scripted editing session through the real language server.

Spawns `dlsp serve` over stdio on the embedded default model (or `--model DIR`), opens a sample
Python file and does what a user does in an editor: asks for a block body after a `def` line,
types a new line character by character while the editor asks for (and cancels) inline
completions, fills the middle of a line with the suffix in view, and runs the "Complete body"
and "Fill holes" code actions. Prints every suggestion with its latency, then the server's
per-stage timings (`dlsp/stats`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from editor_clients.headless.client import LspClient, LspError

URI = "file:///demo/inventory.py"


@dataclass
class Step:
    name: str
    latency_ms: float
    text: str  # the suggestion or the edited region, "" when the server had none
    note: str = ""


def sample_text() -> str:
    return resources.files("editor_clients.headless").joinpath("samples/inventory.py").read_text("utf-8")


def _cut(text: str, anchor: str, remove: str) -> tuple[str, int]:
    """Remove `remove` right after `anchor` (first occurrence); return the text and the offset."""
    i = text.index(anchor) + len(anchor)
    assert text.startswith(remove, i), (anchor, remove)
    return text[:i] + text[i + len(remove):], i


def _show(text: str, width: int = 70) -> str:
    if not text:
        return "(no suggestion)"
    one = text.replace("\n", "⏎")
    return one if len(one) <= width else one[: width - 1] + "…"


def _inline(client: LspClient, doc: Any, at: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    items = client.inline_at(doc, at, timeout=120)
    return (time.perf_counter() - t0) * 1000, items[0]["insertText"] if items else ""


def run(client: LspClient, log: Any = print) -> list[Step]:
    base = sample_text()
    steps: list[Step] = []

    # 1. a block body after a def line
    text, at = _cut(base, "def total_value(self) -> float:\n        ",
                    "return sum(item.total() for item in self.items.values())")
    doc = client.open(URI, text)
    ms, s = _inline(client, doc, at)
    steps.append(Step("body after `def total_value(...):`", ms, s))

    # 2. typing a new method; the editor asks after every chunk and cancels superseded requests
    client.close_document(URI)
    typed = "    def count(self) -> int:\n        return "
    text, at = _cut(base, "        return [item for item in self.items.values() if tag in item.tags]\n", "")
    doc = client.open(URI, text[:at] + "\n" + text[at:], version=1)
    at += 1
    pending: int | None = None
    cancelled = 0
    t_last = 0.0
    for ch in typed:
        client.type(doc, at, ch)
        at += len(ch)
        if pending is not None and client.poll(pending) is None:
            client.cancel(pending)
            cancelled += 1
        pos = doc.position(at)
        pending = client.request_async("textDocument/inlineCompletion",
                                       client.inline_params(doc.uri, pos["line"], pos["character"], trigger=2))
        t_last = time.perf_counter()
        time.sleep(0.03)  # ~30 ms between keystrokes
    final = ""
    try:
        result = client.result(pending, timeout=120)
        items = (result or {}).get("items", [])
        final = items[0]["insertText"] if items else ""
    except LspError as e:
        final = f"(error {e.code})"
    steps.append(Step("typing `def count(self) -> int: return `", (time.perf_counter() - t_last) * 1000, final,
                      f"{len(typed)} keystrokes, {cancelled} superseded requests cancelled"))

    # 3. the middle of a line, with the suffix in view
    client.close_document(URI)
    text, at = _cut(base, "return min(items, key=lambda item: ", "item.price")
    doc = client.open(URI, text)
    ms, s = _inline(client, doc, at)
    steps.append(Step("middle of `min(items, key=lambda item: ▮)`", ms, s))

    # 4. code action: Complete body (the body of parse_line replaced by `pass`)
    client.close_document(URI)
    head = "def parse_line(line: str) -> Item:\n"
    text = base[: base.index(head) + len(head)] + "    pass\n"
    at = text.index(head) + 4
    steps.append(_action(client, text, at, "dlsp.completeBody", "code action: Complete body of parse_line"))

    # 5. code action: Fill holes (a TODO comment and a `...` in one function, filled jointly)
    client.close_document(URI)
    text = base.replace("        item.quantity -= quantity\n", "        # TODO: take the quantity off\n")
    text = text.replace("            del self.items[name]\n", "            ...\n")
    at = text.index("        item = self.items[name]")
    steps.append(_action(client, text, at, "dlsp.fillHoles", "code action: Fill holes in remove()"))
    client.close_document(URI)
    return steps


def _action(client: LspClient, text: str, at: int, command: str, name: str) -> Step:
    doc = client.open(URI, text)
    before = doc.text
    actions = [a for a in client.code_actions(doc, at) if (a.get("command") or {}).get("command") == command]
    if not actions:
        return Step(name, 0.0, "", "action not offered here")
    version = doc.version
    t0 = time.perf_counter()
    try:
        client.run_action(actions[0], timeout=180)
    except LspError as e:
        return Step(name, (time.perf_counter() - t0) * 1000, "", f"error {e.code}: {e.error.get('message')}")
    ms = (time.perf_counter() - t0) * 1000
    if doc.version == version:
        return Step(name, ms, "", "no edit (the model proposed nothing)")
    # the inserted region: strip the common prefix and suffix of before/after
    after = doc.text
    i = 0
    while i < min(len(before), len(after)) and before[i] == after[i]:
        i += 1
    j = 0
    while j < min(len(before), len(after)) - i and before[-1 - j] == after[-1 - j]:
        j += 1
    return Step(name, ms, after[i:len(after) - j], "edit applied to the buffer")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dlsp demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server (default: torch's)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the steps as JSON here")
    p.add_argument("--log", default=None, help="write the server's log (stderr) here")
    a = p.parse_args(argv)

    args = [*(["--model", a.model] if a.model else []), *(["--device", a.device] if a.device else [])]
    t0 = time.perf_counter()
    client = LspClient.spawn(*args, stderr_path=Path(a.log) if a.log else None, threads=a.threads)
    try:
        client.initialize({"debounceMs": 0})
        status = client.status
        load_s = time.perf_counter() - t0
        if status.get("state") != "ready":
            print(f"dlsp demo: the model did not load: {status.get('message')}", file=sys.stderr)
            return 1
        print(f"server up, model {status.get('model')} on {status.get('device')} loaded in {load_s:.1f} s\n")
        steps = run(client)
        print(f"{'step':<46} {'ms':>8}  suggestion / edit")
        print("-" * 110)
        for s in steps:
            print(f"{s.name:<46} {s.latency_ms:>8.0f}  {_show(s.text)}")
            if s.note:
                print(f"{'':<46} {'':>8}  ({s.note})")
        stats = client.stats()
        print("\nserver stages (dlsp/stats):")
        for stage, v in sorted(stats.get("stages", {}).items()):
            print(f"  {stage:<16} n={v['count']:<4} p50 {v['p50_ms']:>8.1f} ms   p95 {v['p95_ms']:>8.1f} ms")
        if a.json_out:
            Path(a.json_out).write_text(json.dumps({"status": status, "load_s": load_s,
                                                    "steps": [asdict(s) for s in steps], "stats": stats}, indent=2))
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
