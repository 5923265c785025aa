"""The latency benchmark's bookkeeping (no server, no timings): checks from synthetic runs."""

from __future__ import annotations

from benchmarks import latency


def _run(mode, pauses, total, engine, queue=0.0, rss=400.0, suggestions=("a",), single=None, rss_open=450.0,
         rss_rest=430.0):
    stages = {"total": {"p50_ms": total}, "engine": {"p50_ms": engine}, "queue": {"p50_ms": queue},
              "server": {"p50_ms": total - engine - queue - 20.0}}
    return latency.Run(mode, pauses_ms=list(pauses), stats={"stages": stages}, rss_mb=rss,
                       rss_open_mb=rss_open, rss_rest_mb=rss_rest, suggestions=list(suggestions), debounce_ms=20.0,
                       single_line=list(single) if single is not None else [True] * len(pauses))


def test_report_checks_the_targets(capsys):
    on = _run("reuse", [100, 120, 140, 300], total=150, engine=124, queue=2)
    off = _run("no reuse", [500, 600, 700, 900], total=700, engine=650, queue=10)
    out = latency.report([on, off], {"n": 3, "engine_p50_ms": 100.0, "server_p50_ms": 110.0, "ratio": 1.1})
    checks = {c["name"]: c["pass"] for c in out["checks"]}
    assert checks == {"p50 at pauses": True, "p95 at pauses": True,
                      "server RSS MB with a document open, typing (most over traces)": True,
                      f"server RSS MB with a document open, {latency.REST_S + 1:g} s after typing": True,
                      "server RSS MB after the replay (documents closed, server idle)": True,
                      "server - engine p50 ms": True, "speedup p50 (off / on)": True, "server / engine_speed": True}
    assert abs(out["speedup_p50"] - 650 / 130) < 1e-9 and out["same_suggestion_rate"] == 1.0
    assert "PASS  p50 at pauses" in capsys.readouterr().out


def test_shape_is_the_135m_default():
    s = latency.SHAPES["smol135m"]
    assert (s["n_layers"], s["dim"], s["n_heads"], s["n_kv_heads"], s["intermediate_size"], s["vocab_size"]) == (
        30, 576, 9, 3, 1536, 49152)


def test_fill_length_and_steps_are_pinned_only_for_random_weights():
    shape = latency.parse(["--shape", "smol135m"])
    assert latency.server_options(shape) == {"contextTokens": 1024, "maxTokens": 12, "steps": 4}
    trained = latency.parse([])
    assert latency.server_options(trained) == {"contextTokens": 1024}  # the model's own decoding
    assert latency.server_options(latency.parse(["--max-tokens", "20"])) == {"contextTokens": 1024, "maxTokens": 20}
    assert latency.server_options(latency.parse(["--rerank", "off"])) == {"contextTokens": 1024, "rerank": False}
    assert latency.server_options(latency.parse(["--draft", "0"])) == {"contextTokens": 1024, "draft": 0}


def test_single_line_targets_leave_block_fills_out(capsys):
    # a block fill on an empty line (5 s) is reported under every pause, not the single-line p95
    on = _run("reuse", [100, 120, 140, 5000], total=150, engine=124, single=[True, True, True, False],
              suggestions=["x"] * 4)
    out = latency.report([on], None)
    assert out["reuse"]["pauses"]["n"] == 3 and out["reuse"]["pauses"]["max"] == 140
    assert out["reuse"]["all_pauses"]["max"] == 5000
    assert {c["name"]: c["pass"] for c in out["checks"]}["p95 at pauses"]
    assert [p["single_line"] for p in out["reuse"]["each_pause"]] == [True, True, True, False]
    assert out["reuse"]["each_pause"][3]["ms"] == 5000
    assert latency.single_line_at("def f(x):\n    return x\n", len("def f(x):\n    ret"))
    assert not latency.single_line_at("def f(x):\n    \n", len("def f(x):\n    "))  # empty line: a block


def test_memory_is_checked_with_a_document_open_and_after_the_replay():
    """Three memory checks: while typing, once the server rested with the document still open,
    and after the replay; each can fail on its own."""
    on = _run("reuse", [100, 120], total=150, engine=124, rss=480.0, rss_open=540.0, rss_rest=460.0)
    out = latency.report([on], None)
    checks = {c["name"]: c["pass"] for c in out["checks"]}
    assert checks["server RSS MB after the replay (documents closed, server idle)"] is True
    assert checks["server RSS MB with a document open, typing (most over traces)"] is False
    assert checks[f"server RSS MB with a document open, {latency.REST_S + 1:g} s after typing"] is True
    assert out["reuse"]["rss_rest_mb"] == 460.0
    rested_high = _run("reuse", [100, 120], total=150, engine=124, rss_open=490.0, rss_rest=520.0)
    checks = {c["name"]: c["pass"] for c in latency.report([rested_high], None)["checks"]}
    assert checks[f"server RSS MB with a document open, {latency.REST_S + 1:g} s after typing"] is False


def test_wait_idle_returns_once_a_process_stops_using_cpu():
    import os
    import subprocess
    import sys

    assert latency.wait_idle(os.getpid(), quiet_s=0.05, limit_s=5.0)  # this process sleeps meanwhile
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert not latency.wait_idle(busy.pid, quiet_s=0.1, limit_s=0.5)  # never idle
    finally:
        busy.kill()
        busy.wait()
    assert latency._cpu_ticks(os.getpid()) is not None and latency._cpu_ticks(2 ** 22 + 12345) is None
