"""Text <-> token ids through a `tokenizer.json` (Hugging Face `tokenizers`), nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer

from engine.errors import CheckpointError


class Tokenizer:
    """A loaded `tokenizer.json`. Special ids come from the model config, not from here."""

    def __init__(self, tok: _HFTokenizer, path: str = "<memory>") -> None:
        self._tok = tok
        self.path = path
        self._texts: list[str] | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(path, "tokenizer.json is missing")
        try:
            return cls(_HFTokenizer.from_file(str(path)), str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise CheckpointError(path, f"cannot parse tokenizer: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _encode(self, text: str) -> Any:
        # `encode_batch` releases the GIL while it tokenizes; `encode` holds it (~85 ms for
        # 100 KB of code, during which a server's event loop could answer nothing)
        return self._tok.encode_batch([text], add_special_tokens=False)[0]

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return self._encode(text).ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and the character offset where each token starts in `text`."""
        if not text:
            return [], []
        enc = self._encode(text)
        return enc.ids, [a for a, _ in enc.offsets]

    def encode_before_word(self, text: str) -> tuple[list[int], list[int], str]:
        """`encode_offsets` of `text` as it is tokenized when a word follows it, and the end of
        `text` left out (the leading space such a word's token takes). Byte-level BPE splits a
        run of whitespace by what follows it: `"\\n    "` alone is one token, but before code it
        is `"\\n   "` + `" return"`: a model trained on code only ever saw the second form. Text
        whose end the next word's token does not take (not ending in whitespace, ending in a line
        break), or a tokenizer that does not split that way, gives `encode_offsets(text)`, `""`."""
        ids, starts = self.encode_offsets(text)
        if not text or not text[-1].isspace():
            return ids, starts, ""
        # only the trailing whitespace run is tokenized again, with a word after it: the tokens
        # before the run do not depend on what follows it
        k = next((i for i, s in enumerate(starts) if s >= len(text.rstrip())), len(ids))
        if k == len(ids):
            return ids, starts, ""
        t_ids, t_starts = self.encode_offsets(text[starts[k]:] + "x")
        rest = text[starts[k] + t_starts[-1]:] if t_starts and starts[k] + t_starts[-1] <= len(text) else "\ufffd"
        if not rest or rest.strip() or self.decode([t_ids[-1]]) != rest + "x":
            # the word takes no whitespace (or is not a token of its own): the plain tokens. After
            # a blank line the word-boundary form ("\\n", "\\n") would leave an indented line to
            # the split "\\n" + "\\n   ", which code never has ("\\n\\n   " + " def"): measured,
            # fills moved to column 0 (`class ...` for a method); healing the "\\n\\n" token
            # keeps the indented form and leaves column 0 to a rarer non-canonical split
            return ids, starts, ""
        return ids[:k] + t_ids[:-1], starts[:k] + [starts[k] + s for s in t_starts[:-1]], rest

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False) if ids else ""

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def added_special_ids(self) -> list[int]:
        """Ids of the tokenizer's special added tokens (control tokens such as `<|im_end|>`)."""
        return sorted(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)

    def token_texts(self) -> list[str]:
        """The text of every id on its own (special tokens included). Computed once."""
        if self._texts is None:
            self._texts = self._tok.decode_batch([[i] for i in range(self.vocab_size)], skip_special_tokens=False)
        return self._texts

    def newline_ids(self, size: int | None = None) -> list[bool]:
        """Per id (`size` entries, default the vocabulary; ids the tokenizer lacks are False):
        whether the token's text holds a line break."""
        size = self.vocab_size if size is None else size
        return (["\n" in t for t in self.token_texts()] + [False] * size)[:size]
