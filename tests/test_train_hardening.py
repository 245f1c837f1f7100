"""Issue #9, training slice: options checked up front, class-starved data refused, shards and weights verified,
one training per run directory, and no state left by a crash that breaks the next run.

Each test feeds a family of hostile inputs and checks both the error (type + key words) and that nothing
already in the warehouse changed."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file, save_file

from ingest_helpers import snapshot
from pipeline.core.config import Warehouse
from pipeline.core.errors import EXIT_TEMPORARY, InputError, IntegrityError, NotFoundError, TemporaryFailure
from pipeline.model.network import ModelConfig
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import prepare
from pipeline.prepare.manifest import manifest_digest
from pipeline.train.presets import resolve_preset
from pipeline.core.storage import read_json, sha256_file, write_json_atomic
from pipeline.train.config import BEST, CHECKPOINT, RESULT, TrainConfig
from pipeline.model.device import pick_device
from pipeline.train.job import run_dir_for, train_dataset
from pipeline.train.loop import train
from pipeline.train.rundir import discard_run_dir, mark_registered, run_lock
from pipeline.model.weights import load_model
from synthetic import make_reviews, write_lake_dataset
from train_helpers import TINY_OVERRIDES, tiny_model

TESTS = Path(__file__).parent
REPO = TESTS.parent
REVIEWFLOW = str(Path(sys.executable).with_name("reviewflow"))
FAST = dict(TINY_OVERRIDES, threads=1)          # a few seconds of training per run


@pytest.fixture(scope="module")
def trained(tiny_prep_dir, tmp_path_factory):
    """A finished tiny training run: (weights path, model config)."""
    res = train(tiny_prep_dir, TrainConfig(epochs=1, batch_size=32, threads=1), tmp_path_factory.mktemp("run") / "r",
                progress=False, model=tiny_model(ngram_buckets=31))
    return res.weights, res.model_config


# ------------------------------------------------------------------------------ 7: options and devices
BAD_OPTIONS = [
    ({"epochs": 0}, "epochs"), ({"epochs": "abc"}, "epochs"), ({"epochs": 1.5}, "epochs"), ({"epochs": True}, "epochs"),
    ({"lr": -1}, "lr"), ({"lr": 0}, "lr"), ({"lr": float("nan")}, "lr"), ({"lr": "fast"}, "lr"),
    ({"batch_size": 0}, "batch_size"), ({"dropout": 1.5}, "dropout"), ({"dropout": 1}, "dropout"),
    ({"embed_dropout": -0.1}, "embed_dropout"), ({"max_minutes": -1}, "max_minutes"),
    ({"max_minutes": 0}, "max_minutes"), ({"max_minutes": "soon"}, "max_minutes"),
    ({"weight_decay": -0.1}, "weight_decay"), ({"patience": 0}, "patience"), ({"grad_clip": 0}, "grad_clip"),
    ({"ngram_lr": 0}, "ngram_lr"), ({"threads": 0}, "threads"), ({"seed": -1}, "seed"),
    ({"hidden": 0}, "hidden"), ({"embed_dim": -3}, "embed_dim"), ({"layers": 0}, "layers"), ({"heads": 0}, "heads"),
    ({"max_len": 0}, "max_len"), ({"max_len": "long"}, "max_len"), ({"ngram_buckets": -1}, "ngram_buckets"),
    ({"ngram_weight": 2}, "ngram_weight"), ({"encoder": "cnn"}, "encoder"), ({"pooling": "sum"}, "pooling"),
    ({"lr_schedule": "step"}, "lr_schedule"), ({"select": "f1"}, "select"), ({"bidirectional": "yes"}, "bidirectional"),
    ({"truncate": "middle"}, "truncate"), ({"pad_side": "top"}, "pad_side"), ({"val_fraction": 1}, "val_fraction"),
    ({"min_freq": 0}, "min_freq"), ({"max_vocab": 2}, "max_vocab"), ({"min_class_rows": 0}, "min_class_rows"),
    ({"joint_loss": 0, "part_loss": 0}, "joint_loss"),
    ({"encoder": "transformer", "embed_dim": 10, "heads": 4}, "heads"),
]


@pytest.mark.parametrize("overrides,option", BAD_OPTIONS, ids=[f"{o}={list(d.values())[-1]!r}" for d, o in BAD_OPTIONS])
def test_every_bad_option_is_an_input_error_naming_it(overrides, option):
    with pytest.raises(InputError) as err:
        resolve_preset("default", overrides)
    message = str(err.value)
    assert f"invalid {option} (--{option.replace('_', '-')}" in message and "must be" in message, message


def test_good_options_pass_and_ints_become_floats():
    spec = resolve_preset("default", {"lr": 1, "dropout": 0, "patience": None, "max_minutes": 1, "grad_clip": None})
    assert spec.train.lr == 1.0 and isinstance(spec.train.lr, float) and isinstance(spec.model.dropout, float)
    assert spec.train.patience is None and spec.train.max_seconds == 60 and spec.train.grad_clip is None
    with pytest.raises(InputError, match="unknown training option 'colour'"):
        resolve_preset("default", {"colour": "red"})
    with pytest.raises(InputError, match="unknown preset"):
        resolve_preset("fastest")


BAD_DEVICES = ["gpu", "tpu", "cuda:99", "cuda:x", "", "mps:3", "xla"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_a_device_that_does_not_exist_is_an_input_error_listing_those_that_do(device):
    with pytest.raises(InputError) as err:
        pick_device(device)
    assert "does not exist on this machine" in str(err.value) and "cpu" in str(err.value)
    assert pick_device("cpu").type == "cpu" and pick_device("auto").type in ("cpu", "cuda", "mps")


@pytest.mark.subprocess
@pytest.mark.parametrize("flags", [["--epochs", "0"], ["--lr", "0"], ["--batch-size", "0"], ["--dropout", "1.5"],
                                   ["--set", "epochs=abc"], ["--device", "cuda:99"], ["--max-minutes", "-1"]])
def test_cli_refuses_bad_options_before_any_data_pass(tmp_path, flags):
    wh = Warehouse(tmp_path / "wh").ensure()
    write_lake_dataset(wh, "syn", make_reviews(240, seed=0, max_words=30))
    before = snapshot(wh)
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"))
    run = subprocess.run([REVIEWFLOW, "train", "--dataset", "syn", "--warehouse", str(wh.root), "--no-prefect",
                          *flags], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr, run.stderr
    assert "invalid" in run.stderr or "does not exist" in run.stderr, run.stderr
    assert snapshot(wh) == before and not list(wh.shards.iterdir())      # not even prepared


# --------------------------------------------------------------------------- 2a: class-starved data
STARVED = {
    "one class": ([1] * 300, {}),
    "ten per class": ([0, 1] * 10, {}),
    "unbalanced": ([1] * 200 + [0] * 30, {}),
    "val without a class": ([1] * 200 + [0] * 60, {"val_fraction": 0.005, "min_class_rows": 10}),
}


@pytest.mark.parametrize("case", sorted(STARVED))
def test_prepare_and_train_refuse_class_starved_data_before_writing_anything(warehouse, case):
    labels, params = STARVED[case]
    table = make_reviews(len(labels), seed=4)
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int8()))
    write_lake_dataset(warehouse, "small", table)
    before = snapshot(warehouse)
    with pytest.raises(InputError) as err:
        prepare(warehouse, "small", PrepareConfig(**({"min_freq": 1} | params)))
    message = str(err.value)
    assert "'small'" in message and "class 0" in message and "class 1" in message, message
    assert ("min_class_rows" in message) or ("validation split" in message), message
    with pytest.raises(InputError):
        train_dataset(warehouse, "small", "default", dict(FAST, **params), device="cpu", progress=False)
    assert snapshot(warehouse) == before and not list(warehouse.shards.iterdir())
    assert not list(warehouse.models.iterdir())


def test_train_refuses_a_prep_whose_validation_split_is_empty(warehouse, tmp_path):
    write_lake_dataset(warehouse, "noval", make_reviews(200, seed=1))
    prep = prepare(warehouse, "noval", PrepareConfig(max_len=16, min_freq=1, val_fraction=0.0))
    with pytest.raises(InputError, match="val split .* needs rows of both classes"):
        train(prep.prep_dir, TrainConfig(epochs=1), tmp_path / "run", progress=False, model=tiny_model())
    assert not (tmp_path / "run" / RESULT).exists()


# ------------------------------------------------------------------------------ 3a: shard integrity
def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _restamp(prep: Path, stem_suffix: str | None = None) -> None:
    """Re-record a shard file's hash (as a careless fix-up would) and the manifest's own digest."""
    man = read_json(prep / "manifest.json")
    if stem_suffix is not None:
        stem, suffix = stem_suffix.split(".", 1)
        for shard in man["splits"]["train"]["shards"]:
            if shard["stem"] == stem:
                shard["files"][suffix]["sha256"] = sha256_file(prep / stem_suffix)
    man["manifest_sha256"] = manifest_digest(man)
    write_json_atomic(prep / "manifest.json", man)


def _set_train_array(prep: Path, name: str, change) -> None:
    path = prep / f"train/shard-00000.{name}"
    array = np.load(path)
    change(array)
    np.save(path, array)
    _restamp(prep, f"train/shard-00000.{name}")


def _edit_manifest(prep: Path, change, restamp: bool = False) -> None:
    man = read_json(prep / "manifest.json")
    change(man)
    write_json_atomic(prep / "manifest.json", man)
    if restamp:
        _restamp(prep)


IDS, LENGTHS, LABELS, RIDS = (f"train/shard-00000.{s}" for s in ("ids.npy", "lengths.npy", "labels.npy",
                                                                 "review_ids.parquet"))
TAMPERS = {
    "flipped byte in ids": (lambda p: _flip_last_byte(p / IDS), "checksum mismatch"),
    "flipped byte in lengths": (lambda p: _flip_last_byte(p / LENGTHS), "checksum mismatch"),
    "flipped byte in labels": (lambda p: _flip_last_byte(p / LABELS), "checksum mismatch"),
    "flipped byte in review ids": (lambda p: _flip_middle_byte(p / RIDS), "checksum mismatch"),
    "flipped byte in val ids": (lambda p: _flip_last_byte(p / "val/shard-00000.ids.npy"), "checksum mismatch"),
    "truncated ids": (lambda p: (p / IDS).write_bytes((p / IDS).read_bytes()[:200]), "checksum mismatch"),
    "missing labels": (lambda p: (p / LABELS).unlink(), "missing"),
    "ids out of range, re-stamped": (lambda p: _set_train_array(p, "ids.npy", lambda a: a.__setitem__((0, 0), 10**6)),
                                     "token ids outside"),
    "negative id, re-stamped": (lambda p: _set_train_array(p, "ids.npy", lambda a: a.__setitem__((1, 0), -5)),
                                "token ids outside"),
    "length past max_len, re-stamped": (lambda p: _set_train_array(p, "lengths.npy", lambda a: a.__setitem__(0, 999)),
                                        "lengths outside"),
    "label 7, re-stamped": (lambda p: _set_train_array(p, "labels.npy", lambda a: a.__setitem__(0, 7)),
                            "labels outside"),
    "manifest counts edited": (lambda p: _edit_manifest(p, lambda m: m["counts"].update(train=5)), "was edited"),
    "manifest max_len edited": (lambda p: _edit_manifest(p, lambda m: m["params"].update(max_len=64)), "was edited"),
    "manifest vocab_sha256 edited": (lambda p: _edit_manifest(p, lambda m: m.update(vocab_sha256="0" * 64)),
                                     "was edited"),
    "manifest counts edited, re-stamped": (lambda p: _edit_manifest(p, lambda m: m["counts"].update(train=5), True),
                                           "claims 5 rows"),
    "manifest max_len edited, re-stamped": (lambda p: _edit_manifest(p, lambda m: m["params"].update(max_len=64), True),
                                            "the manifest says int"),
    "manifest vocab_size edited, re-stamped": (lambda p: _edit_manifest(p, lambda m: m.update(vocab_size=5), True),
                                               "vocab"),
    "vocab.txt edited": (lambda p: (p / "vocab.txt").write_text((p / "vocab.txt").read_text() + "extra\n"),
                         "vocab.txt does not match"),
    "manifest not JSON": (lambda p: (p / "manifest.json").write_text("{ not json"), "unreadable"),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_training_refuses_a_damaged_prep_naming_the_file(tiny_prep_dir, tmp_path, case):
    tamper, words = TAMPERS[case]
    prep = tmp_path / tiny_prep_dir.name
    shutil.copytree(tiny_prep_dir, prep)
    tamper(prep)
    before = {p: p.read_bytes() for p in sorted(prep.rglob("*")) if p.is_file()}
    with pytest.raises(IntegrityError) as err:
        train(prep, TrainConfig(epochs=1, threads=1), tmp_path / "run", progress=False, model=tiny_model())
    assert words in str(err.value), str(err.value)
    assert str(prep) in str(err.value)                    # names the file (or the prep's manifest)
    assert not (tmp_path / "run" / RESULT).exists() and not (tmp_path / "run" / BEST).exists()
    assert {p: p.read_bytes() for p in sorted(prep.rglob("*")) if p.is_file()} == before


# ------------------------------------------------------------------------------- 7: weights files
def _renamed(weights: Path, out: Path) -> None:
    state = load_file(str(weights))
    key = next(iter(state))
    state["renamed." + key] = state.pop(key)
    save_file(state, str(out))


def _nan(weights: Path, out: Path) -> None:
    state = load_file(str(weights))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(out))


NOT_SAFETENSORS = "not a safetensors weights file"
WEIGHT_CASES = {
    "pickle": (lambda w, o: o.write_bytes(pickle.dumps({"a": 1})), NOT_SAFETENSORS),
    "zip (torch.save)": (lambda w, o: torch.save(load_file(str(w)), o), NOT_SAFETENSORS),
    "empty": (lambda w, o: o.write_bytes(b""), NOT_SAFETENSORS),
    "random bytes": (lambda w, o: o.write_bytes(np.random.default_rng(0).bytes(4096)), NOT_SAFETENSORS),
    "truncated": (lambda w, o: o.write_bytes(w.read_bytes()[: w.stat().st_size // 2]), NOT_SAFETENSORS),
    "renamed tensor": (_renamed, "unexpected renamed."),
    "NaN tensor": (_nan, "NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(WEIGHT_CASES))
def test_load_model_refuses_bad_weight_files_in_one_line(trained, tmp_path, case):
    weights, mcfg = trained
    make, words = WEIGHT_CASES[case]
    bad = tmp_path / "model.safetensors"
    make(weights, bad)
    with pytest.raises(IntegrityError) as err:
        load_model(bad, mcfg)
    message = str(err.value)
    assert words in message and str(bad) in message and "\n" not in message, message
    assert "weights_only" not in message


def test_load_model_refuses_a_config_that_disagrees_hash_mismatch_and_missing_file(trained, tmp_path):
    weights, mcfg = trained
    bigger = ModelConfig.from_dict(mcfg.to_dict() | {"hidden": mcfg.hidden * 2})
    with pytest.raises(IntegrityError, match=r"do not fit their model config: .*: file \[\d+, \d+\] vs config") as err:
        load_model(weights, bigger)
    assert "\n" not in str(err.value)
    with pytest.raises(IntegrityError, match="do not match the registered SHA-256.*re-register or retrain"):
        load_model(weights, mcfg, sha256="0" * 64)
    with pytest.raises(NotFoundError, match="does not exist"):
        load_model(tmp_path / "nothing.safetensors", mcfg)
    net = load_model(weights, mcfg, sha256=sha256_file(weights))
    assert not net.training


# ------------------------------------------------------------------ 4: one run per dir, crash leftovers
WORKER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from pipeline.core.config import Warehouse
from pipeline.core.errors import ReviewflowError
from pipeline.train.job import train_dataset
go = Path({go!r})
while not go.exists():
    time.sleep(0.05)
try:
    out = train_dataset(Warehouse(Path({wh!r})), "syn", "default", {overrides!r}, device="cpu", progress=True)
except ReviewflowError as exc:
    print("error:", exc, file=sys.stderr)
    sys.exit(exc.exit_code)
print(json.dumps(out))
"""


def _worker(tmp_path: Path, wh: Warehouse, name: str, overrides: dict, go: Path) -> subprocess.Popen:
    script = tmp_path / f"{name}.py"
    script.write_text(WORKER.format(tests=str(TESTS), go=str(go), wh=str(wh.root), overrides=overrides))
    return subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _versions(wh: Warehouse) -> list[str]:
    from pipeline import registry

    return sorted(mv.version for mv in registry.list_versions(wh))


@pytest.mark.subprocess
def test_two_processes_one_trains_the_other_is_told_the_dir_is_in_use(warehouse, tmp_path):
    write_lake_dataset(warehouse, "syn", make_reviews(240, seed=0, max_words=30))
    overrides = dict(FAST, epochs=8, batch_size=8)
    prepare(warehouse, "syn", PrepareConfig(**resolve_preset("default", overrides).prepare))
    go_a, go_b = tmp_path / "go-a", tmp_path / "go-b"
    first = _worker(tmp_path, warehouse, "a", overrides, go_a)
    second = _worker(tmp_path, warehouse, "b", overrides, go_b)
    runs = warehouse.tmp / "runs"
    go_a.touch()
    _wait_for(lambda: any(runs.glob("*/" + CHECKPOINT)), 240, "the first run's first epoch")
    go_b.touch()                                           # the second starts while the first trains
    out_b, err_b = second.communicate(timeout=240)
    out_a, err_a = first.communicate(timeout=240)
    assert first.returncode == 0, err_a[-2000:]
    assert second.returncode == EXIT_TEMPORARY, err_b[-2000:]
    assert f"is in use by pid {first.pid}" in err_b and "Traceback" not in err_b
    assert json.loads(out_a.splitlines()[-1])["version"] == _versions(warehouse)[0]
    assert len(_versions(warehouse)) == 1
    load_model(warehouse.models / _versions(warehouse)[0] / "model.safetensors",
               ModelConfig.from_dict(read_json(warehouse.models / _versions(warehouse)[0] / "config.json")["model"]))
    assert not [p for p in runs.iterdir() if p.is_dir()]  # registered: the run dir is gone
    prep_id = read_json(warehouse.models / _versions(warehouse)[0] / "config.json")["prep_id"]
    with run_lock(run_dir_for(warehouse, "syn", "default", prep_id, overrides)):
        pass                                               # and nobody holds its lock any more


@pytest.mark.subprocess
def test_a_run_killed_mid_training_resumes_and_leaves_no_stuck_state(warehouse, tmp_path):
    write_lake_dataset(warehouse, "syn", make_reviews(240, seed=0, max_words=30))
    overrides = dict(FAST, epochs=40, batch_size=8)
    go = tmp_path / "go"
    go.touch()
    proc = _worker(tmp_path, warehouse, "killed", overrides, go)
    runs = warehouse.tmp / "runs"
    _wait_for(lambda: any(runs.glob("*/" + CHECKPOINT)), 240, "a checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not _versions(warehouse)
    again = _worker(tmp_path, warehouse, "again", overrides, go)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert "resuming" in err and len(_versions(warehouse)) == 1
    assert not [p for p in runs.iterdir() if p.is_dir() or p.suffix == ".owner"]


def _finished_run(warehouse: Warehouse, overrides: dict) -> Path:
    """Train (no registration) into the run dir ``train_dataset`` would use; returns that dir."""
    spec = resolve_preset("default", overrides)
    prep = prepare(warehouse, "syn", PrepareConfig(**spec.prepare))
    out = run_dir_for(warehouse, "syn", "default", prep.prep_id, overrides)
    train(prep.prep_dir, spec.train, out, device="cpu", progress=False, model=spec.model)
    return out


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x80\x04garbage")


CRASH_LEFTOVERS = {
    "result without its weights": lambda out: (out / BEST).unlink(),
    "result whose weights were modified": lambda out: _nan(out / BEST, out / BEST),
    "result.json not JSON": lambda out: (out / RESULT).write_text("{"),
    "corrupt checkpoint, no result": lambda out: ((out / RESULT).unlink(), _garbage(out / CHECKPOINT)),
    "truncated checkpoint, no result": lambda out: ((out / RESULT).unlink(), (out / CHECKPOINT).write_bytes(
        (out / CHECKPOINT).read_bytes()[:300])),
    "checkpoint without best weights": lambda out: ((out / RESULT).unlink(), (out / BEST).unlink()),
    "half-discarded dir beside it": lambda out: shutil.copytree(out, out.with_name(f".{out.name}.discarded-1-2")),
    "stale owner file": lambda out: out.with_name(f".{out.name}.owner").write_text('{"pid": 999999}'),
}


@pytest.mark.parametrize("case", sorted(CRASH_LEFTOVERS))
def test_whatever_a_crash_leaves_in_the_run_dir_the_next_run_succeeds(warehouse, case):
    write_lake_dataset(warehouse, "syn", make_reviews(240, seed=0, max_words=30))
    out = _finished_run(warehouse, FAST)
    CRASH_LEFTOVERS[case](out)
    got = train_dataset(warehouse, "syn", "default", FAST, device="cpu", progress=False)
    mv_dir = warehouse.models / got["version"]
    load_model(mv_dir / "model.safetensors", ModelConfig.from_dict(read_json(mv_dir / "config.json")["model"]),
               sha256=read_json(mv_dir / "config.json")["checksums"]["model.safetensors"])
    assert _versions(warehouse) == [got["version"]]
    assert not [p for p in out.parent.iterdir() if p.is_dir()]      # run dir and discarded copies are gone


def test_a_crash_between_register_and_cleanup_never_registers_the_run_twice(warehouse):
    from pipeline.train.register import register

    write_lake_dataset(warehouse, "syn", make_reviews(240, seed=0, max_words=30))
    out = _finished_run(warehouse, FAST)
    first = register(warehouse, out, preset="default", dataset="syn")
    mark_registered(out, first)                            # ...and the process died before discard_run_dir
    stale = read_json(out / RESULT)
    write_json_atomic(out / RESULT, stale | {"seconds": 12345.0})   # tells a re-registration from a fresh run
    got = train_dataset(warehouse, "syn", "default", FAST, device="cpu", progress=False)
    assert got["version"] != first and _versions(warehouse) == sorted([first, got["version"]])
    assert read_json(warehouse.models / got["version"] / "metrics.json")["seconds"] != 12345.0
    assert not out.exists()


@pytest.mark.subprocess
def test_a_second_holder_of_a_run_dir_gets_a_temporary_failure(tmp_path):
    out = tmp_path / "runs" / "r"
    with run_lock(out):
        code = ("import sys; from pipeline.train.rundir import run_lock\n"
                "from pipeline.core.errors import TemporaryFailure\n"
                f"try:\n    run_lock({str(out)!r}).__enter__()\nexcept TemporaryFailure as e:\n"
                "    print(e); sys.exit(75)\n")
        other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert other.returncode == 75 and f"in use by pid {os.getpid()}" in other.stdout, other.stderr
    with run_lock(out):                                    # released: free again
        pass
    with pytest.raises(TemporaryFailure):                  # the same process, a second holder: refused too
        with run_lock(out), run_lock(out):
            pass
    discard_run_dir(out)
    assert not out.exists()
