"""What the editor gets: typing replayed through the real server, with and without reuse.

Each trace removes a few lines of a real source file and types them back in 1-6 character
chunks (`editor_clients.headless.profile`): after every chunk a `didChange` and an inline
completion request, the previous request cancelled if it is still pending. At a pause (a line
end, a space, punctuation: a chunk followed by >= `--pause` seconds) the client waits for the
answer, as a user looking at the screen does; those answers are what is measured (p50/p95 of the
client-side latency, over the pauses where the server writes a single line by its own rule,
`decide_mode`; block fills at empty lines that start or end a block, up to `maxTokens` long, are reported apart). The same replay runs against a second server with reuse across keystrokes
off (DLSP_REUSE=0): the baseline. Also reported: the server's per-stage timings (`dlsp/stats`),
server time over the engine's own time, the server's RSS (peak; with a trace's document open
right after its typing, and again once the server has rested, `REST_S` + 1 s later; after the
replay with every document closed), and (`--agreement N`) the engine
in this process against the server on the same N cold tasks (`benchmarks/engine_speed.py`'s
cases): the two must agree within 20%.

Before the adapted 135M model lands, `--shape smol135m` builds a random-weight model of its
shape (30 layers, dim 576, 9/3 heads, FFN 1536, vocabulary 49,152, 20 causal layers): latency
depends on the shape, not the weights, except through how many steps a fill takes, so the fill
budget is pinned (`--max-tokens`, `--steps`).

    python benchmarks/latency.py --shape smol135m [--tokenizer tokenizer.json] [--traces 4]
    python benchmarks/latency.py --model DIR [--agreement 10] [--no-baseline]

Never part of the pass/fail suite; prints tables and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editor_clients.headless.client import LspClient  # noqa: E402
from editor_clients.headless.profile import Trace, default_files, make_traces, percentiles  # noqa: E402
from lsp_server.service import REST_S  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    # SmolLM2-135M, the embedded default's base, with the planned 20 causal lower layers
    "smol135m": dict(family="llama", dim=576, n_layers=30, n_heads=9, n_kv_heads=3, intermediate_size=1536,
                     vocab_size=49152, max_positions=8192, rope_theta=100000.0, norm_eps=1e-5,
                     tie_embeddings=True, qkv_bias=False, causal_layers=20),
}
TARGETS = {"p50_ms": 150.0, "p95_ms": 400.0, "speedup": 3.0, "overhead_ms": 5.0, "rss_mb": 500.0,
           "agreement": 0.20}


@dataclass
class Run:
    """One server's replay: latencies at pauses, outcomes, the server's stats and memory."""

    mode: str
    pauses_ms: list[float] = field(default_factory=list)
    single_line: list[bool] = field(default_factory=list)  # per answer at a pause: the server's mode
    outcomes: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    rss_mb: float | None = None  # after the replay, every document closed and the server idle
    rss_open_mb: float | None = None  # the most while a trace's document was open (its cache live)
    rss_rest_mb: float | None = None  # the most with a trace's document open, once the server rested
    peak_rss_mb: float | None = None
    cold_ms: list[float] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    debounce_ms: float = 0.0


def random_checkpoint(shape: str, tokenizer: str | None, out: Path) -> Path:
    """A random-weight checkpoint of a named shape (bf16 on disk, cached by name in `out`)."""
    import shutil

    import torch

    from engine.checkpoint import save_checkpoint
    from engine.config import ModelArgs
    from engine.model import Transformer
    from engine.tokenizer import Tokenizer

    tok_path = Path(tokenizer) if tokenizer else Path(__file__).resolve().parents[1] / "engine/default_model/tokenizer.json"
    tok = Tokenizer.from_file(tok_path)
    ckpt = out / f"random_{shape}_{tok.vocab_size}"
    if (ckpt / "model.safetensors").is_file():
        return ckpt
    ids = {name: tok.token_to_id(t) for name, t in (("mask", "<|mask|>"), ("eos", "<|endoftext|>"), ("eos2", "<|eos|>"),
                                                    ("bos", "<|bos|>"))}
    mask = ids["mask"] if ids["mask"] is not None else 0
    eos = next((i for i in (ids["eos"], ids["eos2"]) if i is not None), 1)
    fields = dict(SHAPES[shape], mask_id=mask, eos_id=eos, pad_id=eos, bos_id=ids["bos"])
    fields["vocab_size"] = max(fields["vocab_size"], tok.vocab_size)  # a mask token added past the base vocabulary
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**fields))
    model.init_weights()
    ckpt.mkdir(parents=True, exist_ok=True)
    shutil.copy(tok_path, ckpt / "tokenizer.json")
    return save_checkpoint(model, ckpt, dtype=torch.bfloat16)


def _rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """Resident memory of a process in MB: VmRSS (now) or VmHWM (peak, loading included)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def single_line_at(text: str, cursor: int) -> bool:
    """Whether the server answers with a single-line fill here (its own rule: `decide_mode`);
    on an empty line where a block starts or ends it writes a block, which is not what the
    single-line targets are about."""
    from lsp_server.context import SINGLE_LINE, decide_mode
    from lsp_server.languages import spec_for
    from lsp_server.syntax import Syntax

    spec = spec_for("python")
    return decide_mode(text, cursor, spec, Syntax.parse(text, 0, spec)) in SINGLE_LINE


def replay_at_pauses(client: LspClient, trace: Trace, pause_s: float, timeout: float, run: Run) -> None:
    """Type one trace; wait for the answer after every chunk followed by a pause >= `pause_s`.
    The document is opened and asked once before typing starts (the cold first answer, timed
    apart: it encodes the whole context whatever the reuse setting)."""
    uri = f"file:///latency/{trace.name.replace(':', '_')}"
    doc = client.open(uri, trace.text)
    t0 = time.perf_counter()
    client.inline_at(doc, trace.at, timeout=timeout)
    run.cold_ms.append((time.perf_counter() - t0) * 1e3)
    at, pending = trace.at, None
    for chunk in trace.chunks:
        client.type(doc, at, chunk.text)
        at += len(chunk.text)
        if pending is not None and pending not in client.received_at:
            client.cancel(pending)
            run.outcomes["cancelled"] = run.outcomes.get("cancelled", 0) + 1
        pos = doc.position(at)
        sent = time.perf_counter()
        pending = client.request_async("textDocument/inlineCompletion",
                                       client.inline_params(uri, pos["line"], pos["character"], trigger=2))
        if chunk.pause_s < pause_s:
            time.sleep(chunk.pause_s)
            continue
        try:
            msg = client.wait(pending, timeout)
        except TimeoutError:
            run.outcomes["timeout"] = run.outcomes.get("timeout", 0) + 1
            continue
        waited = client.received_at.pop(pending, time.perf_counter()) - sent
        kind = "error" if "error" in msg else "answered"
        run.outcomes[kind] = run.outcomes.get(kind, 0) + 1
        if kind == "answered":
            run.pauses_ms.append(waited * 1e3)
            run.single_line.append(single_line_at(doc.text, at))
            items = (msg.get("result") or {}).get("items", []) if isinstance(msg.get("result"), dict) else []
            run.suggestions.append(items[0]["insertText"] if items else "")
        pending = None
        time.sleep(max(0.0, chunk.pause_s - waited))
    if client.proc:
        run.rss_open_mb = max(run.rss_open_mb or 0.0, _rss_mb(client.proc.pid) or 0.0)
        # the editor quiet with the document still open: the server hands back what only its
        # runs need after REST_S (`Engine.rest`)
        time.sleep(REST_S + 1.0)
        run.rss_rest_mb = max(run.rss_rest_mb or 0.0, _rss_mb(client.proc.pid) or 0.0)
    client.close_document(uri)


def _cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def wait_idle(pid: int, quiet_s: float = 0.3, limit_s: float = 5.0) -> bool:
    """Until the process has used no CPU for `quiet_s` (the work the last messages queued, such as
    handing a closed document's cache back, is done), at most `limit_s`. False if it never was."""
    deadline, last = time.monotonic() + limit_s, _cpu_ticks(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = _cpu_ticks(pid)
        if now is None or now == last:
            return True
        last = now
    return False


def serve(model: Path, reuse: bool, threads: int | None, options: dict[str, Any], log: Path | None) -> LspClient:
    os.environ["DLSP_REUSE"] = "1" if reuse else "0"
    client = LspClient.spawn("--model", str(model), stderr_path=log, threads=threads)
    client.initialize(options)
    deadline = time.monotonic() + 600
    while client.status.get("state") == "loading" and time.monotonic() < deadline:
        time.sleep(0.1)
    if client.status.get("state") != "ready":
        client.close()
        raise SystemExit(f"latency: the model did not load: {client.status.get('message')}")
    return client


def run_mode(model: Path, reuse: bool, traces: list[Trace], a: argparse.Namespace, options: dict[str, Any]) -> Run:
    run = Run("reuse" if reuse else "no reuse", debounce_ms=float(options.get("debounceMs", 20.0)))
    client = serve(model, reuse, a.threads, options, Path(a.log + (".reuse" if reuse else ".noreuse")) if a.log else None)
    try:
        warm = client.open("file:///latency/warm.py", "def f(x):\n    return x\n")
        client.inline_at(warm, len("def f(x):\n    return "), timeout=a.timeout)  # first call pays allocations
        for tr in traces:
            replay_at_pauses(client, tr, a.pause, a.timeout, run)
            print(f"  {run.mode}: {tr.name}: {len(run.pauses_ms)} answers at pauses so far", file=sys.stderr)
        run.stats = client.stats()
        if client.proc:
            wait_idle(client.proc.pid)
            run.rss_mb, run.peak_rss_mb = _rss_mb(client.proc.pid), _rss_mb(client.proc.pid, "VmHWM")
    finally:
        client.close()
    return run


def agreement(model: Path, n: int, a: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """The engine in this process and the server on the same cold tasks (engine_speed's cases, the
    request built as the server builds it); reuse off on both, so each task is a full prefill.
    One more task runs first on both, untimed (the engine's first prefill in a process costs up
    to ~1 s more: it was timed on the server's side only)."""
    import torch

    from benchmarks.engine_speed import make_cases
    from engine import Engine, InfillRequest, ReusePolicy
    from lsp_server.context import build_context
    from lsp_server.languages import spec_for
    from lsp_server.settings import Settings

    if a.threads:
        torch.set_num_threads(a.threads)
    *cases, warm = make_cases(n + 1, a.seed)  # `warm`: one more task, untimed on both sides first
    settings = Settings().updated(options)
    engine = Engine.from_pretrained(model, device="cpu")
    engine.reuse = ReusePolicy(enabled=False)
    client = serve(model, False, a.threads, options, None)
    local, server = [], []
    try:
        for i, case in enumerate([warm, *cases]):
            text, cursor = case.prefix + case.suffix, len(case.prefix)
            ctx = build_context(text, cursor, spec_for("python"), settings.context_tokens, settings.max_tokens,
                                engine.count_tokens)
            sampling = None if settings.steps is None else engine.with_sampling(steps=settings.steps)
            req = InfillRequest(prefix=ctx.prefix, suffix=ctx.suffix, hole_tokens=ctx.hole_tokens,
                                max_new_tokens=ctx.max_new_tokens, max_context_tokens=settings.context_tokens,
                                context=ctx.segments, sampling=sampling, single_line=not ctx.multiline)
            # both sides pay their first cold prefill (allocations, the thread tuner's first
            # pick) on the same untimed task, not on a measured one
            t0 = time.perf_counter()
            engine.infill(req)
            ms_local = (time.perf_counter() - t0) * 1e3
            doc = client.open(f"file:///agree/{i}.py", text)
            t0 = time.perf_counter()
            client.inline_at(doc, cursor, timeout=a.timeout)
            if i:
                local.append(ms_local)
                server.append((time.perf_counter() - t0) * 1e3)
    finally:
        client.close()
    lp, sp = statistics.median(local), statistics.median(server)
    return {"n": n, "engine_p50_ms": lp, "server_p50_ms": sp, "ratio": sp / lp, "engine_ms": local, "server_ms": server}


def _stage(stats: dict[str, Any], name: str, q: str = "p50_ms") -> float | None:
    return (stats.get("stages") or {}).get(name, {}).get(q)


def report(runs: list[Run], agree: dict[str, Any] | None) -> dict[str, Any]:
    stages = ("context", "queue", "tokenize", "prefill", "steps", "rerank", "postprocess", "engine", "total", "server")
    print(f"{'mode':<10} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'cold p50':>8} "
          + " ".join(f"{s[:8]:>8}" for s in stages) + f" {'open MB':>7} {'rest MB':>7} {'RSS MB':>7} {'peak MB':>7}")
    out: dict[str, Any] = {}
    for r in runs:
        pc = percentiles([ms for ms, one in zip(r.pauses_ms, r.single_line) if one])
        every = percentiles(r.pauses_ms)
        overhead = _stage(r.stats, "server")  # per request: total - engine - queue - debounce
        cells = " ".join(f"{_stage(r.stats, s) or 0:>8.1f}" for s in stages)
        cold = statistics.median(r.cold_ms) if r.cold_ms else 0.0
        print(f"{r.mode:<10} {pc.get('n', 0):>4} {pc.get('p50', 0):>8.1f} {pc.get('p95', 0):>8.1f} {cold:>8.1f} "
              f"{cells} {r.rss_open_mb or 0:>7.0f} {r.rss_rest_mb or 0:>7.0f} {r.rss_mb or 0:>7.0f} "
              f"{r.peak_rss_mb or 0:>7.0f}")
        out[r.mode] = {"pauses": pc, "all_pauses": every, "outcomes": r.outcomes, "server_stats": r.stats, "rss_mb": r.rss_mb,
                       "rss_open_mb": r.rss_open_mb, "rss_rest_mb": r.rss_rest_mb, "peak_rss_mb": r.peak_rss_mb, "cold_first_answer_ms": r.cold_ms,
                       "server_minus_engine_p50_ms": overhead,
                       # every answer at a pause, in replay order: what the tail is made of
                       "each_pause": [{"ms": round(ms, 1), "single_line": one, "chars": len(text)}
                                      for ms, one, text in zip(r.pauses_ms, r.single_line, r.suggestions)]}
    print("(n, p50, p95: answers at pauses where the server writes a single line (its `decide_mode`); "
          "server stages: p50 over the requests the engine answered, at pauses or not; server = "
          "the server's own time per request: total - engine - queue - debounce)")
    for r in runs:
        every = out[r.mode]["all_pauses"]
        print(f"  {r.mode}: every pause (block fills too): n {every.get('n', 0)}, "
              f"p50 {every.get('p50', 0):.1f} ms, p95 {every.get('p95', 0):.1f} ms")
    checks = []
    on = out.get("reuse", {}).get("pauses", {})
    if on:
        checks += [("p50 at pauses", on["p50"], f"<= {TARGETS['p50_ms']:g} ms", on["p50"] <= TARGETS["p50_ms"]),
                   ("p95 at pauses", on["p95"], f"<= {TARGETS['p95_ms']:g} ms", on["p95"] <= TARGETS["p95_ms"])]
        for key, what in (("rss_open_mb", "server RSS MB with a document open, typing (most over traces)"),
                          ("rss_rest_mb", f"server RSS MB with a document open, {REST_S + 1:g} s after typing"),
                          ("rss_mb", "server RSS MB after the replay (documents closed, server idle)")):
            rss = out["reuse"][key]
            if rss is not None:
                checks.append((what, rss, f"<= {TARGETS['rss_mb']:g}", rss <= TARGETS["rss_mb"]))
        ov = out["reuse"]["server_minus_engine_p50_ms"]
        if ov is not None:
            checks.append(("server - engine p50 ms", ov, f"<= {TARGETS['overhead_ms']:g}", ov <= TARGETS["overhead_ms"]))
    off = out.get("no reuse", {}).get("pauses", {})
    if on and off:
        speedup = off["p50"] / on["p50"]
        out["speedup_p50"] = speedup
        checks.append(("speedup p50 (off / on)", speedup, f">= {TARGETS['speedup']:g}x", speedup >= TARGETS["speedup"]))
        same = [x == y for x, y in zip(runs[0].suggestions, runs[1].suggestions)]
        out["same_suggestion_rate"] = sum(same) / len(same) if same else None
        if same:  # the same document states: reuse's approximation shows as different suggestions
            print(f"same suggestion with and without reuse at {sum(same)} of {len(same)} pauses")
    if agree:
        out["agreement"] = agree
        off_by = abs(agree["ratio"] - 1)
        print(f"\nsame {agree['n']} cold tasks: engine in-process p50 {agree['engine_p50_ms']:.1f} ms, "
              f"through the server p50 {agree['server_p50_ms']:.1f} ms (ratio {agree['ratio']:.2f})")
        checks.append(("server / engine_speed", agree["ratio"], f"within {TARGETS['agreement']:.0%}",
                       off_by <= TARGETS["agreement"]))
    print()
    for name, value, target, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.2f} (target {target})")
    out["checks"] = [{"name": n, "value": v, "target": t, "pass": ok} for n, v, t, ok in checks]
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="latency", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    src.add_argument("--shape", choices=sorted(SHAPES), help="a random-weight model of this shape")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json for --shape (default: the embedded "
                   "model's; its ids past the tokenizer's vocabulary are never decoded)")
    p.add_argument("--workdir", default=None, help="where --shape checkpoints are cached (default: a temp dir)")
    p.add_argument("--files", nargs="*", default=None, help="held-out source files (default: the bundled "
                   "sample and a few standard-library modules)")
    p.add_argument("--traces", type=int, default=4)
    p.add_argument("--lines", type=int, default=2, help="lines typed per trace")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--pause", type=float, default=0.3, help="a chunk followed by this many seconds is a pause")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="server threads (default: the server's choice)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="server maxTokens (pins the fill length; default 12 with --shape, else the server's)")
    p.add_argument("--steps", type=int, default=None,
                   help="server steps per block (pins the step count; default 4 with --shape, else the model's)")
    p.add_argument("--context-tokens", type=int, default=1024)
    p.add_argument("--draft", type=int, default=None,
                   help="server setting draft (speculative drafts per forward; 0 = off; default: the model's)")
    p.add_argument("--rerank", choices=("on", "off"), default=None,
                   help="server setting rerank (single lines checked against the base's own line; default: the model's)")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--agreement", type=int, default=0, help="also compare engine and server on N cold tasks")
    p.add_argument("--no-baseline", action="store_true", help="skip the replay with reuse off")
    p.add_argument("--log", default=None, help="server logs go to LOG.reuse / LOG.noreuse")
    p.add_argument("--out", default="benchmarks/results/latency.json")
    return p.parse_args(argv)


def server_options(a: argparse.Namespace) -> dict[str, Any]:
    """The server settings of a replay. A random-weight model never ends a fill by itself: its
    fill length and step count are pinned (12 tokens, 4 steps per block unless given); a trained
    model decodes with its own defaults unless told otherwise."""
    options: dict[str, Any] = {"contextTokens": a.context_tokens}
    max_tokens, steps = (a.max_tokens or 12, a.steps or 4) if a.shape else (a.max_tokens, a.steps)
    if max_tokens:
        options["maxTokens"] = max_tokens
    if steps:
        options["steps"] = steps
    if a.draft is not None:
        options["draft"] = a.draft
    if a.rerank is not None:
        options["rerank"] = a.rerank == "on"
    return options


def main(argv: list[str] | None = None) -> int:
    a = parse(list(sys.argv[1:] if argv is None else argv))
    if a.shape:
        work = Path(a.workdir or tempfile.mkdtemp(prefix="dlsp-latency-"))
        model = random_checkpoint(a.shape, a.tokenizer, work)
    else:
        model = Path(a.model) if a.model else Path(__file__).resolve().parents[1] / "engine/default_model"
    files = [Path(f) for f in a.files] if a.files else default_files()
    traces = make_traces(files, a.traces, a.lines, a.seed, a.speed)
    options = server_options(a)
    runs = [run_mode(model, True, traces, a, options)]
    if not a.no_baseline:
        runs.append(run_mode(model, False, traces, a, options))
    agree = agreement(model, a.agreement, a, options) if a.agreement else None
    out = report(runs, agree)
    out["settings"] = vars(a) | {"model": str(model), "traces": [t.name for t in traces], "options": options}
    if a.out:
        path = Path(a.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
