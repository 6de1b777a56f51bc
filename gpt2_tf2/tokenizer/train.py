"""Training a new vocabulary on a corpus: GPT-2's byte-level BPE with Hugging Face `tokenizers`,
or a SentencePiece model with `sentencepiece` (both the optional extra `gpt2_tf2[vocab]`).

The BPE is GPT-2's exactly (Radford et al. 2019, sec. 2.2): the same pre-tokenizer regex, the
256 byte symbols of `bytes_to_unicode` as the base alphabet, merges learned by pair frequency, and
`<|endoftext|>` as a special token; written as `encoder.json` + `vocab.bpe`, with the trainer's
ids, so `bpe.Encoder` reproduces the trainer's own tokenizer. The SentencePiece model keeps every
text as it is (no normalization, whitespace kept, no dummy prefix, unknown characters as UTF-8
bytes) so any text round-trips, and has `<|endoftext|>` as a control symbol.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

from gpt2_tf2.errors import UserError
from gpt2_tf2.files import list_files, read_text
from gpt2_tf2.tokenizer.bpe import ENDOFTEXT, VOCAB_FILES
from gpt2_tf2.tokenizer.sentencepiece import SP_MODEL

TYPES = ("bpe", "sentencepiece")
SP_MODEL_TYPES = ("unigram", "bpe")
MIN_VOCAB = {"bpe": 256 + 1, "sentencepiece": 256 + 4}  # bytes + specials (unk, s, /s, eot)
CHUNK_CHARS = 2000  # what the trainers see as one "sentence": whole lines, about this long
EXTRA = "pip install 'gpt2_tf2[vocab]'"


def read_corpus(paths, encoding: str = "utf-8", errors: str = "strict") -> list[str]:
    """The documents of a corpus: each file, split further at spelled-out <|endoftext|>."""
    files = []
    for path in paths:
        found = list_files(str(path))
        if not found:
            raise UserError(f"{path}: no such file, directory or glob match")
        files += found
    documents = []
    for name in files:
        documents += [d for d in read_text(name, encoding, errors).split(ENDOFTEXT) if d.strip()]
    if not documents:
        raise UserError(f"{' '.join(map(str, paths))}: no text found (the files are empty)")
    return documents


def chunks(documents: list[str], size: int = CHUNK_CHARS) -> list[str]:
    """Documents cut at line ends into pieces of about `size` characters."""
    out = []
    for doc in documents:
        piece = []
        length = 0
        for line in doc.splitlines(keepends=True):
            piece.append(line)
            length += len(line)
            if length >= size:
                out.append("".join(piece))
                piece, length = [], 0
        if piece:
            out.append("".join(piece))
    return out


def split_heldout(pieces: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(training pieces, held-out pieces): every k-th piece is held out, k = 1/fraction; nothing
    is held out from a corpus of one piece."""
    if fraction <= 0 or len(pieces) < 2:
        return pieces, []
    every = max(2, round(1 / fraction))
    held = [p for i, p in enumerate(pieces) if i % every == every - 1]
    return [p for i, p in enumerate(pieces) if i % every != every - 1], held


def check_out_dir(out: str) -> None:
    """A vocabulary is written into a new or vocabulary-free directory: never over one."""
    present = [n for n in VOCAB_FILES + (SP_MODEL,) if os.path.exists(os.path.join(out, n))]
    if present:
        raise UserError(
            f"{out}: already holds {', '.join(present)}; choose another `out` (nothing was "
            f"replaced)"
        )
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"{out}: exists and is not a directory")


def train_bpe(pieces: list[str], vocab_size: int, progress: bool) -> dict[str, bytes]:
    """{file name: contents} of a byte-level BPE vocabulary in GPT-2's format."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise UserError(f"BPE training needs Hugging Face tokenizers: {EXTRA}") from None
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(pieces, trainer, length=len(pieces))
    model = json.loads(tok.to_str())["model"]
    # tokenizers >= 0.20 stores merges as pairs, earlier versions as "a b" strings.
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    return {
        "encoder.json": json.dumps(vocab, ensure_ascii=False).encode("utf-8"),
        "vocab.bpe": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"),
    }


def train_sentencepiece(pieces: list[str], vocab_size: int, model_type: str) -> dict[str, bytes]:
    """{file name: contents} of a SentencePiece model that keeps every text as it is."""
    try:
        import sentencepiece
    except ImportError:
        raise UserError(f"SentencePiece training needs sentencepiece: {EXTRA}") from None
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(pieces),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,  # any character outside the vocabulary is its UTF-8 bytes
            character_coverage=0.9995,
            normalization_rule_name="identity",  # text is never changed, so it round-trips
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            user_defined_symbols=["\n"],  # a line break is one piece, not a byte
            control_symbols=[ENDOFTEXT],
            max_sentence_length=4 * 4 * CHUNK_CHARS,  # bytes; a chunk is a few long lines
            hard_vocab_limit=False,  # a small corpus gives a smaller vocabulary, not an error
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1]
        raise UserError(f"sentencepiece could not train a vocabulary: {last}") from None
    return {SP_MODEL: model.getvalue()}


def write_vocabulary(files: dict[str, bytes], out: str) -> None:
    """Each file written whole under a temporary name, then renamed; nothing existing replaced."""
    check_out_dir(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the directory ({e.strerror})") from None
    temporary = {name: os.path.join(out, f".{name}.tmp-{os.getpid()}") for name in files}
    try:
        for name, data in files.items():
            with open(temporary[name], "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for name in files:
            os.replace(temporary[name], os.path.join(out, name))
    except OSError as e:
        raise UserError(f"{out}: cannot write the vocabulary ({e.strerror})") from None
    finally:
        for path in temporary.values():
            if os.path.exists(path):
                os.remove(path)


def train(
    corpus,
    out: str,
    vocab_size: int,
    kind: str = "bpe",
    sp_model_type: str = "unigram",
    heldout: float = 0.05,
    encoding: str = "utf-8",
    errors: str = "strict",
    progress: bool | None = None,
) -> tuple[list[str], bool, float]:
    """Train and write a vocabulary; returns (text to measure it on: the held-out pieces, or the
    training text when none is held out; whether it is held out; seconds spent training)."""
    if kind not in TYPES:
        raise UserError(f"the vocabulary type must be one of {', '.join(TYPES)}, got {kind!r}")
    if sp_model_type not in SP_MODEL_TYPES:
        raise UserError(f"`sp_model_type` must be unigram or bpe, got {sp_model_type!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise UserError(f"`vocab_size` must be an integer, got {vocab_size!r}")
    if vocab_size < MIN_VOCAB[kind]:
        raise UserError(
            f"`vocab_size` {vocab_size} is smaller than the byte alphabet: a {kind} vocabulary "
            f"needs at least {MIN_VOCAB[kind]} tokens (256 bytes and the special tokens)"
        )
    if not 0 <= heldout < 1:
        raise UserError(f"`heldout` must be a fraction in [0, 1), got {heldout!r}")
    check_out_dir(out)
    pieces, held = split_heldout(chunks(read_corpus(corpus, encoding, errors)), heldout)
    progress = sys.stderr.isatty() if progress is None else progress
    start = time.perf_counter()
    if kind == "bpe":
        files = train_bpe(pieces, vocab_size, progress)
    else:
        files = train_sentencepiece(pieces, vocab_size, sp_model_type)
    seconds = time.perf_counter() - start
    write_vocabulary(files, out)
    return (held or pieces), bool(held), seconds


def tokens_per_word(encoder, texts: list[str]) -> float:
    """Tokens per whitespace-separated word: how much of a context a vocabulary spends."""
    words = sum(len(t.split()) for t in texts)
    tokens = sum(len(encoder.encode(t)) for t in texts)
    return tokens / max(words, 1)
