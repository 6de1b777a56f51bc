"""The encoder against tiktoken's gpt2 encoding, the independent reference."""

import json
import random

import pytest

from gpt2_tf2.errors import UserError
from gpt2_tf2.tokenizer import get_encoder, load_encoder
from gpt2_tf2.tokenizer.bpe import BPE_CACHE_SIZE, ENDOFTEXT, Encoder

CORPUS = [
    "Hello, world! It's a test.",
    "I'll say we've, they're, she'd, you'm, DON'T, it'S",
    "  leading spaces and   runs of   whitespace \n\n\t\ttabs\r\n",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "日本語のテキスト。中文文本，包括标点。한국어 문장입니다.",
    "Emoji: 🤖👍🏽👨‍👩‍👧‍👦 🇺🇦 ❤️ and flags",
    "def f(x):\n    return {'a': x ** 2}  # comment\n\nclass A: pass\n",
    "Numbers 1234567890 3.14159 1e-10 0x1F ½ ٣٤ ⅷ",
    "Combining: e\u0301 a\u0308 zero width\u200bjoin\u200d bom\ufeff nbsp\u00a0 ideographic\u3000 ",
    "Noncharacters \uffff \ufffe \U0010ffff private \ue000 replacement \ufffd",
    "<|endoftext|> is plain text by default <|endoftext|>",
    "Mixed: ελληνικά עברית العربية हिन्दी ไทย",
    "URL https://example.com/a?b=c&d=e#f and e-mail a.b@c.de",
    "",
    " ",
    "\n",
    "a" * 300,
    "   \n   \n",
]


@pytest.fixture(scope="module")
def enc(vocab_files):
    with open(vocab_files["encoder.json"], encoding="utf-8") as f:
        encoder = json.load(f)
    with open(vocab_files["vocab.bpe"], encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:-1]]
    return Encoder(encoder, merges)


@pytest.mark.parametrize("text", CORPUS)
def test_matches_tiktoken(enc, tiktoken_gpt2, text):
    assert enc.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert enc.decode(enc.encode(text)) == text


def test_random_texts_match_tiktoken(enc, tiktoken_gpt2):
    rng = random.Random(1234)
    alphabet = (
        "aAzZ09 \t\n\r'sdtlmvre.,!?-_()[]{}<|>ПриветΩλ你好日本🤖🎉éü\u0301\u200d\u00a0\u3000"
        "\u2028\x00\x7f"
    )
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert enc.encode(text) == tiktoken_gpt2.encode_ordinary(text), repr(text)
        assert enc.decode(enc.encode(text)) == text


def test_random_code_points_match_tiktoken(enc, tiktoken_gpt2):
    rng = random.Random(99)
    for _ in range(300):
        chars = []
        for _ in range(rng.randint(1, 30)):
            cp = rng.randint(0, 0x10FFFF)
            if 0xD800 <= cp <= 0xDFFF:
                continue
            chars.append(chr(cp))
        text = "".join(chars)
        assert enc.encode(text) == tiktoken_gpt2.encode_ordinary(text), repr(text)
        assert enc.decode(enc.encode(text)) == text


def test_lone_surrogates_like_tiktoken(enc, tiktoken_gpt2):
    text = "a\ud800b\udfffc"
    assert enc.encode(text) == tiktoken_gpt2.encode(text)


def test_endoftext_special_only_when_allowed(enc, tiktoken_gpt2):
    text = "one<|endoftext|>two"
    assert 50256 not in enc.encode(text)
    special = enc.encode(text, allowed_special={ENDOFTEXT})
    assert special == tiktoken_gpt2.encode(text, allowed_special={ENDOFTEXT})
    assert special.count(50256) == 1
    assert enc.encode(text, allowed_special="all") == special
    assert enc.decode(special) == text


def test_bpe_cache_is_bounded(enc):
    enc._bpe_cached.cache_clear()
    for i in range(BPE_CACHE_SIZE + 100):
        enc.encode(f" w{i}x")
    assert enc._bpe_cached.cache_info().currsize <= BPE_CACHE_SIZE


def test_get_encoder_original_api(tiny_model_dir):
    import os

    models_dir, name = os.path.split(tiny_model_dir)
    enc = get_encoder(name, models_dir)
    assert enc.n_vocab == 50257
    assert enc.encode("Hello") == [15496]


def test_vocabulary_checks(tmp_path, vocab_files):
    import shutil

    shutil.copyfile(vocab_files["encoder.json"], tmp_path / "encoder.json")
    lines = open(vocab_files["vocab.bpe"], encoding="utf-8").read().split("\n")
    (tmp_path / "vocab.bpe").write_text("\n".join(lines[:-100]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="no merge in vocab.bpe"):
        load_encoder(str(tmp_path))
    (tmp_path / "vocab.bpe").unlink()
    with pytest.raises(UserError, match="not found"):
        load_encoder(str(tmp_path))


def test_gpt2s_own_files_pass_the_check_that_their_load_skips(vocab_files, monkeypatch, tmp_path):
    """A load of GPT-2's own files (by hash) skips check_vocabulary: the check passes on them,
    and any other bytes are checked (here: the same vocabulary written with other spacing)."""
    from gpt2_tf2.tokenizer import bpe

    paths = (vocab_files["encoder.json"], vocab_files["vocab.bpe"])
    encoder, merges, genuine = bpe._read_vocab(*paths)
    assert genuine
    bpe.check_vocabulary(encoder, merges, "GPT-2's files")
    checked = []
    monkeypatch.setattr(bpe, "check_vocabulary", lambda *a, **k: checked.append(a[2]))
    load = bpe._load_encoder.__wrapped__  # not lru_cache's: nothing kept from this test
    for fast in (True, False):
        load(paths, fast, None, "genuine")
    assert checked == []
    (tmp_path / "encoder.json").write_text(json.dumps(encoder, indent=1), encoding="utf-8")
    load((str(tmp_path / "encoder.json"), paths[1]), True, None, "respaced")
    assert checked == ["respaced"]


def test_tiktoken_fast_path_equals_reference(tiny_model_dir, enc, tiktoken_gpt2):
    """GPT-2's own files (checked by hash) encode through tiktoken; tokens equal the pure BPE's,
    and the ranks handed to tiktoken are its own gpt2 encoding's, token for token."""
    fast = load_encoder(tiny_model_dir)
    assert fast.fast is not None and enc.fast is None
    assert fast.fast._mergeable_ranks == tiktoken_gpt2._mergeable_ranks
    rng = random.Random(7)
    texts = CORPUS + [
        "".join(rng.choice("ab Пж日🤖'\n\t.,1") for _ in range(80)) for _ in range(300)
    ]
    for text in texts:
        assert fast.encode(text) == enc.encode(text), repr(text)
        assert fast.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    assert fast.encode("a\ud800b") == enc.encode("a\ud800b")
    assert load_encoder(tiny_model_dir, fast=False).fast is None


def test_other_vocabularies_use_the_reference_encoder(tmp_path, vocab_files):
    import shutil

    shutil.copyfile(vocab_files["vocab.bpe"], tmp_path / "vocab.bpe")
    data = json.load(open(vocab_files["encoder.json"], encoding="utf-8"))
    (tmp_path / "encoder.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    other = load_encoder(str(tmp_path))  # same tokens, different bytes: not GPT-2's files
    assert other.fast is None and other.encode("Hello world") == [15496, 995]


def test_a_directory_is_read_once_until_its_files_change(tmp_path, vocab_files):
    import shutil

    for name, path in vocab_files.items():
        shutil.copyfile(path, tmp_path / name)
    first = load_encoder(str(tmp_path))
    assert load_encoder(str(tmp_path)) is first and first.fast is not None
    data = json.load(open(vocab_files["encoder.json"], encoding="utf-8"))
    (tmp_path / "encoder.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    changed = load_encoder(str(tmp_path))
    assert changed is not first and changed.fast is None  # no longer GPT-2's own bytes
