"""Context building: syntax-aware clipping, single/multi-line decisions, cross-file snippets."""

from __future__ import annotations

import pytest

from lsp_server.context import build_context, clip_suffix, decide_mode, indent_unit, opens_line
from lsp_server.documents import Document
from lsp_server.languages import spec_for
from lsp_server.postprocess import postprocess
from lsp_server.syntax import Syntax


def _big_python() -> tuple[str, int]:
    head = "import os\nfrom collections import OrderedDict\n\n\n"
    funcs = "".join(f"def helper_{i}(x, y):\n    total = x + y * {i}\n    return total - {i}\n\n\n"
                    for i in range(60))
    cls = "class Store:\n    def __init__(self):\n        self.items = []\n\n    def add(self, item):\n"
    body = "".join(f"        value_{i} = item * {i}\n" for i in range(80))
    text = head + funcs + cls + body + "        return "
    return text + "\n\nprint(Store())\n", len(text)


def _far(ctx) -> str:
    """The far context as the engine lays it out when everything fits: segments from elsewhere,
    then those in the window in document order, then the window."""
    before = "".join(s.text for s in ctx.segments if s.at is None)
    return before + "".join(s.text for s in sorted((s for s in ctx.segments if s.at is not None), key=lambda s: s.at))


def test_segments_rank_imports_enclosing_headers_and_signatures():
    text, cursor = _big_python()
    ctx = build_context(text, cursor, spec_for("python"), 400, 64)
    p, far = ctx.prefix, _far(ctx)
    assert p.endswith("        return ") and text[:cursor].endswith(p)
    assert len(p) < 0.9 * len(text[:cursor])  # the window is bounded; the engine clips it in tokens
    assert far.startswith("import os\nfrom collections import OrderedDict\n")
    assert "class Store:\n" in far and "    def add(self, item):\n" in far
    assert "def helper_59(x, y):\n" in far  # nearest sibling signature
    assert "total = x + y * 3\n" not in far  # far bodies are dropped, not their signatures
    assert far.index("class Store:") < far.index("    def add(self, item):")
    ranks = {s.kind: min(t.rank for t in ctx.segments if t.kind == s.kind) for s in ctx.segments}
    assert ranks["imports"] < ranks["outline"] < ranks.get("other_file", 10**6)
    for s in ctx.segments:
        assert s.at is None or p[s.at:s.at + len(s.text)] == s.text
    assert ctx.suffix.startswith("\n\nprint(Store())")


def test_small_file_is_kept_whole():
    text = "import os\n\ndef f(x):\n    return x\n"
    ctx = build_context(text, 30, spec_for("python"), 1024, 64)
    assert ctx.prefix == text[:30] and ctx.suffix == text[30:]


@pytest.mark.parametrize("lang,source,mode", [
    ("python", "def f(x):<C>", "body"),
    ("python", "def f(x):\n    <C>", "body"),
    ("python", "if x:\n    y = 1\n    <C>", "block"),
    ("python", "def f(x):\n    a = 1\n    <C>\n    return a\n", "line"),  # a gap in a block
    ("python", "def f(x):\n    <C>\n    return x\n", "line"),  # a gap at the start of a block
    ("python", "def f(x):\n    <C>\n\ndef g():\n    pass\n", "body"),  # an empty block
    ("python", "def f(x):\n    a = 1\n<C>\n    return a\n", "line"),
    ("python", "def f(x):\n    a = 1\n\n<C>\n\ndef g():\n    pass\n", "block"),  # the code after dedents
    ("python", "class A:\n    def f(self):\n        pass\n\n    <C>\n\n    def g(self):\n", "block"),
    ("javascript", "function f() {\n  a();\n  <C>\n}", "block"),  # only a closer after
    ("javascript", "function f() {\n  a();\n  <C>\n  b();\n}", "line"),
    ("python", "x = foo(<C>)", "line"),
    ("python", "x = foo(<C>, 2)", "fill"),
    ("python", "d = {'a':<C>", "line"),
    ("python", "s = 'if x:<C>", "line"),
    ("python", "# if x:<C>", "line"),
    ("javascript", "function f() {<C>\n}", "body"),
    ("javascript", "const s = '{<C>", "line"),
    ("go", "func f() {\n\t<C>\n}", "body"),
    ("rust", "fn main() {<C>", "body"),
    ("cobol", "PROCEDURE DIVISION.<C>", "line"),
    ("cobol", "\n<C>", "block"),
])
def test_mode_from_syntax(lang, source, mode):
    cursor = source.index("<C>")
    text = source.replace("<C>", "")
    spec = spec_for(lang)
    assert decide_mode(text, cursor, spec, Syntax.parse(text, 0, spec)) == mode


def test_hole_length_follows_mode():
    one = build_context("x = foo(", 8, spec_for("python"), 1024, 64)
    body = build_context("def f():", 8, spec_for("python"), 1024, 64)
    assert one.hole_tokens < body.hole_tokens and one.max_new_tokens <= body.max_new_tokens


def test_a_line_starts_with_the_hole_dlsp_eval_measures_single_lines_with():
    """What the evaluation scores is what the editor gets: the server's single-line hole at the
    end of a line starts as long as `dlsp eval`'s single-line tasks' (a shorter one needs a growth
    round, one more forward, for every line longer than it)."""
    from engine.evaluation.run import HOLE_TOKENS as EVAL_HOLES

    ctx = build_context("def f(x):\n    y = \n", len("def f(x):\n    y = "), spec_for("python"), 1024, 64)
    assert ctx.mode == "line" and ctx.hole_tokens == EVAL_HOLES["single_line"]


def test_huge_document_context_is_bounded():
    text = ("def f(x):\n    return x\n\n" * 250_000)[:5_000_000]
    ctx = build_context(text, len(text) // 2, spec_for("python"), 1024, 64)
    assert 0 < len(ctx.prefix) < 8000 and len(ctx.suffix) < 4000


def test_binary_looking_text_and_unknown_language():
    text = "\x00\x01\x02 binary \udcff\ufffd\n" * 100
    ctx = build_context(text, len(text) // 2, spec_for("python"), 256, 64)
    assert isinstance(ctx.prefix, str)
    ctx = build_context(text, 5, None, 256, 64)
    assert ctx.prefix == text[:5]


def test_other_documents_contribute_referenced_definitions():
    other = Document("file:///lib/geometry.py", "python", 3,
                     "def area(w, h):\n    return w * h\n\ndef unrelated():\n    pass\n")
    text = "from geometry import area\n\nx = area("
    ctx = build_context(text, len(text), spec_for("python"), 1024, 64, others=[other])
    other_file = [s for s in ctx.segments if s.kind == "other_file"]
    assert len(other_file) == 1 and other_file[0].at is None
    assert other_file[0].text.startswith("# geometry.py\ndef area(w, h):\n    return w * h\n")
    assert "unrelated" not in other_file[0].text
    assert ctx.prefix == text


def test_other_languages_do_not_contribute():
    other = Document("file:///lib/a.js", "javascript", 1, "function area(w, h) { return w * h; }\n")
    ctx = build_context("x = area(", 9, spec_for("python"), 1024, 64, others=[other])
    assert ctx.prefix == "x = area(" and not ctx.segments


def test_indent_unit_and_suffix_clip():
    assert indent_unit("if x:\n\ty\n\tz\n", 5) == "\t"
    assert indent_unit("if x:\n  y\n", 5) == "  "
    assert indent_unit("x", 0) == "    "
    assert clip_suffix("a\nbb\nccc\n", 0, 6) == "a\nbb\n"


def test_deep_nesting_walks_are_linear_and_capped():
    """16k nested parentheses (issue 12: quadratic parent walks stalled 37 s): ancestors still
    reach both the innermost node and the enclosing function, past the depth cap."""
    from lsp_server.syntax import MAX_DEPTH, Syntax

    n = MAX_DEPTH + 6000
    text = "def f():\n    x = " + "(" * n + "1" + ")" * n + "\n"
    cursor = text.index("1")
    syntax = Syntax.parse(text, 0, spec_for("python"))
    chain = syntax.ancestors(cursor)
    assert len(chain) == MAX_DEPTH + 1 and chain[0].type == "integer"
    assert [n.type for n in syntax.enclosing_scopes(cursor)] == ["function_definition"]
    assert not syntax.in_comment_or_string(cursor)
    assert Syntax.parse(text, 0, spec_for("python")) is syntax  # cached per exact window


def test_parse_over_budget_degrades_to_plain_text():
    from lsp_server.syntax import Syntax, budget

    text = "def f(x):\n    return x\n" * 5000
    with budget(0.0):
        assert Syntax.parse(text + "#", 0, spec_for("python")) is None
        ctx = build_context(text, len(text) // 2, spec_for("python"), 256, 64)
    assert ctx.prefix and text[:len(text) // 2].endswith(ctx.prefix[-50:])


def test_node_listings_stop_at_the_budget():
    """Past the budget, node listings find nothing."""
    from lsp_server.syntax import Syntax, budget

    text = "import os\ndef f():\n    pass\n"
    syntax = Syntax.parse(text, 0, spec_for("python"))
    assert syntax.nodes("scopes")
    with budget(0.0):
        assert syntax.nodes("scopes") == []


@pytest.mark.parametrize("lang,text", [
    ("python", None),  # _big_python()
    ("python", "x = " + "(" * 3000),  # a wide error tree
    ("python", "def f():\n    x = " + "(" * 600 + "1" + ")" * 600 + "\n    def g():\n        import a\n"),
    ("javascript", "import x from 'y';\nclass A { m() { return 1 } }\nfunction f() { /* c */ const g = () => 2 }\n"),
    ("rust", "use std::io;\nmod m { fn f() { // c\n let x = 1; } }\nimpl A { fn g(&self) {} }\n"),
])
def test_node_walk_finds_what_a_query_finds(lang, text):
    """`Syntax.nodes` walks the tree instead of running a tree-sitter query (a query holds the
    GIL, for ~0.75 s over 32k unclosed "("): same nodes, same order, with and without a range."""
    import tree_sitter

    from lsp_server.languages import SPECS, parser_for

    text = text if text is not None else _big_python()[0]
    syntax = Syntax.parse(text, 0, spec_for(lang))
    language = parser_for(SPECS[lang].name).language
    for kind, types in (("scopes", SPECS[lang].scopes), ("imports", SPECS[lang].imports),
                        ("comments", ("comment", "line_comment", "block_comment"))):
        patterns = []
        for t in sorted(types):
            try:
                tree_sitter.Query(language, f"({t}) @n")
                patterns.append(f"({t}) @n")
            except Exception:
                continue
        for rng in ((None, None), (len(text) // 3, len(text) // 2), (0, 10)):
            cursor = tree_sitter.QueryCursor(tree_sitter.Query(language, " ".join(patterns)))
            if rng[0] is not None:
                cursor.set_byte_range(syntax.c2b(rng[0]), syntax.c2b(rng[1]))
            want = sorted(cursor.captures(syntax.tree.root_node).get("n", []), key=lambda n: n.start_byte)
            assert [n.id for n in syntax.nodes(kind, *rng)] == [n.id for n in want], (kind, rng)
    for rng in ((None, None), (len(text) // 3, len(text) // 2)):  # one walk for several kinds: the same
        both = syntax.nodes_of(("scopes", "imports", "comments"), *rng)
        assert {k: [n.id for n in v] for k, v in both.items()} == \
            {k: [n.id for n in syntax.nodes(k, *rng)] for k in ("scopes", "imports", "comments")}


def test_chars_per_token_is_counted_once_while_typing_within_a_line():
    from lsp_server.context import chars_per_token

    calls = []

    def count(s: str) -> int:
        calls.append(len(s))
        return len(s) // 4

    text = "".join(f"value_{i} = compute({i}, name='n{i}')\n" for i in range(300))
    cursor = text.index("value_200")
    first = chars_per_token(text, cursor, count)
    for typed in ("x", "xy", "xyz"):  # keystrokes on the cursor's line
        edited = text[:cursor] + typed + text[cursor:]
        assert chars_per_token(edited, cursor + len(typed), count) == first
    assert len(calls) == 1 and 1000 <= calls[0] <= 4000
    nxt = text.index("value_201")  # the next line: a new sample, counted
    chars_per_token(text, nxt, count)
    assert len(calls) == 2
    assert chars_per_token("short", 2, count) == 3.5


@pytest.mark.parametrize("lang", ["python", "javascript", "rust"])
def test_incremental_parse_equals_a_fresh_parse(lang):
    """A parse starts from the last tree of the same window (typing edits one place): after any
    edit (insert, delete, replace; at the start, middle, end; multi-byte text) the tree is the
    one a fresh parse gives."""
    import random

    from lsp_server import syntax as syntax_mod

    unit = {"python": "def f{i}(x):\n    return x + {i}  # é\n",
            "javascript": "function f{i}(x) {{ return x + {i}; }} // é\n",
            "rust": "fn f{i}(x: i32) -> i32 {{ x + {i} }} // é\n"}[lang]
    text = "".join(unit.format(i=i) for i in range(120))  # > 1 KB: the chunked reader is used
    spec = spec_for(lang)
    rng = random.Random(0)
    syntax_mod._cache.clear()
    Syntax.parse(text, 0, spec)
    for _ in range(40):
        a = rng.randrange(len(text) + 1)
        b = min(len(text), a + rng.choice([0, 0, 1, 5, 40]))
        text = text[:a] + rng.choice(["", "x", "(", "\n", "é", "}", unit.format(i=999)]) + text[b:]
        inc = Syntax.parse(text, 0, spec)
        fresh = Syntax(text, 0, spec)
        assert str(inc.tree.root_node) == str(fresh.tree.root_node)
    assert syntax_mod.common_head(b"abcdef", b"abcxef") == 3 and syntax_mod.common_head(b"", b"a") == 0


@pytest.mark.parametrize("source, eol", [
    ("def f(x):\n    a = 1\n<C>    return a\n", "\n"),  # before a line's indentation
    ("import os\n<C>import sys\n", "\n"),  # before code at column 0
    ("<C>import sys\n", "\n"),  # the document's first line
    ("def f(x):\r\n    a = 1\r\n<C>    return a\r\n", "\r\n"),  # the document's own line break
    ("def f(x):\n    a = 1\n    <C>return a\n", ""),  # after the indentation: text before the code
    ("def f(x):\n    a = 1\n<C>\n    return a\n", ""),  # an empty line: the line break is there
    ("x = foo(\n<C>)\n", ""),  # only a closer on the line: the fill may end on it
    ("x = 1\n<C>", ""),  # the end of the document
])
def test_a_cursor_at_the_start_of_a_line_of_code_asks_for_a_line_above_it(source, eol):
    cursor = source.index("<C>")
    text = source.replace("<C>", "")
    assert opens_line(text, cursor) == eol


def test_the_line_above_has_the_context_of_an_empty_line_typed_there():
    """A held-out line removed with its line break leaves the cursor at the start of the next
    line: the model gets the shape `dlsp eval` measures (an empty line between prefix and the
    code after), and the suggestion brings its own line break, so it goes in above the code
    instead of joining it."""
    text = "def mean(values):\n    total = sum(values)\n    return total / len(values)\n"
    cursor = text.index("    return")
    gap = text[:cursor] + "\n" + text[cursor:]
    ctx = build_context(text, cursor, spec_for("python"), 1024, 64)
    typed = build_context(gap, cursor, spec_for("python"), 1024, 64)
    assert ctx.new_line == "\n" and typed.new_line == ""
    assert (ctx.prefix, ctx.suffix, ctx.mode, ctx.line_before, ctx.line_after) == \
        (typed.prefix, typed.suffix, typed.mode, typed.line_before, typed.line_after)
    assert ctx.suffix.startswith("\n    return total") and ctx.mode == "line" and not ctx.multiline
    assert ctx.key() != typed.key()  # a cached suggestion of one is not the other's
    assert postprocess("    x = 1", ctx) == "    x = 1\n"
    assert postprocess("    x = 1", typed) == "    x = 1"
    assert postprocess("   ", ctx) == ""  # nothing worth showing stays nothing
    crlf = build_context(text.replace("\n", "\r\n"), cursor + 2, spec_for("python"), 1024, 64)
    assert crlf.new_line == "\r\n" and postprocess("    x = 1", crlf) == "    x = 1\r\n"
