"""`export --format savedmodel`: a SavedModel whose 'generate' and 'score' signatures, run by
`tf.saved_model.load` in a fresh process that never imports gpt2_tf2, give what `generate` and
`score` give here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, built_once, run_in_process

pytestmark = pytest.mark.e2e  # fresh interpreters load the export (tests/README.md, "Tiers")

SERVE = r"""
import json, sys
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
calls = json.loads(sys.argv[2])
out = []
for call in calls:
    if "length" in call:
        r = m.signatures["generate"](
            tokens=tf.constant(call["tokens"], tf.int32),
            length=tf.constant(call["length"]),
            temperature=tf.constant(float(call["temperature"])),
            top_k=tf.constant(call["top_k"]),
            top_p=tf.constant(float(call["top_p"])),
            seed=tf.constant(call["seed"], tf.int64),
        )
        out.append(r["tokens"].numpy().tolist())
    else:
        r = m.signatures["score"](tokens=tf.constant(call["tokens"], tf.int32))
        out.append(r["nll"].numpy().tolist())
assert not any(k.startswith("gpt2_tf2") for k in sys.modules), "gpt2_tf2 was imported"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """The export, once for both workers; the command in-process (the fresh interpreter that
    loads what it wrote is the subject, `serve`)."""

    def build(directory):
        args = ["-m", "gpt2_tf2.export", "--format", "savedmodel", "--model_name", tiny_model_dir]
        r = run_in_process(args + ["--out", str(directory / "gpt2")])
        assert r.returncode == 0, r.stderr

    return str(built_once(tmp_path_factory, "savedmodel", build) / "gpt2")


def serve(path, calls, script=SERVE):
    """Run the calls in a fresh interpreter, from a directory outside the repository, without
    this checkout on the path; the JSON the script prints last."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    r = subprocess.run(
        [sys.executable, "-c", script, path, json.dumps(calls)],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(path),
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_generate_and_score_equal_the_package(exported, tiny_model_dir):
    import gpt2_tf2

    lm = gpt2_tf2.load(tiny_model_dir)
    prompt = lm.encoder.encode("Once upon a time there")
    other = lm.encoder.encode("The quick brown fox says")
    assert len(prompt) == len(other)
    greedy = dict(tokens=[prompt, other], length=20, temperature=0, top_k=0, top_p=1, seed=0)
    sampled = dict(tokens=[prompt, prompt], length=20, temperature=1, top_k=40, top_p=0.9, seed=7)
    text = lm.encoder.encode("Scored by the served model, token by token.")
    got_greedy, got_sampled, nll = serve(exported, [greedy, sampled, {"tokens": [text]}])

    for row, p in zip(got_greedy, (prompt, other)):
        assert row == next(lm.generate_tokens(p, length=20, temperature=0))[0]
    assert got_sampled == next(
        lm.generate_tokens(
            prompt, length=20, nsamples=2, batch_size=2, temperature=1, top_k=40, top_p=0.9, seed=7
        )
    )
    ours = lm._token_nll(np.array([text], np.int32)).numpy()
    assert float(np.max(np.abs(np.array(nll) - ours))) <= 1e-5


def test_the_end_of_text_token_ends_a_row(exported, tiny_model_dir):
    """After <|endoftext|>, a row repeats it (the package cuts there)."""
    import gpt2_tf2

    lm = gpt2_tf2.load(tiny_model_dir)
    prompt = lm.encoder.encode("Hello")
    call = dict(tokens=[prompt], length=40, temperature=1.5, top_k=0, top_p=1, seed=3)
    (row,) = serve(exported, [call])[0]
    ours = next(
        lm.generate_tokens(prompt, length=40, temperature=1.5, seed=3, stop_at_endoftext=True)
    )
    eot = lm.encoder.eot_token
    cut = row[: row.index(eot)] if eot in row else row
    assert cut == ours[0]
    if eot in row:
        assert set(row[row.index(eot) :]) == {eot}


def test_export_savedmodel_errors_are_one_line(tiny_model_dir, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    base = ["-m", "gpt2_tf2.export", "--format", "savedmodel"]
    cases = [
        (base + ["--model_name", tiny_model_dir, "--out", str(tmp_path / "full")], "not empty"),
        (base + ["--out", str(tmp_path / "x")], "one of --run_name, --model_name"),
        (["-m", "gpt2_tf2.export", "--format", "onnx", "--out", "x"], "--format must be"),
    ]
    for args, message in cases:  # the command's checks: in-process
        r = run_in_process(args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert os.listdir(tmp_path / "full") == ["mine.txt"]


REST = r"""
import json, sys
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
out = []
for body in json.loads(sys.argv[2]):
    # As TensorFlow Serving's REST API does with the columnar "inputs" format: each value
    # becomes a tensor of the signature's dtype for that name.
    fn = m.signatures[body["signature_name"]]
    specs = fn.structured_input_signature[1]
    assert set(body["inputs"]) == set(specs), (sorted(body["inputs"]), sorted(specs))
    args = {k: tf.constant(v, specs[k].dtype) for k, v in body["inputs"].items()}
    for k, v in args.items():
        assert specs[k].shape.is_compatible_with(v.shape), (k, v.shape, specs[k].shape)
    out.append({k: v.numpy().tolist() for k, v in fn(**args).items()})
print(json.dumps(out))
"""


def readme_rest_bodies():
    """The request bodies of the serving guide's `curl ... :predict -d '...'` lines."""
    serving = open(os.path.join(REPO, "docs", "tf-serving.md"), encoding="utf-8").read()
    return [json.loads(part.split("'", 1)[0]) for part in serving.split(":predict -d '")[1:]]


def test_the_readme_rest_calls_fit_the_signatures(exported):
    """The guide's TensorFlow Serving requests, converted as Serving converts JSON inputs,
    run; and the graph holds only TensorFlow's core kernels (no XLA or custom op), which
    the tensorflow/serving image has."""
    bodies = readme_rest_bodies()
    assert [b["signature_name"] for b in bodies] == ["generate", "score"]
    generated, scored = serve(exported, bodies, REST)
    assert np.array(generated["tokens"]).shape == (1, bodies[0]["inputs"]["length"])
    assert np.array(scored["nll"]).shape == (1, len(bodies[1]["inputs"]["tokens"][0]) - 1)
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    with open(os.path.join(exported, "saved_model.pb"), "rb") as f:
        model.ParseFromString(f.read())
    graph = model.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert {"MatMul", "StatelessWhile"} & ops and not [op for op in ops if op.startswith("Xla")]
