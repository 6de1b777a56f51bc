"""Datasets: nshepperd's .npz format, end-of-text joins, the window sampler."""

import numpy as np
import pytest

from gpt2_tf2.errors import UserError
from gpt2_tf2.tokenizer import load_encoder
from gpt2_tf2.training.data import Sampler, load_dataset, load_npz, save_npz, split_validation


@pytest.fixture(scope="module")
def enc(tiny_model_dir):
    return load_encoder(tiny_model_dir)


def test_files_joined_by_one_endoftext_token(enc, tmp_path):
    (tmp_path / "a.txt").write_text("First file.", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("Second file.", encoding="utf-8")
    chunks = load_dataset(enc, str(tmp_path))
    assert len(chunks) == 1
    assert chunks[0].tolist() == enc.encode("First file.") + [50256] + enc.encode("Second file.")
    assert chunks[0].tolist().count(50256) == 1  # not the six tokens of its spelling


def test_spelled_endoftext_in_text_is_the_token(enc, tmp_path):
    (tmp_path / "a.txt").write_text("one<|endoftext|>two", encoding="utf-8")
    (chunk,) = load_dataset(enc, str(tmp_path / "a.txt"))
    assert chunk.tolist() == enc.encode("one") + [50256] + enc.encode("two")


def test_combine_splits_chunks(enc, tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.txt").write_text(f"text number {i} " * 10, encoding="utf-8")
    assert len(load_dataset(enc, str(tmp_path), combine=1)) == 4
    assert len(load_dataset(enc, str(tmp_path / "*.txt"), combine=10**6)) == 1


def test_npz_round_trip_and_nshepperd_format(enc, tmp_path):
    chunks = [np.arange(10, dtype=np.int32), np.arange(5, dtype=np.int32)]
    save_npz(chunks, str(tmp_path / "d.npz"))
    with np.load(tmp_path / "d.npz") as npz:  # what nshepperd's load_dataset reads
        assert npz.files == ["arr_0", "arr_1"]
        assert np.array_equal(npz["arr_1"], chunks[1])
    # A dataset written by nshepperd's encode.py (np.savez_compressed of token arrays) loads.
    np.savez_compressed(tmp_path / "old.npz", np.array([1, 2, 3]), np.array([4, 5], np.uint16))
    assert [c.tolist() for c in load_dataset(enc, str(tmp_path / "old.npz"))] == [[1, 2, 3], [4, 5]]
    assert not list(tmp_path.glob("*.tmp*"))


def test_bad_inputs(enc, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("ok then caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.txt: not valid utf-8 at byte 11"):
        load_dataset(enc, str(tmp_path / "latin1.txt"))
    (chunk,) = load_dataset(enc, str(tmp_path / "latin1.txt"), errors="replace")
    assert enc.decode(chunk).endswith("caf\ufffd")
    (chunk,) = load_dataset(enc, str(tmp_path / "latin1.txt"), encoding="latin-1")
    assert enc.decode(chunk) == "ok then café"
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="no text"):
        load_dataset(enc, str(tmp_path / "empty.txt"))
    with pytest.raises(UserError, match="no such file"):
        load_dataset(enc, str(tmp_path / "missing*.txt"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not an .npz archive"):
        load_npz(str(tmp_path / "bad.npz"))


def test_sampler_never_crosses_chunks_and_is_uniform():
    chunks = [np.full(n, i, np.int32) for i, n in enumerate([50, 7, 200, 12])]
    sampler = Sampler(chunks, length=10, seed=3)
    counts = np.zeros(4)
    for step in range(400):
        batch = sampler.batch(step, 8)
        assert batch.shape == (8, 10)
        for row in batch:
            assert len(set(row.tolist())) == 1  # one chunk per window
            counts[row[0]] += 1
    assert counts[1] == 0  # chunk shorter than a window is never used
    # start positions: 41, 0, 191, 3 -> probabilities proportional to them
    expected = np.array([41, 0, 191, 3]) / 235 * counts.sum()
    assert np.all(np.abs(counts - expected) < 0.15 * expected + 10)


def test_sampler_is_a_function_of_seed_and_step():
    chunks = [np.arange(1000, dtype=np.int32)]
    a, b = Sampler(chunks, 16, seed=1), Sampler(chunks, 16, seed=1)
    assert np.array_equal(a.batch(7, 4), b.batch(7, 4))
    assert not np.array_equal(a.batch(7, 4), a.batch(8, 4))
    assert not np.array_equal(a.batch(7, 4), Sampler(chunks, 16, seed=2).batch(7, 4))
    window = a.batch(3, 1)[0]
    assert np.array_equal(window, np.arange(window[0], window[0] + 16))  # contiguous


def test_dataset_shorter_than_a_window():
    with pytest.raises(UserError, match="fewer than one window of 65"):
        Sampler([np.arange(30, dtype=np.int32), np.arange(64, dtype=np.int32)], 65)


def test_validation_split():
    chunks = [np.arange(100, dtype=np.int32), np.arange(100, 300, dtype=np.int32)]
    train, val = split_validation(chunks, length=11, fraction=0.05)
    assert sum(map(len, train)) + sum(map(len, val)) == 300
    assert sum(map(len, val)) == 15
    assert np.concatenate(val).tolist() == list(range(285, 300))
    with pytest.raises(UserError, match="too small"):
        split_validation([np.arange(20, dtype=np.int32)], length=11)
