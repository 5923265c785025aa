"""The server's work, independent of pygls: documents, settings, the model, scheduling, caches
and statistics. Handlers in `lsp_server.server` call these methods and convert the results.

A completion goes: type-through check -> latest-wins claim -> debounce -> context (tree-sitter)
-> context cache or one engine run on the worker -> post-processing -> stale check.

Inline completion and the completion list ask for the same thing on a keystroke (VS Code sends
both): they share one run per (document, version, cursor) instead of superseding each other.
The shared run stops only when every request waiting on it is cancelled.

Nothing that parses or walks a tree runs on the event loop: context building and action plans
run on one syntax thread under a time budget (`lsp_server.syntax.budget`); past it, a
completion's context is plain text and the code-action list offers what needs no parse.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from lsprotocol import types

from engine import InfillRequest, SamplingConfig
from lsp_server import actions
from lsp_server.cache import ContextCache, TypeThrough
from lsp_server.context import Context, build_context, indent_unit
from lsp_server.convert import UTF16, LineIndex, range_offsets, to_offset
from lsp_server.documents import DocumentStore
from lsp_server.errors import BadParams, ModelNotReady, StaleDocument, cancelled
from lsp_server.languages import spec_for
from lsp_server.model_host import ModelHost
from lsp_server.postprocess import block_floor, postprocess
from lsp_server.scheduler import Scheduler, Stopped
from lsp_server.settings import Settings
from lsp_server.stats import Stats
from lsp_server.syntax import Syntax, budget, line_end, line_start

log = logging.getLogger(__name__)
Spans = list[tuple[int, int, str]]
T = TypeVar("T")
ENGINE_STAGES = ("tokenize", "prefill", "steps", "detokenize", "rerank")
CONTEXT_BUDGET_S = 0.25  # syntax work for one completion or one code-action list
EDIT_BUDGET_S = 2.0  # syntax work for one action the user asked to run
# the editor quiet this long after the last run (no request live): the engine hands back what only
# runs need (`Engine.rest`). Longer than the think time between keystrokes (typing replays pause
# up to 0.8 s at line ends) so that bursts keep their warm pages; the next run pays nothing
# measurable for it either way
REST_S = 2.0


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


class _Shared:
    """One suggestion run and how many requests wait on it."""

    def __init__(self, task: asyncio.Future) -> None:
        self.task = task
        self.waiters = 0


def confident(confidence: float | None, minimum: float) -> bool:
    """Whether a fill of `confidence` (`InfillResult.confidence`, the geometric-mean probability of
    its tokens) may be shown under `minConfidence` = `minimum` (0 shows everything). A fill the
    engine did not score (the `rerank` check's base line) is shown."""
    return minimum <= 0 or confidence is None or confidence >= minimum


def _fill_avoiding_copies(engine: Any, req: InfillRequest, stop: Callable[[], bool], text: str,
                          plan: actions.EditPlan, unit: str) -> Any:
    """An action's run; where a hole's fill was nothing but the line after it (which `edits`
    would drop, leaving the placeholder), one more run with that line's start barred there
    (`InfillRequest.avoid`) gives those holes their fills, the others keep the first run's.
    Measured on the demo's `# TODO: take the quantity off` above `if item.quantity <= 0:`: the
    first run copies the `if` line, the second writes `item.quantity -= quantity`."""
    first = engine.infill(replace(req, should_stop=stop))
    avoid = () if first.cancelled else actions.copied_lines(text, plan, first.texts, unit)
    if not any(avoid):
        return first
    again = engine.infill(replace(req, should_stop=stop, avoid=avoid))
    if again.cancelled:
        return again
    texts = tuple(b if line else a for a, b, line in zip(first.texts, again.texts, avoid))
    timings = {k: first.timings_ms.get(k, 0.0) + again.timings_ms.get(k, 0.0) for k in again.timings_ms}
    return replace(again, texts=texts, timings_ms=timings, forward_passes=first.forward_passes + again.forward_passes)


def engine_request(ctx: Context, context_tokens: int, **extra: Any) -> InfillRequest:
    """The engine request of an inline completion at `ctx` (`extra`: session, sampling,
    should_stop); `benchmarks/server_eval.py` sends the same."""
    return InfillRequest(prefix=ctx.prefix, suffix=ctx.suffix, hole_tokens=ctx.hole_tokens,
                         max_new_tokens=ctx.max_new_tokens, max_context_tokens=context_tokens,
                         context=ctx.segments, single_line=not ctx.multiline,
                         min_indent=block_floor(ctx) if ctx.multiline else None, **extra)


class Service:
    def __init__(self, host: ModelHost, settings: Settings | None = None) -> None:
        self.host = host
        self.settings = settings or Settings()
        self.docs = DocumentStore()
        self.scheduler = Scheduler(REST_S, self._rest)
        self.cache = ContextCache()
        self.typed = TypeThrough()
        self.stats = Stats()
        self.encoding = UTF16
        self._shared: dict[tuple[str, int, int], _Shared] = {}
        self._last: dict[str, tuple[str, int, int]] = {}  # the latest suggestion key per document
        self._disabled_said: set[tuple[str, tuple[str, ...] | None]] = set()
        self._syntax = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlsp-syntax")

    async def off_loop(self, work: Callable[[], T], fallback: Callable[[], T], seconds: float) -> T:
        """`work()` on the syntax thread under a budget of `seconds`; `fallback()` (cheap, on the
        loop) if it is not done in about twice that (the budget is checked between parse chunks,
        so the thread is soon free again)."""
        def call() -> T:
            with budget(seconds):
                return work()

        future = asyncio.wrap_future(self._syntax.submit(call))
        try:
            return await asyncio.wait_for(asyncio.shield(future), 2 * seconds + 0.1)
        except asyncio.TimeoutError:
            log.info("syntax work over its %.2f s budget: degraded", seconds)
            return fallback()

    def close(self) -> None:
        self.scheduler.shutdown()
        self._syntax.shutdown(wait=False, cancel_futures=True)
        self.docs.shutdown()

    # -- documents and settings ---------------------------------------------------------------
    def did_change(self, uri: str, version: int | None, changes: list) -> None:
        if not self.docs.change(uri, version, changes, self.encoding):
            log.info("change for a document that is not open (ignored)")

    def did_close(self, uri: str) -> None:
        self.docs.close(uri)
        self._last.pop(uri, None)
        self.typed.forget(uri)
        self.scheduler.stop_all(lambda key: isinstance(key, tuple) and key[0] == uri, "closed")
        engine = self.host.engine
        if engine is not None:  # on the worker: dropping a cache hands its memory back (~10 ms)
            self.scheduler.after(lambda: engine.forget(uri))

    def _rest(self) -> None:
        """On the worker, after a quiet spell (`REST_S`)."""
        engine = self.host.engine
        if engine is not None:
            engine.rest()

    def configure(self, raw: Any) -> bool:
        """Apply settings; returns True when the model must be (re)loaded."""
        old, self.settings = self.settings, self.settings.updated(raw)
        self.cache.clear()
        return (old.model_path, old.device) != (self.settings.model_path, self.settings.device)

    def _enabled(self, doc: Any) -> bool:
        """Enabled languages (default: the model card's); others get nothing and one log line."""
        spec = spec_for(doc.language_id, doc.uri)
        if self.settings.language_enabled(doc.language_id, self.host.languages, spec.name if spec else None):
            return True
        said = (doc.language_id, self.settings.enabled_languages or self.host.languages)
        if said not in self._disabled_said:
            self._disabled_said.add(said)
            log.info("no completions for language %r: enabled are %s (the model card's languages unless "
                     "enabledLanguages is set)", doc.language_id[:40], ", ".join(said[1] or ()))
        return False

    def _stale(self, uri: str, version: int) -> bool:
        doc = self.docs.get(uri)
        return doc is None or doc.version != version or self.docs.busy(uri)

    def _count(self, text: str) -> int:
        return self.host.engine.count_tokens(text)

    def _sampling(self) -> SamplingConfig | None:
        s, engine = self.settings, self.host.engine
        pairs = (("threshold", s.threshold), ("steps", s.steps), ("min_per_step", s.min_per_step),
                 ("draft", s.draft), ("close_brackets", s.close_brackets), ("base_weight", s.base_weight),
                 ("base_multiline", s.base_multiline), ("rerank", s.rerank))
        changes = {k: v for k, v in pairs if v is not None}
        if engine is None or not changes:
            return None
        return replace(engine.default_sampling, **changes)

    # -- inline completion ----------------------------------------------------------------------
    async def suggest(self, uri: str, position: types.Position) -> tuple[LineIndex, Spans] | None:
        """Suggestion spans at a position, or None when there is nothing to say."""
        await self.docs.settled(uri)
        doc = self.docs.get(uri)
        if doc is None or not self._enabled(doc):
            return None
        key = (uri, doc.version, to_offset(doc.index, position, self.encoding))
        shared = self._shared.get(key)
        if shared is None or shared.task.done() or self._last.get(uri) != key:  # join only the latest ask
            self._last[uri] = key
            run = self._suggest(uri, doc.language_id, doc.text, doc.version, doc.index, key[2])
            shared = self._shared[key] = _Shared(asyncio.ensure_future(run))
            shared.task.add_done_callback(lambda _, done=shared: self._forget(key, done))
        shared.waiters += 1
        try:
            return await asyncio.shield(shared.task)
        except asyncio.CancelledError:
            shared.waiters -= 1
            if shared.waiters <= 0:  # nobody else waits for it
                shared.task.cancel()
            raise

    def _forget(self, key: tuple[str, int, int], shared: _Shared) -> None:
        if self._shared.get(key) is shared:
            del self._shared[key]

    async def _suggest(self, uri: str, language_id: str, text: str, version: int, index: LineIndex,
                       cursor: int) -> tuple[LineIndex, Spans] | None:
        t0 = time.perf_counter()
        rest = self.typed.lookup(uri, text, cursor)
        if rest is not None:
            self.stats.count("cached")
            self.stats.count("completed")
            self.stats.record({"total": _ms(t0)})
            self.typed.remember(uri, text, cursor, rest)
            return index, [(cursor, cursor, rest)]
        if not self.host.ready:
            self.stats.count("empty")
            return None
        job = self.scheduler.claim((uri, "complete"), is_stale=lambda: self._stale(uri, version))
        try:
            t_wait = time.perf_counter()
            await self.scheduler.debounce(job, self.settings.debounce_ms / 1000.0)
            waited = _ms(t_wait)
            out, timings = await self._complete(job, uri, language_id, text, cursor)
        except Stopped as stop:
            self.stats.count("cancelled" if stop.reason == "cancelled" else "dropped")
            return None
        except asyncio.CancelledError:
            self.stats.count("cancelled")
            raise
        except Exception:
            self.stats.count("errors")
            raise
        finally:
            self.scheduler.release(job)
        if self._stale(uri, version):
            self.stats.count("dropped")
            return None
        timings["total"] = _ms(t0)
        if "engine" in timings:  # the server's own time: neither the engine, nor waiting for it, nor the debounce
            timings["server"] = timings["total"] - timings["engine"] - timings.get("queue", 0.0) - waited
        self.stats.record(timings)
        self.stats.count("completed" if out else "empty")
        self.typed.remember(uri, text, cursor, out)
        return index, [(cursor, cursor, out)] if out else []

    async def _complete(self, job: Any, uri: str, language_id: str, text: str,
                        cursor: int) -> tuple[str, dict[str, float]]:
        t = time.perf_counter()
        s, engine = self.settings, self.host.engine
        others = self.docs.others(uri)
        ctx = await self.off_loop(
            lambda: build_context(text, cursor, spec_for(language_id, uri), s.context_tokens, s.max_tokens,
                                  self._count, others),
            lambda: build_context(text, cursor, None, s.context_tokens, s.max_tokens), CONTEXT_BUDGET_S)
        timings = {"context": _ms(t)}
        raw = self.cache.get(ctx.key())
        if raw is None:
            req = engine_request(ctx, s.context_tokens, session=uri, sampling=self._sampling(),
                                 should_stop=job.should_stop)
            result = await self.scheduler.run(job, lambda stop: engine.infill(req))
            if result is None or result.cancelled:
                raise Stopped(job.reason or "cancelled")
            raw = result.text
            if not confident(result.confidence, s.min_confidence):
                raw = ""  # held back: the setting asks for surer suggestions (the cache keeps the no)
                self.stats.count("held_back")
            self.cache.put(ctx.key(), raw)
            timings.update({k: result.timings_ms[k] for k in ENGINE_STAGES if k in result.timings_ms})
            timings["engine"] = result.timings_ms.get("total", 0.0)
            timings["queue"] = job.queued_ms
        else:
            self.stats.count("cached")
        t = time.perf_counter()  # bracket scans of the context: off the loop too (32k "(": ~20 ms)
        out = await self.off_loop(lambda: postprocess(raw, ctx), str, CONTEXT_BUDGET_S)
        timings["postprocess"] = _ms(t)
        return out, timings

    async def complete_word(self, uri: str, position: types.Position) -> tuple[LineIndex, Spans] | None:
        """Completion-list flavour: the edit replaces the word before the cursor with word + fill."""
        found = await self.suggest(uri, position)
        if not found:
            return found
        index, spans = found
        out = []
        for s, e, text in spans:
            word = s
            while word > 0 and (index.text[word - 1].isalnum() or index.text[word - 1] == "_"):
                word -= 1
            out.append((word, e, index.text[word:s] + text))
        return index, out

    # -- code actions -----------------------------------------------------------------------
    def _snapshot(self, uri: str) -> Any:
        doc = self.docs.get(uri)
        if doc is None:
            raise BadParams("unknown document")
        return doc

    def _plan(self, name: str, text: str, a: int, b: int, spec: Any) -> actions.EditPlan | None:
        s = self.settings
        if name == actions.REGENERATE:
            return actions.regenerate_plan(text, a, b, s.max_tokens, self._count if self.host.ready else None)
        lo, hi = line_start(text, max(0, a - 65536)), line_end(text, min(len(text), b + 65536))
        syntax = Syntax.parse(text[lo:hi], lo, spec)
        if name == actions.FILL_HOLES:
            return actions.fill_holes_plan(text, a, spec, syntax, s.max_tokens)
        if name == actions.COMPLETE_BODY:
            return actions.body_plan(text, a, spec, syntax, s.max_tokens)
        raise BadParams(f"unknown action {name}")

    async def available_actions(self, uri: str, rng: types.Range) -> list[str]:
        """Actions that apply at a range (no model call; one parse, off the loop, in budget)."""
        await self.docs.settled(uri)
        doc = self.docs.get(uri)
        if doc is None or not self.host.ready or not self._enabled(doc):
            return []
        a, b = range_offsets(doc.index, rng, self.encoding)
        spec, text = spec_for(doc.language_id, uri), doc.text
        names = [actions.REGENERATE] if b > a else []
        found = await self.off_loop(
            lambda: [n for n in (actions.FILL_HOLES, actions.COMPLETE_BODY) if self._plan(n, text, a, a, spec)],
            list, CONTEXT_BUDGET_S)
        return names + found

    async def edit(self, name: str, uri: str, rng: types.Range) -> tuple[LineIndex, int, Spans]:
        """Run one action; returns (index of the text it read, its version, offset edits)."""
        await self.docs.settled(uri)
        doc = self._snapshot(uri)
        if not self.host.ready:
            raise ModelNotReady(self.host.state)
        text, version, index = doc.text, doc.version, doc.index
        a, b = range_offsets(index, rng, self.encoding)
        spec = spec_for(doc.language_id, uri)
        plan = await self.off_loop(lambda: self._plan(name, text, a, b, spec), lambda: None, EDIT_BUDGET_S)
        if plan is None:
            raise BadParams(f"nothing to do for {name} here")
        t0 = time.perf_counter()
        seg = await self.off_loop(lambda: actions.segments(text, plan, spec, self.settings.context_tokens, self._count),
                                  lambda: actions.segments(text, plan, None, self.settings.context_tokens, None),
                                  EDIT_BUDGET_S)
        unit = indent_unit(text, a)
        req = InfillRequest(prefix=seg.prefix, suffix=seg.suffix, middles=seg.middles, hole_tokens=plan.hole_tokens,
                            max_new_tokens=plan.max_new_tokens, max_context_tokens=self.settings.context_tokens,
                            sampling=self._sampling(), min_indent=actions.block_floor(text, plan, unit))
        job = self.scheduler.claim((uri, "edit"), is_stale=lambda: self._stale(uri, version))
        engine = self.host.engine
        try:
            result = await self.scheduler.run(job, lambda stop: _fill_avoiding_copies(engine, req, stop, text, plan, unit))
        except Stopped as stop:
            self.stats.count("cancelled" if stop.reason == "cancelled" else "dropped")
            raise (cancelled() if stop.reason == "cancelled" else StaleDocument(stop.reason)) from None
        except Exception:
            self.stats.count("errors")
            raise
        if result is None or result.cancelled or self._stale(uri, version):
            self.stats.count("dropped")
            raise StaleDocument("the document changed")
        self.stats.record({**{k: result.timings_ms[k] for k in ENGINE_STAGES if k in result.timings_ms},
                           "total": _ms(t0)})
        self.stats.count("completed")
        return index, version, actions.edits(text, plan, result.texts, unit)

    def snapshot_stats(self) -> dict[str, Any]:
        return {**self.stats.snapshot(), "model": self.host.info(), "state": self.host.state}
