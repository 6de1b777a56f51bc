"""The suite compiles XLA programs at its own optimisation level (conftest.SUITE_XLA_LEVEL: LLVM's
optimisations off, to compile faster); users get XLA's default level. This checks that the two
levels give the same results on every compiled path the suite tests: the decode loop (greedy and
sampled), the engine's steps and their log-probabilities, beam search and the train step."""

import json
import os
import re

import numpy as np
import pytest

from conftest import REPO, run_cli

USERS_LEVEL = "--xla_backend_optimization_level=3"  # XLA's default (debug_options_flags.cc)


def compiled_results(model_dir: str) -> dict:
    """What the compiled programs give on the tiny model: tokens, log-probabilities, losses."""
    import tensorflow as tf

    import gpt2_tf2
    from gpt2_tf2.core.hparams import HParams
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.generation.config import GenerationConfig
    from gpt2_tf2.generation.engine import Engine
    from gpt2_tf2.training.config import TrainConfig
    from gpt2_tf2.training.step import Trainer

    lm = gpt2_tf2.load(model_dir)
    prompt = lm.encode("The levels of a compiler")
    greedy = next(lm.generate_tokens(prompt, length=12, top_k=1, batch_size=2, nsamples=2))
    sampled = next(lm.generate_tokens(prompt, length=12, seed=3, top_k=0, batch_size=2))
    engine = Engine(lm, 2, logprobs=3)
    slot = engine.add(prompt, GenerationConfig(length=6, top_k=1))
    stepped = engine.step(6)[slot]
    beams = lm.beam_search(prompt, length=8, num_beams=3, num_return_sequences=2)
    hp = HParams(n_vocab=120, n_ctx=24, n_embd=16, n_head=2, n_layer=2)
    trainer = Trainer(GPT2(hp, seed=1), TrainConfig(learning_rate=1e-2))
    rng = np.random.default_rng(0)
    windows = tf.constant(rng.integers(0, hp.n_vocab, (1, 2, 13)), tf.int32)
    losses = [float(trainer.train_step(windows)["loss"]) for _ in range(3)]
    return {
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "greedy": [list(map(int, row)) for row in greedy],
        "sampled": [list(map(int, row)) for row in sampled],
        "stepped": stepped,
        "logprobs": [s.logprob for s in engine.scores(slot)],
        "top": [[t for t, _ in s.top] for s in engine.scores(slot)],
        "beams": beams,
        "losses": losses,
    }


@pytest.mark.e2e  # a process of its own: XLA reads its flags once per process
def test_the_users_level_gives_the_suites_results(tiny_model_dir):
    ours = compiled_results(tiny_model_dir)  # at the suite's level (conftest.suite_xla_flags)
    flags = re.sub(r"--xla_backend_optimization_level=\S*", USERS_LEVEL, ours["xla_flags"])
    code = (
        f"import json, sys; sys.path.insert(0, {os.path.join(REPO, 'tests')!r}); "
        "from test_compile_level import compiled_results; "
        f"print(json.dumps(compiled_results({tiny_model_dir!r})))"
    )
    # No on-disk XLA cache: its key does not hold the level, so the suite's programs would be
    # read back instead of compiled at the users' level.
    r = run_cli(["-c", code], env={"XLA_FLAGS": flags, "GPT2_TF2_XLA_CACHE": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    users = json.loads(r.stdout.strip().splitlines()[-1])
    assert users["xla_flags"].split().count(USERS_LEVEL) == 1, users["xla_flags"]
    for key in ("greedy", "sampled", "stepped", "top", "beams"):
        assert users[key] == ours[key], key
    for key in ("logprobs", "losses"):
        diff = float(np.max(np.abs(np.subtract(users[key], ours[key]))))
        assert diff < 1e-5, (key, diff)
