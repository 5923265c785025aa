"""Reuse across keystrokes and growth rounds: exact where the layers are causal, approximate and
bounded where they are bidirectional."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, InfillRequest, ReusePolicy, SamplingConfig
from engine.reuse import plan
from engine.testing import make_tiny_checkpoint


def test_plan_keeps_the_common_head_and_tail_outside_the_holes():
    old = [2, 5, 6, 7, 0, 0, 0, 8, 9, 1]  # bos, prefix 5 6 7, hole of 3, suffix 8 9, eos
    new = [2, 5, 6, 4, 3, 0, 0, 0, 8, 9, 1]  # the last prefix token changed and one was typed
    p = plan(old, (4, 7), new, (5, 8), ReusePolicy(min_reused=0.3), age=0)
    assert (p.head, p.tail, p.length) == (3, 3, 11)
    assert plan(old, (4, 7), new, (5, 8), ReusePolicy(enabled=False), 0) is None
    assert plan(old, (4, 7), new, (5, 8), ReusePolicy(max_age=2), age=2) is None
    assert plan(old, (4, 7), new, (5, 8), ReusePolicy(max_changed=4), 0) is None  # 5 rows to compute
    assert plan(old, (4, 7), [3] + new[1:], (5, 8), ReusePolicy(), 0) is None  # nothing in common at the start


@pytest.fixture(scope="module")
def causal_ckpt(tmp_path_factory):
    """Every layer causal: reuse of the head is then exact, and so is everything the hole sees."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("causal"), family="dream", causal_layers=2)


@pytest.fixture(scope="module")
def mixed_ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("mixed"), family="dream", causal_layers=1)


TYPED = ["def add(a, b):\n    re", "def add(a, b):\n    ret", "def add(a, b):\n    retu", "def add(a, b):\n    return"]
SUFFIX = "\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"


def _req(prefix: str, session: str | None = "doc", **kw) -> InfillRequest:
    return InfillRequest(prefix=prefix, suffix=SUFFIX, hole_tokens=6, max_new_tokens=6, session=session,
                         sampling=SamplingConfig(threshold=0.5), **kw)


def test_keystrokes_reuse_the_cache_exactly_when_the_layers_are_causal(causal_ckpt):
    reusing = Engine.from_pretrained(causal_ckpt, device="cpu")
    fresh = Engine(reusing.model, reusing.tokenizer, reuse=ReusePolicy(enabled=False))
    reused = []
    for prefix in TYPED:
        a, b = reusing.infill(_req(prefix)), fresh.infill(_req(prefix))
        assert (a.text, a.tokens_per_step) == (b.text, b.tokens_per_step)
        assert b.reused_tokens == 0
        reused.append(a.reused_tokens)
    assert reused[0] == 0 and all(r > 0 for r in reused[1:])


def test_growth_rounds_splice_the_runs_own_cache(causal_ckpt):
    reusing = Engine.from_pretrained(causal_ckpt, device="cpu")
    fresh = Engine(reusing.model, reusing.tokenizer, reuse=ReusePolicy(enabled=False))
    req = InfillRequest(prefix=TYPED[-1], suffix=SUFFIX, hole_tokens=3, max_new_tokens=12,
                        sampling=SamplingConfig(threshold=2.0, grow_tokens=3, eos_fill=False, eos_frontier=False))
    a, b = reusing.infill(req), fresh.infill(req)
    assert (a.text, a.tokens_per_step, a.forward_passes) == (b.text, b.tokens_per_step, b.forward_passes)
    assert a.timings_ms["prefill"] >= 0


def test_bidirectional_layers_reuse_approximately_within_the_policy(mixed_ckpt):
    eng = Engine.from_pretrained(mixed_ckpt, device="cpu")
    eng.reuse = ReusePolicy(max_age=2)
    got = [eng.infill(_req(p)).reused_tokens for p in TYPED]
    assert got[0] == 0 and got[1] > 0 and got[2] > 0 and got[3] == 0  # the third reuse in a row prefills
    assert eng.infill(_req(TYPED[0], session="other")).reused_tokens == 0  # sessions are separate
    eng.forget("doc")
    assert eng.infill(_req(TYPED[1])).reused_tokens == 0


def test_bridging_step_equals_a_prefill_on_the_computed_rows(mixed_ckpt):
    """The splice plus one step over the edited rows computes those rows as a prefill of the new
    canvas would, given the spliced cache (the step is the model's own cached step)."""
    from engine.checkpoint import load_model
    from engine.kv_cache import splice

    model, a = load_model(mixed_ckpt)
    model.eval()
    g = torch.Generator().manual_seed(0)
    old = torch.randint(3, a.vocab_size, (1, 40), generator=g)
    new = torch.cat([old[:, :20], torch.tensor([[7, 8]]), old[:, 20:]], dim=1)  # two tokens typed at 20
    with torch.inference_mode():
        _, cache = model.prefill(old)
        _, want = model.prefill(new)
        spliced = splice(cache, 42, head=20, tail=20, theta=a.rope_theta)
        rows = torch.arange(20, 22)
        model.step(new[:, rows], rows, spliced)
    # the lower (causal) layer's head and computed rows are exact; its tail is approximate
    torch.testing.assert_close(spliced.keys[0][:, :, :22], want.keys[0][:, :, :22], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(spliced.values[0][:, :, :22], want.values[0][:, :, :22], atol=1e-5, rtol=1e-5)


def test_reuse_is_on_by_default_only_where_layers_are_causal(tiny_ckpt, causal_ckpt, monkeypatch):
    monkeypatch.delenv("DLSP_REUSE", raising=False)
    assert Engine.from_pretrained(causal_ckpt, device="cpu").reuse.enabled
    assert not Engine.from_pretrained(tiny_ckpt, device="cpu").reuse.enabled  # every layer bidirectional
    monkeypatch.setenv("DLSP_REUSE", "1")
    assert Engine.from_pretrained(tiny_ckpt, device="cpu").reuse.enabled
    monkeypatch.setenv("DLSP_REUSE", "0")
    assert not Engine.from_pretrained(causal_ckpt, device="cpu").reuse.enabled


def test_only_the_most_recent_sessions_keep_a_cache(causal_ckpt):
    from engine.engine import MAX_CACHED_SESSIONS, MAX_SESSIONS

    eng = Engine.from_pretrained(causal_ckpt, device="cpu")
    names = [f"doc{i}" for i in range(MAX_CACHED_SESSIONS + 1)]
    for name in names:
        eng.infill(_req(TYPED[0], session=name))
    kept = {k: s.cache is not None for k, s in eng._sessions.items()}
    assert kept == {n: i > 0 for i, n in enumerate(names)}  # the least recent lost its cache only
    assert eng._sessions["doc0"].anchor is not None and len(eng._sessions) <= MAX_SESSIONS
    # it is prefilled again when used, and reuses from then on
    assert eng.infill(_req(TYPED[1], session="doc0")).reused_tokens == 0
    assert eng.infill(_req(TYPED[2], session="doc0")).reused_tokens > 0


def test_the_idle_cached_session_keeps_half_precision_and_reuses_when_switched_back(causal_ckpt):
    from engine.engine import IDLE_CACHE_DTYPE

    eng = Engine.from_pretrained(causal_ckpt, device="cpu")
    fresh = Engine(eng.model, eng.tokenizer, reuse=ReusePolicy(enabled=False))
    eng.infill(_req(TYPED[0], session="a"))
    full = eng._sessions["a"].cache
    eng.infill(_req(TYPED[0], session="b"))
    idle = eng._sessions["a"].cache
    assert idle.dtype == IDLE_CACHE_DTYPE and eng._sessions["b"].cache.dtype == torch.float32
    assert idle.length == full.length
    assert all(k.shape[2] == idle.length for k, _ in idle.storage)  # kept, never spliced: no spare rows
    torch.testing.assert_close(idle.keys[0].float(), full.keys[0], rtol=1e-3, atol=1e-6)
    res = eng.infill(_req(TYPED[1], session="a"))  # switched back: widened, then spliced
    assert res.reused_tokens > 0
    back = eng._sessions["a"].cache
    assert back.dtype == torch.float32 and eng._sessions["b"].cache.dtype == IDLE_CACHE_DTYPE
    assert all(k.shape[2] >= back.length + 1 for k, _ in back.storage)  # spare rows again for typing
    # every layer causal: reuse is exact but for the keys/values' fp16 rounding
    assert res.text == fresh.infill(_req(TYPED[1])).text


def test_forget_drops_the_cache_and_hands_its_memory_back_once(causal_ckpt, monkeypatch):
    import engine.engine as engine_mod

    trims = []
    eng = Engine.from_pretrained(causal_ckpt, device="cpu")
    eng.infill(_req(TYPED[0], session="a"))
    monkeypatch.setattr(engine_mod, "release_freed_memory", lambda: trims.append(1) or True)
    eng.forget("a")
    assert "a" not in eng._sessions and trims == [1]
    eng.forget("a")  # nothing held: no trim
    eng.forget("never-seen")
    assert trims == [1]
    assert eng.infill(_req(TYPED[1], session="a")).reused_tokens == 0  # prefilled afresh


def test_rest_hands_memory_back_and_keeps_the_sessions(causal_ckpt, monkeypatch):
    """`rest` (the editor went quiet) trims the heap and unmaps cold code, and the document
    being typed in keeps its cache: the next keystroke still reuses it."""
    import engine.engine as engine_mod

    calls = []
    eng = Engine.from_pretrained(causal_ckpt, device="cpu")
    eng.infill(_req(TYPED[0], session="a"))
    monkeypatch.setattr(engine_mod, "release_freed_memory", lambda: calls.append("heap") or True)
    monkeypatch.setattr(engine_mod, "release_cold_code", lambda: calls.append("code") or 0)
    eng.rest()
    assert calls == ["heap", "code"] and eng._sessions["a"].cache is not None
    assert eng.infill(_req(TYPED[1], session="a")).reused_tokens > 0


def test_a_reusing_run_that_grew_the_process_hands_memory_back(causal_ckpt, monkeypatch):
    """Trimming only after runs that reused nothing left a keystroke's growth prefill (~150 MB
    at 1k tokens) resident; the engine now trims after any run past its slack, and only then."""
    import engine.engine as engine_mod
    from engine.runtime import ResidentTrim

    trims = []
    monkeypatch.setattr(engine_mod, "release_freed_memory", lambda: trims.append(1) or True)
    eng = Engine.from_pretrained(causal_ckpt, device="cpu")
    # resident sizes read at: construction, after run 1, after its trim, after run 2, after run 3, after its trim
    sizes = iter([1000, 5000, 1100, 1150, 9000, 1200])
    eng.memory = ResidentTrim(slack=100, resident=lambda: next(sizes))
    assert eng.infill(_req(TYPED[0])).reused_tokens == 0 and trims == [1]
    assert eng.infill(_req(TYPED[1])).reused_tokens > 0 and trims == [1]  # grew within the slack
    assert eng.infill(_req(TYPED[2])).reused_tokens > 0 and trims == [1, 1]
