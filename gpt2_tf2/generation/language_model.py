"""The Python API: `load()` a model directory, then `generate()` text or `score()` it.

A model is named as the original scripts name it (`124M`, looked up under `models_dir`), given
as a path to a model directory (a release, or a fine-tuned export), or as a fine-tuning run
(`run_name`); `formats.model_dir` reads each of them.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
from typing import TYPE_CHECKING

import numpy as np

from gpt2_tf2.core import lazy
from gpt2_tf2.core.hparams import HParams
from gpt2_tf2.errors import UserError
from gpt2_tf2.formats import model_dir as formats
from gpt2_tf2.generation import sampler, texts
from gpt2_tf2.generation.checks import (  # noqa: F401 (public names of this module before)
    BACKENDS,
    DTYPES,
    cache_columns,
    check_dtype,
    check_memory,
    check_token_ids,
    contexts_and_stop,
)
from gpt2_tf2.generation.config import MAX_LIST_BATCH, GenerationConfig
from gpt2_tf2.tokenizer import Encoder

if TYPE_CHECKING:
    from gpt2_tf2.core.model import GPT2

STREAM_CHUNK = 16  # tokens per piece of a stream: the loop's state crosses to Python per piece


class LanguageModel:
    """A loaded GPT-2: `.hparams`, `.encoder`, `.model`, and `generate()` / `score()` on top."""

    def __init__(
        self,
        hparams: HParams,
        encoder: Encoder,
        model: GPT2,
        model_dir: str | None = None,
        xla: bool = True,
        lite=None,
    ):
        """`model` runs the compiled XLA loops; or `lite`, a `tflite.LiteDecoder`, decodes and
        scores on TensorFlow Lite instead (`model` may then be None: no weights in memory)."""
        self.hparams, self.encoder, self.model, self.model_dir = hparams, encoder, model, model_dir
        self.lite, self.xla = lite, xla
        self.backend = "xla" if lite is None else "tflite"
        self._engine_programs = None  # the decode engine's compiled functions (xla.programs)
        if lite is not None:  # scoring on the interpreter (sampling: the engine's LiteSlots)
            self._token_nll = lite.token_nll
            return  # and no TensorFlow imported for it (`core.lazy`)
        tf = lazy.tensorflow()
        from gpt2_tf2.core import kernels
        from gpt2_tf2.generation import loop

        # Decided here, on the machine that runs the loop, never while tracing (kernels.add_bias).
        self._cpu_matvec = kernels.cpu_only()
        # Sampling runs on the decode engine (`sampler.EngineRows`), whose loop is traced (and
        # XLA-compiled, unless xla=False) once per (batch size, cache size); settings, seeds and
        # the actual lengths are tensors and never retrace. The prompt runs in a plain graph:
        # compiling it too cost ~1 s more on a first call than it saved. autograph=False: the
        # code is written with tf.while_loop/tf.cond already.
        self._prefill = tf.function(
            lambda context, prompt_len, cache_len, offsets: loop.prefill(
                self.model, context, prompt_len, cache_len, offsets
            ),
            autograph=False,
            reduce_retracing=False,
        )
        self._beam = tf.function(
            self._beam_advance, jit_compile=xla, autograph=False, reduce_retracing=False
        )
        self._token_nll = tf.function(
            self._token_nll_eager,
            input_signature=[tf.TensorSpec([None, None], tf.int32)],
            autograph=False,
        )

    def _beam_advance(self, state, prompt_len, length, settings, until, options):
        from gpt2_tf2.generation import beam

        weights = self.model.read_weights(self._cpu_matvec)
        model = functools.partial(self.model, weights=weights)
        return beam.advance(model, state, prompt_len, length, settings, until, options)

    # ---- generation -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Text as the model reads it in prompts and scored texts (`encode_text`)."""
        return encode_text(self.encoder, text)

    def generate_tokens(self, prompt_tokens=None, config=None, *, beam_progress=None, **settings):
        """Yield batches of generated token lists (continuations only). nsamples=0: forever.

        prompt_tokens: one prompt (a list of ids; None or []: unconditional), or a list of
        prompts of any lengths (lists of ids): each is continued nsamples times, in batches of
        batch_size rows, prompt by prompt; a batch of different lengths is left-padded and
        masked, so that each row is what that prompt gives alone (at the same row of a batch:
        the draws are keyed by seed, batch and row).

        config: a `GenerationConfig` (default: its defaults); keywords replace its fields
        (`generate_tokens(p, length=20, top_k=40)`). A length past the context (prompt + length
        > n_ctx) continues in a sliding window: the last n_ctx - window_stride tokens are the
        next prompt. num_beams > 1: beam search instead of sampling (`beam_search`), one batch
        of the num_return_sequences best beams per prompt; `beam_progress` is its `progress`."""
        config = GenerationConfig.of(config, **settings)
        many = is_prompt_list(prompt_tokens)
        prompts = [list(p) for p in prompt_tokens] if many else [list(prompt_tokens or [])]
        if many and not prompts:
            raise UserError("the list of prompts is empty")
        if config.beams:
            config.validate()
            for prompt in prompts:
                yield self.beam_search(prompt, config, progress=beam_progress)
            return
        if many and not config.nsamples:
            raise UserError("nsamples=0 (until interrupted) takes one prompt, not a list")
        contexts, config, stop = self._check(prompts, config)
        seed = secrets.randbits(31) if config.seed is None else config.seed
        batch_size = config.batch_size or 1
        # One prompt: every batch starts from it, so its first window is run once for all.
        on_engine = sampler.EngineRows(self, config, stop)
        first = None if many else on_engine.first_window(contexts * batch_size)
        for batch_index, (rows, real) in enumerate(batches(contexts, config.nsamples, batch_size)):
            out = [[] for _ in rows]
            for piece in on_engine.sample(rows, (seed, batch_index), first=first):
                for row, new in zip(out, piece):
                    row += new
            yield [texts.cut(row, stop) for row in out[:real]]

    def weight_bytes(self) -> int:
        """What its weights take in memory: its variables, or on tflite its converted step's
        files (XNNPACK packs a copy of each and the file's pages are released)."""
        if self.lite is not None:
            return sum(os.path.getsize(part.path) for part in self.lite.step.parts)
        return sum(v.shape.num_elements() * v.dtype.size for v in self.model.variables)

    def _check(self, prompts, config: GenerationConfig):
        """(contexts, the config validated for this model and resolved, stop token) of a
        sampling call, or a UserError."""
        n_ctx = self.hparams.n_ctx
        for p in prompts:
            check_token_ids(p, self.hparams.n_vocab)
        prompt_len = max(len(p) for p in prompts)
        config = config.validate(n_ctx, prompt_len)
        columns = cache_columns(n_ctx, prompt_len, config.length)
        check_memory(self.weight_bytes(), self.hparams, config.batch_size or 1, columns)
        contexts, stop = contexts_and_stop(self.encoder, prompts, config.stop_at_endoftext)
        return contexts, config, stop

    def stream_tokens(
        self,
        prompt_tokens=None,
        config=None,
        *,
        chunk: int = STREAM_CHUNK,
        sample_index: int = 0,
        **settings,
    ):
        """One sample's tokens as they are made, `chunk` at a time (lists of ids). The same
        seed gives the same tokens as `generate_tokens` (its sample number `sample_index` at
        batch_size 1): the loop runs in pieces, its draws keyed by (seed, sample, step).
        config and keywords as for `generate_tokens`; one sample, no beams."""
        config = GenerationConfig.of(config, **settings)
        if config.beams:
            raise UserError("beam search cannot stream: its best beams are known at the end")
        if config.nsamples != 1 or (config.batch_size or 1) != 1:
            raise UserError("a stream is one sample: nsamples and batch_size stay 1")
        contexts, config, stop = self._check([list(prompt_tokens or [])], config)
        key = (secrets.randbits(31) if config.seed is None else config.seed, sample_index)
        for (piece,) in sampler.EngineRows(self, config, stop).sample(contexts, key, chunk):
            if stop in piece:
                yield piece[: piece.index(stop)]
                return
            yield piece

    def stream(self, prompt: str | None = None, config=None, **settings):
        """A sample's text as it is made, in pieces of whole characters (a token may end inside
        a UTF-8 character: its bytes wait for the next). Settings as for `stream_tokens`;
        `"".join(lm.stream(p, seed=s))` equals `lm.generate(p, seed=s)[0]`."""
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")(errors=self.encoder.errors)
        tokens = self.encode(prompt) if prompt else []
        for piece in self.stream_tokens(tokens, config, **settings):
            text = decoder.decode(self.encoder.decode_bytes(piece))
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def beam_search(
        self, prompt_tokens=None, config=None, *, stop_token=None, progress=None, **settings
    ) -> list[list[int]]:
        """The num_return_sequences best of num_beams beams after the prompt, best first
        (continuations only). A hypothesis ends at `stop_token` (default: the vocabulary's
        end-of-text; not included in the result) or after `length` tokens, and is scored by
        its summed log-probability / length ** length_penalty (> 0 favours longer ones).
        early_stopping: stop once num_beams hypotheses have ended, instead of when no open
        beam can beat them. As transformers' beam search, step by step. `progress`: called
        with (steps done, length) every PIECE (16) steps (the same beams: the search runs in
        pieces), as beam search cannot stream. config and keywords as for `generate_tokens`;
        without a config, num_beams defaults to 4 here.
        """
        if config is None:
            settings.setdefault("num_beams", 4)
        config = GenerationConfig.of(config, **settings)
        lazy.tensorflow()  # quietly, before the beams' modules import it
        from gpt2_tf2.generation.beams import PIECE, BeamSearch

        search = BeamSearch(self)
        slot = search.add(prompt_tokens, config, stop_token)
        length = search.config(slot).length  # validated: a default resolved
        try:
            chunk = length if progress is None else PIECE
            while slot not in search.finished():
                search.step(chunk)
                if progress is not None:
                    progress(search.steps(slot), length)
            return search.results(slot)
        finally:
            search.remove(slot)

    def generate(
        self,
        prompt: str | list[str] | None = None,
        config: GenerationConfig | None = None,
        *,
        prefix: str | None = None,
        truncate: str | None = None,
        include_prefix: bool = False,
        sample_delim: str = texts.SAMPLE_DELIM,
        destination_path: str | None = None,
        return_as_list: bool = True,
        **settings,
    ) -> list[str] | None:
        """Sample continuations of `prompt` (None or "": unconditional); nsamples strings, or
        with num_beams > 1 the num_return_sequences best beams. A list of prompts (of any
        lengths) gives that many for each prompt, prompt by prompt, each as that prompt alone
        would; batch_size (default 1 for one prompt, the whole list up to MAX_LIST_BATCH rows
        for a list) is how many rows run at once. config and keywords as for
        `generate_tokens` (`GenerationConfig` lists them); then, with gpt-2-simple's names:
        `prefix` is another name for the prompt, `truncate` cuts each text before that string,
        `include_prefix` puts the prompt in front, `destination_path` writes the texts to a new
        file (each followed by a newline and `sample_delim`), and `return_as_list=False` prints
        them that way (returns None)."""
        config = GenerationConfig.of(config, **settings)
        if not config.nsamples:
            raise UserError("generate() needs nsamples >= 1 (a stream of samples: stream())")
        if prefix is not None and prompt is not None:
            raise UserError("give prompt or prefix (gpt-2-simple's name for it), not both")
        prompt = prompt if prefix is None else prefix
        if destination_path is not None:
            texts.check_destination(str(destination_path))  # before any work
        prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
        if not prompts or not all(p is None or isinstance(p, str) for p in prompts):
            raise UserError("`prompt` must be a string, None, or a non-empty list of strings")
        encoded = [self.encode(p) if p else [] for p in prompts]
        if config.batch_size is None and len(prompts) > 1 and not config.beams:
            rows = min(len(prompts) * config.nsamples, MAX_LIST_BATCH)
            config = GenerationConfig.of(config, batch_size=rows)
        batches = self.generate_tokens(
            encoded if isinstance(prompt, (list, tuple)) else encoded[0], config
        )
        rows = [row for batch in batches for row in batch]
        per_prompt = len(rows) // len(prompts)  # nsamples, or num_return_sequences beams
        out = [
            texts.finish(
                prompts[i // per_prompt], self.encoder.decode(row), truncate, include_prefix
            )
            for i, row in enumerate(rows)
        ]
        if destination_path is not None:
            texts.write(str(destination_path), out, sample_delim)
        if return_as_list:
            return out
        if destination_path is None:
            print(texts.joined(out, sample_delim), end="")
        return None

    # ---- scoring ----------------------------------------------------------------------------

    def _token_nll_eager(self, tokens):
        """NLL of tokens[:, 1:] given what precedes them: [batch, seq - 1] nats."""
        logits = self.model(tokens[:, :-1])["logits"]
        nn = lazy.tensorflow().nn
        return nn.sparse_softmax_cross_entropy_with_logits(labels=tokens[:, 1:], logits=logits)

    def score_tokens(self, tokens, progress: bool = False) -> tuple[float, int]:
        """(sum of NLL in nats, number of tokens scored).

        Each token is predicted from up to n_ctx - 1 earlier ones, in windows of n_ctx advancing
        by n_ctx // 2, after a leading <|endoftext|>. `progress`: a progress bar on stderr for
        texts of more than one window.
        """
        from tqdm import tqdm

        tokens = list(tokens)
        if not tokens:
            raise UserError("nothing to score: the text encodes to zero tokens")
        check_token_ids(tokens, self.hparams.n_vocab)
        eot = self.encoder.eot_token
        ids = tokens if eot is None else [eot] + tokens  # the leading <|endoftext|> is context only
        if len(ids) < 2:
            raise UserError("nothing to score: need at least two tokens without <|endoftext|>")
        n_ctx, stride = self.hparams.n_ctx, max(1, self.hparams.n_ctx // 2)
        total, counted = 0.0, 0
        scored, end = 1, min(len(ids), n_ctx)  # ids[:scored] are already scored (or context)
        windows = 1 + -(-max(0, len(ids) - n_ctx) // stride)
        bar = tqdm(total=windows, unit="window", disable=not progress or windows < 2, leave=False)
        while True:
            start = max(0, end - n_ctx)
            nll = np.asarray(self._token_nll(np.array([ids[start:end]], np.int32)))[0]
            part = nll[scored - start - 1 :]  # nll[j] scores ids[start + j + 1]
            total += float(np.sum(part, dtype=np.float64))
            counted += len(part)
            scored = end
            bar.update(1)
            if end == len(ids):
                break
            end = min(len(ids), end + stride)
        bar.close()
        return total, counted

    def score(self, text: str | list[str]) -> float | list[float]:
        """Mean negative log-likelihood of `text`, in nats per token; for a list of texts, a
        list of their scores."""
        if isinstance(text, (list, tuple)):
            return [self.score(t) for t in text]
        if not isinstance(text, str):
            raise UserError(
                f"score() takes a string or a list of strings, got {type(text).__name__}"
            )
        total, count = self.score_tokens(self.encode(text))
        return total / count


def encode_text(encoder, text: str) -> list[int]:
    """One rule for special tokens in text, in prompts, scored texts, attention maps and datasets
    alike: a special token's spelling (`<|endoftext|>`; a Hugging Face vocabulary's `<s>`,
    `</s>`, `<pad>`) is that token, as transformers' tokenizers read it. (The encoder's own
    `encode(text)` keeps the original API's default: plain text, as tiktoken's.)"""
    return encoder.encode(text, allowed_special="all")


def peek(model_name: str, models_dir: str = "models", run_name=None, checkpoint_dir="checkpoint"):
    """(hparams, encoder) of a model that is on disk, without loading its weights; else None."""
    try:
        directory = formats.locate(model_name, models_dir, False, run_name, checkpoint_dir)
    except UserError:
        return None  # not on disk (yet): load() reports or downloads it
    if not os.path.isfile(os.path.join(directory, "hparams.json")):
        return None  # an interrupted download: load() completes it
    opened = formats.open_model_dir(directory)
    return opened.hparams, opened.encoder


def is_prompt_list(prompts) -> bool:
    """A list of prompts (of token lists or of strings), not one prompt (a list of ids)."""
    return isinstance(prompts, (list, tuple)) and any(
        not isinstance(p, (int, np.integer)) for p in prompts
    )


def batches(contexts, nsamples: int, batch_size: int):
    """(rows, real) per batch: nsamples rows per context, prompt by prompt, batch_size rows
    each (nsamples 0: forever). A short last batch is filled up with copies of its last row,
    so that it runs in the shape already compiled; its first `real` rows are the ones asked."""
    if len(contexts) == 1:  # one prompt: every batch is alike
        produced = 0
        while nsamples == 0 or produced < nsamples:
            real = batch_size if nsamples == 0 else min(batch_size, nsamples - produced)
            produced += real
            yield contexts * batch_size, real
        return
    rows = [c for c in contexts for _ in range(nsamples)]
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        yield chunk + [chunk[-1]] * (batch_size - len(chunk)), len(chunk)


def perplexity(mean_nll: float) -> float:
    return math.exp(mean_nll) if mean_nll < 700 else float("inf")


def load(
    model_name_or_dir: str = "124M",
    models_dir: str = "models",
    download: bool = False,
    run_name: str | None = None,
    checkpoint_dir: str = "checkpoint",
    dtype: str = "float32",
    backend: str | None = None,
    progress=None,
) -> LanguageModel:
    """Load a model directory in OpenAI's layout, or a fine-tuning run's newest checkpoint.

    Args:
      model_name_or_dir: a release name (124M, 355M, 774M, 1558M; 117M and 345M are aliases) found
        under `models_dir`, or a path to a model directory.
      models_dir: where release names are looked up.
      download: fetch a release that is not under `models_dir` yet (see `gpt2_tf2.download`).
      run_name: instead, the newest checkpoint of a fine-tuning run in `checkpoint_dir/run_name`.
      checkpoint_dir: where run directories live.
      dtype: float32 (as released), or float16/bfloat16 weights and activations for inference
        (half the memory; fast on GPUs, slower than float32 on CPUs), or int8 weights on the
        tflite backend (a quarter of the memory; on a CPU, about twice float32's speed), or
        int4 weights there (4 bits and a float16 scale per 32: an eighth of the memory).
      backend: xla (compiled TensorFlow loops) or tflite (TensorFlow Lite with XNNPACK, float32
        int8 or int4; the step is converted once per model and kept in a cache on disk: see
        `formats.tflite.cache_dir`); default: tflite for int8 and int4, else xla.
      progress: called with a message before long work (a conversion to TensorFlow Lite).
    """
    backend = check_dtype(dtype, backend)
    directory = formats.locate(model_name_or_dir, models_dir, download, run_name, checkpoint_dir)
    if backend == "tflite":
        return load_lite(directory, dtype, progress)
    lazy.tensorflow()  # the xla backend's: quietly, as the face registered (`core.lazy`)
    opened, model = formats.load_model_dir(directory, dtype)
    return LanguageModel(opened.hparams, opened.encoder, model.as_loaded(), directory)


def load_lite(directory: str, dtype: str, progress=None) -> LanguageModel:
    """A model directory on the tflite backend: its converted step (cached), no weights loaded."""
    from gpt2_tf2.formats import tflite as tflite_format
    from gpt2_tf2.generation import tflite

    opened = formats.open_model_dir(directory)

    def weights():
        return formats.read_weights(opened)

    paths = tflite_format.cached_parts(opened, dtype, weights, progress or (lambda message: None))
    decoder = tflite.LiteDecoder(tflite.LiteStep(paths, opened.hparams))
    return LanguageModel(opened.hparams, opened.encoder, None, directory, lite=decoder)
