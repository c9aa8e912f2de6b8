"""Checkpoint files: round trip, atomic writing, the last two kept, and every kind of damage
(truncation, a flipped byte, a foreign file) detected by its checks and reported, the previous
checkpoint used instead."""
import os

import pytest
import torch

from targetprop.training import checkpoint as ck


def payload(i: int) -> dict:
    g = torch.Generator().manual_seed(i)
    return {"iteration": i, "weights": torch.randn(4, 3, generator=g, dtype=torch.float64),
            "rng": torch.get_rng_state(), "nested": {"best": [0.5, i], "last": None, "name": "x"}}


def same(a: dict, b: dict) -> bool:
    return (a["iteration"] == b["iteration"] and torch.equal(a["weights"], b["weights"])
            and torch.equal(a["rng"], b["rng"]) and a["nested"] == b["nested"])


def test_round_trip_is_exact(tmp_path):
    ck.save(tmp_path / "c.pt", payload(3))
    back = ck.load(tmp_path / "c.pt")
    assert same(back, payload(3)) and back["weights"].dtype == torch.float64
    assert (tmp_path / "c.pt").read_bytes()[:8] == ck.MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:len(b) // 2], "truncated"),
    (lambda b: b[:ck.HEADER - 5], "bad or truncated header"),
    (lambda b: b + b"\0", "truncated or padded"),
    (lambda b: b[:-10] + bytes([b[-10] ^ 1]) + b[-9:], "checksum mismatch"),
    (lambda b: b"PK\3\4" + b[4:], "not a targetprop checkpoint"),
    (lambda b: b"", "bad or truncated header"),
], ids=["truncated", "header-cut", "padded", "bit-flip", "foreign", "empty"])
def test_damage_is_detected(tmp_path, damage, match):
    path = tmp_path / "c.pt"
    ck.save(path, payload(1))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ck.CorruptCheckpoint, match=match):
        ck.load(path)


def test_keeps_the_last_two(tmp_path):
    for i in (10, 20, 30, 40):
        ck.save_in(tmp_path, i, payload(i))
    assert [i for i, _ in ck.listed(tmp_path)] == [30, 40]
    assert same(ck.latest(tmp_path).payload, payload(40))


def test_a_write_that_dies_leaves_the_previous_checkpoints(tmp_path, monkeypatch):
    ck.save_in(tmp_path, 10, payload(10))

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        ck.save_in(tmp_path, 20, payload(20))
    monkeypatch.undo()
    assert [i for i, _ in ck.listed(tmp_path)] == [10]  # the new one never appeared under its name
    assert list(tmp_path.glob(".*.tmp"))  # the half-done temporary file
    found = ck.latest(tmp_path)
    assert same(found.payload, payload(10)) and not found.problems
    ck.set_aside(tmp_path, found)
    assert not list(tmp_path.glob(".*.tmp"))  # cleaned up by the owner


def test_corrupt_newest_falls_back_to_the_previous_and_is_set_aside(tmp_path):
    ck.save_in(tmp_path, 10, payload(10))
    newest = ck.save_in(tmp_path, 20, payload(20))
    newest.write_bytes(newest.read_bytes()[:-100])  # e.g. a full disk
    found = ck.latest(tmp_path)
    assert same(found.payload, payload(10)) and found.path.name == "iteration-00000010.pt"
    assert found.corrupt == [newest] and len(found.problems) == 1
    assert "iteration-00000020.pt: truncated" in found.problems[0]
    assert newest.exists()  # looking touches nothing (every process of a run looks)
    ck.set_aside(tmp_path, found)
    assert not newest.exists() and (tmp_path / "iteration-00000020.pt.corrupt").exists()
    assert [i for i, _ in ck.listed(tmp_path)] == [10]  # the corrupt file no longer counts
    again = ck.latest(tmp_path)
    assert same(again.payload, payload(10)) and not again.problems


def test_all_corrupt_or_none(tmp_path):
    assert ck.latest(tmp_path / "missing").payload is None
    for i in (1, 2):
        path = ck.save_in(tmp_path, i, payload(i))
        path.write_bytes(b"garbage" * 20)
    found = ck.latest(tmp_path)
    assert found.payload is None and len(found.problems) == 2 and len(found.corrupt) == 2


def test_an_unpicklable_payload_with_a_valid_digest_is_corrupt(tmp_path):
    import hashlib

    data = b"not a torch file"
    (tmp_path / "c.pt").write_bytes(ck.MAGIC + len(data).to_bytes(8, "little") + hashlib.sha256(data).digest() + data)
    with pytest.raises(ck.CorruptCheckpoint, match="unreadable payload"):
        ck.load(tmp_path / "c.pt")


def test_clear_removes_only_checkpoint_files(tmp_path):
    ck.save_in(tmp_path / "c", 5, payload(5))
    (tmp_path / "c" / "iteration-00000001.pt.corrupt").write_bytes(b"x")
    (tmp_path / "c" / ".iteration-00000009.pt.tmp").write_bytes(b"x")
    ck.clear(tmp_path / "c")
    assert not (tmp_path / "c").exists()
    ck.save_in(tmp_path / "d", 5, payload(5))
    (tmp_path / "d" / "notes.txt").write_text("mine")
    ck.clear(tmp_path / "d")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["notes.txt"]


def test_names_sort_by_iteration(tmp_path):
    assert ck.file_name(1000) == "iteration-00001000.pt"
    for i in (9, 100000000, 10):  # more digits than the padding still sorts numerically
        ck.save_in(tmp_path, i, payload(1), keep=5)
    assert [i for i, _ in ck.listed(tmp_path)] == [9, 10, 100000000]
    assert os.path.basename(ck.latest(tmp_path).path) == "iteration-100000000.pt"
