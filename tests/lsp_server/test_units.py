"""Settings, caches, statistics, scheduler and error mapping."""

from __future__ import annotations

import asyncio

import pytest
from pygls.exceptions import JsonRpcContentModified, JsonRpcInternalError, JsonRpcInvalidParams

from engine.errors import CheckpointError, InvalidRequestError
from lsp_server.cache import ContextCache, TypeThrough
from lsp_server.errors import REQUEST_FAILED, ModelNotReady, StaleDocument, to_lsp
from lsp_server.scheduler import Scheduler, Stopped
from lsp_server.settings import Settings
from lsp_server.stats import Stats, percentile


def test_settings_accept_known_keys_and_ignore_bad_values(caplog):
    s = Settings().updated({"dlsp": {"modelPath": "/m", "device": "cpu", "threshold": 0.7, "steps": 4,
                                     "maxTokens": 32, "debounceMs": 10, "enabledLanguages": ["python", 3],
                                     "contextTokens": 256, "logLevel": "debug", "minPerStep": 999, "unknown": 1}})
    assert (s.model_path, s.device, s.threshold, s.steps, s.max_tokens) == ("/m", "cpu", 0.7, 4, 32)
    assert s.enabled_languages == ("python",) and s.context_tokens == 256 and s.debounce_ms == 10
    assert s.min_per_step is None  # 999 is out of range: refused, not clamped
    assert s.language_enabled("python") and not s.language_enabled("go")
    bad = s.updated({"maxTokens": "many", "steps": True, "enabledLanguages": "python"})
    assert bad == s
    assert Settings().updated(None) == Settings() and Settings().updated([1]) == Settings()
    with caplog.at_level("WARNING", logger="lsp_server"):
        assert Settings().updated({"maxTokens": -5}).max_tokens == 64  # issue 12: not silently 1
    assert any("maxTokens" in r.getMessage() and "-5" in r.getMessage() for r in caplog.records)
    assert Settings().updated({"threshold": 1.5, "debounceMs": -1}) == Settings()


def test_context_cache_lru():
    c = ContextCache(size=2)
    c.put("a", "1")
    c.put("b", "2")
    c.get("a")
    c.put("c", "3")
    assert c.get("b") is None and c.get("a") == "1" and c.get("c") == "3"


def test_type_through_only_when_typed_text_matches_and_context_unchanged():
    t = TypeThrough()
    text = "x = \nrest"
    t.remember("u", text, 4, "foo(1)")
    assert t.lookup("u", "x = fo\nrest", 6) == "o(1)"
    assert t.lookup("u", "x = fa\nrest", 6) is None  # typed something else
    assert t.lookup("u", "x = fo\nREST", 6) is None  # the suffix changed
    assert t.lookup("u", "x = foo(1)\nrest", 10) is None  # typed it all
    assert t.lookup("u", "x =\nrest", 3) is None  # moved back
    assert t.lookup("other", text, 4) is None


def test_stats_percentiles_and_counts():
    s = Stats()
    for ms in range(1, 101):
        s.record({"steps": float(ms), "total": float(ms)})
    s.count("completed")
    snap = s.snapshot()
    assert snap["stages"]["steps"] == {"count": 100, "p50_ms": 50.0, "p95_ms": 95.0}
    assert snap["requests"]["completed"] == 1 and snap["requests"]["cancelled"] == 0
    assert snap["last_latency_ms"] == 100.0
    assert percentile([3.0], 95) == 3.0


def test_error_mapping():
    assert isinstance(to_lsp(InvalidRequestError("bad")), JsonRpcInvalidParams)
    assert to_lsp(CheckpointError("/m", "missing config.json")).code == REQUEST_FAILED
    assert to_lsp(ModelNotReady("loading")).code == REQUEST_FAILED
    assert isinstance(to_lsp(StaleDocument("x")), JsonRpcContentModified)
    assert isinstance(to_lsp(RuntimeError("boom")), JsonRpcInternalError)
    assert "boom" not in to_lsp(RuntimeError("boom")).message  # no internals (or text) leak


def test_scheduler_skips_superseded_jobs_without_running_them():
    sched = Scheduler()
    ran = []

    async def main():
        a = sched.claim("doc")
        b = sched.claim("doc")
        with pytest.raises(Stopped) as info:
            await sched.run(a, lambda stop: ran.append("a"))
        assert info.value.reason == "superseded"
        assert await sched.run(b, lambda stop: ran.append("b") or "ok") == "ok"
        other = sched.claim("other-doc")
        assert await sched.run(other, lambda stop: "x") == "x"
        stale = sched.claim("doc", is_stale=lambda: True)
        with pytest.raises(Stopped):
            await sched.debounce(stale, 0.0)

    asyncio.run(main())
    assert ran == ["b"]
    sched.shutdown()


def test_scheduler_runs_background_work_after_the_queued_job_and_survives_its_errors():
    """`after` work (a closed document's cache dropped) waits for the job queued before it, never
    runs beside it, and a failure is logged without stopping the worker."""
    import threading

    sched = Scheduler()
    gate, order, done = threading.Event(), [], threading.Event()

    async def main():
        job = sched.claim("doc")
        running = asyncio.ensure_future(sched.run(job, lambda stop: gate.wait(10) and order.append("job")))
        await asyncio.sleep(0.01)
        sched.after(lambda: order.append("after"))
        sched.after(lambda: 1 / 0)
        sched.after(done.set)
        gate.set()
        await running

    asyncio.run(main())
    assert done.wait(10) and order == ["job", "after"]
    sched.shutdown()
    sched.after(lambda: order.append("late"))  # after shutdown: dropped, no error
    assert order == ["job", "after"]


def test_scheduler_rests_once_per_quiet_spell_and_not_while_jobs_come():
    """`rest` runs on the worker once no job has been live for `rest_s`: once per quiet spell,
    never while keystrokes keep claiming jobs, and again after the next spell."""
    import threading

    rested = threading.Semaphore(0)
    sched = Scheduler(rest_s=0.15, rest=rested.release)

    async def main():
        for _ in range(4):  # a burst: each job ends within rest_s of the next claim
            await sched.run(sched.claim("doc"), lambda stop: None)
            await asyncio.sleep(0.05)
        assert sched.rests == 0
        held = sched.claim("doc")  # a job live past rest_s (waiting in its debounce): no rest
        await asyncio.sleep(0.3)
        assert sched.rests == 0
        with pytest.raises(Stopped):
            held.stop("superseded")
            await sched.debounce(held, 0.0)
        await asyncio.sleep(0.3)  # quiet now: one rest, not one per timer armed before
        assert sched.rests == 1
        await sched.run(sched.claim("doc"), lambda stop: None)
        await asyncio.sleep(0.3)
        assert sched.rests == 2

    asyncio.run(main())
    assert rested.acquire(timeout=10) and rested.acquire(timeout=10)
    assert not rested.acquire(timeout=0.1)
    sched.shutdown()


def test_default_loader_reads_the_model_cards_languages(tiny_ckpt, tmp_path):
    import json
    import shutil

    from engine.checkpoint import checkpoint_languages
    from engine.engine import DEFAULT_MODEL_DIR
    from lsp_server.model_host import default_loader

    assert checkpoint_languages(DEFAULT_MODEL_DIR) == ("python",)
    assert default_loader(str(tiny_ckpt), "cpu").languages is None  # third-party: not said, all languages
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "dlsp_languages": ["python", "go"]}))
    assert default_loader(str(ckpt), "cpu").languages == ("python", "go")


def _broken_copy(tiny_ckpt, tmp_path, **changes):
    import json
    import shutil

    ckpt = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, **changes}))
    return ckpt


@pytest.mark.parametrize("changes, words", [
    ({"dlsp_sampling": {"min_per_step": 0}}, "min_per_step"),
    ({"dlsp_sampling": {"temperature": "hot"}}, "temperature"),
    ({"dlsp_sampling": {"eos_fill": 1}}, "eos_fill"),
    ({"dlsp_sampling": [1]}, "dlsp_sampling"),
    ({"n_heads": 0}, "n_heads"),
    ({"n_heads": 3}, "multiple"),
])
def test_invalid_checkpoints_fail_at_load_naming_the_file(tiny_ckpt, tmp_path, changes, words):
    """Issue 12 (5): these loaded as "ready" and then failed every request as the client's fault
    (or reported a bare division by zero)."""
    from engine.errors import CheckpointError
    from lsp_server.model_host import ModelHost, default_loader

    ckpt = _broken_copy(tiny_ckpt, tmp_path, **changes)
    with pytest.raises(CheckpointError) as err:
        default_loader(str(ckpt), "cpu")
    assert "config.json" in str(err.value) and words in str(err.value)
    host = ModelHost(default_loader)
    host.load(str(ckpt), "cpu").join()
    assert host.state == "failed" and "config.json" in host.message
