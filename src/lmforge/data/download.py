"""Cached, resumable, verified downloads over plain urllib.

A file is downloaded to `<cache>/<hash of URL>-<basename>.part` and renamed to its final name
only once it is complete and verified, so a file under the final name is always whole. An
interrupted download resumes from the `.part` with an HTTP Range request when the server honours
it (206), else restarts. The cache is $LMFORGE_CACHE/downloads, or ~/.cache/lmforge/downloads.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from lmforge.errors import DataError

CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "lmforge-downloader/1"


def cache_dir() -> Path:
    root = os.environ.get("LMFORGE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "lmforge"
    return base / "downloads"


def cached_path(url: str, directory: Path | None = None) -> Path:
    """Where fetch(url) stores its file: a URL hash keeps equal basenames from colliding."""
    basename = posixpath.basename(urllib.parse.urlparse(url).path) or "download"
    basename = re.sub(r"[^A-Za-z0-9._-]+", "_", urllib.parse.unquote(basename))[-100:]
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return (directory or cache_dir()) / f"{digest}-{basename}"


def _offline_error(url: str, reason: object) -> DataError:
    return DataError(
        f"could not download {url} ({reason}); you are offline? download it elsewhere and pass "
        "the local path as data.source=PATH"
    )


def _open(url: str, offset: int):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the .part is stale or already too long: restart
            return None
        raise _offline_error(url, f"HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise _offline_error(url, str(reason).replace("\n", " ")) from None


def fetch(
    url: str,
    sha256: str | None = None,
    size: int | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Path:
    """Local path of url's content, downloading it into the cache unless it is there already."""
    target = cached_path(url, cache_dir)
    if target.is_file() and (size is None or target.stat().st_size == size):
        return target  # verified before it was renamed into place
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    response = _open(url, offset)
    if response is None:
        part.unlink(missing_ok=True)
        offset, response = 0, _open(url, 0)
    hasher = hashlib.sha256()
    with response:
        if offset and response.status == 206:
            with open(part, "rb") as existing:  # the hash must cover the bytes kept
                for block in iter(lambda: existing.read(CHUNK), b""):
                    hasher.update(block)
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # the server ignored Range: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else size
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            desc=f"download {target.name.split('-', 1)[-1]}",
            disable=not progress,
        )
        try:
            with open(part, mode) as out:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    hasher.update(block)
                    bar.update(len(block))
        except OSError as error:  # the .part stays for the next attempt to resume
            raise _offline_error(url, f"connection lost: {error}") from None
        finally:
            bar.close()
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise DataError(
            f"download of {url} has {got} bytes, expected {size}; it was deleted, try again "
            "(or download it elsewhere and pass data.source=PATH)"
        )
    if sha256 is not None and hasher.hexdigest() != sha256.lower():
        part.unlink()
        raise DataError(
            f"download of {url} has sha256 {hasher.hexdigest()}, expected {sha256}; it was "
            "deleted, try again (or download it elsewhere and pass data.source=PATH)"
        )
    os.replace(part, target)
    return target
