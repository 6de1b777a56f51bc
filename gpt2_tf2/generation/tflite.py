"""Decoding on TensorFlow Lite: a converted decode step (`core.tflite_step`) in an interpreter with
XNNPACK, driven token by token from Python; the processors and strategies are the XLA loop's.
When every row decodes greedily with every processor off, a token is the argmax of its logits,
taken in NumPy: calling the compiled strategy cost ~1 ms a token at batch 1 (124M, int4: a
fifth of the token), almost all of it TensorFlow's call, not the choosing. That path imports no
TensorFlow at all when LiteRT's interpreter is installed (`core.lazy`): the processors,
strategies and scores are compiled, and TensorFlow imported, when a row first needs them.

The key/value cache lives in the interpreter's own input buffers (`past_key_i`, `past_value_i`):
each step writes only its new column there, through NumPy views of those buffers, so no step
copies the cache. The interpreter keeps its inputs between calls (TFLite never reuses a graph
input's memory for intermediate results). Shapes change only between a prompt (n tokens) and the
loop (one token): resizing costs a re-plan, not a conversion.

A step reads every column of the cache's buffers, the masked ones too, and at batches that read
is most of the step (124M in int8 at batch 32: 33 ms a step with 144 columns, 16 ms with 32, 8
without attention). So the buffers are as wide as the rows' columns need (`cache_width`: in
steps of 32, a quarter of the width past 128), grown as the rows go on and narrowed when they
end, up to the capacity the owner asked for. TFLite's arena is planned once for that capacity
(`LiteStep._open`), so a change of width re-plans within it (0.5 ms) and touches no new memory.

A large model's step comes in parts of its blocks (`formats.tflite.cached_parts`), one interpreter
each, run in turn (each part's hidden state feeds the next): each part's file pages are released
once XNNPACK has packed it, before the next part is opened, so the file and the packed copy are
never both resident whole.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

import numpy as np

from gpt2_tf2.core import lazy
from gpt2_tf2.core.hparams import HParams
from gpt2_tf2.errors import UserError, first_line
from gpt2_tf2.generation.settings import Settings, every_processor_off

MADV_DONTNEED = 4  # Linux's <sys/mman.h>


def cpu_count() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def release_file_pages(path: str) -> int:
    """Drop this process's resident pages of the file at `path`, which TFLite maps: once XNNPACK
    has packed its own copy of the weights (at the first allocation), the file's weight pages
    are not read again, yet they stay in the process's memory. Reading one again (a gather from
    the embedding) faults it back in from the page cache, so nothing changes but the memory:
    measured at 1558M in int8, resident 3.50 -> 2.03 GB, 83 ms a step before and after. Linux
    (`/proc/self/maps`, madvise); elsewhere nothing is done. Returns the bytes released."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            maps = f.read().splitlines()
        import ctypes

        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    target, released = os.path.realpath(path), 0
    for line in maps:  # start-end perms offset dev inode path
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if madvise(start, end - start, MADV_DONTNEED) == 0:
                released += end - start
    return released


def interpreter_class():
    """Which TFLite interpreter runs the steps: TensorFlow's own `tf.lite.Interpreter` when
    TensorFlow is in the process already (from 2.21, which multiplies int4 right): measured at
    124M against LiteRT 2.3's, 795-850 against 708-738 tok/s in int8 at batch 8, 1038-1052
    against 859-967 in int4, level at batch 1. Else LiteRT's (`ai_edge_litert`) if installed:
    no TensorFlow to import, a first call seconds shorter (docs/tflite.md, Interpreters). Else
    TensorFlow's, imported now."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and lazy.version_tuple(tf.__version__) >= (2, 21):
        return tf.lite.Interpreter
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return lazy.tensorflow().lite.Interpreter
    return Interpreter


def make_interpreter(path: str, num_threads: int | None = None):
    """A TFLite interpreter for the file at `path` (XNNPACK is its default CPU delegate), of
    `interpreter_class`. num_threads defaults to every core: TFLite's own default is one thread
    (measured at 124M, int8, batch 1: 18.6 ms a step on one thread, 10.9 ms on two)."""
    num_threads = num_threads or cpu_count()
    Interpreter = interpreter_class()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's notice that LiteRT replaces it
        try:
            return Interpreter(model_path=path, num_threads=num_threads)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"{path}: not a TensorFlow Lite model ({first_line(e)})") from None


def cache_width(columns: int, capacity: int) -> int:
    """The cache buffers' width for `columns` columns in use, at most `capacity`: rounded up
    to a multiple of 32, or of a quarter of the power of two below it past 128 (at most a
    quarter of the columns unused, few distinct widths up to n_ctx)."""
    quantum = max(32, 1 << max(0, columns.bit_length() - 3))
    return max(1, min(capacity, -(-columns // quantum) * quantum))


class _Part:
    """One interpreter of a step: all of it, or the blocks `layers` of a large model's step."""

    def __init__(self, path: str, layers: tuple[int, int], step, num_threads: int | None):
        self.path, self.layers = path, layers
        with lazy.native_output_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
            self.interpreter = make_interpreter(path, num_threads)
            try:  # TFLite applies XNNPACK here, at the first allocation: within load()
                self.interpreter.allocate_tensors()
            except RuntimeError as e:
                raise step.damaged(path, e) from None
        release_file_pages(path)  # before the next part is packed: one copy of each at a time
        if "serving_default" not in self.interpreter.get_signature_list():
            raise UserError(f"{path}: not a gpt2_tf2 decode step (it has no serving_default)")
        runner = self.interpreter.get_signature_runner()
        self.inputs = {name: d["index"] for name, d in runner.get_input_details().items()}
        self.outputs = {name: d["index"] for name, d in runner.get_output_details().items()}

    def set(self, name: str, value) -> None:
        self.interpreter.set_tensor(self.inputs[name], value)


class LiteStep:
    """One decode step in one interpreter, or in several that each run some of the blocks (a
    large model, `formats.tflite.cached_parts`), the cache in their input buffers (module doc)."""

    def __init__(self, paths, hparams: HParams, num_threads: int | None = None):
        from gpt2_tf2.core.layout import part_layers

        paths = [paths] if isinstance(paths, str) else list(paths)
        self.hparams, self.path = hparams, paths[0]
        self.parts = [
            _Part(path, layers, self, num_threads)
            for path, layers in zip(paths, part_layers(hparams, len(paths)))
        ]
        self._past, self._new = [], []  # (part, tensor index) per layer: keys, then values
        for part in self.parts:
            for i in range(*part.layers):
                for kind in ("key", "value"):
                    self._past.append((part, part.inputs.get(f"past_{kind}_{i}")))
                    self._new.append((part, part.outputs.get(f"{kind}_{i}")))
        last = self.parts[-1]
        if any(i is None for _, i in self._past + self._new) or "logits" not in last.outputs:
            where = ", ".join(paths)
            raise UserError(f"{where}: its inputs do not match a {hparams.n_layer}-layer model")
        self._shape = None  # (batch, tokens, the cache's width, logits asked)
        self._capacity = 1  # the most columns the owner's rows may use (`start`, `claim`)
        self._planned = set()  # (batch, capacity) the arena was planned for (`_open`)
        self.owner = None  # the engine whose cache the input buffers hold (`LiteSlots`)

    def take(self, owner) -> None:
        """`owner` (an engine's `LiteSlots`, a beam search's `LiteBeams`, or None: a prompt or
        a score) uses the input buffers next; the one that held them keeps its cache first
        (its `evict`, which calls `save`)."""
        if self.owner is not None and self.owner is not owner:
            self.owner.evict()
        self.owner = owner

    def save(self, columns: int) -> list:
        """A copy of the cache's first `columns` columns in the input buffers (an owner's
        `evict`: the columns its rows have written; a server's rows mostly use a few of the
        cache's, and a beam search's pieces evict the engine's rows every 16 steps)."""
        return [np.copy(part.interpreter.tensor(i)()[:, :columns]) for part, i in self._past]

    def claim(self, owner, batch: int, cache_len: int, saved) -> None:
        """Hold the buffers for `owner`'s rows, one token at a time, its cache in them: `saved`
        (from `save`) in the first columns, zeros after (None: all zeros, nothing written
        yet). Nothing to do if it holds them."""
        if self.owner is owner:
            return
        self.take(owner)
        written = 0 if saved is None else saved[0].shape[1]
        self._open(batch, cache_len, written + 1)
        self._fill(saved)

    def _open(self, batch: int, cache_len: int, columns: int) -> None:
        """Size the buffers for `batch` rows of one token, at most `cache_len` columns, of which
        `columns` in use. Planned once at the full `cache_len` first: TFLite's arena only
        grows, and widening past what it holds cost a new arena and its first touch at every
        width (124M, batch 8: 0.1-0.2 s each; 0.5 ms within it). Its pages not yet touched
        take no memory."""
        self._capacity = cache_len
        if (batch, cache_len) not in self._planned:
            self._resize(batch, 1, cache_len, 1)
            self._planned.add((batch, cache_len))
        self._resize(batch, 1, cache_width(columns, cache_len), 1)

    def _fill(self, saved) -> None:
        """The cache's buffers hold `saved` (from `save`, or None) in their first columns, zeros
        after: not what was there, as a masked NaN would still poison the sum (0 * NaN)."""
        for i, (part, index) in enumerate(self._past):
            past = part.interpreter.tensor(index)()
            written = 0 if saved is None else saved[i].shape[1]
            if written:
                past[:, :written] = saved[i]
            past[:, written:] = 0

    def reserve(self, columns: int, narrow: bool = False) -> None:
        """Make the cache's buffers hold `columns` columns (at most the owner's capacity),
        keeping what they hold in them; narrow: also make them narrower when they are at least
        twice as wide as that (only when no row uses a column from `columns` on)."""
        batch, n, width, k = self._shape
        wanted = cache_width(columns, self._capacity)
        if wanted > width or (narrow and 2 * wanted <= width):
            kept = self.save(min(width, wanted))
            self._resize(batch, n, wanted, k)
            self._fill(kept)

    def _resize(self, batch: int, n: int, width: int, k: int) -> None:
        """The inputs sized for `batch` rows of `n` tokens, a cache `width` columns wide and `k`
        logits asked; TFLite re-plans (`allocate_tensors`) only when a size changed."""
        if self._shape == (batch, n, width, k):
            return
        hp = self.hparams
        for part in self.parts:
            it = part.interpreter
            if "tokens" in part.inputs:
                it.resize_tensor_input(part.inputs["tokens"], [batch, n])
            else:
                it.resize_tensor_input(part.inputs["x"], [batch, n, hp.n_embd])
            it.resize_tensor_input(part.inputs["offsets"], [batch])
            it.resize_tensor_input(part.inputs["pos"], [batch])
            if "logits_at" in part.inputs:
                it.resize_tensor_input(part.inputs["logits_at"], [k])
        for part, index in self._past:
            part.interpreter.resize_tensor_input(index, [batch * hp.n_head, width, hp.head_dim])
        for part in self.parts:
            try:
                part.interpreter.allocate_tensors()
            except RuntimeError as e:
                raise self.damaged(part.path, e) from None
        self._shape = (batch, n, width, k)

    def _invoke(self, tokens, pos, offsets, logits_at) -> np.ndarray:
        pos = np.broadcast_to(np.asarray(pos, np.int32), np.shape(offsets))  # [batch]
        x = None
        for part in self.parts:
            if x is None:
                part.set("tokens", np.asarray(tokens, np.int32))
            else:
                part.set("x", x)
            part.set("pos", np.asarray(pos, np.int32))
            part.set("offsets", np.asarray(offsets, np.int32))
            if "logits_at" in part.inputs:
                part.set("logits_at", np.asarray(logits_at, np.int32))
            try:
                part.interpreter.invoke()
            except RuntimeError as e:
                raise self.damaged(part.path, e) from None
            if "x" in part.outputs:
                x = part.interpreter.get_tensor(part.outputs["x"])  # [batch, n, embd]
        last = self.parts[-1]
        return last.interpreter.get_tensor(last.outputs["logits"])  # a copy: [batch, k, vocab]

    @staticmethod
    def damaged(path, error) -> UserError:
        return UserError(
            f"{path}: TensorFlow Lite cannot run it ({first_line(error)}); it does not hold "
            f"this model's decode step: convert or export it again"
        )

    def prompt(self, tokens, offsets, logits_at) -> tuple[np.ndarray, list]:
        """Run tokens [batch, n] from column 0 with an empty cache: (logits [batch, k, vocab],
        the keys and values of the n columns per layer, [batch * heads, n, head_dim] each)."""
        batch, n = np.shape(tokens)
        self.take(None)
        self._resize(batch, n, 1, len(logits_at))  # one cache column, masked (pos 0)
        for part, index in self._past:
            part.interpreter.tensor(index)().fill(0)  # masked, but 0 * NaN would be NaN
        logits = self._invoke(tokens, 0, offsets, logits_at)
        return logits, [part.interpreter.get_tensor(index) for part, index in self._new]

    def start(self, columns: list, cache_len: int) -> None:
        """Size the cache for one token at a time, room for `cache_len` columns, and fill its
        first columns with `columns` (from `prompt`), zeros after them (`_fill`)."""
        batch = columns[0].shape[0] // self.hparams.n_head
        self.take(None)
        self._open(batch, cache_len, columns[0].shape[1] + 1)
        self._fill(columns)

    def next(self, tokens, pos, offsets) -> np.ndarray:
        """The logits [batch, vocab] after tokens [batch] at column `pos` (after `start`; an
        int, or int32 [batch]: each row's own); their keys and values are written into the
        cache at that column. The cache's buffers are made as wide as the columns need
        (`reserve`; narrower too: no row reads past its own column)."""
        self.reserve(int(np.max(pos)) + 1, narrow=True)
        logits = self._invoke(np.reshape(tokens, [-1, 1]), pos, offsets, [0])
        # Row b's heads at row b's column.
        columns = np.repeat(np.broadcast_to(pos, np.shape(offsets)), self.hparams.n_head)
        rows = np.arange(len(columns))
        for (part, past), (_, new) in zip(self._past, self._new):
            it = part.interpreter
            it.tensor(past)()[rows, columns] = it.tensor(new)()[:, 0]
        return logits[:, 0]


class LiteDecoder:
    """What `LanguageModel` asks of a decoding backend, on a `LiteStep`: scores; and for the
    decode engine's rows (`LiteSlots`) and a beam search's (`beams.LiteBeams`), the processors,
    strategy and beam step of the XLA loops, compiled on their own."""

    def __init__(self, step: LiteStep, xla: bool = True):
        self.step, self.xla = step, xla
        self._choose = {}  # concrete functions of `choose_rows` by (logits, history) shape

    # Compiled on first use, TensorFlow imported then: greedy decoding with every processor
    # off needs none of them (`LiteSlots.advance`), and so no TensorFlow at all.
    @functools.cached_property
    def choose_rows(self):
        """One token per slot, as the XLA engine's loop chooses it (`xla.advance`), through
        the process's one trace of the choice (`choice.shared_choose_rows`)."""
        from gpt2_tf2.generation.choice import shared_choose_rows

        return self._compiled(shared_choose_rows)

    @functools.cached_property
    def token_scores(self):
        from gpt2_tf2.generation.logprobs import token_scores

        return self._compiled(token_scores)

    @functools.cached_property
    def choose_beams(self):
        return self._compiled(choose_beams)

    def _compiled(self, fn):
        return lazy.tensorflow().function(fn, jit_compile=self.xla, autograph=False)

    @staticmethod
    def tensors(settings):
        """`settings` (NumPy arrays) as tensors, for `choose` to take without converting."""
        tf = lazy.tensorflow()
        return tf.nest.map_structure(tf.convert_to_tensor, settings)

    def choose(self, logits, history, pos, settings, steps, rows) -> np.ndarray:
        """`choose_rows` on the rows' NumPy state and their `Settings` ([rows] each, as
        `tensors`: converted once, not at every token): one token per row. It calls the
        concrete function of these shapes, traced once: a tf.function's own call matches every
        argument's type against its traces first, which at batch 1 cost as much as the choosing
        (measured at 124M's vocabulary: 0.50 -> 0.33 ms a token)."""
        tf = lazy.tensorflow()
        logits, history, pos, steps, rows = map(
            tf.convert_to_tensor, (logits, history, pos, steps, rows)
        )
        args = (logits, history, pos, settings, steps, rows)
        key = (logits.shape, history.shape)
        if key not in self._choose:
            self._choose[key] = self.choose_rows.get_concrete_function(*args)
        return self._choose[key](*args).numpy()

    def logits(self, tokens) -> np.ndarray:
        """The logits [batch, n, vocab] after each of tokens [batch, n], run from column 0 (the
        interpreter belongs to one thread: the decode engine's, when one runs)."""
        batch, n = np.shape(tokens)
        return self.step.prompt(tokens, np.zeros([batch], np.int32), range(n))[0]

    def token_nll(self, tokens) -> np.ndarray:
        """As `LanguageModel._token_nll`: NLL of tokens[:, 1:] given what precedes them."""
        tokens = np.asarray(tokens, np.int32)
        logits = self.logits(tokens[:, :-1])
        return lazy.tensorflow().nn.sparse_softmax_cross_entropy_with_logits(tokens[:, 1:], logits)


def choose_beams(state, prompt_len, length, settings, options):
    """One step of a beam search without the model (`beam.choose`), and whether the search
    goes on after it (`beam.going`): what `beams.LiteBeams` runs between the interpreter's
    steps."""
    from gpt2_tf2.generation import beam

    state, rows, tokens = beam.choose(state, prompt_len, length, settings, options)
    return state, rows, tokens, beam.going(state, length, options[2])


class LiteSlots:
    """The decode engine's rows (`engine.Engine`) on TensorFlow Lite: the state in NumPy, the
    cache in the interpreter's input buffers, one row per slot at a column of its own (the step
    takes a position per row), each step's token chosen as the XLA engine chooses it.

    The interpreter is shared with prompts, scoring and other engines on the model: whoever
    takes it from an engine whose rows are running has the engine copy its cache out
    (`evict`), and the engine copies it back when it next runs (`_claim`)."""

    def __init__(self, lm, slots: int, cache_len: int, logprobs: int = 0):
        self.lm, self.step, self.slots, self.cache_len = lm, lm.lite.step, slots, cache_len
        self.logprobs = logprobs  # k > 0: the scores' arrays, as the XLA engine keeps them
        shape = [slots, cache_len]
        self._scores = (
            (
                np.zeros(shape, np.float32),
                np.zeros([*shape, logprobs], np.int32),
                np.zeros([*shape, logprobs], np.float32),
            )
            if logprobs
            else ()
        )
        self.history = np.zeros([slots, cache_len], np.int32)
        self.pos, self.steps, self.limit, self.rows = (np.zeros([slots], np.int32) for _ in "1234")
        self.done = np.ones([slots], bool)
        self.logits = np.zeros([slots, lm.hparams.n_vocab], np.float32)
        self.settings = Settings.rows([Settings.make(temperature=0.0)] * slots)  # free: greedy
        self._argmax = True  # every row greedy, every processor off (`advance`)
        self._tensors = None  # `settings` as tensors, made when a token is first chosen by TF
        self._saved = None  # the cache while another holds the interpreter; None: zeros

    def prefill(self, prompts):
        """The prompts as one batch, left-padded to the longest (the padding masked): (logits
        after each [k, vocab], (each layer's keys and values [k * heads, size, head_dim], each
        row's left padding))."""
        size = max(len(t) for t in prompts)
        offsets = np.array([size - len(t) for t in prompts], np.int32)
        tokens = np.array([[0] * (size - len(t)) + list(t) for t in prompts], np.int32)
        logits, columns = self.step.prompt(tokens, offsets, [size - 1])
        return logits[:, 0], (columns, offsets)

    def start(self, slots, prefill, settings) -> None:
        """Write the rows of `prefill` (`engine.Prefill`) into `slots`, with their settings."""
        self._claim()
        columns, offsets = prefill.cache
        h = self.lm.hparams.n_head
        self.step.reserve(max(len(row[0]) for row in prefill.rows) + 1)
        for i, slot in enumerate(slots):
            tokens, _, length = prefill.rows[i]
            n, first = len(tokens), int(offsets[i])
            for (part, index), value in zip(self.step._past, columns):
                past = part.interpreter.tensor(index)()  # a view of the input buffer
                past[slot * h : (slot + 1) * h, :n] = value[i * h : (i + 1) * h, first:]
            self.history[slot] = 0
            self.history[slot, :n] = tokens
            self.pos[slot], self.steps[slot], self.limit[slot] = n, 0, length
            self.rows[slot], self.done[slot] = prefill.row_numbers[i], False
            self.logits[slot] = np.asarray(prefill.logits[i])
        fields = [np.array(field) for field in self.settings]  # copies: a Settings is shared
        for field, value in zip(fields, settings):
            field[slots] = value
        self.settings = Settings(*fields)
        greedy = bool(np.all(self.settings.temperature == 0))
        self._argmax = greedy and every_processor_off(self.settings)
        self._tensors = None

    def cancel(self, slot: int) -> None:
        self.done[slot] = True

    def reset(self) -> None:
        """Every slot free: nothing to do (the interpreter's shapes stay)."""

    def advance(self, n: int, scores: bool = True) -> None:
        """Up to n more tokens for every unfinished row, one step of the interpreter each;
        scores: their scores too (with logprobs)."""
        if self.done.all():
            return
        self._claim()
        stop, last = np.asarray(self.settings.stop_token), self.cache_len - 1
        offsets = np.zeros([self.slots], np.int32)
        for _ in range(n):
            if self.done.all():
                return
            active = ~self.done
            if self._argmax:  # `strategies.greedy`, in NumPy: no TensorFlow call a token
                chosen = self.logits.argmax(axis=-1)
            else:
                if self._tensors is None:  # once per start: converting each token cost ~60 us
                    self._tensors = self.lm.lite.tensors(self.settings)
                args = (self.logits, self.history, self.pos, self._tensors, self.steps)
                chosen = self.lm.lite.choose(*args, self.rows)
            token = np.where(active, chosen, np.maximum(stop, 0)).astype(np.int32)
            at = np.minimum(self.pos, last)  # a finished row's position may be past the end
            self.history[active, at[active]] = token[active]
            if self.logprobs and scores:
                fresh = self.lm.lite.token_scores(self.logits, token, self.logprobs)
                for array, value in zip(self._scores, fresh):
                    array[active, at[active]] = value.numpy()[active]
            self.steps += active
            self.done |= (token == stop) | (self.steps >= self.limit)
            if not self.done.all():  # finished rows at column 0: the cache as wide as the rest need
                self.logits = self.step.next(token, np.where(self.done, 0, at), offsets)
            self.pos += active

    def read(self):
        """(history [slots, cache_len], pos, done, stop token per slot), as NumPy arrays."""
        return self.history, self.pos, self.done, np.asarray(self.settings.stop_token)

    def scores(self):
        """The scores' arrays (chosen log-probability, top ids, top log-probabilities)."""
        return self._scores

    def _claim(self) -> None:
        """Hold the interpreter, sized for the slots, with this engine's cache in it."""
        self.step.claim(self, self.slots, self.cache_len, self._saved)
        self._saved = None

    def evict(self) -> None:
        """Another takes the interpreter: keep the cache's columns the running rows have
        written (those before each one's position), if any row still runs."""
        if not self.done.all():
            self._saved = self.step.save(int(self.pos[~self.done].max()))
