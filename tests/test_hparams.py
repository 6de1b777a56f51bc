import json

import pytest

from gpt2_tf2.core.hparams import PRESETS, HParams, canonical_name, load_hparams, save_hparams
from gpt2_tf2.errors import UserError


@pytest.mark.parametrize(
    "name,count",
    [
        ("124M", 124_439_808),
        ("355M", 354_823_168),
        ("774M", 774_030_080),
        ("1558M", 1_557_611_200),
    ],
)
def test_release_parameter_counts(name, count):
    assert PRESETS[name].num_params() == count


def test_parameter_count_matches_model_variables():
    from gpt2_tf2.core.model import GPT2

    hp = HParams(n_vocab=300, n_ctx=16, n_embd=24, n_head=3, n_layer=2)
    model = GPT2(hp, seed=None)
    assert sum(int(v.shape.num_elements()) for v in model.variables) == hp.num_params()


def test_aliases():
    assert canonical_name("117M") == "124M"
    assert canonical_name("345M") == "355M"
    assert canonical_name("1558M") == "1558M"
    assert canonical_name("6B") is None


def test_openai_file_round_trip(tmp_path):
    path = tmp_path / "hparams.json"
    save_hparams(PRESETS["355M"], str(path))
    # Exactly OpenAI's five keys, in their order; extensions at their defaults are not written.
    assert list(json.loads(path.read_text())) == ["n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"]
    assert load_hparams(str(tmp_path)) == PRESETS["355M"]


def test_extension_fields_written_only_when_changed(tmp_path):
    hp = HParams(n_ctx=2048, layer_norm_epsilon=1e-6)
    save_hparams(hp, str(tmp_path / "hparams.json"))
    data = json.loads((tmp_path / "hparams.json").read_text())
    assert data["layer_norm_epsilon"] == 1e-6
    assert load_hparams(str(tmp_path)) == hp


@pytest.mark.parametrize(
    "data,message",
    [
        (
            {"n_vocab": 10, "n_ctx": 8, "n_embd": 8, "n_head": 2, "n_layer": 1, "n_foo": 1},
            "unknown key",
        ),
        ({"n_vocab": 10, "n_ctx": 8, "n_embd": 10, "n_head": 4, "n_layer": 1}, "divisible"),
        ({"n_vocab": 10, "n_ctx": 8, "n_embd": 8, "n_head": 2}, "missing key"),
        ({"n_vocab": 10, "n_ctx": -8, "n_embd": 8, "n_head": 2, "n_layer": 1}, "positive"),
        ({"n_vocab": 10, "n_ctx": 8.5, "n_embd": 8, "n_head": 2, "n_layer": 1}, "positive"),
    ],
)
def test_bad_hparams(tmp_path, data, message):
    (tmp_path / "hparams.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        load_hparams(str(tmp_path))


def test_hparams_is_frozen():
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        PRESETS["124M"].n_layer = 3
