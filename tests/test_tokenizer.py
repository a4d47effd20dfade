"""runtime/tokenizer.py against the `tokenizers` library on the same tokenizer.json: the same ids
for the same text, the same text for the same ids. The real Gemma tokenizer (the 270M GGUF's), its
Gemma 3n extension, and a tiny hand-made one that reaches the library's corner cases (unknown
characters, missing byte pieces, a pair listed twice, a queued pair that changed)."""

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as Library

from edgepack.converters.builtin import extend_vocab
from edgepack.errors import EdgepackError
from edgepack.runtime import tokenizer as compact

GPL = Path("/usr/share/common-licenses/GPL-3")
SAMPLES = [
    "", " ", "  two  spaces ", "▁already marked▁", "The capital of France is Paris.",
    "Grüße aus Köln, ça va? Ελληνικά, русский, עברית, العربية, हिन्दी, 日本語のテキスト, 한국어, 中文。",
    "emoji 👩‍👩‍👧‍👦 🏳️‍🌈 🫩 e\u0301 combining, \U0010fffd private, \x00\x01\x7f controls",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", "<start_of_turn<end_of_turn>>",
    "<b>bold</b> <table><tr><td>x</td></tr></table> <s> <0x41> <unk> <unused17> [multimodal]",
    "tabs\t\t\tand\n\n\n\nnewlines\r\n\r\nend\n", "def f(x):\n    return x ** 2  # squares\n",
    "\n" * 40 + "\t" * 35, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "1234567890 3.14159 1e-9 0xDEADBEEF",
]


@pytest.fixture(scope="module")
def gemma(tokenizer_json, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(tokenizer_json)
    ours = compact.load(path)
    assert isinstance(ours, compact.Tokenizer)  # Gemma's shape is read compactly, not by the library
    return ours, Library.from_file(str(path))


def library_ids(lib: Library, text: str, specials_as_text: bool = False) -> list[int]:
    lib.encode_special_tokens = specials_as_text
    try:
        return lib.encode(text, add_special_tokens=False).ids
    finally:
        lib.encode_special_tokens = False


def random_texts(alphabet: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(60))) for _ in range(count)]


def mixed_alphabet(seed: int) -> list[str]:
    rng = random.Random(seed)
    far = [chr(rng.randrange(0x80, 0x30000)) for _ in range(200)]
    far = [c for c in far if not 0xD800 <= ord(c) < 0xE000]  # surrogates are not text
    return list("abcdeTHE  .,'\n\t▁<>/") + ["<b>", "<start_of_turn>", "<s>", "\n\n", "<0x0A>"] + far


def test_same_ids_as_the_library(gemma):
    ours, lib = gemma
    texts = SAMPLES + random_texts(mixed_alphabet(1), 300, seed=2)
    if GPL.exists():
        texts.append(GPL.read_text())
    for text in texts:
        for as_text in (False, True):
            assert ours.encode(text, specials_as_text=as_text) == library_ids(lib, text, as_text), (text[:80], as_text)


def test_same_text_as_the_library(gemma):
    ours, lib = gemma
    rng = random.Random(3)
    byte_ids = [lib.token_to_id(f"<0x{b:02X}>") for b in range(256)]
    specials = [lib.token_to_id(t) for t in ("<bos>", "<start_of_turn>", "<end_of_turn>", "<unused3>")]
    for _ in range(300):
        ids = [rng.choice([rng.randrange(262_144), rng.choice(byte_ids), rng.choice(specials), 300_000])
               for _ in range(rng.randrange(30))]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == lib.decode(ids, skip_special_tokens=skip), ids
    for text in SAMPLES:  # and back: every sample survives encode then decode
        assert ours.decode(ours.encode(text)) == lib.decode(library_ids(lib, text), skip_special_tokens=True)


def test_piece_lookups(gemma):
    ours, lib = gemma
    for piece in ("▁the", "<start_of_turn>", "<0x41>", "\n\n", "<b>", "a", "▁", "not a piece", "", "<unused6241>"):
        assert ours.token_to_id(piece) == lib.token_to_id(piece), piece
    for i in (0, 2, 105, 1000, 236764, 262_143, 262_144, -1):
        assert ours.id_to_token(i) == lib.id_to_token(i) if i >= 0 else ours.id_to_token(i) is None
    assert ours.get_vocab_size() == lib.get_vocab_size()
    assert set(ours.specials) == {t.content for t in lib.get_added_tokens_decoder().values() if t.special}


def test_gemma3n_extension(tokenizer_json, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(extend_vocab(tokenizer_json, 262_400))
    ours, lib = compact.load(path), Library.from_file(str(path))
    text = "<start_of_audio><audio_soft_token><audio_soft_token><end_of_audio> heard <unused_mm_9>"
    assert ours.encode(text) == library_ids(lib, text) and ours.encode(text, True) == library_ids(lib, text, True)
    ids = library_ids(lib, text)
    assert ours.decode(ids, False) == lib.decode(ids, skip_special_tokens=False)
    assert ours.get_vocab_size() == lib.get_vocab_size() == 262_400


def tiny_tokenizer() -> dict:
    """A vocabulary without most byte pieces (so characters fall to <unk>, fused), a pair listed
    twice, and two pairs making the same piece ("abc" from "ab"+"c" and from "a"+"bc")."""
    pieces = ["<unk>", "<s>", "<0x41>", "<0xC3>", "a", "b", "c", "\u2581", "ab", "bc", "abc", "\u2581a", "cc", "ccc"]
    merges = [["b", "c"], ["a", "b"], ["ab", "c"], ["a", "bc"], ["\u2581", "a"], ["c", "c"], ["cc", "c"], ["a", "b"]]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 1, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                          "invert": False},
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": compact.GEMMA_DECODER},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {p: i for i, p in enumerate(pieces)}, "merges": merges},
    }


@pytest.mark.parametrize("fuse_unk", [True, False])
def test_library_corner_cases(tmp_path, fuse_unk):
    raw = tiny_tokenizer()
    raw["model"]["fuse_unk"] = fuse_unk
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(raw))
    ours, lib = compact.load(path), Library.from_file(str(path))
    assert isinstance(ours, compact.Tokenizer)
    for text in ["abc", "abcc ab", "xyz", "aÃxb", "Ã", "<s>abc<s>", "cccc a"] + \
            random_texts(list("abc xyÃA") + ["<s>"], 400, seed=5):
        for as_text in (False, True):
            assert ours.encode(text, as_text) == library_ids(lib, text, as_text), (text, as_text)
    for ids in ([2, 3, 4], [3, 3, 10], [1, 0, 7, 11], [99]):
        assert ours.decode(ids) == lib.decode(ids, skip_special_tokens=True)


def test_other_shapes_go_to_the_library(tmp_path):
    raw = tiny_tokenizer()
    raw["normalizer"] = {"type": "NFKC"}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(raw))
    ours = compact.load(path)
    assert isinstance(ours, compact.LibraryTokenizer)
    assert ours.encode("ﬁ abc") == library_ids(Library.from_file(str(path)), "ﬁ abc")


@pytest.mark.parametrize("content", ["{", "[]", json.dumps({"model": {"type": "BPE"}}),
                                     json.dumps(tiny_tokenizer() | {"model": tiny_tokenizer()["model"] | {
                                         "merges": [["a", "zz"]]}})])
def test_unreadable_files_fail_in_one_line(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(EdgepackError, match="is not a tokenizer edgepack can read") as e:
        compact.load(path)
    assert "\n" not in str(e.value)
