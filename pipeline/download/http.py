"""A small, robust HTTP fetcher (standard library only): retries, timeouts, resume, verification, atomic writes.

For each file (:func:`fetch_file`):

- a destination that already exists (and matches the known size / checksum) is not requested again;
- the body streams into ``<dest>.part``; a later attempt (or a later run) resumes it with ``Range: bytes=<n>-``
  when the server answers ``206``, and starts over when it answers ``200``;
- a body shorter than its ``Content-Length`` (connection dropped), a timeout (``timeout`` seconds per socket
  operation), a connection error and HTTP 408/425/429/5xx are retried up to ``retries`` times with exponential
  backoff and jitter (``backoff * 2**attempt * U(0.5, 1.5)``, capped); other HTTP errors (404, 403...) fail at once;
- size, SHA-256 and MD5 are checked when known, then an optional ``check`` (e.g. "is this a readable image");
- only a complete, verified file is renamed into place (``os.replace``), so ``dest`` is never a half file.

:func:`fetch_all` runs many fetches with at most ``workers`` in flight (a thread pool) behind a tqdm bar, and
:func:`write_manifest` records every file's outcome (``ok``/``failed`` and why) in ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.io import write_json_atomic

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "mmrec-pipeline-downloader/0.1 (+python-urllib)"


class DownloadError(RuntimeError):
    """The download cannot start or cannot complete (no network, unknown data set, ...)."""


class _Retry(Exception):
    """A transient failure: try again after a backoff."""


class _Fail(Exception):
    """A permanent failure: do not retry."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    dest: Path
    size: int | None = None  # bytes, when known
    sha256: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class FetchOptions:
    timeout: float = 30.0  # seconds per connect / read operation
    retries: int = 4  # attempts after the first
    backoff: float = 1.0  # base delay in seconds
    max_backoff: float = 60.0
    chunk_size: int = 1 << 20
    # Largest body kept, in bytes: a body that grows past it (an endless stream, a wrong URL) is cut, removed and
    # recorded as failed. Raw files may be tens of GB (Amazon 2023); images use max_image_bytes (download.images).
    max_bytes: int = 200 << 30
    max_image_bytes: int = 50 << 20


@dataclass
class FetchResult:
    url: str
    path: str
    status: str  # "ok" | "failed"
    reason: str = ""  # why it failed, or "already present" / "downloaded" / "resumed"
    bytes: int = 0  # size of the final file
    sha256: str | None = None
    attempts: int = 0  # HTTP requests made for it in this run

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _problem(path: Path, remote: RemoteFile) -> str | None:
    """Why ``path`` is not the expected file, or None."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"size {size} != expected {remote.size}"
    if remote.sha256 and _digest(path, "sha256") != remote.sha256.lower():
        return "sha256 mismatch"
    if remote.md5 and _digest(path, "md5") != remote.md5.lower():
        return "md5 mismatch"
    return None


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    if isinstance(e, TimeoutError | socket.timeout):
        return "timed out"
    return f"{type(e).__name__}: {e}"


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _request_once(remote: RemoteFile, part: Path, opts: FetchOptions, on_bytes: Callable[[int], None]) -> str:
    """One HTTP request into ``part``; returns "downloaded" or "resumed", raises _Retry or _Fail."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(remote.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=opts.timeout)  # noqa: S310 - URLs come from the catalogue
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # the part file is as long as (or longer than) the whole body
            if remote.size is not None and offset == remote.size:
                return "resumed"
            part.unlink(missing_ok=True)
            raise _Retry("HTTP 416 on resume; starting over") from e
        if e.code in RETRYABLE_STATUS:
            raise _Retry(f"HTTP {e.code} {e.reason}") from e
        raise _Fail(f"HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(_describe(e)) from e
    with response:
        mode, how = "wb", "downloaded"
        if response.status == 206:
            if _content_range_start(response.headers.get("Content-Range")) != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at the wrong offset ({response.headers.get('Content-Range')})")
            mode, how = "ab", "resumed"
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if length is not None and offset + length > opts.max_bytes:
            part.unlink(missing_ok=True)
            raise _Fail(_too_large(offset + length, opts.max_bytes))
        received = 0
        with open(part, mode) as f:
            while True:
                if offset + received > opts.max_bytes:
                    break
                try:
                    chunk = response.read(opts.chunk_size)
                except (OSError, http.client.HTTPException) as e:
                    raise _Retry(f"connection lost after {received} bytes: {_describe(e)}") from e
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                on_bytes(len(chunk))
        if offset + received > opts.max_bytes:  # an endless body: nothing of it is kept
            part.unlink(missing_ok=True)
            raise _Fail(_too_large(offset + received, opts.max_bytes, at_least=True))
        if length is not None and received < length:
            raise _Retry(f"truncated body: received {received} of {length} bytes")
    return how


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (
        f"body of {'more than ' if at_least else ''}{size:,} bytes exceeds the limit of {limit:,} bytes; not kept "
        "(raise --max-file-gb / --max-image-mb if the file is really that large)"
    )


def fetch_file(
    remote: RemoteFile,
    opts: FetchOptions,
    check: Callable[[Path], str | None] | None = None,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> FetchResult:
    """Fetch one file to ``remote.dest`` (see the module docstring); never raises for network problems."""
    dest = remote.dest
    result = FetchResult(url=remote.url, path=str(dest), status="failed")
    if dest.exists():
        problem = _problem(dest, remote)
        if problem is None:
            result.status, result.reason, result.bytes = "ok", "already present", dest.stat().st_size
            return result
        log.warning("%s exists but %s: downloading it again", dest, problem)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    reason = ""
    for attempt in range(opts.retries + 1):
        if attempt:
            delay = min(opts.max_backoff, opts.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            log.debug("retrying %s in %.2f s (%s)", remote.url, delay, reason)
            time.sleep(delay)
        result.attempts += 1
        try:
            how = _request_once(remote, part, opts, on_bytes)
        except _Fail as e:
            result.reason = str(e)
            return result
        except _Retry as e:
            reason = str(e)
            continue
        problem = _problem(part, remote)
        if problem is not None:
            part.unlink(missing_ok=True)
            reason = f"verification failed: {problem}"
            continue
        problem = check(part) if check is not None else None
        if problem is not None:
            part.unlink(missing_ok=True)
            result.reason = problem
            return result
        os.replace(part, dest)
        result.status, result.reason, result.bytes = "ok", how, dest.stat().st_size
        result.sha256 = _digest(dest, "sha256")
        return result
    result.reason = f"gave up after {result.attempts} attempt(s): {reason}"
    return result


def fetch_all(
    files: Sequence[RemoteFile],
    opts: FetchOptions,
    workers: int,
    *,
    check: Callable[[Path], str | None] | None = None,
    desc: str = "download",
    unit: str = "file",
    progress: bool = True,
) -> list[FetchResult]:
    """Fetch ``files`` with at most ``workers`` requests in flight; results in the order of ``files``."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[FetchResult | None] = [None] * len(files)
    by_bytes = unit == "B"
    known = sum(f.size or 0 for f in files) if by_bytes and all(f.size for f in files) else None
    bar = tqdm(total=known if by_bytes else len(files), desc=desc, unit=unit, unit_scale=by_bytes, disable=not progress)
    lock = threading.Lock()

    def on_bytes(n: int) -> None:
        if by_bytes:
            with lock:
                bar.update(n)

    with bar, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
        futures = {pool.submit(_fetch_one, f, opts, check, on_bytes): i for i, f in enumerate(files)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if not by_bytes:
                bar.update(1)
            if not results[i].ok:
                log.warning("failed: %s (%s)", files[i].url, results[i].reason)
    return [r for r in results if r is not None]


def _fetch_one(
    remote: RemoteFile, opts: FetchOptions, check: Callable[[Path], str | None] | None, on_bytes: Callable[[int], None]
) -> FetchResult:
    """:func:`fetch_file`, with a local failure (a name the file system refuses, a full disk) recorded for this file
    alone: one bad item never stops the run nor the manifest."""
    try:
        return fetch_file(remote, opts, check, on_bytes)
    except (OSError, ValueError) as e:
        with contextlib.suppress(OSError):  # nothing half-written is left behind
            remote.dest.with_name(remote.dest.name + ".part").unlink(missing_ok=True)
        return FetchResult(url=remote.url, path=str(remote.dest), status="failed", reason=f"{type(e).__name__}: {e}")


def check_reachable(url: str, timeout: float) -> None:
    """Fail fast, naming ``url``, when its host (or the configured proxy) cannot be reached at all."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    target = urllib.parse.urlsplit(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else parts
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname, port), timeout=min(timeout, 10.0)).close()
    except OSError as e:
        via = f" via proxy {proxy}" if proxy else ""
        raise DownloadError(
            f"cannot reach {url}{via} ({_describe(e)}): no network is reachable from this machine, or the server is "
            "down. Fix: connect to the internet and run again (finished files are kept), copy the files by hand "
            "(see docs/datasets.md), or point --base-url / MMREC_DOWNLOAD_BASE_URL at a mirror"
        ) from e


def write_manifest(path: Path, payload: dict[str, Any], results: Sequence[FetchResult]) -> None:
    """``manifest.json``: ``payload`` plus counts and every file's outcome, written atomically."""
    body = {
        **payload,
        "ok": sum(r.ok for r in results),
        "failed": sum(not r.ok for r in results),
        "files": [asdict(r) for r in results],
    }
    write_json_atomic(path, body)
