"""Continuous batching: one thread owns a decode engine (`generation.engine.Engine`) and runs
it while any sequence is busy; sequences wait in a bounded queue, join free slots between
steps (those that arrived together start as one batch: one prefill), and leave when they end or
are cancelled, freeing the slot for the next (as vLLM's scheduler and llama.cpp's server slots).

Requests live on the event loop; they talk to this thread through `submit`, `cancel` and
`call` (other work on the model, which a TensorFlow Lite interpreter allows one thread only),
and hear back through each sequence's `deliver` (called from this thread: it must be
thread-safe, e.g. `loop.call_soon_threadsafe`). Events: ("tokens", index, tokens, scores),
("end", index, finish_reason) with finish_reason "stop", "length" or "cancelled", and
("error", index, message).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time

from gpt2_tf2.errors import UserError
from gpt2_tf2.generation.config import GenerationConfig
from gpt2_tf2.generation.engine import Engine, Request
from gpt2_tf2.server.metrics import Metrics
from gpt2_tf2.server.protocol import APIError, Choice

log = logging.getLogger("gpt2_tf2.server")
# Tokens per engine call while no sequence waits for a slot and every running one has its first
# token: fewer calls (each costs a few ms of dispatch and reads), at the price of a finished or
# cancelled slot idling up to this many steps. One at a time while any waits, so that it joins
# at the next step, and while any waits for its first token, which it gets a step sooner.
CHUNK = 4


class Sequence:
    """One choice of a request, as the scheduler runs it."""

    def __init__(self, choice: Choice, deliver, logprobs: bool = False):
        self.choice, self.deliver, self.logprobs = choice, deliver, logprobs
        self.cancelled = False
        self.arrived = time.monotonic()
        self.last = None  # when its latest tokens came


class Scheduler:
    def __init__(self, lm, slots: int, max_queue: int, metrics: Metrics, logprobs: int = 0):
        # A growing cache (each step attends over the columns the running rows use) and busy
        # rows (each step runs the slots up to the last busy one): what the load needs.
        xla = lm.lite is None
        self.engine = Engine(lm, slots, logprobs=logprobs, grow_cache=xla, busy_rows=xla)
        self.slots, self.max_queue, self.metrics = slots, max_queue, metrics
        self._waiting = collections.deque()
        self._running = {}  # slot -> Sequence
        self._calls = collections.deque()  # (function, future): run between steps
        self._cond = threading.Condition()
        self._closing = False
        self.warm_up()  # in the loading thread, before the engine's own starts
        self._thread = threading.Thread(target=self._loop, name="gpt2_tf2-engine", daemon=True)
        self._thread.start()

    # ---- the request side -----------------------------------------------------------------

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue the sequences (all or none): an APIError 429 when the queue would overflow, 503
        when the server is shutting down."""
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down")
            free = self.slots - len(self._running)
            if len(self._waiting) + len(sequences) - free > self.max_queue:
                raise APIError(
                    429, "the server is busy: every slot is taken and the queue is full; retry"
                )
            self._waiting.extend(sequences)
            self._cond.notify()

    def cancel(self, sequences) -> None:
        """Stop the sequences (a client gone, a stop sequence found): their slots free within a
        step; those still waiting never start."""
        with self._cond:
            for s in sequences:
                s.cancelled = True
            self._cond.notify()

    def call(self, function) -> concurrent.futures.Future:
        """Run `function()` on the engine's thread between steps (the model's work outside the
        engine, e.g. scoring a prompt): its result, or its exception, in the future."""
        future = concurrent.futures.Future()
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down")
            self._calls.append((function, future))
            self._cond.notify()
        return future

    def load(self) -> tuple[int, int]:
        """(sequences waiting, slots busy)."""
        with self._cond:
            return len(self._waiting), len(self._running)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel everything and stop the thread."""
        with self._cond:
            self._closing = True
            for s in [*self._waiting, *self._running.values()]:
                s.cancelled = True
            self._cond.notify()
        self._thread.join(timeout)
        for _, future in self._calls:  # none is run after the thread stopped
            future.cancel()

    # ---- the engine's thread --------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closing or self._waiting or self._running or self._calls):
                    self._cond.wait()
                if self._closing and not self._running and not self._waiting:
                    return
                starting = self._admit()
                calls, self._calls = self._calls, collections.deque()
            for function, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(function())
                    except Exception as e:  # the caller's to handle
                        future.set_exception(e)
            try:
                if starting:
                    self._start(starting)
                if self._running:
                    self._step()
                self._leave()
            except Exception as e:  # a bug, not a request's fault: every row hears of it
                log.exception("the engine failed")
                self._fail_all(f"the engine failed: {e}")

    def _admit(self) -> list[Sequence]:
        """Waiting sequences for the free slots (cancelled ones end here, unstarted)."""
        starting = []
        while self._waiting and len(starting) < self.slots - len(self._running):
            s = self._waiting.popleft()
            if s.cancelled:
                s.deliver(("end", s.choice.index, "cancelled"))
            else:
                starting.append(s)
        return starting

    def _start(self, starting: list[Sequence]) -> None:
        """Start the sequences, in groups of a power of two (15 = 8 + 4 + 2 + 1): the shapes of
        the prompts' batch and of the insert stay few (`warm_up` compiles them), where any
        count would compile anew at a request's expense."""
        for group in power_of_two_groups(len(starting)):
            self._start_group(starting[:group])
            starting = starting[group:]

    def _start_group(self, starting: list[Sequence]) -> None:
        requests = []
        for s in starting:
            c = s.choice
            requests.append(Request(c.prompt_tokens, c.config, c.key, c.row, s.logprobs))
        try:
            slots = self.engine.add_many(requests)
        except UserError as e:  # checked by the protocol first; said, in case
            for s in starting:
                s.deliver(("error", s.choice.index, str(e)))
            return
        with self._cond:
            self._running.update(zip(slots, starting))

    def warm_up(self) -> None:
        """Compile what the first requests would otherwise wait for (before serving): a short
        prompt's batch of each power-of-two size up to the slots, its insert, and a step of as
        many rows as each takes, every slot's included (the engine steps the busy ones)."""
        config = GenerationConfig(length=2, temperature=0.0)
        groups = [[1 << i] for i in range(self.slots.bit_length())]  # 1, 2, 4, .. <= slots
        if len(power_of_two_groups(self.slots)) > 1:  # as `_start` fills every slot: a step too
            groups.append(power_of_two_groups(self.slots))
        for sizes in groups:
            slots = []
            for size in sizes:
                slots += self.engine.add_many([Request([0], config) for _ in range(size)])
            self.engine.step(1)
            for slot in slots:
                self.engine.remove(slot)

    def _step(self) -> None:
        with self._cond:
            first = any(s.last is None for s in self._running.values())
            n = 1 if self._waiting or first else CHUNK
        out = self.engine.step(n)
        now = time.monotonic()
        for slot, tokens in out.items():
            s = self._running[slot]
            if not tokens:
                continue
            scores = self.engine.scores(slot) if s.logprobs else None
            if s.last is None:
                self.metrics.latency(first_token=now - s.arrived)
            else:
                self.metrics.latency(per_token=(now - s.last) / len(tokens))
            s.last = now
            self.metrics.tokens(completion=len(tokens))
            s.deliver(("tokens", s.choice.index, tokens, scores))

    def _leave(self) -> None:
        finished = set(self.engine.finished())
        with self._cond:
            leaving = [
                (slot, s) for slot, s in self._running.items() if slot in finished or s.cancelled
            ]
            for slot, _ in leaving:
                del self._running[slot]
        for slot, s in leaving:
            reason = "cancelled" if s.cancelled else "length"
            if self.engine.stopped(slot):
                reason = "stop"
            self.engine.remove(slot)
            s.deliver(("end", s.choice.index, reason))

    def _fail_all(self, message: str) -> None:
        with self._cond:
            running, self._running = list(self._running.items()), {}
        for slot, s in running:
            s.deliver(("error", s.choice.index, message))
            try:
                self.engine.remove(slot)
            except UserError:
                pass


def power_of_two_groups(n: int) -> list[int]:
    """n as the powers of two `Scheduler._start` starts it in, largest first (15: 8, 4, 2, 1)."""
    return [1 << i for i in reversed(range(n.bit_length())) if n >> i & 1]
