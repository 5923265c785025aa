"""`dlsp build-corpus`: Python source installed on this machine under permissive licenses.

Sources: the standard library (PSF; each top-level module is one "package" named
`stdlib/<mod>`) and installed distributions whose metadata says MIT, BSD, Apache-2.0, ISC or
PSF (GPL/LGPL/MPL/unknown are skipped). Files are deduplicated by content and split into
train / validation / test by package (a whole package is held out), deterministically from a
hash of the package name. A manifest records provenance per file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

PERMISSIVE = re.compile(r"\b(MIT|BSD|Apache|PSF|Python Software Foundation|ISC|0BSD)\b", re.I)
COPYLEFT = re.compile(r"\b(A?L?GPL|MPL|Mozilla|EUPL|CDDL|Commons Clause|General Public License)", re.I)
SKIP_STDLIB = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "__pycache__", "ensurepip",
               "tkinter", "pydoc_data", "config-3.11-x86_64-linux-gnu", "encodings"}
EXCLUDED_DISTS = {"dlsp"}
MAX_BYTES = 200_000


@dataclass(frozen=True)
class SourceFile:
    package: str
    version: str
    license: str
    path: str  # relative to the package root
    text: str


def license_of(meta: md.PackageMetadata) -> str | None:
    """The permissive license a distribution declares, or None when it is not clearly permissive."""
    fields = [meta.get("License-Expression") or "", (meta.get("License") or "")[:200]]
    fields += [c for c in (meta.get_all("Classifier") or []) if c.startswith("License ::")]
    text = " ".join(fields)
    if COPYLEFT.search(text) or not PERMISSIVE.search(text):
        return None
    m = PERMISSIVE.search(text)
    return m.group(1) if m else None


def read_source(path: Path) -> str | None:
    """UTF-8 text of a plausible hand-written source file, else None."""
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    lines = text.splitlines()
    if not lines or sum(map(len, lines)) / len(lines) > 200:  # minified or generated data
        return None
    return text


def stdlib_files(root: Path) -> Iterator[SourceFile]:
    for entry in sorted(root.iterdir()):
        name = entry.name.removesuffix(".py")
        if name in SKIP_STDLIB or name.startswith(("_", ".")) and entry.suffix != ".py":
            continue
        files = [entry] if entry.suffix == ".py" else sorted(entry.rglob("*.py")) if entry.is_dir() else []
        for f in files:
            if any(p in SKIP_STDLIB for p in f.relative_to(root).parts[:-1]):
                continue
            text = read_source(f)
            if text is not None:
                yield SourceFile(f"stdlib/{name}", sysconfig.get_python_version(), "PSF-2.0",
                                 str(f.relative_to(root)), text)


def dist_files(exclude: set[str]) -> Iterator[SourceFile]:
    for dist in sorted(md.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        name = (dist.metadata["Name"] or "").lower()
        lic = license_of(dist.metadata)
        if not name or name in exclude or lic is None:
            continue
        for rel in dist.files or []:
            if rel.suffix != ".py" or any(p in ("tests", "test", "testing") for p in rel.parts[:-1]):
                continue
            text = read_source(Path(str(rel.locate())))
            if text is not None:
                yield SourceFile(name, dist.version, lic, str(rel), text)


def split_of(package: str, val: float = 0.05, test: float = 0.05) -> str:
    """Deterministic split of a whole package from a hash of its name."""
    h = int(hashlib.sha256(package.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test else "val" if h < test + val else "train"


def build(out: Path, stdlib_root: Path | None = None, include_dists: bool = True,
          max_package_share: float = 0.15, exclude: set[str] = EXCLUDED_DISTS) -> dict[str, dict[str, int]]:
    """Write manifest.jsonl and {train,val,test}.jsonl under `out`; return per-split counts."""
    out.mkdir(parents=True, exist_ok=True)
    root = stdlib_root or Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    files: list[tuple[SourceFile, str]] = []
    sources = [stdlib_files(root)] + ([dist_files(exclude)] if include_dists else [])
    for src in sources:
        for f in src:
            digest = hashlib.sha256(re.sub(r"\s+", " ", f.text).strip().encode()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                files.append((f, digest))
    total = sum(len(f.text) for f, _ in files)
    per_pkg: dict[str, int] = {}
    stats: dict[str, dict[str, int]] = {s: {"files": 0, "chars": 0, "packages": 0} for s in ("train", "val", "test")}
    pkgs: dict[str, set[str]] = {s: set() for s in stats}
    handles = {s: open(out / f"{s}.jsonl", "w", encoding="utf-8") for s in stats}
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as manifest:
        for f, digest in files:
            if per_pkg.get(f.package, 0) > max_package_share * total:
                continue  # cap: no package dominates the corpus
            per_pkg[f.package] = per_pkg.get(f.package, 0) + len(f.text)
            split = split_of(f.package)
            rec = {k: v for k, v in asdict(f).items() if k != "text"}
            manifest.write(json.dumps({**rec, "sha256": digest, "split": split, "n_chars": len(f.text)}) + "\n")
            handles[split].write(json.dumps({"package": f.package, "path": f.path, "text": f.text}) + "\n")
            stats[split]["files"] += 1
            stats[split]["chars"] += len(f.text)
            pkgs[split].add(f.package)
    for h in handles.values():
        h.close()
    for s in stats:
        stats[s]["packages"] = len(pkgs[s])
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dlsp build-corpus", description=__doc__)
    p.add_argument("--out", default="data/corpus", type=Path)
    p.add_argument("--stdlib-only", action="store_true")
    a = p.parse_args(argv or [])
    stats = build(a.out, include_dists=not a.stdlib_only)
    for split, s in stats.items():
        print(f"{split:5}  {s['packages']:5} packages  {s['files']:6} files  {s['chars'] / 1e6:8.1f} M chars")
    return 0
