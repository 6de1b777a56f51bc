"""The decode engine stepped a few tokens at a time, as the server's scheduler steps it: what a
call costs beside its tokens. 124M shape, random weights, `slots` rows busy, each call of
`Engine.step(n)` for n tokens; one JSON line per (slots, n) with tokens per second over the
calls after the first (which compiles). Used by `bench/compare_revisions.py --measures steps`.
With --server, the engine as `gpt2_tf2 serve` makes it (a growing cache, busy rows, the top-5
log-probabilities kept for the rows that ask), rows as its usual requests are (top-k 40), in
passes that alternate rows asking for no log-probabilities (where the revision lets a row say
so: `Request.scores`) and rows asking (`logprobs asked`), medians of `--passes` each; measure
`server-steps`. With --top_p_rows K, K of the rows ask top-p 0.9 instead (on random weights
their nucleus reaches past the top candidates: the whole-row fallback); measure
`server-steps+top-p`.

    python bench/step_speed.py [--slots 1,4] [--tokens 1,4] [--calls 64] [--server]
        [--top_p_rows K]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--slots", default="1,4", help="busy rows of the engine, comma-separated (default 1,4)"
    )
    parser.add_argument("--tokens", default="1", help="tokens per step call, comma-separated")
    parser.add_argument(
        "--calls", type=int, default=64, help="timed step calls after the first (default 64)"
    )
    parser.add_argument("--server", action="store_true", help="the engine as the server's")
    parser.add_argument("--passes", type=int, default=3, help="with --server: passes of each")
    parser.add_argument("--top_p_rows", type=int, default=0, help="with --server: rows top-p 0.9")
    args = parser.parse_args()

    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.generation.config import GenerationConfig
    from gpt2_tf2.generation.engine import Engine
    from gpt2_tf2.generation.language_model import LanguageModel
    from gpt2_tf2.tokenizer import Encoder

    hp = PRESETS["124M"]
    from _child import loaded  # bench/ is sys.path[0]

    model = loaded(GPT2(hp, seed=0))  # as gpt2_tf2.load keeps it
    lm = LanguageModel(hp, Encoder({"<|endoftext|>": 0}, []), model)
    for slots in (int(s) for s in args.slots.split(",")):
        for n in (int(t) for t in args.tokens.split(",")):
            length = n * (args.calls + 1)
            if not args.server:
                engine = Engine(lm, slots, cache_len=512)
                row = ([1, 2, 3, 4, 5, 6, 7, 8], GenerationConfig(length=length, temperature=0))
                report(
                    f"{slots} x {n}", slots * n * args.calls / one_pass(engine, [row] * slots, n)
                )
                continue
            engine = Engine(lm, slots, logprobs=5, grow_cache=True, busy_rows=True)
            top_p = min(args.top_p_rows, slots)
            configs = [GenerationConfig(length=length, top_k=40, seed=0)] * (slots - top_p)
            configs += [GenerationConfig(length=length, top_p=0.9, seed=0)] * top_p
            one_pass(engine, [server_row(c, False) for c in configs], n)  # compiles each width
            times = {False: [], True: []}
            for _ in range(args.passes):
                for asked in (False, True):
                    rows = [server_row(c, asked) for c in configs]
                    times[asked].append(one_pass(engine, rows, n))
            top_p_name = f", {top_p} top-p" if top_p else ""
            for asked, name in ((False, top_p_name), (True, f"{top_p_name}, logprobs asked")):
                tokens = slots * n * args.calls
                report(f"{slots} x {n}{name}", tokens / statistics.median(times[asked]))


def server_row(config, asked: bool) -> tuple:
    """A row as a server's request starts it; `asked`: it wants log-probabilities."""
    from gpt2_tf2.generation.engine import Request

    scores = (asked,) if "scores" in Request._fields else ()  # older revisions: always kept
    return ([1, 2, 3, 4, 5, 6, 7, 8], config, None, 0, *scores)


def one_pass(engine, rows, n: int) -> float:
    """Seconds of stepping `rows` (one per slot) by n a call to their end, after the first
    call (which compiles, and with --server runs the prompts' first token as a server's)."""
    started = engine.add_many(rows)
    engine.step(n)
    start = time.perf_counter()
    while any(slot not in engine.finished() for slot in started):
        engine.step(n)
    seconds = time.perf_counter() - start
    for slot in started:
        engine.remove(slot)
    return seconds


def report(batch: str, tok_s: float) -> None:
    print(json.dumps({"batch": batch, "tok_s": tok_s}), flush=True)


if __name__ == "__main__":
    main()
