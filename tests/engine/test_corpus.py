"""Corpus building, tokenizer training and packing on small synthetic inputs."""

from __future__ import annotations

import json
from email.message import Message

import numpy as np
import pytest

from engine.training.corpus import build, license_of, split_of
from engine.training.pack import pack
from engine.training.tokenizer_train import SPECIALS, train_bpe


def _meta(**fields: str | list[str]) -> Message:
    m = Message()
    for key, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            m[key.replace("_", "-")] = v
    return m


@pytest.mark.parametrize("fields, expected", [
    ({"License": "MIT"}, "MIT"),
    ({"Classifier": ["License :: OSI Approved :: BSD License"]}, "BSD"),
    ({"License_Expression": "Apache-2.0"}, "Apache"),
    ({"License": "GPL-3.0-or-later"}, None),
    ({"License": "MIT", "Classifier": ["License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)"]}, None),
    ({}, None),
])
def test_license_filter(fields, expected):
    assert license_of(_meta(**fields)) == expected


def _fake_stdlib(root):
    (root / "alpha").mkdir(parents=True)
    (root / "alpha" / "__init__.py").write_text("def a():\n    return 1\n")
    (root / "alpha" / "core.py").write_text("class Core:\n    pass\n")
    (root / "beta.py").write_text("import os\n\nX = os.sep\n")
    (root / "beta_copy.py").write_text("import os\n\n\nX   =  os.sep\n")  # same content up to whitespace
    (root / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))  # not UTF-8: skipped
    (root / "minified.py").write_text("x=1;" * 400 + "\n")  # generated-looking: skipped
    for i in range(30):
        (root / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n")


def test_build_dedups_and_splits_by_package(tmp_path):
    _fake_stdlib(tmp_path / "lib")
    stats = build(tmp_path / "out", stdlib_root=tmp_path / "lib", include_dists=False, max_package_share=1.0)
    manifest = [json.loads(line) for line in open(tmp_path / "out" / "manifest.jsonl")]
    paths = {r["path"] for r in manifest}
    assert "latin1.py" not in paths and "minified.py" not in paths
    assert len({"beta.py", "beta_copy.py"} & paths) == 1  # whitespace-insensitive dedup
    assert {"alpha/__init__.py", "alpha/core.py"} <= paths
    for r in manifest:
        assert {"package", "version", "license", "path", "sha256", "split", "n_chars"} <= r.keys()
        assert r["license"] == "PSF-2.0" and r["split"] == split_of(r["package"])
    # a package never straddles splits, and every split file holds exactly its manifest rows
    by_pkg: dict[str, set[str]] = {}
    for r in manifest:
        by_pkg.setdefault(r["package"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_pkg.values())
    for split in ("train", "val", "test"):
        rows = [json.loads(line) for line in open(tmp_path / "out" / f"{split}.jsonl")]
        assert len(rows) == stats[split]["files"] == sum(r["split"] == split for r in manifest)
    assert stats["train"]["files"] > 0


def test_split_is_deterministic_and_roughly_proportional():
    names = [f"pkg{i}" for i in range(4000)]
    splits = [split_of(n) for n in names]
    assert splits == [split_of(n) for n in names]
    share = {s: splits.count(s) / len(names) for s in ("train", "val", "test")}
    assert 0.03 < share["test"] < 0.07 and 0.03 < share["val"] < 0.07


def test_tokenizer_specials_and_exact_round_trip():
    texts = ["def add(a, b):\n    return a + b\n", "class Foo(Bar):\n\tpass\n", "x = [i ** 2 for i in range(10)]\n"] * 50
    tok = train_bpe(iter(texts), 300)
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2]
    for sample in ["  leading spaces\n\n\ttabs\r\nCRLF", "ünïcødé — 日本語 😀", "\x00\x01 binary\xff", "", " "]:
        ids = tok.encode(sample, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == sample


def test_pack_separates_documents_with_eos(tmp_path):
    texts = ["a = 1\n", "b = 2\n", "def f():\n    pass\n"]
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = train_bpe(iter(texts * 20), 280)
    n = pack(corpus, tok, tmp_path / "train.bin", eos_id=1)
    ids = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    assert n == len(ids) and (ids == 1).sum() == len(texts) and ids[-1] == 1
    docs = np.split(ids, np.nonzero(ids == 1)[0] + 1)[:-1]
    assert [tok.decode(d[:-1].tolist()) for d in docs] == texts
