"""Fill-in-the-middle tasks cut from held-out source files, deterministically from a seed.

Three kinds of hole, each a `FimTask(prefix, middle, suffix)` whose pieces reassemble a window
of one file (at most `before` characters before the hole and `after` after it):

  * single_line: one whole non-blank line (indentation included, newline excluded);
  * multi_line: 2-8 consecutive lines, preferably the start of a block body (the lines after a
    line ending in ':' that are indented deeper), otherwise any run starting at a non-blank line;
  * span: a random character span inside one line or across lines, its ends moved outwards to
    identifier boundaries so that no word is cut in half.

Works on text only: no tokenizer, no model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

KINDS = ("single_line", "multi_line", "span")


@dataclass(frozen=True)
class Document:
    source: str  # "package/path"
    text: str
    package: str = ""  # provenance; tasks are balanced over packages


@dataclass(frozen=True)
class FimTask:
    id: str
    kind: str
    prefix: str
    middle: str
    suffix: str
    source: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class TaskConfig:
    """Attributes:
        before / after: characters of context kept before / after the hole.
        min_chars / min_lines: files shorter than this are skipped.
        max_middle_chars: holes longer than this are not drawn (the model's budget is finite).
        max_span_chars: the longest random span before snapping to word boundaries.
    """

    before: int = 2000
    after: int = 1000
    min_chars: int = 400
    min_lines: int = 10
    max_middle_chars: int = 240
    max_span_chars: int = 120


def load_documents(path: str | Path) -> list[Document]:
    """Read a corpus split (JSON lines with "text" and provenance "package"/"path")."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            source = "/".join(str(row[k]) for k in ("package", "path") if row.get(k)) or f"line{i + 1}"
            docs.append(Document(source=source, text=row["text"], package=str(row.get("package") or "")))
    return docs


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts += [i + 1 for i, c in enumerate(text) if c == "\n"]
    return starts


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _span_of_lines(text: str, starts: list[int], first: int, last: int) -> tuple[int, int]:
    """Character span of lines first..last inclusive, without the final newline."""
    end = starts[last + 1] - 1 if last + 1 < len(starts) else len(text)
    return starts[first], end


def _single_line(text: str, lines: list[str], starts: list[int], rng: random.Random,
                 cfg: TaskConfig) -> tuple[int, int] | None:
    ok = [i for i, ln in enumerate(lines) if len(ln.strip()) >= 2 and len(ln) <= cfg.max_middle_chars]
    if not ok:
        return None
    i = rng.choice(ok)
    return _span_of_lines(text, starts, i, i)


def _block_bodies(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line of each block body: lines after a ':' header indented deeper than it."""
    bodies = []
    for h, head in enumerate(lines):
        if not head.rstrip().endswith(":") or h + 1 >= len(lines):
            continue
        base, j, last = _indent(head), h + 1, None
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            if lines[j].strip():
                last = j
            j += 1
        if last is not None and lines[h + 1].strip():
            bodies.append((h + 1, last))
    return bodies


def _multi_line(text: str, lines: list[str], starts: list[int], rng: random.Random,
                cfg: TaskConfig) -> tuple[int, int] | None:
    bodies = [b for b in _block_bodies(lines) if b[1] > b[0]]
    if bodies:
        first, body_last = rng.choice(bodies)
    else:
        ok = [i for i, ln in enumerate(lines[:-1]) if ln.strip()]
        if not ok:
            return None
        first = rng.choice(ok)
        body_last = len(lines) - 1
    last = min(body_last, first + rng.randint(2, 8) - 1)
    while last > first and not lines[last].strip():  # never end the hole on a blank line
        last -= 1
    while last > first and sum(len(x) + 1 for x in lines[first:last + 1]) > cfg.max_middle_chars:
        last -= 1
    if last == first or sum(len(x) + 1 for x in lines[first:last + 1]) > cfg.max_middle_chars:
        return None
    return _span_of_lines(text, starts, first, last)


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


def _span(text: str, lines: list[str], starts: list[int], rng: random.Random,
          cfg: TaskConfig) -> tuple[int, int] | None:
    line = rng.randrange(len(lines))
    body = lines[line]
    if not body.strip():
        return None
    start = starts[line] + rng.randrange(_indent(body), len(body))
    if rng.random() < 0.5:  # within the line
        end = min(starts[line] + len(body), start + rng.randint(1, cfg.max_span_chars))
    else:  # across lines
        rest = len(body) - (start - starts[line]) + 1  # reach past the newline
        end = min(len(text), start + rng.randint(rest, max(rest, cfg.max_span_chars)))
    while start > 0 and _is_word(text[start - 1]) and _is_word(text[start]):
        start -= 1
    while end < len(text) and end > 0 and _is_word(text[end - 1]) and _is_word(text[end]):
        end += 1
    if not text[start:end].strip() or end - start > cfg.max_middle_chars:
        return None
    return start, end


EXTRACTORS: dict[str, Callable[..., tuple[int, int] | None]] = {
    "single_line": _single_line,
    "multi_line": _multi_line,
    "span": _span,
}


def _window(doc: Document, start: int, end: int, cfg: TaskConfig) -> tuple[str, str, str]:
    """Prefix, middle, suffix; a clipped prefix starts at a line start, a clipped suffix ends at a line end."""
    text = doc.text
    lo = max(0, start - cfg.before)
    if lo > 0:
        nl = text.find("\n", lo, start)
        lo = nl + 1 if nl >= 0 else lo
    hi = min(len(text), end + cfg.after)
    if hi < len(text):
        nl = text.rfind("\n", end, hi)
        hi = nl if nl >= 0 else hi
    return text[lo:start], text[start:end], text[end:hi]


def after_indent(task: FimTask) -> FimTask:
    """The task with the cursor after its first line's indentation, where an editor puts it on a
    new line: the indentation moves from the middle to the end of the prefix."""
    body = task.middle.lstrip(" \t")
    lead = task.middle[:len(task.middle) - len(body)]
    return replace(task, prefix=task.prefix + lead, middle=body) if lead and body else task


def make_tasks(docs: Iterable[Document], n_per_kind: int, seed: int = 0, kinds: Iterable[str] = KINDS,
               cfg: TaskConfig | None = None, balance: str = "package") -> list[FimTask]:
    """Draw `n_per_kind` tasks of each kind; the same docs and seed give the same tasks.

    balance="package" draws a package uniformly, then a file of it, so that one large held-out
    package (IPython holds most files of the test split) does not make the whole evaluation;
    balance="file" draws files uniformly. Tasks are interleaved by kind (single, multi, span,
    single, ...) so that a run stopped early still covers every kind. Files shorter than
    `cfg.min_chars` / `cfg.min_lines` are skipped.
    """
    if balance not in ("package", "file"):
        raise ValueError(f"balance must be 'package' or 'file', not {balance!r}")
    cfg = cfg or TaskConfig()
    pool = [d for d in docs if len(d.text) >= cfg.min_chars and d.text.count("\n") + 1 >= cfg.min_lines]
    by_package: dict[str, list[Document]] = {}
    for d in pool:
        by_package.setdefault(d.package or d.source, []).append(d)
    groups = list(by_package.values()) if balance == "package" else [[d] for d in pool]
    per_kind: dict[str, list[FimTask]] = {}
    for kind in kinds:
        rng = random.Random(f"{seed}:{kind}")  # str seeds hash with sha512: stable across runs
        seen: set[tuple[str, int, int]] = set()
        tasks: list[FimTask] = []
        attempts = 0
        while pool and len(tasks) < n_per_kind and attempts < 50 * n_per_kind + 100:
            attempts += 1
            doc = rng.choice(rng.choice(groups))
            lines = doc.text.split("\n")
            span = EXTRACTORS[kind](doc.text, lines, _line_starts(doc.text), rng, cfg)
            if span is None or (doc.source, *span) in seen:
                continue
            seen.add((doc.source, *span))
            prefix, middle, suffix = _window(doc, *span, cfg)
            tasks.append(FimTask(id=f"{kind}-{len(tasks):04d}", kind=kind, prefix=prefix, middle=middle,
                                 suffix=suffix, source=doc.source))
        per_kind[kind] = tasks
    out = []
    for i in range(max((len(t) for t in per_kind.values()), default=0)):
        out += [t[i] for t in per_kind.values() if i < len(t)]
    return out
