"""Context from other open documents: definitions whose names appear near the cursor.

Each document's definitions are indexed once per version (tree-sitter), then looked up by the
identifiers around the cursor. A document whose parse does not fit the time budget is indexed as
having none (for that version), so it does not cost every later completion its budget again. Snippets are short (a whole small definition, else its header)
and are prefixed with a comment naming their file.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

from lsp_server.documents import Document
from lsp_server.languages import LangSpec, spec_for
from lsp_server.syntax import Syntax, line_end, line_start, over_budget

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_MAX_DOC = 1_000_000
_MAX_DOCS = 20
_SMALL_DEF = 400
_index: OrderedDict[tuple[str, int], dict[str, str]] = OrderedDict()


def _name(node) -> str | None:
    """A definition's name: its `name` field, else the identifier inside its declarator."""
    for _ in range(6):
        if node is None:
            return None
        name = node.child_by_field_name("name")
        if name is not None:
            return name.text.decode("utf-8", "replace")
        if node.type in ("identifier", "field_identifier"):
            return node.text.decode("utf-8", "replace")
        node = node.child_by_field_name("declarator")
    return None


def definitions(doc: Document, spec: LangSpec) -> dict[str, str]:
    """name -> snippet for every definition of a document (cached per URI and version)."""
    key = (doc.uri, doc.version)
    if key in _index:
        _index.move_to_end(key)
        return _index[key]
    out: dict[str, str] = {}
    syntax = Syntax.parse(doc.text, 0, spec)
    for node in syntax.nodes("scopes") if syntax else ():
        name = _name(node)
        if not name or name in out:
            continue
        s, e = syntax.span(node)
        if e - s > _SMALL_DEF:
            e = line_end(doc.text, max(s, syntax.header_end(node) - 1))
        out[name] = doc.text[line_start(doc.text, s):e].rstrip() + "\n"
    _index[key] = out
    while len(_index) > 64:
        _index.popitem(last=False)
    return out


def related_definitions(text: str, cursor: int, spec: LangSpec | None, others: Sequence[Document],
                        budget: int) -> str:
    """Snippets of other documents' definitions named near the cursor, within `budget` chars."""
    if spec is None or budget <= 0 or not others:
        return ""
    names = set(_IDENT.findall(text[max(0, cursor - 1500):cursor + 500]))
    out, used = [], 0
    for doc in list(others)[:_MAX_DOCS]:
        if over_budget():  # out of time: the definitions found so far
            break
        if len(doc.text) > _MAX_DOC or spec_for(doc.language_id, doc.uri) != spec:
            continue
        snippets = [snip for name, snip in definitions(doc, spec).items() if name in names]
        if not snippets:
            continue
        block = f"{spec.comment} {doc.name}\n" + "".join(snippets)
        if used + len(block) > budget:
            continue
        out.append(block)
        used += len(block)
    return "".join(out) + ("\n" if out else "")
