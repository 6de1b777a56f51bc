"""The train step in-process: accumulation, recompute, optimizers, schedule, exact resume."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf2.core.hparams import HParams
from gpt2_tf2.core.model import GPT2, Dropout
from gpt2_tf2.training import runs
from gpt2_tf2.training.config import TrainConfig
from gpt2_tf2.training.optimizers import Adam
from gpt2_tf2.training.step import Trainer, learning_rate

HP = HParams(n_vocab=120, n_ctx=24, n_embd=16, n_head=2, n_layer=2)


def windows(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, HP.n_vocab, shape), tf.int32)


def gradients(cfg, w):
    trainer = Trainer(GPT2(HP, seed=1), cfg)
    loss, grads = tf.function(trainer.gradients)(w)
    return float(loss), [g.numpy() for g in grads]


def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_accumulation_averages():
    """k micro-batches of b give the gradient of one batch of k*b (nshepperd's fork summed them)."""
    w = windows((8, 13))
    loss1, g1 = gradients(TrainConfig(), tf.reshape(w, [1, 8, 13]))
    loss4, g4 = gradients(TrainConfig(accumulate_gradients=4), tf.reshape(w, [4, 2, 13]))
    assert abs(loss1 - loss4) < 1e-6
    assert max_diff(g1, g4) < 1e-6
    assert max(float(np.max(np.abs(g))) for g in g1) > 1e-4  # the comparison is not vacuous


def test_recompute_gives_same_gradients():
    w = tf.reshape(windows((4, 13)), [1, 4, 13])
    _, plain = gradients(TrainConfig(), w)
    _, recomputed = gradients(TrainConfig(memory_saving_gradients=True), w)
    assert max_diff(plain, recomputed) < 1e-6


def test_adam_matches_tf1_adam_optimizer():
    """Our Adam against TF1's tf.compat.v1.train.AdamOptimizer, which nshepperd's fork used."""
    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4)).astype(np.float32)
    ours, ref = tf.Variable(start), tf.Variable(start)
    opt = Adam([ours])
    tf1 = tf.compat.v1.train.AdamOptimizer(learning_rate=0.01)
    for _ in range(5):
        g = tf.constant(rng.normal(size=(3, 4)).astype(np.float32))
        opt.apply([g], tf.constant(0.01))
        tf1.apply_gradients([(g, ref)])
    assert float(np.max(np.abs(ours.numpy() - ref.numpy()))) < 1e-6
    assert float(np.max(np.abs(ours.numpy() - start))) > 1e-2


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "adafactor"])
def test_each_optimizer_lowers_the_loss(name):
    trainer = Trainer(
        GPT2(HP, seed=2), TrainConfig(optimizer=name, learning_rate=0.5 if name == "sgd" else 1e-2)
    )
    w = tf.reshape(windows((4, 13), seed=5), [1, 4, 13])
    first = float(trainer.train_step(w)["loss"])
    for _ in range(15):
        last = float(trainer.train_step(w)["loss"])
    assert last < first - 0.5, (first, last)


def test_only_train_transformer_layers():
    model = GPT2(HP, seed=3)
    trainer = Trainer(model, TrainConfig(only_train_transformer_layers=True, learning_rate=1e-2))
    wte, blocks = model.wte.numpy(), model.h[0].attn.c_attn.w.numpy()
    trainer.train_step(tf.reshape(windows((2, 13)), [1, 2, 13]))
    assert np.array_equal(model.wte.numpy(), wte)
    assert not np.array_equal(model.h[0].attn.c_attn.w.numpy(), blocks)


def test_learning_rate_schedule():
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=4, lr_schedule="cosine", steps=12)
    lrs = [float(learning_rate(s, cfg)) for s in range(13)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[8] == pytest.approx(0.5)  # halfway through the cosine part
    assert lrs[12] == pytest.approx(0.0, abs=1e-7)
    assert float(learning_rate(100, TrainConfig(learning_rate=2e-5))) == pytest.approx(2e-5)


def train(trainer, start, stop, accumulate=2):
    losses = []
    for step in range(start, stop):
        w = tf.reshape(windows((accumulate * 2, 13), seed=step), [accumulate, 2, 13])
        losses.append(float(trainer.train_step(w)["loss"]))
    return losses


@pytest.mark.e2e
@pytest.mark.parametrize("optimizer", ["adam", "adafactor"])
def test_exact_resume_in_process(tmp_path, optimizer):
    """Straight to N, saving at N/2 as a run does, vs. a new process-like restore of that save
    trained on to N: the same weights and losses."""
    cfg = TrainConfig(optimizer=optimizer, learning_rate=1e-2, noise=0.1, seed=4)
    straight = Trainer(GPT2(HP, seed=1), cfg)
    losses = train(straight, 0, 5)
    _, manager = runs.make_manager(straight, str(tmp_path))
    manager.save(checkpoint_number=5)
    losses += train(straight, 5, 10)

    second = Trainer(GPT2(HP, seed=None), cfg)  # zeros: everything must come from the checkpoint
    ckpt, _ = runs.make_manager(second, str(tmp_path))
    runs.restore(ckpt, manager.latest_checkpoint)
    assert int(second.step) == 5 and int(second.optimizer.iterations) == 5
    assert train(second, 5, 10) == pytest.approx(losses[5:], abs=1e-6)
    assert (
        max_diff(
            [v.numpy() for v in straight.model.variables],
            [v.numpy() for v in second.model.variables],
        )
        <= 1e-6
    )

    # The test can fail: resuming without the optimizer state does not continue the same run.
    # `second` again, its optimizer as a new trainer's (every slot and count zero), only the
    # model restored: its traced step is reused (a third trainer would trace its own).
    lost = second
    for v in lost.optimizer.variables:
        v.assign(tf.zeros_like(v))
    runs.restore(tf.train.Checkpoint(model=lost.model), manager.latest_checkpoint, strict=False)
    lost.step.assign(5)
    train(lost, 5, 10)
    assert (
        max_diff(
            [v.numpy() for v in straight.model.variables], [v.numpy() for v in lost.model.variables]
        )
        > 1e-4
    )


@functools.cache
def float32_losses(steps: int = 3) -> tuple[float, ...]:
    """The losses of float32 steps on MIXED_WINDOWS, the reference of both precisions below
    (a trainer's step is traced and compiled once per trainer: ~5 s here)."""
    reference = Trainer(GPT2(HP, seed=1), TrainConfig(learning_rate=1e-2))
    w = tf.reshape(windows((4, 13), seed=9), [1, 4, 13])
    return tuple(float(reference.train_step(w)["loss"]) for _ in range(steps))


@pytest.mark.parametrize(  # fp16 (its loss scaling too) in the default tier, bf16 `large`
    "precision,tolerance", [pytest.param("bf16", 0.05, marks=pytest.mark.large), ("fp16", 0.01)]
)
def test_mixed_precision_step_close_to_float32(precision, tolerance):
    from gpt2_tf2.training.step import COMPUTE_DTYPES

    w = tf.reshape(windows((4, 13), seed=9), [1, 4, 13])
    mixed = Trainer(
        GPT2(HP, seed=1, compute_dtype=COMPUTE_DTYPES[precision]),
        TrainConfig(learning_rate=1e-2, mixed_precision=precision),
    )
    for ref in float32_losses():
        out = mixed.train_step(w)
        assert abs(float(out["loss"]) - ref) < tolerance * ref
        assert bool(out["applied"])
    assert all(v.dtype == tf.float32 for v in mixed.model.variables)  # float32 master weights


def test_fp16_loss_scale_skips_overflow_and_halves():
    from gpt2_tf2.training.step import INITIAL_LOSS_SCALE

    model = GPT2(HP, seed=1, compute_dtype=tf.float16)
    trainer = Trainer(model, TrainConfig(learning_rate=1e-2, mixed_precision="fp16"))
    assert float(trainer.loss_scale) == INITIAL_LOSS_SCALE
    trainer.loss_scale.assign(2.0**100)  # scaled loss overflows float32's gradients: inf
    before = [v.numpy() for v in model.variables]
    out = trainer.train_step(tf.reshape(windows((2, 13)), [1, 2, 13]))
    assert not bool(out["applied"]) and float(trainer.loss_scale) == 2.0**99
    assert max_diff(before, [v.numpy() for v in model.variables]) == 0
    assert int(trainer.step) == 1 and int(trainer.optimizer.iterations) == 0


def test_dropout_zeroes_and_scales_by_hand():
    """Srivastava et al. 2014, inverted: each entry is 0 with probability p, else x / (1 - p)."""
    x = tf.fill([8, 1000], 3.0)
    drop = Dropout(0.25, tf.constant([5, 6], tf.int64))
    y = drop(x, 0).numpy()
    assert set(np.unique(y)) == {0.0, np.float32(3.0 / 0.75)}
    assert abs(np.mean(y == 0) - 0.25) < 0.02
    assert np.array_equal(drop(x, 0).numpy(), y)  # stateless: the same seed and site, the same mask
    assert not np.array_equal(drop(x, 1).numpy(), y)  # each site its own mask
    assert not np.array_equal(drop.layer(0)(x, 0).numpy(), y)  # and each block


@pytest.mark.e2e
def test_dropout_trains_reproducibly_and_leaves_evaluation_alone():
    """--dropout: the same seed gives the same losses (masks keyed by seed and step); a block
    recomputed in the backward pass draws the masks it drew forward (same gradients); the
    validation loss and the model's own calls draw none."""
    w = tf.reshape(windows((4, 13)), [1, 4, 13])
    plain_loss, plain = gradients(TrainConfig(seed=3), w)
    loss, dropped = gradients(TrainConfig(seed=3, dropout=0.3), w)
    assert max_diff(plain, dropped) > 1e-4 and abs(loss - plain_loss) > 1e-4
    again_loss, again = gradients(TrainConfig(seed=3, dropout=0.3), w)
    assert again_loss == loss and max_diff(dropped, again) == 0
    _, other = gradients(TrainConfig(seed=4, dropout=0.3), w)
    assert max_diff(dropped, other) > 1e-4
    _, recomputed = gradients(TrainConfig(seed=3, dropout=0.3, memory_saving_gradients=True), w)
    assert max_diff(dropped, recomputed) < 1e-6

    trainer = Trainer(GPT2(HP, seed=1), TrainConfig(seed=3, dropout=0.3, learning_rate=1e-2))
    reference = Trainer(GPT2(HP, seed=1), TrainConfig())
    before = float(trainer.eval_loss(w[0]))
    assert before == float(reference.eval_loss(w[0])) == float(trainer.eval_loss(w[0]))
    for _ in range(15):
        trainer.train_step(w)
    assert float(trainer.eval_loss(w[0])) < before - 0.5  # it still learns
