"""Issue 18 item 2: the registry owns verification. No pointer (serving champion, dataset champion, alias) ever
moves onto a version that does not verify whole: each tampering of a registered version, through each door that
moves a pointer (``models promote``, ``models alias set``, promotion after training, a pointer pulled from an
object store), is one IntegrityError line (exit 2) naming the version and the file, and the whole ``models/``
tree is byte-identical afterwards. Alias names get the same treatment as version names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from filelock import FileLock, Timeout
from train_helpers import tiny_model, tiny_prep
from typer.testing import CliRunner

from flows.cli import _exit_code, _message, app
from flows.cli.common import pointer_verifier
from pipeline import registry
from pipeline.core import objectstore
from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError, IntegrityError, ReviewflowError
from pipeline.core.storage import sha256_file
from pipeline.registry import aliases, pointers
from pipeline.serve.predictor import load_predictor
from pipeline.train import promotion
from pipeline.train.config import TrainConfig
from pipeline.train.job import register_and_promote
from pipeline.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One tiny trained run registered twice: v1 (the champion, alias `stable`) and v2 (registered, not promoted:
    the version each case tampers with and then tries to point at)."""
    root = tmp_path_factory.mktemp("guard")
    wh = Warehouse(root / "wh").ensure()
    res = train(tiny_prep(wh, n=160, dataset="movies"), TrainConfig(epochs=1, batch_size=32, threads=1),
                root / "run", progress=False, model=tiny_model())
    v1 = register_and_promote(wh, res, preset="tiny")
    v2 = register_and_promote(wh, res, preset="tiny", promote=False)
    aliases.set_alias(wh, "stable", v1)
    assert registry.champion(wh) == v1 and registry.champion(wh, "movies") == v1
    return root, v1, v2


def copy_of(base, name: str) -> Warehouse:
    root, _, _ = base
    wh = Warehouse(root / name)
    shutil.copytree(root / "wh", wh.root, symlinks=True)
    return wh


def tree(top: Path) -> dict[str, tuple]:
    """Every entry under ``top`` (hidden ones too), links not followed: kind and bytes' digest or link target."""
    out = {}
    for folder, dirs, files in os.walk(top, followlinks=False):
        for name in dirs + files:
            p = Path(folder) / name
            rel = p.relative_to(top).as_posix()
            out[rel] = (("link", os.readlink(p)) if p.is_symlink() else ("dir",) if p.is_dir()
                        else ("file", sha256_file(p)))
    return out


# ----------------------------------------------------------------------------- the tampering family


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def _edit_config(v: Path, change) -> None:
    cfg = json.loads((v / "config.json").read_text())
    change(cfg)
    (v / "config.json").write_text(json.dumps(cfg))


def _weights_link(v: Path, other: Path) -> None:
    """A byte-identical copy outside the version, linked in: the hash matches, the file is not the registered one."""
    outside = v.parent.parent / "elsewhere.safetensors"
    shutil.copyfile(v / "model.safetensors", outside)
    (v / "model.safetensors").unlink()
    (v / "model.safetensors").symlink_to(outside)


def _dir_link(v: Path, other: Path) -> None:
    shutil.rmtree(v)
    v.symlink_to(other, target_is_directory=True)


def _other_eval_set(v: Path, other: Path) -> None:
    ev = pq.read_table(v / registry.EVAL_SET)
    pq.write_table(ev.set_column(1, "label", pa.array([1 - x for x in ev.column("label").to_pylist()],
                                                      ev.schema.field("label").type)), v / registry.EVAL_SET)


def _sha_of_other(cfg: dict) -> None:
    cfg["checksums"]["model.safetensors"] = "0" * 64


# case -> (tamper(version dir, other version dir), the file the error names)
TAMPERING = {
    "weights byte flipped": (lambda v, o: _flip(v / "model.safetensors"), "model.safetensors"),
    "weights truncated": (lambda v, o: (v / "model.safetensors").write_bytes(
        (v / "model.safetensors").read_bytes()[:100]), "model.safetensors"),
    "weights a link to a valid copy": (_weights_link, "model.safetensors"),
    "weights missing": (lambda v, o: (v / "model.safetensors").unlink(), "model.safetensors"),
    "vocab edited": (lambda v, o: (v / "vocab.txt").write_text((v / "vocab.txt").read_text() + "extra\n"),
                     "vocab.txt"),
    "vocab missing": (lambda v, o: (v / "vocab.txt").unlink(), "vocab.txt"),
    "manifest edited": (lambda v, o: (v / "manifest.json").write_text(
        (v / "manifest.json").read_text().replace('"max_len"', '"max_len" ')), "manifest.json"),
    "eval set replaced": (_other_eval_set, registry.EVAL_SET),
    "eval set unrecorded": (lambda v, o: _edit_config(v, lambda c: c["checksums"].pop(registry.EVAL_SET)),
                            registry.EVAL_SET),
    "checksum of weights edited": (lambda v, o: _edit_config(v, _sha_of_other), "model.safetensors"),
    "checksum not a sha-256": (lambda v, o: _edit_config(v, lambda c: c["checksums"].update(
        {"vocab.txt": "../../etc/passwd"})), "config.json"),
    "checksums removed": (lambda v, o: _edit_config(v, lambda c: c.pop("checksums")), "config.json"),
    "config.json invalid JSON": (lambda v, o: (v / "config.json").write_text("{not json"), "config.json"),
    "config model block invalid": (lambda v, o: _edit_config(v, lambda c: c["model"].update(encoder="bogus")),
                                   "config.json"),
    "config model block missing": (lambda v, o: _edit_config(v, lambda c: c.pop("model")), "config.json"),
    "config temperature invalid": (lambda v, o: _edit_config(v, lambda c: c.update(
        calibration={"temperature": -1.0})), "config.json"),
    "config int8 not a bool": (lambda v, o: _edit_config(v, lambda c: c.update(int8="yes")), "config.json"),
    "config dataset a path": (lambda v, o: _edit_config(v, lambda c: c.update(dataset="../x")), "config.json"),
    "metrics.json missing": (lambda v, o: (v / "metrics.json").unlink(), "metrics.json"),
    "metrics.json a list": (lambda v, o: (v / "metrics.json").write_text("[]"), "metrics.json"),
    "version folder a link to another version": (_dir_link, "folder"),
}


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"REVIEWFLOW_WAREHOUSE": ""})


def _through_cli(result) -> ReviewflowError:
    """The exception a CLI command ended with, as `reviewflow` reports it: exit code and its one stderr line."""
    exc = result.exception
    assert exc is not None, result.output
    return exc


DOORS = {
    "cli models promote": lambda wh, v: _through_cli(_cli("models", "promote", v, "--warehouse", str(wh.root))),
    "cli models alias set": lambda wh, v: _through_cli(_cli("models", "alias", "set", "challenger", v,
                                                            "--warehouse", str(wh.root))),
    "promotion.promote": lambda wh, v: promotion.promote(wh, v),
    "promotion.maybe_promote": lambda wh, v: promotion.maybe_promote(wh, v),
    "registry.set_champion": lambda wh, v: registry.set_champion(wh, v),
    "aliases.set_alias": lambda wh, v: aliases.set_alias(wh, "challenger", v),
}


def _run_door(door, wh: Warehouse, version: str) -> BaseException:
    try:
        got = DOORS[door](wh, version)
    except ReviewflowError as exc:
        return exc
    if isinstance(got, BaseException):
        return got
    pytest.fail(f"{door} moved a pointer onto a tampered version: {got!r}")


@pytest.mark.parametrize("door", sorted(DOORS))
@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_no_door_moves_a_pointer_onto_a_tampered_version(base, case, door):
    _, v1, v2 = base
    wh = copy_of(base, f"wh-{abs(hash((case, door)))}")
    tamper, named = TAMPERING[case]
    tamper(wh.models / v2, wh.models / v1)
    before = tree(wh.models)
    exc = _run_door(door, wh, v2)
    assert isinstance(exc, IntegrityError), repr(exc)
    line = _message(exc)
    assert _exit_code(exc) == 2 and "\n" not in line and v2 in line and named in line, line
    assert tree(wh.models) == before                     # pointers, champions/, aliases/, logs: byte-identical
    assert registry.champion(wh) == v1 and aliases.resolve(wh, "challenger") is None


@pytest.mark.subprocess
def test_the_real_cli_exits_2_with_one_line_and_moves_nothing(base):
    _, _, v2 = base
    wh = copy_of(base, "wh-subprocess")
    _flip(wh.models / v2 / "model.safetensors")
    before = tree(wh.models)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWFLOW_")}
    for args in (["models", "promote", v2], ["models", "alias", "set", "challenger", v2]):
        r = subprocess.run([str(Path(sys.executable).parent / "reviewflow"), *args, "--warehouse", str(wh.root)],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2, r.stderr
        assert last.startswith("error: model version " + v2) and "model.safetensors" in last, r.stderr
    assert tree(wh.models) == before


# ----------------------------------------------------------------------------- what still works


def test_a_sound_version_moves_through_every_door_and_an_alias_tombstone_needs_no_target(base):
    _, v1, v2 = base
    wh = copy_of(base, "wh-sound")
    assert registry.verify_version(wh, v2).version == v2
    r = _cli("models", "alias", "set", "challenger", v2, "--warehouse", str(wh.root))
    assert r.exit_code == 0, r.output
    assert aliases.resolve(wh, "challenger") == v2
    r = _cli("models", "promote", "challenger", "--warehouse", str(wh.root))
    assert r.exit_code == 0, r.output
    assert registry.champion(wh) == v2 and registry.champion(wh, "movies") == v2
    assert promotion.maybe_promote(wh, v2).reason == promotion.ALREADY
    shutil.rmtree(wh.models / v1)                  # a tombstone names no version: removing needs no verification
    aliases.remove_alias(wh, "stable")
    assert aliases.resolve(wh, "stable") is None
    log = [json.loads(x)["action"] for x in (wh.models / aliases.LOG).read_text().splitlines()]
    assert log[-2:] == ["set", "removed"]


def test_a_version_registered_before_checksums_scores_but_is_never_pointed_at(base):
    _, _, v2 = base
    wh = copy_of(base, "wh-legacy")
    _edit_config(wh.models / v2, lambda c: c.pop("checksums"))
    before = tree(wh.models)
    with pytest.raises(IntegrityError, match=f"model version {v2}: config.json records no checksums.*train it"):
        promotion.promote(wh, v2)
    assert tree(wh.models) == before
    assert load_predictor(wh, v2).predict_proba(["a wonderful film"]).shape == (1,)   # reading works as before
    registry.verify_version(wh, v2, unchecked_ok=True)                               # what a pull accepts


def test_verification_and_the_move_happen_under_the_promotion_lock(base, monkeypatch):
    """While the version is verified, another process (here: another lock object) cannot take the lock that
    concurrent promotions take, so nothing moves a pointer between the check and the write."""
    _, _, v2 = base
    wh = copy_of(base, "wh-locked")
    seen = []
    real = pointers.verify_version

    def verify_while_checking_the_lock(w, name, **kw):
        other = FileLock(str(w.models / pointers.LOCK_FILE))
        with pytest.raises(Timeout):
            other.acquire(timeout=0.05)
        seen.append(name)
        return real(w, name, **kw)

    monkeypatch.setattr(pointers, "verify_version", verify_while_checking_the_lock)
    promotion.promote(wh, v2)
    aliases.set_alias(wh, "challenger", v2)
    assert seen == [v2, v2] and registry.champion(wh) == v2


# ----------------------------------------------------------------------------- alias names


BAD_ALIASES = ["a\n", "\na", " a", "a ", "a b", "a\tb", "a/b", "a\\b", "..", "a..b", ".hidden", "-x", "champion",
               "Champion", "champions", "aliases", "v0001-x", "V0001-x", "v00012", "\x00", "a\x00", "a\x7f", "ä",
               "a\u0308", "ﬁ", "", "x" * 65]


@pytest.mark.parametrize("name", BAD_ALIASES, ids=[ascii(n) for n in BAD_ALIASES])
def test_bad_alias_names_are_refused_and_nothing_is_written(base, name):
    _, _, v2 = base
    wh = copy_of(base, f"wh-alias-{abs(hash(name))}")
    before = tree(wh.models)
    with pytest.raises(InputError):
        aliases.set_alias(wh, name, v2)
    with pytest.raises(InputError):
        aliases.remove_alias(wh, name)
    assert aliases.resolve(wh, name) is None
    r = _cli("models", "alias", "set", "--warehouse", str(wh.root), "--", name, v2)
    assert isinstance(r.exception, InputError) and _exit_code(r.exception) == 2, r.output
    assert "\n" not in _message(r.exception)
    assert tree(wh.models) == before


@pytest.mark.parametrize("name", ["challenger", "last-good", "a", "A.b_c-1", "v1", "version2", "x" * 64])
def test_good_alias_names_are_taken(base, name):
    _, _, v2 = base
    wh = copy_of(base, f"wh-alias-ok-{abs(hash(name))}")
    aliases.set_alias(wh, name, v2)
    assert registry.get(wh, name).version == v2


# ----------------------------------------------------------------------------- the object-store pull


@pytest.fixture(scope="module")
def store():
    """A real S3-compatible server (moto) on loopback for this module; one bucket per test."""
    from serverkit import moto_s3

    with pytest.MonkeyPatch.context() as mp:
        for key in ("REVIEWFLOW_WAREHOUSE", "REVIEWFLOW_SCRATCH", "REVIEWFLOW_CACHE", "REVIEWFLOW_DASK_ADDRESS"):
            mp.delenv(key, raising=False)
        with moto_s3(mp):
            yield


def _fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def _bucket() -> str:
    import uuid

    bucket = f"guard-{uuid.uuid4().hex[:12]}"
    _fs().mkdir(bucket)
    return f"s3://{bucket}/wh"


def _store_with_v1(base, uri: str, tag: str) -> None:
    """The store holds v1 (the champion, alias `stable`) and its logs, published by a sound machine."""
    _, _, v2 = base
    first = copy_of(base, f"wh-first-{tag}")
    shutil.rmtree(first.models / v2)
    objectstore.push(first.root, uri, ("models",))


def _store_moves_to_tampered(base, uri: str, case: str) -> str:
    """Another machine (old code, or a hand on the bucket) uploads v2 tampered by ``case`` and points the
    champions, an alias and the log at it."""
    _, v1, v2 = base
    other = copy_of(base, f"wh-other-{abs(hash(case))}-{uri[5:17]}")
    TAMPERING[case][0](other.models / v2, other.models / v1)
    fs, at = _fs(), uri.removeprefix("s3://")
    for p in sorted((other.models / v2).iterdir()):
        if p.is_file() and not p.is_symlink():
            fs.put_file(str(p), f"{at}/models/{v2}/{p.name}")
    pointer = json.dumps({"version": v2, "dataset": "movies"}).encode()
    for rel in ("models/champion", "models/champions/movies.json", "models/aliases/challenger.json"):
        fs.pipe_file(f"{at}/{rel}", pointer)
    fs.pipe_file(f"{at}/models/promotions.jsonl", fs.cat_file(f"{at}/models/promotions.jsonl") + pointer + b"\n")
    return v2


def _pulled_mirror(base, uri: str, mirror: Path) -> Path:
    _store_with_v1(base, uri, uri[5:17])
    objectstore.pull(uri, mirror, ("models",), verify_pointer_target=pointer_verifier(mirror))
    assert registry.champion(Warehouse(mirror)) == base[1]
    return mirror


PULLED = sorted(set(TAMPERING) - {"weights a link to a valid copy", "version folder a link to another version",
                                  "checksums removed"})   # a store holds no links; unchecked: see the next test


@pytest.mark.parametrize("case", PULLED)
def test_a_pull_never_takes_a_pointer_onto_a_tampered_version(base, store, tmp_path, case):
    uri = _bucket()
    mirror = _pulled_mirror(base, uri, tmp_path / "mirror")
    mirror_wh, v1 = Warehouse(mirror), base[1]
    before = tree(mirror / "models")
    v2 = _store_moves_to_tampered(base, uri, case)
    with pytest.raises(IntegrityError) as info:
        objectstore.pull(uri, mirror, ("models",), verify_pointer_target=pointer_verifier(mirror))
    line = _message(info.value)
    assert _exit_code(info.value) == 2 and "\n" not in line and v2 in line and TAMPERING[case][1] in line, line
    after = {k: v for k, v in tree(mirror / "models").items() if not k.startswith(v2)}
    assert after == before                          # pointers, champions/, aliases/, logs: as they were
    assert registry.champion(mirror_wh) == v1 and aliases.resolve(mirror_wh, "challenger") is None


def test_every_cli_command_on_a_store_pulls_through_the_registry_check(base, store, tmp_path):
    uri = _bucket()
    _store_with_v1(base, uri, "cli")
    cache = tmp_path / "cache"
    r = CliRunner().invoke(app, ["models", "list", "--warehouse", uri], env={"REVIEWFLOW_CACHE": str(cache)})
    assert r.exit_code == 0, r.output
    (mirror,) = [p for p in cache.iterdir() if p.is_dir()]
    before = tree(mirror / "models")
    v2 = _store_moves_to_tampered(base, uri, "weights byte flipped")
    r = CliRunner().invoke(app, ["models", "list", "--warehouse", uri], env={"REVIEWFLOW_CACHE": str(cache)})
    assert isinstance(r.exception, IntegrityError) and v2 in str(r.exception), r.output
    assert "model.safetensors" in str(r.exception)
    assert {k: v for k, v in tree(mirror / "models").items() if not k.startswith(v2)} == before


def test_a_pull_takes_a_pointer_onto_a_version_registered_before_checksums(base, store, tmp_path):
    """Such a pointer was set before checksums existed; scoring with it works as it always did, so the pull
    takes it (a move made here onto such a version is refused: see above)."""
    uri = _bucket()
    mirror = _pulled_mirror(base, uri, tmp_path / "mirror")
    v2 = _store_moves_to_tampered(base, uri, "checksums removed")
    objectstore.pull(uri, mirror, ("models",), verify_pointer_target=pointer_verifier(mirror))
    assert registry.champion(Warehouse(mirror)) == v2


def test_models_verify_says_which_file_failed(base):
    _, v1, v2 = base
    wh = copy_of(base, "wh-verify-cmd")
    ok = _cli("models", "verify", "--warehouse", str(wh.root))
    assert ok.exit_code == 0 and f"{v1}: verified (4 files" in ok.output, ok.output
    (wh.models / v2 / "vocab.txt").write_text("changed\n")
    bad = _cli("models", "verify", v2, "--warehouse", str(wh.root))
    assert isinstance(bad.exception, IntegrityError) and "vocab.txt" in _message(bad.exception)
