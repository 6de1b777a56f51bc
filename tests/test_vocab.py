"""Your own vocabulary: `vocab train` (BPE by Hugging Face tokenizers, or SentencePiece), the
encoder that reads it, and `vocab stats`. The references are the trainers' own tokenizers."""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_cli, run_in_process
from gpt2_tf2.errors import UserError
from gpt2_tf2.tokenizer import load_encoder, vocabulary_files
from gpt2_tf2.tokenizer import train as training

# Texts no corpus below contains, in the scripts and spacing a tokenizer gets wrong first.
HARD = [
    "Hello, world! 🙂🚀 emoji and ZWJ: 👩‍💻",
    "Смешанный text: привет, world — 123 456,78 ₽",
    "whitespace   runs\t\ttabs\n\n\nand\r\nCRLF   \n  trailing  ",
    "中文 日本語 한국어 العربية עברית ελληνικά",
    "combining: e\u0301 a\u0308, zero-width:\u200b|, nbsp:\u00a0|",
    " leading space, and an <|endoftext|> spelled out",
    "",
]


def corpus(tmp_path, lines=400):
    """A small English + Russian corpus in two files and a subdirectory."""
    en = [
        f"The {w} number {i} went to the market and bought {i % 7} apples."
        for i, w in zip(range(lines), ["cat", "dog", "fox", "owl"] * lines)
    ]
    ru = [
        f"Кошка номер {i} пошла на рынок и купила {i % 5} яблок, сказала она." for i in range(lines)
    ]
    (tmp_path / "corpus" / "more").mkdir(parents=True)
    (tmp_path / "corpus" / "en.txt").write_text("\n".join(en) + "\n", encoding="utf-8")
    (tmp_path / "corpus" / "more" / "ru.txt").write_text("\n".join(ru) + "\n", encoding="utf-8")
    return tmp_path / "corpus"


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bpe")
    held, _, _ = training.train([str(corpus(tmp))], str(tmp / "vocab"), 600, progress=False)
    return tmp / "vocab", held


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sp")
    out = tmp / "vocab"
    held, _, _ = training.train([str(corpus(tmp))], str(out), 600, kind="sentencepiece")
    return out, held


def test_bpe_files_in_gpt2_format(bpe_dir):
    out, _ = bpe_dir
    assert sorted(os.listdir(out)) == ["encoder.json", "vocab.bpe"]
    encoder = json.loads((out / "encoder.json").read_text(encoding="utf-8"))
    merges = (out / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    assert len(encoder) == 600 == 256 + (len(merges) - 1) + 1  # bytes + merges + <|endoftext|>
    enc = load_encoder(str(out))
    assert enc.n_vocab == 600 and enc.eot_token == encoder["<|endoftext|>"]


def test_bpe_tokenizes_as_the_trainers_own_tokenizer(bpe_dir):
    from tokenizers import ByteLevelBPETokenizer

    out, held = bpe_dir
    ours = load_encoder(str(out))
    theirs = ByteLevelBPETokenizer(str(out / "encoder.json"), str(out / "vocab.bpe"))
    assert held, "the corpus should leave held-out text"
    for text in held + HARD:
        assert ours.encode(text) == theirs.encode(text).ids, text


def test_bpe_is_what_the_trainer_learns(tmp_path, bpe_dir):
    """Trained independently here with tokenizers' GPT-2 settings: the same vocabulary and the
    same merges as the files `vocab train` wrote."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    out, held = bpe_dir
    pieces, _ = training.split_heldout(
        training.chunks(training.read_corpus([str(corpus(tmp_path))])), 0.05
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(pieces, trainer)
    assert tok.get_vocab() == json.loads((out / "encoder.json").read_text(encoding="utf-8"))
    ours = load_encoder(str(out))
    for text in held + HARD:
        # tokenizers turns the spelling of an added special token into it, always.
        assert ours.encode(text, allowed_special="all") == tok.encode(text).ids


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_any_text_round_trips(kind, bpe_dir, sp_dir):
    out, held = bpe_dir if kind == "bpe" else sp_dir
    enc = load_encoder(str(out))
    for text in HARD + held:
        tokens = enc.encode(text)
        assert enc.decode(tokens) == text
        # Token by token, as a streaming printer decodes: the bytes concatenate exactly.
        assert b"".join(enc.decode_bytes([t]) for t in tokens) == text.encode("utf-8")


def test_sentencepiece_tokenizes_as_sentencepiece(sp_dir):
    import sentencepiece

    out, held = sp_dir
    assert os.listdir(out) == ["sp.model"]
    assert vocabulary_files(str(out)) == {"sp.model": str(out / "sp.model")}
    ours = load_encoder(str(out))
    theirs = sentencepiece.SentencePieceProcessor(model_file=str(out / "sp.model"))
    assert ours.n_vocab == theirs.get_piece_size() <= 600  # a small corpus gives fewer pieces
    for text in held + HARD:
        ids = theirs.encode(text)
        assert ours.encode(text) == ids
        assert ours.decode(ids) == theirs.decode(ids) == text
    # <|endoftext|> is a control symbol: spelled-out text stays text unless allowed.
    eot = ours.eot_token
    assert theirs.id_to_piece(eot) == "<|endoftext|>" and theirs.is_control(eot)
    assert eot not in ours.encode("a<|endoftext|>b")
    assert ours.encode("a<|endoftext|>b", allowed_special="all") == [
        *ours.encode("a"),
        eot,
        *ours.encode("b"),
    ]
    assert ours.decode([eot]) == "<|endoftext|>"


@pytest.mark.e2e
def test_fewer_tokens_per_russian_word_than_gpt2(bpe_dir, vocab_files, tmp_path):
    out, held = bpe_dir
    gpt2_dir = tmp_path / "models" / "124M"
    gpt2_dir.mkdir(parents=True)
    for name, path in vocab_files.items():
        (gpt2_dir / name).write_bytes(open(path, "rb").read())
    russian = ["Кошка номер 12 пошла на рынок и купила 3 яблок, сказала она."]
    ours = training.tokens_per_word(load_encoder(str(out)), russian)
    gpt2 = training.tokens_per_word(load_encoder(str(gpt2_dir)), russian)
    assert ours < gpt2 / 2
    text = tmp_path / "ru.txt"
    text.write_text(russian[0], encoding="utf-8")
    done = run_cli(
        [
            "-m",
            "gpt2_tf2.vocab",
            "stats",
            str(text),
            "--model_name",
            str(out),
            "--models_dir",
            str(tmp_path / "models"),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert f"{ours:.2f} with {out}, {gpt2:.2f} with GPT-2's" in done.stdout


@pytest.mark.e2e
def test_vocab_train_command(tmp_path, vocab_files):
    src = corpus(tmp_path)
    models = tmp_path / "models" / "124M"
    models.mkdir(parents=True)
    for name, path in vocab_files.items():
        (models / name).write_bytes(open(path, "rb").read())
    out = tmp_path / "mine"
    done = run_cli(
        [
            "-m",
            "gpt2_tf2.vocab",
            "train",
            str(src / "en.txt"),
            str(src / "more"),
            "--vocab_size",
            "500",
            "--out",
            str(out),
            "--models_dir",
            str(tmp_path / "models"),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert "trained a bpe vocabulary of 500 tokens" in done.stdout
    assert "tokens per word on held-out text" in done.stdout and "with GPT-2's" in done.stdout
    assert load_encoder(str(out)).n_vocab == 500
    # Globs too, and sentencepiece by flag.
    done = run_cli(
        [
            "-m",
            "gpt2_tf2.vocab",
            "train",
            str(src / "**" / "*.txt"),
            "--vocab_size",
            "500",
            "--out",
            str(tmp_path / "sp"),
            "--type",
            "sentencepiece",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path / "sp") == ["sp.model"]


def one_error_line(done, *words):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_messages_name_parameters_in_the_library_and_flags_in_the_command(tmp_path):
    """One message, in the library's words (the parameter in backticks) from the function, and
    with the command's flag from the command line (`errors.flag_spelling`)."""
    from gpt2_tf2.tokenizer.train import train

    src = corpus(tmp_path)
    with pytest.raises(UserError, match="^`vocab_size` 100 is smaller than the byte alphabet"):
        train([str(src)], str(tmp_path / "v"), 100)
    args = ["-m", "gpt2_tf2.vocab", "train", str(src), "--vocab_size", "100"]
    done = run_in_process([*args, "--out", str(tmp_path / "v")])
    assert "error: --vocab_size 100 is smaller than the byte alphabet" in done.stderr
    assert done.returncode == 2 and "`" not in done.stderr


def test_bad_input_is_one_line(tmp_path):
    """The commands' checks, through their entry points in this process (their logic is the
    subject; what a process prints before TensorFlow loads is test_bad_input's)."""
    src = corpus(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    vocab = ["-m", "gpt2_tf2.vocab", "train"]
    one_error_line(
        run_in_process(
            [*vocab, str(tmp_path / "empty"), "--vocab_size", "500", "--out", str(tmp_path / "v")]
        ),
        "no text",
    )
    one_error_line(
        run_in_process(
            [
                *vocab,
                str(tmp_path / "nothing*.txt"),
                "--vocab_size",
                "500",
                "--out",
                str(tmp_path / "v"),
            ]
        ),
        "no such file",
    )
    one_error_line(
        run_in_process([*vocab, str(src), "--vocab_size", "100", "--out", str(tmp_path / "v")]),
        "byte alphabet",
        "257",
    )
    one_error_line(
        run_in_process(
            [
                *vocab,
                str(src),
                "--vocab_size",
                "258",
                "--out",
                str(tmp_path / "v"),
                "--type",
                "sentencepiece",
            ]
        ),
        "at least 260",
    )
    one_error_line(run_in_process([*vocab, str(src), "--out", str(tmp_path / "v")]), "--vocab_size")
    one_error_line(
        run_in_process(
            [
                *vocab,
                str(src),
                "--vocab_size",
                "500",
                "--out",
                str(tmp_path / "v"),
                "--type",
                "wordpiece",
            ]
        ),
        "--type",
    )
    assert not (tmp_path / "v").exists()
    # A vocabulary directory with a file missing, as init and every command would read it.
    half = tmp_path / "half"
    assert (
        run_in_process([*vocab, str(src), "--vocab_size", "500", "--out", str(half)]).returncode
        == 0
    )
    (half / "vocab.bpe").unlink()
    one_error_line(
        run_in_process(["-m", "gpt2_tf2.init", "--vocab", str(half), "--out", str(tmp_path / "m")]),
        "vocab.bpe",
        "not found",
    )
    one_error_line(
        run_in_process(
            [
                "-m",
                "gpt2_tf2.init",
                "--vocab",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "m"),
            ]
        ),
        "no vocabulary",
    )
    assert not (tmp_path / "m").exists()


def test_never_writes_over_a_vocabulary(tmp_path):
    src = corpus(tmp_path)
    out = tmp_path / "v"
    out.mkdir()
    (out / "encoder.json").write_text("mine")
    with pytest.raises(UserError, match="already holds encoder.json"):
        training.train([str(src)], str(out), 500)
    assert (out / "encoder.json").read_text() == "mine"
    assert os.listdir(out) == ["encoder.json"]  # no temporary file left behind


def test_mismatched_bpe_files_are_refused(tmp_path, bpe_dir, vocab_files):
    out, _ = bpe_dir
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "encoder.json").write_bytes((out / "encoder.json").read_bytes())
    (mixed / "vocab.bpe").write_bytes(open(vocab_files["vocab.bpe"], "rb").read())
    with pytest.raises(UserError, match="don't belong together"):
        load_encoder(str(mixed))


def test_a_sentencepiece_model_of_ones_own(tmp_path):
    """An sp.model trained elsewhere with sentencepiece's defaults (no <|endoftext|>; a dummy
    prefix; </s> as its end of sequence): documents are separated by </s>, and `encode` reads
    a spelled-out <|endoftext|> as text."""
    import sentencepiece

    from gpt2_tf2.training.data import load_dataset

    src = corpus(tmp_path)
    text = (src / "en.txt").read_text(encoding="utf-8")
    model = tmp_path / "model"
    model.mkdir()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()),
        model_prefix=str(model / "sp"),
        vocab_size=60,
        minloglevel=2,
    )
    (model / "sp.vocab").unlink()
    enc = load_encoder(str(model))
    assert enc.eot_token == 2 and enc.special_tokens == {}
    chunks = load_dataset(enc, str(src), combine=10**9)
    ids = chunks[0].tolist()
    assert ids.count(2) == 1  # the two files, joined by </s>
    theirs = sentencepiece.SentencePieceProcessor(model_file=str(model / "sp.model"))
    assert ids[: ids.index(2)] == theirs.encode(text)
