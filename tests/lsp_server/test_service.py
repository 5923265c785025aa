"""The server's pipeline with a fake engine: caching, type-through, latest-wins, staleness,
cancellation, code-edit plans, settings and statistics. No pygls, no subprocess."""

from __future__ import annotations

import asyncio
import threading

import pytest
from lsprotocol import types

from lsp_server import actions
from lsp_server.convert import apply_edits
from lsp_server.errors import BadParams, ModelNotReady
from lsp_server.model_host import ModelHost
from lsp_server.service import Service
from lsp_server.settings import Settings
from tests.lsp_server.fakes import FakeEngine

URI = "file:///w/a.py"
SRC = "import os\n\ndef add(a, b):\n    return \n"


def _service(engine=None, **settings) -> Service:
    host = ModelHost(loader=lambda path, device: engine)
    if engine is not None:
        host.load(None, None).join()
    svc = Service(host, Settings(debounce_ms=0, **settings))
    svc.docs.open(URI, "python", 1, SRC)
    return svc


def _pos(line, character):
    return types.Position(line=line, character=character)


def _rng(a, b):
    return types.Range(start=_pos(*a), end=_pos(*b))


async def _running(svc, engine) -> asyncio.Future:
    """Ask for a suggestion at line 3 col 11 and return its task once the engine is generating."""
    task = asyncio.ensure_future(svc.suggest(URI, _pos(3, 11)))
    while not engine.started.is_set():
        await asyncio.sleep(0.001)
    return task


def _insert(svc, version, line, character, text):
    change = types.TextDocumentContentChangePartial(range=_rng((line, character), (line, character)), text=text)
    svc.did_change(URI, version, [change])


def test_suggest_cache_and_type_through():
    engine = FakeEngine(fill=lambda req: ("a + b\nprint(1)",))
    svc = _service(engine)

    async def main():
        index, spans = await svc.suggest(URI, _pos(3, 11))
        assert spans == [(len("import os\n\ndef add(a, b):\n    return "),) * 2 + ("a + b",)]
        assert engine.calls[0].single_line and engine.calls[0].min_indent is None
        assert index.text == SRC
        await svc.suggest(URI, _pos(3, 11))  # same context: cached
        assert len(engine.calls) == 1
        _insert(svc, 2, 3, 11, "a +")
        _, spans = await svc.suggest(URI, _pos(3, 14))  # typed through the suggestion
        assert spans[0][2] == " b" and len(engine.calls) == 1

    asyncio.run(main())
    snap = svc.snapshot_stats()
    assert snap["requests"]["cached"] == 2 and snap["requests"]["completed"] == 3
    assert snap["requests"]["held_back"] == 0  # minConfidence is off by default
    assert {"context", "tokenize", "prefill", "steps", "postprocess", "total"} <= set(snap["stages"])
    assert snap["state"] == "ready" and snap["model"]["model"] == "fake"
    svc.scheduler.shutdown()


def test_latest_request_wins_and_stops_the_running_one():
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    svc = _service(engine)

    async def main():
        first = await _running(svc, engine)
        second = asyncio.ensure_future(svc.suggest(URI, _pos(3, 4)))
        await asyncio.sleep(0.01)
        gate.set()
        return await first, await second

    first, second = asyncio.run(main())
    assert first is None and second is not None
    assert engine.stopped == 1 and len(engine.calls) == 2
    assert svc.stats.snapshot()["requests"]["dropped"] == 1
    svc.scheduler.shutdown()


def test_burst_leaves_no_backlog():
    engine = FakeEngine(steps=2)
    svc = _service(engine)
    svc.configure({"debounceMs": 5})  # every request claims the document before any debounce ends

    async def main():
        tasks = [asyncio.ensure_future(svc.suggest(URI, _pos(3, 4 + i % 7))) for i in range(200)]
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert results[-1] is not None
    assert len(engine.calls) == 1  # superseded requests never reach the model
    assert svc.stats.snapshot()["requests"]["dropped"] == 199
    svc.scheduler.shutdown()


def test_newer_version_stops_generation_and_drops_result():
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    svc = _service(engine)

    async def main():
        task = await _running(svc, engine)
        _insert(svc, 2, 0, 0, "#")
        gate.set()
        return await task

    assert asyncio.run(main()) is None
    assert svc.stats.snapshot()["requests"]["dropped"] == 1
    svc.scheduler.shutdown()


def test_cancel_request_stops_generation():
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    svc = _service(engine)

    async def main():
        task = await _running(svc, engine)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(1000):  # the worker notices between steps
            if engine.stopped:
                break
            await asyncio.sleep(0.005)

    asyncio.run(main())
    assert engine.stopped == 1  # the running generation saw should_stop() turn True
    assert svc.stats.snapshot()["requests"]["cancelled"] == 1
    svc.scheduler.shutdown()


def test_not_ready_disabled_and_unknown_documents_are_empty():
    svc = _service(None)
    assert asyncio.run(svc.suggest(URI, _pos(3, 11))) is None
    assert asyncio.run(svc.available_actions(URI, _rng((0, 0), (0, 3)))) == []
    with pytest.raises(ModelNotReady):
        asyncio.run(svc.edit(actions.FILL_HOLES, URI, _rng((0, 0), (0, 0))))
    svc2 = _service(FakeEngine(), enabled_languages=("rust",))
    assert asyncio.run(svc2.suggest(URI, _pos(3, 11))) is None
    assert asyncio.run(svc2.suggest("file:///unknown.py", _pos(0, 0))) is None
    with pytest.raises(BadParams):
        asyncio.run(svc2.edit(actions.FILL_HOLES, "file:///unknown.py", _rng((0, 0), (0, 0))))
    svc2.scheduler.shutdown()


def test_failed_load_reports_and_stays_empty():
    def broken(path, device):
        raise OSError("no such checkpoint")

    seen = []
    host = ModelHost(loader=broken, on_change=seen.append)
    host.load("/nope", None).join()
    assert host.state == "failed" and "no such checkpoint" in host.message
    assert [s["state"] for s in seen] == ["loading", "failed"]


HOLES = """import math

def area(r):
    # TODO compute the area
    ...

def perimeter(r):
    return 2 * math.pi * r
"""


def test_fill_holes_jointly_in_one_run():
    engine = FakeEngine(fill=lambda req: ("x = r * r", "return math.pi * x"))
    svc = _service(engine)
    svc.docs.open("file:///h.py", "python", 1, HOLES)

    async def main():
        return await svc.edit(actions.FILL_HOLES, "file:///h.py", _rng((3, 6), (3, 6)))

    index, version, edits = asyncio.run(main())
    assert len(engine.calls) == 1 and engine.calls[0].n_holes == 2 and engine.calls[0].min_indent == 4
    assert engine.calls[0].middles == ("\n    ",)
    assert apply_edits(HOLES, edits) == HOLES.replace("# TODO compute the area", "x = r * r").replace(
        "    ...\n", "    return math.pi * x\n")
    assert version == 1
    svc.scheduler.shutdown()


TAKE = """def take(item, n):
    # TODO: take n off
    if item.quantity <= 0:
        return None
    ...
"""


def test_a_hole_filled_with_the_line_below_it_is_filled_again_avoiding_that_line():
    """The first run copies the `if` line into the TODO (an edit `edits` would drop, leaving the
    TODO): a second run bars that line's start there; the other hole keeps the first run's fill."""
    def fill(req):
        if not req.avoid:
            return ("if item.quantity <= 0:", "return item")
        return ("item.quantity -= n", "return something_else")

    engine = FakeEngine(fill=fill)
    svc = _service(engine)
    svc.docs.open("file:///t.py", "python", 1, TAKE)

    async def main():
        return await svc.edit(actions.FILL_HOLES, "file:///t.py", _rng((1, 4), (1, 4)))

    _, _, edits = asyncio.run(main())
    assert [c.avoid for c in engine.calls] == [(), ("if item.quantity <= 0:", "")]
    assert apply_edits(TAKE, edits) == TAKE.replace("# TODO: take n off", "item.quantity -= n").replace(
        "    ...\n", "    return item\n")
    svc.scheduler.shutdown()


def test_regenerate_selection_and_complete_body():
    engine = FakeEngine(fill=lambda req: ("b * 2",))
    svc = _service(engine)
    svc.docs.open("file:///r.py", "python", 1, "def f(a, b):\n    return a + b\n\nx = 1\n")
    _, _, edits = asyncio.run(svc.edit(actions.REGENERATE, "file:///r.py", _rng((1, 15), (1, 16))))
    assert apply_edits(svc.docs.get("file:///r.py").text, edits) == "def f(a, b):\n    return a + b * 2\n\nx = 1\n"
    req = engine.calls[-1]
    assert req.prefix.endswith("return a + ") and req.suffix.startswith("\n\nx = 1")
    engine.fill = lambda req: ("y = a\n    return y",)
    _, _, edits = asyncio.run(svc.edit(actions.COMPLETE_BODY, "file:///r.py", _rng((0, 2), (0, 2))))
    assert apply_edits(svc.docs.get("file:///r.py").text, edits) == "def f(a, b):\n    y = a\n    return y\n\nx = 1\n"
    # the engine may stop a body's fill where it leaves the body (4 columns), a selection's never
    assert engine.calls[-1].min_indent == 4 and req.min_indent is None
    assert set(asyncio.run(svc.available_actions("file:///r.py", _rng((1, 4), (1, 10))))) == {
        actions.REGENERATE, actions.COMPLETE_BODY}
    svc.scheduler.shutdown()


def test_settings_change_sampling_and_reload_flag():
    engine = FakeEngine(fill=lambda req: ("z",))
    svc = _service(engine)
    assert svc.configure({"dlsp": {"threshold": 0.5, "steps": 3, "minPerStep": 2, "maxTokens": 7,
                                   "draft": 0, "closeBrackets": 12, "baseWeight": 0.5, "baseMultiline": False,
                                   "rerank": False}}) is False
    asyncio.run(svc.suggest(URI, _pos(3, 11)))
    req = engine.calls[-1]
    assert req.sampling.threshold == 0.5 and req.sampling.steps == 3 and req.max_new_tokens <= 7
    assert req.sampling.min_per_step == 2 and req.sampling.draft == 0 and req.sampling.close_brackets == 12
    assert req.sampling.base_weight == 0.5 and req.sampling.base_multiline is False and req.sampling.rerank is False
    svc.configure({"dlsp": {"draft": 65, "closeBrackets": 257, "baseWeight": 16.5}})  # out of range: refused
    assert svc.settings.draft == 0 and svc.settings.close_brackets == 12 and svc.settings.base_weight == 0.5
    svc.configure({"dlsp": {"baseMultiline": 1, "baseWeight": True}})  # a number is not a switch, nor the reverse
    assert svc.settings.base_multiline is False and svc.settings.base_weight == 0.5
    svc.configure({"dlsp": {"baseMultiline": None, "rerank": "no"}})  # not a switch: refused
    assert svc.settings.base_multiline is None and svc.settings.rerank is False
    assert svc.configure({"modelPath": "/elsewhere"}) is True
    svc.scheduler.shutdown()


def test_min_confidence_holds_back_unsure_suggestions_but_not_code_actions():
    """`minConfidence`: an inline suggestion whose tokens' geometric-mean probability (exp of the
    engine's score) is below it is not shown and counted as held back; sure ones, unscored ones
    and code actions are unaffected; 0 (the default) shows everything."""
    import math

    score = {"now": math.log(0.5)}
    engine = FakeEngine(fill=lambda req: ("a + b",) * req.n_holes, score=lambda req: score["now"])
    svc = _service(engine)
    assert svc.settings.min_confidence == 0.0

    async def main():
        _, spans = await svc.suggest(URI, _pos(3, 11))
        assert spans[0][2] == "a + b"  # the default shows an unsure suggestion
        svc.configure({"dlsp": {"minConfidence": 0.8}})
        _insert(svc, 2, 3, 11, "z")  # a new context (typing "z" does not follow the one shown)
        _, spans = await svc.suggest(URI, _pos(3, 12))
        assert spans == [] and len(engine.calls) == 2
        await svc.suggest(URI, _pos(3, 12))  # the no is cached like a suggestion
        assert len(engine.calls) == 2
        score["now"] = math.log(0.9)
        svc.configure({"dlsp": {"minConfidence": 0.8}})  # (a settings change clears the cache)
        _, spans = await svc.suggest(URI, _pos(3, 12))
        assert spans[0][2] == "a + b" and len(engine.calls) == 3
        score["now"] = None  # unscored (the check's base line): shown
        _insert(svc, 3, 3, 12, "y")
        _, spans = await svc.suggest(URI, _pos(3, 13))
        assert spans[0][2] == "a + b" and len(engine.calls) == 4
        score["now"] = math.log(0.1)
        svc.docs.open("file:///w/b.py", "python", 1, "def f(x):\n    pass\n")
        _, _, edits = await svc.edit(actions.COMPLETE_BODY, "file:///w/b.py", _rng((0, 5), (0, 5)))
        assert edits  # an action the user asked for answers whatever the score

    asyncio.run(main())
    assert svc.snapshot_stats()["requests"]["held_back"] == 1
    svc.configure({"dlsp": {"minConfidence": 1.5}})  # out of range: refused, the old value stays
    svc.configure({"dlsp": {"minConfidence": True}})  # a switch is not a number
    assert svc.settings.min_confidence == 0.8
    svc.scheduler.shutdown()


def test_single_line_contexts_ask_the_engine_to_stop_at_the_line_break():
    engine = FakeEngine(fill=lambda req: ("a + b",))
    svc = _service(engine)
    asyncio.run(svc.suggest(URI, _pos(3, 11)))  # after `return `: one line
    assert engine.calls[-1].single_line is True
    svc.docs.open("file:///w/b.py", "python", 1, "def add(a, b):\n")
    asyncio.run(svc.suggest("file:///w/b.py", _pos(0, 14)))  # end of a block header: a body
    assert engine.calls[-1].single_line is False
    svc.scheduler.shutdown()


def test_inline_and_completion_list_share_one_run():
    """VS Code asks for both on a keystroke: neither may supersede the other (issue 12, 7)."""
    gate = threading.Event()
    engine = FakeEngine(fill=lambda req: ("a + b",), gate=gate)
    svc = _service(engine)

    async def main():
        inline = asyncio.ensure_future(svc.suggest(URI, _pos(3, 11)))
        listed = asyncio.ensure_future(svc.complete_word(URI, _pos(3, 11)))
        while not engine.started.is_set():
            await asyncio.sleep(0.001)
        gate.set()
        (_, a), (_, b) = await inline, await listed
        assert a == b == [(37, 37, "a + b")]
        assert len(engine.calls) == 1

    asyncio.run(main())


def test_shared_run_survives_one_cancelled_waiter():
    gate = threading.Event()
    engine = FakeEngine(fill=lambda req: ("a + b",), gate=gate)
    svc = _service(engine)

    async def main():
        inline = asyncio.ensure_future(svc.suggest(URI, _pos(3, 11)))
        listed = asyncio.ensure_future(svc.complete_word(URI, _pos(3, 11)))
        while not engine.started.is_set():
            await asyncio.sleep(0.001)
        inline.cancel()
        gate.set()
        _, spans = await listed
        assert spans == [(37, 37, "a + b")]
        with pytest.raises(asyncio.CancelledError):
            await inline

    asyncio.run(main())


def test_languages_default_to_the_model_cards(caplog):
    """Issue 12 (6): a Python-only model gave Python in .rs files and garbage in .txt files."""
    engine = FakeEngine(fill=lambda req: ("a + b",))
    engine.languages = ("python",)
    svc = _service(engine)
    svc.docs.open("file:///w/m.rs", "rust", 1, "fn main() {\n    let x = \n}\n")
    svc.docs.open("file:///w/n.txt", "plaintext", 1, "notes: \n")
    svc.docs.open("file:///w/s.py", "", 1, "x = \n")  # no languageId: the extension names it

    async def main():
        assert await svc.suggest("file:///w/m.rs", _pos(1, 12)) is None
        assert await svc.suggest("file:///w/m.rs", _pos(1, 11)) is None
        assert await svc.suggest("file:///w/n.txt", _pos(0, 7)) is None
        assert (await svc.suggest(URI, _pos(3, 11)))[1]
        assert (await svc.suggest("file:///w/s.py", _pos(0, 4)))[1]
        assert await svc.available_actions("file:///w/m.rs", _rng((0, 0), (0, 3))) == []

    with caplog.at_level("INFO", logger="lsp_server"):
        asyncio.run(main())
    assert sum("'rust'" in r.getMessage() for r in caplog.records) == 1  # one line, not one per request
    svc.configure({"enabledLanguages": ["rust"]})  # the user's setting wins
    assert asyncio.run(svc.suggest("file:///w/m.rs", _pos(1, 12))) is not None
    svc.scheduler.shutdown()


def test_requests_carry_the_session_and_ranked_segments_and_close_forgets_it():
    """The engine clips (once, by rank) and reuses per session: the service sends the cursor
    window, the ranked segments and the document as the session, and drops it on close."""
    from engine import InfillBackend

    engine = FakeEngine(fill=lambda req: ("a + b",))
    assert isinstance(engine, InfillBackend)
    svc = _service(engine)
    asyncio.run(svc.suggest(URI, _pos(3, 11)))
    req = engine.calls[-1]
    assert req.session == URI and req.prefix == SRC[:SRC.index("return ") + 7]
    assert any(s.kind == "imports" and s.text == "import os\n" for s in req.context)
    svc.did_close(URI)
    done = threading.Event()
    svc.scheduler.after(done.set)  # forgotten on the worker, in order with what is queued there
    assert done.wait(10) and engine.forgotten == [URI]
    svc.scheduler.shutdown()


def test_the_engine_rests_once_the_editor_is_quiet(monkeypatch):
    """After the last run and a quiet spell the engine is asked to hand back what only runs need
    (`Engine.rest`), on the worker; not while a burst of keystrokes goes on."""
    monkeypatch.setattr("lsp_server.service.REST_S", 0.2)
    engine = FakeEngine(fill=lambda req: ("a + b",))
    svc = _service(engine)

    async def main():
        for version, col in ((2, 11), (3, 12), (4, 13)):
            _insert(svc, version, 3, col, "x")
            await svc.suggest(URI, _pos(3, col + 1))
        assert engine.rests == 0 and len(engine.calls) == 3
        await asyncio.sleep(0.5)

    asyncio.run(main())
    done = threading.Event()
    svc.scheduler.after(done.set)
    assert done.wait(10) and engine.rests == 1
    svc.scheduler.shutdown()


def test_a_block_suggestion_tells_the_engine_where_the_block_ends():
    """Below a header the server asks for a body: the engine may stop the fill at its first line
    left of the body (`min_indent`), where the postprocessing would cut it anyway."""
    engine = FakeEngine(fill=lambda req: ("y = x\n    return y\ndef g():",))
    svc = _service(engine)
    svc.docs.open("file:///b.py", "python", 1, "def f(x):\n    \n")

    async def main():
        return await svc.suggest("file:///b.py", _pos(1, 4))

    _, spans = asyncio.run(main())
    req = engine.calls[-1]
    assert not req.single_line and req.min_indent == 1  # past the header's column
    assert spans[0][2] == "y = x\n    return y"
    svc.scheduler.shutdown()


def test_a_suggestion_at_the_start_of_a_line_of_code_is_a_line_above_it():
    """The cursor before `    return a`: the engine fills an empty line typed above it (single
    line), and the edit inserts the line with its line break, leaving the code below intact."""
    engine = FakeEngine(fill=lambda req: ("    a = 1",))
    svc = _service(engine)
    svc.docs.open("file:///w/c.py", "python", 1, "def f():\n    return a\n")
    index, spans = asyncio.run(svc.suggest("file:///w/c.py", _pos(1, 0)))
    req = engine.calls[-1]
    assert req.single_line is True and req.prefix.endswith("def f():\n") and req.suffix.startswith("\n    return a")
    (start, end, text), = spans
    assert start == end == len("def f():\n") and text == "    a = 1\n"
    assert index.text[:start] + text + index.text[end:] == "def f():\n    a = 1\n    return a\n"
    svc.scheduler.shutdown()
