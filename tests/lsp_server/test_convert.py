"""Position conversion: UTF-8/16/32 code units, surrogate pairs, line endings, clamping."""

from __future__ import annotations

import random

import pytest
from lsprotocol import types

from lsp_server.convert import (
    UTF8,
    UTF16,
    UTF32,
    LineIndex,
    apply_edits,
    column_to_index,
    negotiate_encoding,
    range_offsets,
    to_offset,
    to_position,
    units,
)

EMOJI = "\U0001F600"  # outside the BMP: 2 UTF-16 units, 4 UTF-8 bytes


def test_units_per_encoding():
    s = f"aé{EMOJI}中"
    assert units(s, UTF32) == 4
    assert units(s, UTF16) == 5
    assert units(s, UTF8) == 1 + 2 + 4 + 3


@pytest.mark.parametrize("encoding,column,index", [
    (UTF16, 0, 0), (UTF16, 1, 1), (UTF16, 2, 1), (UTF16, 3, 2), (UTF16, 4, 3), (UTF16, 99, 3),
    (UTF8, 1, 1), (UTF8, 3, 1), (UTF8, 5, 2), (UTF8, 6, 3),
    (UTF32, 2, 2), (UTF32, 7, 3),
])
def test_column_inside_surrogate_pair_rounds_down(encoding, column, index):
    assert column_to_index(f"a{EMOJI}b", column, encoding) == index


def test_line_endings_and_clamping():
    idx = LineIndex("ab\r\ncd\ref\ngh")
    assert idx.starts == [0, 4, 7, 10]
    assert idx.offset(1, 1) == 5
    assert idx.offset(2, 0) == 7
    assert idx.offset(0, 50) == 2  # past the end of a line: its end, never into the line break
    assert idx.offset(9, 0) == len(idx.text)  # past the last line: end of text
    assert idx.offset(-1, 0) == 0
    assert idx.position(3) == (0, 2)
    assert idx.position(10_000) == (3, 2)


def test_empty_text_and_trailing_newline():
    assert LineIndex("").offset(0, 5) == 0
    idx = LineIndex("x\n")
    assert idx.offset(1, 0) == 2
    assert idx.position(2) == (1, 0)


@pytest.mark.parametrize("encoding", [UTF8, UTF16, UTF32])
def test_round_trip_random_text(encoding):
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "\n", "\r\n", "é", "中", EMOJI, "\t"]
    text = "".join(rng.choice(alphabet) for _ in range(400))
    idx = LineIndex(text)
    for offset in range(len(text) + 1):
        if text[offset - 1:offset + 1] == "\r\n":
            continue  # between \r and \n is not a position
        pos = to_position(idx, offset, encoding)
        assert to_offset(idx, pos, encoding) == offset


def test_reversed_range_is_ordered():
    idx = LineIndex("hello\nworld")
    rng = types.Range(start=types.Position(line=1, character=2), end=types.Position(line=0, character=1))
    assert range_offsets(idx, rng, UTF16) == (1, 8)


def test_negotiate_encoding():
    assert negotiate_encoding(None) == UTF16
    assert negotiate_encoding(["utf-32", "utf-8"]) == UTF32
    assert negotiate_encoding(["latin-1", "utf-8"]) == UTF8
    assert negotiate_encoding(["latin-1"]) == UTF16


def test_apply_edits():
    assert apply_edits("abcdef", [(4, 5, "X"), (0, 1, "")]) == "bcdXf"
