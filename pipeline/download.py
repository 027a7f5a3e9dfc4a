"""Fetch the official VOC 2012 and SBD archives: resumable, MD5-verified, then unpacked.

torchvision's `download_url` restarts from zero after an interruption, which hurts for
a 2 GB archive on a slow academic host, so the transfer here continues ``<file>.part``
with an HTTP Range request (and starts over when the server ignores Range). MD5 and
unpacking use torchvision's utilities; tar archives are unpacked with tarfile's "data"
filter, which refuses members that would land outside the target directory.
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from pipeline.errors import UserError


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str
    top: str  # what the archive unpacks to, relative to the download directory


ARCHIVES = {
    "voc": Archive(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "6cd6e144f989b92b3379bac3b3de84fd",
        "VOCdevkit/VOC2012",
    ),
    "sbd": Archive(
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
        "semantic_contours/benchmark.tgz",
        "82b4d87ceb2ed10f6038a1cba92111cb",
        "benchmark_RELEASE/dataset",
    ),
}

CHUNK = 1 << 20
USER_AGENT = "ddn-download/0.1 (python urllib)"
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _range_start(content_range: str | None) -> int | None:
    m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", content_range or "")
    return int(m.group(1)) if m else None


def _fetch_into(url: str, part: Path, timeout: float) -> bool:
    """Append the rest of ``url`` to ``part``; True if an existing ``part`` was continued."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return True  # nothing left to send: the .part is already whole (MD5 decides)
        raise UserError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"{url}: cannot connect ({reason}); re-run to retry") from None
    with resp:
        resumed = bool(offset) and resp.status == 206
        if resumed and _range_start(resp.headers.get("Content-Range")) != offset:
            raise UserError(f"{url}: server answered a resume with the wrong byte range")
        if not resumed:
            offset = 0  # server ignored Range (or there was nothing to resume): start over
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        try:
            with (
                open(part, "ab" if resumed else "wb") as f,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=part.name.removesuffix(".part"),
                    disable=None,
                ) as bar,
            ):
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, HTTPException) as e:
            raise UserError(
                f"{url}: download interrupted ({e}); re-run the same command to resume"
            ) from None
    if total is not None and part.stat().st_size != total:
        raise UserError(
            f"{url}: connection closed after {part.stat().st_size} of {total} bytes; "
            "re-run the same command to resume"
        )
    return resumed


def download_resumable(
    url: str, dest: Path, md5: str, *, timeout: float = 60.0, log: Log = _stderr
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (continued if present), check MD5."""
    from torchvision.datasets.utils import calculate_md5  # torch import: seconds, so lazy

    part = dest.with_name(dest.name + ".part")
    if part.is_file():
        log(f"resuming {part} ({part.stat().st_size} bytes already there)")
    resumed = _fetch_into(url, part, timeout)
    got = calculate_md5(part)
    if got != md5 and resumed:
        # A stale or damaged .part from an earlier run: one fresh try before giving up.
        log(f"{part}: MD5 mismatch after resuming; downloading again from the start")
        part.unlink()
        _fetch_into(url, part, timeout)
        got = calculate_md5(part)
    if got != md5:
        part.unlink()
        raise UserError(
            f"{url}: MD5 is {got}, expected {md5}; the download was removed "
            "(wrong --md5, or a damaged mirror)"
        )
    os.replace(part, dest)
    return dest


def extract(archive: Path, directory: Path) -> None:
    """Unpack ``archive`` into ``directory`` with a progress bar."""
    from torchvision.datasets.utils import extract_archive

    try:
        if tarfile.is_tarfile(archive):
            size = archive.stat().st_size
            with (
                open(archive, "rb") as raw,
                tqdm.wrapattr(
                    raw, "read", total=size, desc=f"extract {archive.name}", disable=None
                ) as f,
                tarfile.open(fileobj=f, mode="r|*") as tar,
            ):
                for member in tar:  # streaming: one pass over a 2 GB archive
                    tar.extract(member, directory, filter="data")
        else:
            extract_archive(archive, directory)
    except (tarfile.TarError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{archive}: cannot unpack ({e})") from None


def fetch(
    name: str,
    directory: str | Path,
    *,
    url: str | None = None,
    md5: str | None = None,
    keep_archive: bool = True,
    timeout: float = 60.0,
    log: Log = _stderr,
) -> Path:
    """Download (resumably), verify and unpack archive ``name`` into ``directory``.

    Returns the unpacked dataset directory (e.g. ``directory/VOCdevkit/VOC2012``), or
    ``directory`` itself for a ``url`` whose archive has another layout. Re-running
    after success does nothing; after an interruption it resumes.
    """
    if name not in ARCHIVES:
        raise UserError(f"unknown archive {name!r}; choose from {', '.join(ARCHIVES)}")
    spec = ARCHIVES[name]
    url = url or spec.url
    md5 = (md5 or spec.md5).lower()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise UserError(f"--md5 {md5!r} is not an MD5 (32 hex digits)")
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{directory}: cannot create ({e.strerror})") from None
    top = directory / spec.top

    # The marker makes a finished download a no-op even after --no-keep-archive.
    marker = directory / f".ddn-{name}-extracted"
    if marker.is_file() and marker.read_text().strip() == md5:
        log(f"{name}: already downloaded and unpacked in {directory}")
        return top if top.is_dir() else directory

    from torchvision.datasets.utils import check_integrity

    archive = directory / (Path(urlparse(url).path).name or f"{name}.archive")
    if archive.is_file() and not check_integrity(archive, md5):
        log(f"{archive}: exists but its MD5 differs; downloading it again")
        archive.unlink()
    if not archive.is_file():
        download_resumable(url, archive, md5, timeout=timeout, log=log)
    extract(archive, directory)
    marker.write_text(md5 + "\n")
    if not keep_archive:
        archive.unlink()
    return top if top.is_dir() else directory
