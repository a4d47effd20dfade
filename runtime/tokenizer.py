"""Gemma's tokenizer.json read into a few numpy arrays: the same token ids as the `tokenizers`
library (tests/test_tokenizer.py checks it against it), in about a tenth of the memory.

Why: the `tokenizers` library holds Gemma's 262,144 pieces and 514,906 merges as Rust hash maps
of strings, ~96 MiB resident after load and ~370 MiB while it parses; on full-size Gemma 3n that
is the largest part of the footprint after the weights (edgepack/footprint.py). Here the merges
are one sorted int64 array of (left id, right id) keys beside their ranks and results, and the
pieces one UTF-8 blob with offsets. A tokenizer.json of another shape (other normalizers,
pre-tokenizers, decoders, added-token options) is read by the `tokenizers` library instead:
`load()` picks, `LibraryTokenizer` gives it the same methods.

The algorithm is the library's BPE with byte fallback (tokenizers/src/models/bpe/word.rs):
- the text is first split at added tokens, leftmost-longest, special ones too unless asked not to;
- each stretch between them has " " replaced by "▁" (the normalizer) and is one word: the split
  at " " that follows the normalizer in Gemma's file finds no " " left;
- the word starts as its characters (a character not in the vocabulary becomes its UTF-8 bytes'
  <0xXX> pieces, or the fused unknown piece without them); then, repeatedly, the adjacent pair
  with the lowest merge rank, leftmost first, is merged.
"""

from __future__ import annotations

import heapq
import json
import re
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

SPACE, MARK = " ", "\u2581"  # Gemma's normalizer writes spaces as U+2581, its decoder reverses it
GEMMA_DECODER = [{"type": "Replace", "pattern": {"String": MARK}, "content": SPACE},
                 {"type": "ByteFallback"}, {"type": "Fuse"}]


def load(path: Path):
    """The tokenizer in `path`: a compact `Tokenizer` when the file has Gemma's shape, else the
    `tokenizers` library's, behind the same methods. EdgepackError when neither can read it."""
    try:
        raw = json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise EdgepackError(f"{path} is not a tokenizer edgepack can read: {e}") from None
    if not isinstance(raw, dict) or unsupported(raw) is not None:
        del raw
        return LibraryTokenizer.from_file(path)
    try:
        return Tokenizer(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise EdgepackError(f"{path} is not a tokenizer edgepack can read: {type(e).__name__}: {e}") from None


def unsupported(raw: dict) -> str | None:
    """Why `Tokenizer` can't read this tokenizer.json exactly as the library would; None if it can."""
    m = raw.get("model")
    if not isinstance(m, dict) or m.get("type") != "BPE":
        return "the model is not BPE"
    if m.get("dropout") or m.get("continuing_subword_prefix") or m.get("end_of_word_suffix") \
            or m.get("ignore_merges") or not m.get("byte_fallback"):
        return "BPE options other than Gemma's"
    if raw.get("normalizer") != {"type": "Replace", "pattern": {"String": SPACE}, "content": MARK}:
        return "a normalizer other than Gemma's"
    if raw.get("pre_tokenizer") not in (None, {"type": "Split", "pattern": {"String": SPACE},
                                               "behavior": "MergedWithPrevious", "invert": False}):
        return "a pre-tokenizer other than Gemma's"
    d = raw.get("decoder")
    if not isinstance(d, dict) or d.get("type") != "Sequence" or d.get("decoders") != GEMMA_DECODER:
        return "a decoder other than Gemma's"
    for a in raw.get("added_tokens") or []:
        if not isinstance(a, dict) or any(a.get(k) for k in ("single_word", "lstrip", "rstrip", "normalized")):
            return "added tokens with options"
    vocab = m.get("vocab")
    if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()) \
            or sorted(vocab.values()) != list(range(len(vocab))):
        return "vocabulary ids other than 0..n-1"
    return None


class Tokenizer:
    """Encodes text to ids and back, as `tokenizers.Tokenizer.encode(text, add_special_tokens=False)`
    and `.decode(ids, skip_special_tokens=...)` would for the same file."""

    def __init__(self, raw: dict):
        model = raw["model"]
        vocab: dict[str, int] = model["vocab"]
        size = len(vocab)  # ids 0..size-1 (unsupported() checks)
        pieces = [""] * size
        for piece, i in vocab.items():
            pieces[i] = piece
        encoded = [p.encode() for p in pieces]
        self._offsets = np.zeros(size + 1, np.int64)
        np.cumsum([len(p) for p in encoded], out=self._offsets[1:])
        self._blob = b"".join(encoded)
        self._chars = {p: i for p, i in vocab.items() if len(p) == 1}
        self._bytes = [vocab.get(f"<0x{b:02X}>") for b in range(256)]
        self._unk = vocab.get(model["unk_token"]) if model.get("unk_token") is not None else None
        self._fuse_unk = bool(model.get("fuse_unk"))
        self._keys, self._ranks, self._merged = _merge_table(model["merges"], vocab)

        self._added: dict[str, int] = {}
        self._special_ids: set[int] = set()
        for a in raw.get("added_tokens") or []:
            self._added[a["content"]] = a["id"]
            if a["special"]:
                self._special_ids.add(a["id"])
        self._added_pieces = {a["id"]: a["content"] for a in raw.get("added_tokens") or []}
        self.specials = [self._added_pieces[i] for i in sorted(self._special_ids)]
        self._find = _finder(self._added)

    def get_vocab_size(self) -> int:
        return max(len(self._offsets) - 1, max(self._added_pieces, default=-1) + 1)

    def token_to_id(self, piece: str) -> int | None:
        if piece in self._added:
            return self._added[piece]
        want, at = piece.encode(), -1
        if not want:
            empty = np.flatnonzero(np.diff(self._offsets) == 0)
            return int(empty[0]) if len(empty) else None
        while (at := self._blob.find(want, at + 1)) >= 0:  # the pieces are not indexed: a scan
            i = int(np.searchsorted(self._offsets, at))
            if i < len(self._offsets) - 1 and self._offsets[i] == at and self._offsets[i + 1] == at + len(want):
                return i
        return None

    def id_to_token(self, i: int) -> str | None:
        if i in self._added_pieces:
            return self._added_pieces[i]
        if not 0 <= i < len(self._offsets) - 1:
            return None
        return self._blob[self._offsets[i]:self._offsets[i + 1]].decode()

    def encode(self, text: str, specials_as_text: bool = False) -> list[int]:
        """Token ids of `text`; with `specials_as_text`, a special token's spelling is plain text."""
        ids: list[int] = []
        start = 0
        for begin, end in self._find(text):
            added = self._added[text[begin:end]]
            if specials_as_text and added in self._special_ids:
                continue  # the library matches it, then leaves its span as text
            if begin > start:
                ids += self._word(text[start:begin])
            ids.append(added)
            start = end
        if start < len(text):
            ids += self._word(text[start:])
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out: list[str] = []
        pending = bytearray()  # consecutive <0xXX> pieces, joined as UTF-8 (or U+FFFD each)
        for i in ids:
            i = int(i)
            if skip_special_tokens and i in self._special_ids:
                continue
            piece = self.id_to_token(i)
            if piece is None:
                continue
            piece = piece.replace(MARK, SPACE)
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">") and _is_hex(piece[3:5]):
                pending.append(int(piece[3:5], 16))
                continue
            _flush(pending, out)
            out.append(piece)
        _flush(pending, out)
        return "".join(out)

    def _word(self, text: str) -> list[int]:
        symbols: list[int] = []
        unk = False  # an unknown piece waits (the library adds it at the next known character)
        for ch in text.replace(SPACE, MARK):
            i = self._chars.get(ch)
            if i is not None:
                if unk:
                    symbols.append(self._unk)
                    unk = False
                symbols.append(i)
                continue
            fallback = [self._bytes[b] for b in ch.encode()]
            if None not in fallback:
                symbols += fallback
            elif self._unk is not None:
                if unk and not self._fuse_unk:
                    symbols.append(self._unk)
                unk = True
        if unk:
            symbols.append(self._unk)
        return self._merge(symbols)

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rank, merged id) of each key (left << 32 | right); rank -1 where the pair has no merge."""
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        hit = self._keys[at] == keys
        return np.where(hit, self._ranks[at], -1), np.where(hit, self._merged[at], -1)

    def _merge(self, sym: list[int]) -> list[int]:
        n = len(sym)
        if n < 2 or not len(self._keys):
            return sym
        a = np.asarray(sym, np.int64)
        keys = (a[:-1] << 32) | a[1:]
        ranks, merged = self._lookup(keys)
        heap = [(int(r), p, int(m), int(k)) for p, (r, m, k) in enumerate(zip(ranks, merged, keys)) if r >= 0]
        heapq.heapify(heap)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        alive = [True] * n
        table, count = self._keys, len(self._keys)
        memo: dict[int, tuple[int, int]] = {}  # pairs recur in text: one search each

        def pair(key: int) -> tuple[int, int]:
            if (hit := memo.get(key)) is None:
                at = int(table.searchsorted(key))
                hit = (int(self._ranks[at]), int(self._merged[at])) if at < count and table[at] == key else (-1, -1)
                memo[key] = hit
            return hit

        while heap:
            _, p, new, key = heapq.heappop(heap)
            q = nxt[p]
            if not alive[p] or q < 0:
                continue
            if (sym[p] << 32) | sym[q] != key:
                continue  # the pair grew since it was queued: its merge is another piece (or none)
            sym[p], alive[q] = new, False
            nxt[p] = nxt[q]
            if nxt[q] >= 0:
                prv[nxt[q]] = p
            for left, right in ((prv[p], p), (p, nxt[p])):
                if left >= 0 and right >= 0:
                    k = (sym[left] << 32) | sym[right]
                    if (rm := pair(k))[0] >= 0:
                        heapq.heappush(heap, (rm[0], left, rm[1], k))
        return [s for s, live in zip(sym, alive) if live]


def _merge_table(merges: list, vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted (left << 32 | right) keys with each merge's rank and resulting id. A pair listed twice
    keeps its last rank, as the library's hash map does."""
    n = len(merges)
    keys, merged = np.empty(n, np.int64), np.empty(n, np.int32)
    for rank, m in enumerate(merges):
        left, right = m.split(SPACE) if isinstance(m, str) else m
        for piece in (left, right, left + right):
            if piece not in vocab:
                raise ValueError(f"merge {rank} ({left!r}, {right!r}) names {piece!r}, not in the vocabulary")
        keys[rank] = (vocab[left] << 32) | vocab[right]
        merged[rank] = vocab[left + right]
    # the last occurrence of each key: a stable sort of the reversed list puts it first
    order = n - 1 - np.argsort(keys[::-1], kind="stable")
    keys = keys[order]
    first = np.ones(n, bool)
    first[1:] = keys[1:] != keys[:-1]
    order = order[first]
    return keys[first], order.astype(np.int32), merged[order]


def _finder(added: dict[str, int]):
    """finder(text) -> [(start, end)] of the added tokens in `text`, leftmost-longest and not
    overlapping (the library's Aho-Corasick match kind)."""
    by_first: dict[str, list[int]] = {}
    for t in added:
        if t:
            by_first.setdefault(t[0], []).append(len(t))
    lengths = {c: sorted(set(ls), reverse=True) for c, ls in by_first.items()}
    starts = re.compile("[" + "".join(re.escape(c) for c in lengths) + "]") if lengths else None

    def find(text: str) -> list[tuple[int, int]]:
        found, pos = [], 0
        while starts is not None and (m := starts.search(text, pos)):
            at = m.start()
            length = next((n for n in lengths[text[at]] if text[at:at + n] in added), 0)
            if length:
                found.append((at, at + length))
            pos = at + max(length, 1)
        return found
    return find


def _is_hex(s: str) -> bool:
    """What Rust's u8::from_str_radix(s, 16) accepts in two characters (a leading '+' included)."""
    digits = s[1:] if s.startswith("+") else s
    return bool(digits) and all(c in "0123456789abcdefABCDEF" for c in digits)


def _flush(pending: bytearray, out: list[str]) -> None:
    if pending:
        try:
            out.append(pending.decode())
        except UnicodeDecodeError:
            out.append("\ufffd" * len(pending))
        pending.clear()


class LibraryTokenizer:
    """The `tokenizers` library's Tokenizer behind `Tokenizer`'s methods, for files of another shape."""

    def __init__(self, tok):
        self._tok = tok
        self.specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]

    @classmethod
    def from_file(cls, path: Path) -> "LibraryTokenizer":
        from tokenizers import Tokenizer as Library

        try:
            return cls(Library.from_file(str(path)))
        except Exception as e:  # the tokenizers library raises its own exception types
            raise EdgepackError(f"{path} is not a tokenizer edgepack can read: {str(e).splitlines()[0][:200]}") from None

    def get_vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def token_to_id(self, piece: str) -> int | None:
        return self._tok.token_to_id(piece)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    def encode(self, text: str, specials_as_text: bool = False) -> list[int]:
        self._tok.encode_special_tokens = specials_as_text
        try:
            return self._tok.encode(text, add_special_tokens=False).ids
        finally:
            self._tok.encode_special_tokens = False

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
