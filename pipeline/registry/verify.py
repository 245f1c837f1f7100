"""The registry's one check of a version before anything points at it.

Loading a version for scoring verifies the files it reads (:func:`pipeline.registry.store.verify_files`,
:func:`pipeline.model.weights.load_model`), but only when it reads them: a pointer moved onto a damaged version
would break the *next* ``predict`` or ``score``, and the champion before it would be gone from the pointer.
:func:`verify_version` checks the whole version up front, and :func:`pipeline.registry.pointers.move_pointer`
calls it (under the pointer lock) before every pointer move: promotion, ``models promote``, ``models alias set``
and a pointer taken from an object store. What it checks:

* the name is a version name (``v0001-...``) and ``models/<name>`` is a real directory, not a symbolic link;
* ``config.json`` and ``metrics.json`` are regular files that parse, the model block builds a
  :class:`~pipeline.model.network.ModelConfig`, the int8, calibration and ``abstain`` (``--max-error``
  margins: :mod:`pipeline.model.abstain`) fields are valid;
* every file of :data:`~pipeline.registry.store.CHECKED_FILES` recorded in ``config.json`` ``checksums`` is a
  regular file (not a link) with that SHA-256; static int8 ranges (``int8_static``) match their SHA-256; the weights must be recorded; a checked file present but not
  recorded was added after registration and is refused too.

A version registered before checksums existed cannot be verified: pointers are not moved onto it (train it again),
though scoring with it keeps working. Only a pointer taken from an object store (set before, elsewhere) may name one
(``unchecked_ok``). Every failure is one :class:`IntegrityError` line naming the version and the file.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import InputError, IntegrityError, NotFoundError
from pipeline.core.storage import read_json, sha256_file
from pipeline.model.abstain import read_record as abstain_record
from pipeline.registry.store import CHECKED_FILES, ModelVersion, list_versions

WEIGHTS = "model.safetensors"
_VERSION_NAME = re.compile(r"^v\d{4,}-[A-Za-z0-9_.-]+\Z")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_FIX = "restore it from a copy or train again; no pointer was moved"


def _refuse(version: str, what: str, problem: str, fix: str = _FIX) -> IntegrityError:
    return IntegrityError(f"model version {version}: {what} {problem}; {fix}")


def _kind(path: Path) -> str | None:
    """'dir', 'file', 'link', 'other', or None when nothing is there (never follows a link)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    return ("link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode)
            else "other")


def _folder(wh: Warehouse, name: str) -> Path:
    """``models/<name>``, a real directory of a validly named version."""
    try:
        validate_name(name, "model version")
    except InputError as exc:
        raise IntegrityError(str(exc)) from None
    if not _VERSION_NAME.match(name):
        raise IntegrityError(f"{name!r} is not a model version name (v0001-...); a pointer names a version")
    path = wh.models / name
    kind = _kind(path)
    if kind is None:
        known = ", ".join(v.version for v in list_versions(wh)) or "none"
        raise NotFoundError(f"model version {name!r} not found in {wh.models} (known: {known})")
    if kind != "dir":
        raise _refuse(name, f"folder {path}", f"is a {'symbolic link' if kind == 'link' else 'special file'}, "
                                              "not the registered directory")
    return path


def _json(version: str, path: Path) -> dict:
    kind = _kind(path)
    if kind != "file":
        raise _refuse(version, path.name, "is missing" if kind is None else f"is a {kind}, not a regular file")
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise _refuse(version, path.name, f"does not parse ({type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(data, dict):
        raise _refuse(version, path.name, "does not hold a JSON object")
    return data


def _check_config(mv: ModelVersion) -> None:
    """The model block builds, the scoring fields are valid (the ModelVersion properties raise otherwise)."""
    from pipeline.model.network import ModelConfig  # deferred (torch): reading a version's pointer needs none

    if not isinstance(mv.config.get("model"), dict):
        raise _refuse(mv.version, "config.json", "has no model block")
    try:
        ModelConfig.from_dict(mv.config["model"])
    except (InputError, TypeError, ValueError) as exc:
        raise _refuse(mv.version, "config.json", f"holds an invalid model block ({str(exc).splitlines()[0]})") \
            from None
    _ = (mv.int8, mv.temperature, mv.temperature_bands, int8_ranges(mv))    # each raises IntegrityError when invalid
    try:
        abstain_record(mv.config, "config.json")         # the --max-error margins, when recorded
    except IntegrityError as exc:
        raise _refuse(mv.version, "config.json", f"holds an invalid --max-error record ({exc})") from None
    dataset = mv.config.get("dataset")
    if dataset is not None:
        try:
            validate_name(dataset, "dataset name")
        except InputError:
            raise _refuse(mv.version, "config.json", f"records dataset {dataset!r}, not a valid name") from None


def _check_files(mv: ModelVersion, unchecked_ok: bool) -> None:
    """Each recorded checked file: a regular file with the recorded SHA-256."""
    recorded = mv.config.get("checksums")
    if recorded is None and unchecked_ok:
        return
    if not recorded:
        raise _refuse(mv.version, "config.json", "records no checksums (registered before they existed), so the "
                      "version cannot be verified", "train it again to register a verifiable version "
                      "(reviewflow train --dataset NAME); no pointer was moved")
    if not isinstance(recorded, dict) or WEIGHTS not in recorded:
        raise _refuse(mv.version, "config.json", f"checksums do not record {WEIGHTS}")
    for name in CHECKED_FILES:
        path, want, kind = mv.path / name, recorded.get(name), _kind(mv.path / name)
        if want is None:
            if kind is not None:
                raise _refuse(mv.version, name, "is present but has no checksum recorded at registration "
                                                "(added later)", "remove it, restore the version or train again")
            continue
        if not isinstance(want, str) or not _SHA256.match(want):
            raise _refuse(mv.version, "config.json", f"records checksum {str(want)[:80]!r} for {name}, "
                                                     "not a SHA-256")
        if kind != "file":
            raise _refuse(mv.version, name, "is missing" if kind is None else
                          f"is a {'symbolic link' if kind == 'link' else kind}, not a regular file")
        if sha256_file(path) != want:
            raise _refuse(mv.version, name, "does not match the SHA-256 recorded at registration (modified)")


def verify_version(wh: Warehouse, name: str, *, unchecked_ok: bool = False) -> ModelVersion:
    """The version ``name`` after checking all of it (module doc); ``IntegrityError`` naming the version and
    file otherwise, ``NotFoundError`` when there is no such version. ``unchecked_ok``: a version registered
    before checksums passes the other checks (a pointer pulled from an object store)."""
    path = _folder(wh, name)
    mv = ModelVersion(version=name, path=path, config=_json(name, path / "config.json"),
                      metrics=_json(name, path / "metrics.json"), prep_id="")
    mv.prep_id = str(mv.config.get("prep_id", ""))
    _check_config(mv)
    _check_files(mv, unchecked_ok)
    return mv


def int8_ranges(mv: ModelVersion) -> dict | None:
    """The static int8 ranges registration recorded (``config.json`` ``"int8_static"``), checked against their
    SHA-256 (which also binds them to the weights' SHA-256); None when there are none (fp32, or dynamic int8
    from before). Ranges that do not match their hash are an ``IntegrityError``."""
    block = mv.config.get("int8_static")
    if block is None:
        return None
    from pipeline.model.quantize import SCHEME, fingerprint  # deferred (torch): only a version with int8 ranges

    weights = (mv.config.get("checksums") or {}).get("model.safetensors", "")
    ok = (isinstance(block, dict) and block.get("scheme") == SCHEME and isinstance(block.get("ranges"), dict)
          and block.get("sha256") == fingerprint(block["ranges"], weights))
    if not ok:
        raise IntegrityError(f"model version {mv.version}: config.json int8_static does not match its SHA-256 (or "
                             "these weights); the file was modified: restore it or train again")
    return block["ranges"]
