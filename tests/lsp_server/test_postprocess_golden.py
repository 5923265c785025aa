"""Golden fixtures: a small file with a cursor marker, what the model said, and the document with
the shown item marked «like this» at its range (no marks: no item)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsp_server.context import build_context
from lsp_server.languages import spec_for
from lsp_server.postprocess import postprocess

GOLDENS = sorted((Path(__file__).parent / "goldens").glob("*.txt"))
CURSOR = "<|cursor|>"


def _load(path: Path) -> dict:
    head, _, rest = path.read_text().partition("=== input\n")
    source, _, expected = rest.partition("=== expected\n")
    meta = {}
    for line in head.splitlines():
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        meta[key.strip()] = value.strip()
    return {"meta": meta, "source": source, "expected": expected}


@pytest.mark.parametrize("path", GOLDENS, ids=[p.stem for p in GOLDENS])
def test_golden(path):
    case = _load(path)
    source = case["source"]
    cursor = source.index(CURSOR)
    text = source.replace(CURSOR, "")
    ctx = build_context(text, cursor, spec_for(case["meta"]["language"]), 1024, 64)
    if "mode" in case["meta"]:
        assert ctx.mode == case["meta"]["mode"]
    out = postprocess(json.loads(case["meta"]["model"]), ctx)
    shown = text[:cursor] + (f"«{out}»" if out else "") + text[cursor:]
    assert shown == case["expected"]


def test_goldens_exist():
    assert len(GOLDENS) >= 10
