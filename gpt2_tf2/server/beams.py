"""Beam search requests (vLLM's legacy `use_beam_search`): the library's beam search
(`generation.beams.BeamSearch`, tested against transformers), run beside the decode engine, not
in its slots: num_beams rows that reorder themselves every step are a different loop from the
engine's independent rows. One search at a time, in pieces (`beams.PIECE` steps); a client that goes
away stops it before its next piece. On xla the pieces run in the request's worker thread,
beside the engine's steps; on tflite the model is one interpreter, which the engine's thread
owns, so each piece runs there, between the engine's steps (`Scheduler.call`)."""

from __future__ import annotations

import contextlib
import threading

from gpt2_tf2.errors import UserError
from gpt2_tf2.generation.beams import PIECE, BeamSearch
from gpt2_tf2.server.protocol import APIError, Job


class Cancelled(Exception):
    """The client went away: the search stops between pieces."""


class Beams:
    def __init__(self, lm, scheduler=None):
        """scheduler: the engine's, whose thread runs the pieces on tflite (None: in the
        caller's thread, whatever the backend)."""
        self.search = BeamSearch(lm)
        self.scheduler = scheduler if lm.lite is not None else None
        self._one_at_a_time = threading.Lock()

    def run(self, job: Job, gone: threading.Event) -> list[list[int]]:
        """The tokens of each choice of `job`, in its order: each prompt's n best beams, best
        first (continuations; the end-of-text token, where a beam ended, not included)."""
        out = []
        with self._one_at_a_time:
            for p, tokens in enumerate(job.prompts):
                try:
                    out += self._search(tokens, job.choices[p * job.n].config, gone)
                except UserError as e:  # checked by the request's reading already: a bug's
                    raise APIError(400, str(e), "use_beam_search") from None
        return out

    def _search(self, tokens, config, gone: threading.Event) -> list[list[int]]:
        search = self.search
        slot = self._on_model(lambda: search.add(tokens, config))
        try:
            while slot not in search.finished():
                if gone.is_set():
                    raise Cancelled
                self._on_model(lambda: search.step(PIECE))
            return search.results(slot)
        finally:  # a server shutting down runs no more calls (503): nothing left to free then
            with contextlib.suppress(APIError):
                self._on_model(lambda: search.remove(slot))

    def _on_model(self, function):
        if self.scheduler is None:
            return function()
        return self.scheduler.call(function).result()
