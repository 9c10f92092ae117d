"""Copy-on-write database and data loading."""

import pytest

from hero_gym.envs.tau_bench.data import TauDB, fast_copy, load_official, resolve_data_dir


def _db():
    base = {"t": {"a": {"x": [1, 2], "y": {"z": 1}}, "b": {"x": [3]}}}
    return base, TauDB(base)


def test_mut_copies_one_record_and_leaves_the_base_alone():
    base, db = _db()
    rec = db.t.mut("a")
    rec["x"].append(99)
    rec["y"]["z"] = 2
    assert base["t"]["a"] == {"x": [1, 2], "y": {"z": 1}}
    assert db.t["a"] == {"x": [1, 2, 99], "y": {"z": 2}}
    assert db.t.mut("a") is rec                # copied once
    assert db.t.get("b") is base["t"]["b"]     # untouched records are shared, not copied
    assert set(db.touched()) == {("t", "a")}
    db.reset()
    assert db.t["a"] == {"x": [1, 2], "y": {"z": 1}} and db.touched() == {}


def test_put_delete_and_iteration_order():
    base, db = _db()
    db.t.put("c", {"x": []})
    db.t.mut("a")
    db.t.delete("b")
    assert list(db.t.keys()) == ["a", "c"]
    assert "b" not in db.t and "c" in db.t and len(db.t) == 2
    assert db.t.get("b") is None
    with pytest.raises(KeyError):
        db.t["b"]
    with pytest.raises(KeyError):
        db.t.mut("nope")
    assert db.changed() == {"t": {"b": None, "c": {"x": []}}}   # "a" was copied but is unchanged
    assert db.t.get(["unhashable"]) is None                    # bad keys from agents never crash


def test_fast_copy_is_deep():
    x = {"a": [{"b": 1}]}
    y = fast_copy(x)
    y["a"][0]["b"] = 2
    assert x == {"a": [{"b": 1}]}


def test_missing_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("HERO_GYM_TAUBENCH_DIR", raising=False)
    assert resolve_data_dir(None) is None
    with pytest.raises(FileNotFoundError, match="HERO_GYM_TAUBENCH_DIR"):
        load_official("retail", tmp_path / "nowhere")
    with pytest.raises(ValueError):
        load_official("bank", tmp_path)


def test_official_data_is_loaded_once_and_shared(data_dir):
    a = load_official("retail", data_dir)
    b = load_official("retail", data_dir)
    assert a is b
    assert {k: len(v) for k, v in a.tasks.items()} == {"train": 500, "test": 115, "dev": 20}
    assert len(a.tables["products"]) == 50 and len(a.tables["users"]) == 500
    air = load_official("airline", data_dir)
    assert len(air.tasks["test"]) == 50 and "Airline Agent Policy" in air.policy
