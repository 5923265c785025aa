"""Edit-action plans: placeholder detection, body spans across languages, segments."""

from __future__ import annotations

import pytest

from lsp_server import actions
from lsp_server.convert import apply_edits
from lsp_server.languages import spec_for
from lsp_server.syntax import Syntax


def _parse(text, lang):
    spec = spec_for(lang)
    return spec, Syntax.parse(text, 0, spec)


def test_find_holes_python_kinds_and_strings_are_not_holes():
    text = ("def f(x):\n    # TODO: handle x\n    pass\n\ndef g(): ...\n"
            "s = '# TODO not a hole'\nt = '<|hole|>'\ny = 1  # TODO trailing is not a hole\n")
    spec, syntax = _parse(text, "python")
    holes = [text[s:e] for s, e in actions.find_holes(text, 0, len(text), spec, syntax)]
    assert holes == ["# TODO: handle x", "pass", "...", "<|hole|>"]


def test_fill_holes_uses_innermost_scope_with_holes():
    text = "class A:\n    def f(self):\n        pass\n\n    def g(self):\n        return 1\n\n    def h(self):\n        ...\n"
    spec, syntax = _parse(text, "python")
    plan = actions.fill_holes_plan(text, text.index("return 1"), spec, syntax, 64)
    assert [text[s:e] for s, e in plan.spans] == ["pass", "..."]  # g has none: the class scope
    plan = actions.fill_holes_plan(text, text.index("pass"), spec, syntax, 64)
    assert [text[s:e] for s, e in plan.spans] == ["pass"]


def test_js_todo_and_marker():
    text = "function f(a) {\n  // TODO double it\n  return <|hole|>;\n}\n"
    spec, syntax = _parse(text, "javascript")
    plan = actions.fill_holes_plan(text, 20, spec, syntax, 64)
    assert [text[s:e] for s, e in plan.spans] == ["// TODO double it", "<|hole|>"]


@pytest.mark.parametrize("lang,text,fill,expected", [
    ("python", "def f(x):\n    pass\n\ny = 2\n", "return x", "def f(x):\n    return x\n\ny = 2\n"),
    ("python", "def f(x):\n", "return x", "def f(x):\n    return x\n"),
    ("javascript", "function f(a) {\n  return 0;\n}\n", "return a;", "function f(a) {\n  return a;\n}\n"),
    ("go", "func f() int {\n}\n", "return 1", "func f() int {\n\treturn 1\n}\n".replace("\t", "    ")),
    ("rust", "fn f() -> i32 {\n    0\n}\n", "1", "fn f() -> i32 {\n    1\n}\n"),
    ("c", "int f(int a) {\n  return 0;\n}\n", "return a;", "int f(int a) {\n  return a;\n}\n"),
    ("java", "class A {\n  int f() {\n  }\n}\n", "return 1;", "class A {\n  int f() {\n    return 1;\n  }\n}\n"),
])
def test_complete_body_plans(lang, text, fill, expected):
    spec, syntax = _parse(text, lang)
    cursor = text.index("f") + 1
    plan = actions.body_plan(text, cursor, spec, syntax, 64)
    assert plan is not None
    unit = "  " if lang in ("javascript", "c", "java") else "    "
    assert apply_edits(text, actions.edits(text, plan, [fill], unit)) == expected


def test_block_fills_stop_where_the_code_leaves_the_block():
    text = "class A:\n    def f(self, x):\n        pass\n\n    def g(self):\n        return 1\n"
    spec, syntax = _parse(text, "python")
    plan = actions.body_plan(text, text.index("f(") + 1, spec, syntax, 64)
    fill = "y = x + 1\n        return y\n\n\nclass B:\n    pass"
    assert apply_edits(text, actions.edits(text, plan, [fill], "    ")) == (
        "class A:\n    def f(self, x):\n        y = x + 1\n        return y\n\n    def g(self):\n        return 1\n")
    holes = actions.fill_holes_plan(text, text.index("pass"), spec, syntax, 64)
    out = apply_edits(text, actions.edits(text, holes, ["return x\n    def h(self):\n        pass"], "    "))
    assert "return x\n\n    def g" in out and "def h" not in out  # dedented below `pass`: cut
    sel = actions.regenerate_plan(text, text.index("pass"), text.index("pass") + 4, 64, None)
    assert not sel.block  # a selection is the user's span: nothing is cut


def test_complete_body_without_grammar_after_bare_header():
    assert actions.body_plan("x", 0, None, None, 64) is None
    spec = spec_for("python")
    plan = actions.body_plan("if ok:", 3, spec, None, 64)
    assert apply_edits("if ok:", actions.edits("if ok:", plan, ["go()"], "    ")) == "if ok:\n    go()"


def test_regenerate_plan_and_segments():
    text = "a = 1\nb = a + 2\nc = b\n"
    plan = actions.regenerate_plan(text, 6, 16, 64, None)
    assert text[plan.spans[0][0]:plan.spans[0][1]] == "b = a + 2"
    seg = actions.segments(text, plan, spec_for("python"), 1024, None)
    assert seg.prefix == "a = 1\n" and seg.suffix == "\nc = b\n" and seg.middles == ()
    assert actions.regenerate_plan(text, 3, 3, 64, None) is None
    assert actions.edits(text, plan, ["   "], "    ") == []  # an empty fill keeps the original


def test_hole_fills_that_run_into_the_code_below_are_cut_there():
    """The demo's `Fill holes in remove()` wrote the line below the TODO into it (`if item.quantity
    <= 0:` twice): a fill is cut at its first line repeating the next line after its hole, and a
    fill that is only that copy leaves the hole as it was."""
    text = ("def remove(self, name):\n    item = self.items[name]\n    # TODO: take the quantity off\n"
            "    if item.quantity <= 0:\n        ...\n")
    spec, syntax = _parse(text, "python")
    plan = actions.fill_holes_plan(text, text.index("item ="), spec, syntax, 64)
    assert [text[s:e] for s, e in plan.spans] == ["# TODO: take the quantity off", "..."]
    out = apply_edits(text, actions.edits(text, plan, ["if item.quantity <= 0:", "del self.items[name]"], "    "))
    assert out == text.replace("        ...", "        del self.items[name]")  # the TODO stays
    out = apply_edits(text, actions.edits(text, plan, ["item.quantity -= 1\n    if item.quantity <= 0:", "pass"], "    "))
    assert "    item.quantity -= 1\n    if item.quantity <= 0:\n        pass" in out and out.count("if item") == 1
    # a line that merely resembles the next one is kept
    out = apply_edits(text, actions.edits(text, plan, ["if item.quantity < 0: raise ValueError", "pass"], "    "))
    assert "if item.quantity < 0: raise ValueError\n    if item.quantity <= 0:" in out
    # the holes whose fill was only that copy name the line a second run avoids; the others none
    copies = actions.copied_lines
    assert copies(text, plan, ["if item.quantity <= 0:", "del self.items[name]"], "    ") == ("if item.quantity <= 0:", "")
    assert copies(text, plan, ["item.quantity -= 1\n    if item.quantity <= 0:", "pass"], "    ") == ("", "")
    assert copies(text, plan, ["if item.quantity < 0: raise ValueError", ""], "    ") == ("", "")


def test_hole_fills_are_cut_back_to_complete_lines_and_start_at_the_indentation():
    """The demo's `Complete body of parse_line` wrote `return line.split(` and ended: a block
    fill that stops inside an expression is cut back to its last complete line (here: nothing,
    so no edit), and a fill after a hole's indentation does not add a space of its own."""
    text = "def parse_line(line):\n    pass\n"
    spec, syntax = _parse(text, "python")
    plan = actions.body_plan(text, text.index("parse") + 1, spec, syntax, 64)
    assert actions.edits(text, plan, ["return line.split(\n       "], "    ") == []
    out = apply_edits(text, actions.edits(text, plan, ["x = line.strip()\n    return Item(x,\n"], "    "))
    assert out == "def parse_line(line):\n    x = line.strip()\n"
    out = apply_edits(text, actions.edits(text, plan, ["# don't split twice\n    return line.split(',')"], "    "))
    assert out == "def parse_line(line):\n    # don't split twice\n    return line.split(',')\n"
    text = "def f(x):\n    if x:\n        ...\n"
    spec, syntax = _parse(text, "python")
    plan = actions.fill_holes_plan(text, text.index("if"), spec, syntax, 64)
    assert apply_edits(text, actions.edits(text, plan, [" raise ValueError(x)"], "    ")) == (
        "def f(x):\n    if x:\n        raise ValueError(x)\n")


def test_a_todo_hole_shows_the_model_its_comment_and_the_fill_replaces_it():
    """The model reads what an own-line TODO asks (the comment, then the hole on the next line at
    the same indentation) and the accepted fill takes the comment's place; other holes, a TODO
    trailing code and a `<|hole|>` marker get no hint."""
    text = ("def remove(self, name):\n    item = self.items[name]\n    # TODO: take the quantity off\n"
            "    if item.quantity <= 0:\n        ...\n")
    spec, syntax = _parse(text, "python")
    plan = actions.fill_holes_plan(text, text.index("item ="), spec, syntax, 64)
    assert plan.hint == ("# TODO: take the quantity off\n    ", "")
    seg = actions.segments(text, plan, spec, 1024, None)
    assert seg.prefix.endswith("    item = self.items[name]\n    # TODO: take the quantity off\n    ")
    assert seg.middles == ("\n    if item.quantity <= 0:\n        ",)
    out = apply_edits(text, actions.edits(text, plan, ["item.quantity -= 1", "del self.items[name]"], "    "))
    assert out == ("def remove(self, name):\n    item = self.items[name]\n    item.quantity -= 1\n"
                   "    if item.quantity <= 0:\n        del self.items[name]\n")
    text = "function f(a) {\n  // TODO double it\n  return <|hole|>;\n}\n"
    spec, syntax = _parse(text, "javascript")
    plan = actions.fill_holes_plan(text, 20, spec, syntax, 64)
    assert plan.hint == ("// TODO double it\n  ", "")
    assert actions.segments(text, plan, spec, 1024, None).middles == ("\n  return ",)
    # a plan without hints (a selection, a body) reads as before
    plan = actions.regenerate_plan(text, 2, 10, 16, None)
    assert plan.hint == () and actions.segments(text, plan, spec, 1024, None).prefix == text[:2]
