"""Read and replace one small object on S3 so that two machines can never both win: conditional writes.

S3 has neither locks nor multi-object transactions. What it does have is a conditional PUT: ``If-None-Match: *``
creates a key only if it does not exist yet, ``If-Match: <etag>`` replaces it only if it still holds the bytes
whose ETag the writer read. When the condition fails the store answers 412 ``PreconditionFailed`` (or 409
``ConditionalRequestConflict`` while another conditional write on the key is in flight) and writes nothing.
A read-then-write check cannot give that guarantee: both writers can read the old state before either writes.

:func:`read_object` returns an object's bytes and ETag from one GET (so the pair is consistent),
:func:`put_if` writes under a condition and says whether the store refused it. Both take an ``s3fs``
filesystem; :mod:`pipeline.core.objectstore` builds pointer and log publishing on them.
"""

from __future__ import annotations

from fsspec.asyn import sync

CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


def etag_of(info: dict) -> str | None:
    """An ETag as S3 returns it, without its quotes (the form recorded in the mirror's metadata)."""
    etag = info.get("ETag") or info.get("etag")
    return str(etag).strip('"') if etag else None


def _client_response(exc: BaseException) -> dict:
    """The botocore error response behind ``exc`` (s3fs re-raises a ClientError as an OSError whose cause it
    is), or ``{}``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            return response
        cur = cur.__cause__ or cur.__context__
    return {}


def is_conflict(exc: BaseException, *, replacing: bool) -> bool:
    """Did the store refuse a conditional write because the object is not (or no longer) what was read?

    A replace (``If-Match``) of an object removed since it was read answers 404 ``NoSuchKey``: that, too, is
    someone else's change, not a missing bucket."""
    response = _client_response(exc)
    code = (response.get("Error") or {}).get("Code")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    if code in CONFLICT_CODES or status == 412:
        return True
    if replacing:
        return code == "NoSuchKey"
    return not response and isinstance(exc, FileExistsError)


async def _get(fs, bucket: str, key: str) -> tuple[bytes, str]:
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    try:
        return await response["Body"].read(), etag_of(response) or ""
    finally:
        response["Body"].close()


def read_object(fs, path: str) -> tuple[bytes, str] | None:
    """``(bytes, etag)`` of the object at ``path`` from a single GET, or None when there is none."""
    bucket, key, _ = fs.split_path(path)
    try:
        return sync(fs.loop, _get, fs, bucket, key)
    except FileNotFoundError:
        return None


def put_if(fs, path: str, data: bytes, seen: str | None) -> str | None:
    """Write ``data`` at ``path`` only if the object still has the ETag ``seen`` (None: only if there is no object
    yet). -> the new object's ETag, or None when the store refused (someone else's write came first)."""
    condition = {"IfMatch": f'"{seen}"'} if seen is not None else {"IfNoneMatch": "*"}
    try:
        response = fs.pipe_file(path, data, **condition)
    except OSError as exc:
        if is_conflict(exc, replacing=seen is not None):
            return None
        raise
    finally:
        fs.invalidate_cache(path)
    return etag_of(response or {}) or ""
