"""The decode engine stepped a few tokens at a time, as the server's scheduler steps it: what a
call costs beside its tokens. 124M shape, random weights, `slots` rows busy, each call of
`Engine.step(n)` for n tokens; one JSON line per (slots, n) with tokens per second over the
calls after the first (which compiles). Used by `bench/compare_revisions.py --measures steps`.
With --server, the engine as `gpt2_tf2 serve` makes it (a growing cache, busy rows, the top-5
log-probabilities kept for the rows that ask) and rows as its usual requests are: top-k 40, no
log-probabilities asked (where the revision lets a row say so: `Request.scores`); measure
`server-steps`.

    python bench/step_speed.py [--slots 1,4] [--tokens 1,4] [--calls 64] [--server]
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", default="1,4")
    parser.add_argument("--tokens", default="1", help="tokens per step call, comma-separated")
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--server", action="store_true", help="the engine as the server's")
    args = parser.parse_args()

    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.generation.config import GenerationConfig
    from gpt2_tf2.generation.engine import Engine, Request
    from gpt2_tf2.generation.language_model import LanguageModel
    from gpt2_tf2.tokenizer import Encoder

    hp = PRESETS["124M"]
    lm = LanguageModel(hp, Encoder({"<|endoftext|>": 0}, []), GPT2(hp, seed=0))
    for slots in (int(s) for s in args.slots.split(",")):
        for n in (int(t) for t in args.tokens.split(",")):
            length = n * (args.calls + 1)
            if args.server:
                engine = Engine(lm, slots, logprobs=5, grow_cache=True, busy_rows=True)
                config = GenerationConfig(length=length, top_k=40, seed=0)
                unscored = (False,) if "scores" in Request._fields else ()
                row = ([1, 2, 3, 4, 5, 6, 7, 8], config, None, 0, *unscored)
            else:
                engine = Engine(lm, slots, cache_len=512)
                row = ([1, 2, 3, 4, 5, 6, 7, 8], GenerationConfig(length=length, temperature=0))
            if args.server:  # a pass first: a growing cache compiles each width it reaches
                for slot in engine.add_many([row] * slots):
                    while slot not in engine.finished():
                        engine.step(n)
                for slot in engine.busy():
                    engine.remove(slot)
            engine.add_many([row] * slots)
            engine.step(n)  # compiles
            start = time.perf_counter()
            for _ in range(args.calls):
                engine.step(n)
            seconds = time.perf_counter() - start
            out = {"batch": f"{slots} x {n}", "tok_s": slots * n * args.calls / seconds}
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
