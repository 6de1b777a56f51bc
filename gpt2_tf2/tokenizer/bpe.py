"""Byte-level BPE, the tokenizer of GPT-2, with the original API.

Mirrors openai/gpt-2's `src/encoder.py` (`get_encoder`, `Encoder.encode/decode`): text is split
by the GPT-2 pre-tokenizer regex, each piece's UTF-8 bytes are mapped to printable characters
(`bytes_to_unicode`) and merged by rank from `vocab.bpe`. Differences from the original, matching
tiktoken's `gpt2` encoding: lone surrogates are replaced by U+FFFD instead of raising, the BPE cache
is bounded, and `<|endoftext|>` is ordinary text unless the caller allows it as a special token.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os

import regex

from gpt2_tf2.errors import UserError

ENDOFTEXT = "<|endoftext|>"
VOCAB_FILES = ("encoder.json", "vocab.bpe")  # in a model directory, beside the weights
# Optional beside them: the special tokens and which one ends a text, for vocabularies other
# than GPT-2's (ruGPT-3: <pad> <s> </s> <unk> <mask>, </s> ending a text). Absent: GPT-2's.
SPECIALS_FILE = "special_tokens.json"

# The GPT-2 pre-tokenizer (Radford et al. 2019, sec. 2.2): contractions, letters, numbers,
# other symbols, each optionally with one leading space; then whitespace runs.
PRETOKENIZE = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)

SPECIAL = regex.compile(r"^<\|?[^\s<>]+\|?>$")  # <|endoftext|>, <pad>, </s>: not made by merges
BPE_CACHE_SIZE = 1 << 16  # distinct words remembered; bounded so big corpora don't grow it forever

# sha256 of GPT-2's own encoder.json and vocab.bpe (as tiktoken_ext/openai_public.py records them).
# With exactly these files and tiktoken installed, encoding runs in tiktoken (about 10x faster);
# this module's BPE stays the reference, tested against it, and the fallback.
GPT2_VOCAB_SHA256 = (
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character, keeping printable Latin-1 bytes as themselves."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


class Encoder:
    """GPT-2's byte-level BPE over one vocabulary (`encoder.json`) and its merges (`vocab.bpe`).

    `special_tokens`: spellings that `encode(..., allowed_special=...)` may turn into single ids
    (those present in the vocabulary); `end_of_text`: the one that separates documents and starts
    unconditional samples (`eot_token`, None if the vocabulary lacks it).
    """

    def __init__(
        self,
        encoder: dict[str, int],
        bpe_merges: list[tuple[str, str]],
        errors: str = "replace",
        special_tokens: tuple[str, ...] = (ENDOFTEXT,),
        end_of_text: str = ENDOFTEXT,
    ):
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.errors = errors  # how to handle bytes that don't decode as UTF-8
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.bpe_ranks = {pair: i for i, pair in enumerate(bpe_merges)}
        self.special_tokens = {t: encoder[t] for t in special_tokens if t in encoder}
        self.eot_token = self.special_tokens.get(end_of_text)
        self._bpe_cached = functools.lru_cache(maxsize=BPE_CACHE_SIZE)(self._bpe)
        self.fast = None  # a tiktoken Encoding of the same vocabulary, see use_tiktoken()

    def use_tiktoken(self) -> bool:
        """Encode with tiktoken from now on, if it is installed; same tokens, faster."""
        try:
            import tiktoken
        except ImportError:
            return False
        # A token's bytes: its characters mapped back to the bytes they stand for. Translating
        # each character to the Latin-1 character of its byte and encoding as Latin-1 gives what
        # decode_bytes gives, about 5x faster (this runs at every load: 50k tokens).
        to_latin1 = {ord(c): chr(b) for c, b in self.byte_decoder.items()}
        ranks = {
            t.translate(to_latin1).encode("latin-1"): i
            for t, i in self.encoder.items()
            if t not in self.special_tokens
        }
        self.fast = tiktoken.Encoding(
            "gpt2_tf2",
            pat_str=PRETOKENIZE.pattern,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
            explicit_n_vocab=len(self.encoder),
        )
        return True

    @property
    def n_vocab(self) -> int:
        return len(self.encoder)

    def _bpe(self, token: str) -> tuple[int, ...]:
        """Merge one pre-token's characters by rank, lowest rank first, until no pair has a rank."""
        word = list(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):  # merge every occurrence of the best pair, left to right
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return tuple(self.encoder[w] for w in word)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token spellings as plain text."""
        if self.fast is not None:
            return self.fast.encode_ordinary(text)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates can't be UTF-8; replace them as tiktoken does.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        tokens: list[int] = []
        for piece in PRETOKENIZE.findall(text):
            chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            tokens.extend(self._bpe_cached(chars))
        return tokens

    def encode(self, text: str, allowed_special: set[str] | str = ()) -> list[int]:
        """Encode text to token ids.

        Args:
          text: the text.
          allowed_special: special tokens (e.g. {"<|endoftext|>"}, or "all") whose spelling in
            the text becomes the special token id; by default they are ordinary text, as tiktoken's
            `encode_ordinary`.
        """
        return encode_with_specials(self, text, allowed_special)

    def decode_bytes(self, tokens) -> bytes:
        return bytes(self.byte_decoder[c] for t in tokens for c in self.decoder[int(t)])

    def decode(self, tokens) -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors=self.errors)


def encode_with_specials(encoder, text: str, allowed_special) -> list[int]:
    """`encoder.encode_ordinary` on the text between the spellings of `allowed_special` tokens
    (a set of `encoder.special_tokens`' names, or "all"), which become their ids."""
    if allowed_special == "all":
        allowed_special = set(encoder.special_tokens)
    unknown = set(allowed_special) - set(encoder.special_tokens)
    if unknown:
        raise ValueError(f"unknown special token(s): {sorted(unknown)}")
    if not allowed_special:
        return encoder.encode_ordinary(text)
    splitter = regex.compile("(" + "|".join(regex.escape(s) for s in allowed_special) + ")")
    tokens: list[int] = []
    for i, part in enumerate(splitter.split(text)):
        if i % 2:
            tokens.append(encoder.special_tokens[part])
        elif part:
            tokens.extend(encoder.encode_ordinary(part))
    return tokens


def _read_vocab(encoder_path: str, bpe_path: str) -> tuple[dict, list[tuple[str, str]], bool]:
    """(encoder.json's ids, vocab.bpe's merges, whether the two are GPT-2's own files: the
    sha256 of the very bytes parsed)."""
    raw = []
    for path in (encoder_path, bpe_path):
        if not os.path.isfile(path):
            raise UserError(
                f"{path}: not found (a BPE vocabulary is encoder.json and vocab.bpe together)"
            )
        with open(path, "rb") as f:
            raw.append(f.read())
    genuine = tuple(hashlib.sha256(data).hexdigest() for data in raw) == GPT2_VOCAB_SHA256
    try:  # decoded as open(path, encoding="utf-8") reads them (universal newlines)
        text = [io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read() for data in raw]
        encoder = json.loads(text[0])
        bpe_lines = text[1].split("\n")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{encoder_path} or {bpe_path}: unreadable ({e})") from None
    # vocab.bpe: a '#version' header line, one 'first second' merge per line, a trailing newline.
    if bpe_lines and bpe_lines[0].startswith("#version"):
        bpe_lines = bpe_lines[1:]
    merges = []
    for n, line in enumerate(bpe_lines, start=2):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise UserError(f"{bpe_path}:{n}: expected two symbols per merge, got {line!r}")
        merges.append((parts[0], parts[1]))
    return encoder, merges, genuine


def check_vocabulary(
    encoder: dict[str, int], merges: list[tuple[str, str]], source: str, specials=()
) -> None:
    """The files must fit together: ids 0..N-1, every byte a token, every merge's product a
    token, and every other token made by a merge, except special tokens (`<|...|>`, `<...>`,
    and those `specials` names).
    GPT-2's own files: 256 bytes + 50000 merges + `<|endoftext|>`; a trainer may put its
    specials anywhere (Hugging Face tokenizers: first)."""
    if not isinstance(encoder, dict) or sorted(encoder.values()) != list(range(len(encoder))):
        raise UserError(f"{source}: encoder.json ids must be 0..N-1, each once")
    byte_symbols = set(bytes_to_unicode().values())
    missing = [c for c in byte_symbols if c not in encoder]
    if missing:
        raise UserError(f"{source}: encoder.json lacks byte symbol(s) {missing[:5]}")
    made = set()
    for n, (first, second) in enumerate(merges, start=2):
        if first + second not in encoder:
            raise UserError(
                f"{source}: vocab.bpe line {n} merges {first!r} {second!r} into a token "
                f"encoder.json lacks; the two files don't belong together"
            )
        made.add(first + second)
    orphans = [
        t
        for t in encoder
        if t not in made and t not in byte_symbols and not SPECIAL.match(t) and t not in specials
    ]
    if orphans:
        raise UserError(
            f"{source}: {len(orphans)} token(s) of encoder.json (e.g. {orphans[0]!r}) come from "
            f"no merge in vocab.bpe; the two files don't belong together"
        )


def bpe_files(model_dir: str) -> dict[str, str]:
    """encoder.json and vocab.bpe of a directory, by name, and special_tokens.json if there."""
    names = VOCAB_FILES
    if os.path.isfile(os.path.join(model_dir, SPECIALS_FILE)):
        names += (SPECIALS_FILE,)
    return {name: os.path.join(model_dir, name) for name in names}


def load_bpe(model_dir: str, fast: bool = True) -> Encoder:
    """The BPE encoder stored in a directory (encoder.json + vocab.bpe).

    With `fast` and GPT-2's own vocabulary files (checked by hash), tiktoken does the encoding
    when it is installed.
    """
    paths = tuple(bpe_files(model_dir).values())
    # The same files are read once per process (the command line looks at a model before it
    # loads it): the cache key holds each file's size and modification time.
    return _load_encoder(paths, fast, tuple(_stamp(p) for p in paths), model_dir)


def _stamp(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _load_encoder(paths: tuple[str, ...], fast: bool, stamps, model_dir: str) -> Encoder:
    encoder, merges, genuine = _read_vocab(*paths[:2])
    genuine = genuine and len(paths) == 2  # no special_tokens.json of its own
    specials, end_of_text = (ENDOFTEXT,), ENDOFTEXT
    if len(paths) > 2:
        specials, end_of_text = read_specials(paths[2], encoder)
    # GPT-2's own files (by hash) are known to fit together: their check (~0.09 s of every
    # load on the 2-core machine, a quarter of reading the vocabulary) is for other files.
    if not genuine:
        check_vocabulary(encoder, merges, model_dir, specials)
    enc = Encoder(encoder, merges, special_tokens=specials, end_of_text=end_of_text)
    if fast and genuine:
        enc.use_tiktoken()
    return enc


def read_specials(path: str, encoder: dict[str, int]) -> tuple[tuple[str, ...], str | None]:
    """(special tokens, the one that ends a text or None) from special_tokens.json:
    {"special_tokens": ["<pad>", "</s>", ...], "end_of_text": "</s>"}; each must be a token."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    specials = data.get("special_tokens") if isinstance(data, dict) else None
    end = data.get("end_of_text") if isinstance(data, dict) else None
    if not isinstance(specials, list) or not all(isinstance(t, str) for t in specials):
        raise UserError(f'{path}: expected {{"special_tokens": [strings], "end_of_text": ...}}')
    unknown = [t for t in specials + ([end] if end is not None else []) if t not in encoder]
    if unknown:
        raise UserError(f"{path}: {unknown[0]!r} is not a token of encoder.json")
    if end is not None and end not in specials:
        raise UserError(f"{path}: end_of_text {end!r} must be one of special_tokens")
    return tuple(specials), end
