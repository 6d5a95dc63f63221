"""Fetching a published dataset file, on request only: resumable, size-checked, atomic.

A loader downloads only when asked (`load_data(download=True)` or `FEDSIM_DOWNLOAD=1`): many
machines that run fedsim (silos among them) have no network, and a silent fetch of a large file
is not what a simulation should do. The bytes go to `<file>.partial`; an interrupted download
continues from there with an HTTP range request; the file appears under its name only when it is
complete (its size matches what the server declared, and its SHA-256 matches when one is given),
so a reader never sees half a file. The loaders then check the content itself (LZMA, SQLite tables).

Example::

    train, test = fedsim.simulation.datasets.emnist.load_data(download=True)
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from typing import Optional

from absl import logging

__all__ = ["DOWNLOAD_ENVIRONMENT_VARIABLE", "URL_ENVIRONMENT_VARIABLE", "DownloadError", "download_file", "download_requested"]

DOWNLOAD_ENVIRONMENT_VARIABLE = "FEDSIM_DOWNLOAD"
URL_ENVIRONMENT_VARIABLE = "FEDSIM_DATASETS_URL"  # a mirror: its base URL, where `<name>.sqlite.lzma` files are
_CHUNK = 1 << 20


class DownloadError(IOError):
    """A download that did not complete or does not match what was expected; the message says which."""


def download_requested(download: Optional[bool]) -> bool:
    """`download` if given, else whether `FEDSIM_DOWNLOAD` is set to 1/true/yes."""
    if download is not None:
        return bool(download)
    return os.environ.get(DOWNLOAD_ENVIRONMENT_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def download_file(url: str, destination: str, expected_sha256: Optional[str] = None, timeout: float = 60.0) -> str:
    """Downloads `url` to `destination` (resuming `destination.partial`); returns `destination`.

    Args:
        url: an http(s) URL.
        destination: the file to write (written whole, then renamed).
        expected_sha256: checked before the rename, if given.
        timeout: seconds per connection attempt.

    Returns:
        `destination`.

    Raises:
        DownloadError: on an HTTP error, no connection, a short body (call again to resume) or
            a checksum mismatch, naming the URL.
    """
    partial = destination + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    offset = os.path.getsize(partial) if os.path.exists(partial) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - an http(s) URL the user chose
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the partial file already holds everything
            response = None
        else:
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"{url}: cannot connect ({getattr(error, 'reason', error)}); is there a network here?") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            declared = response.headers.get("Content-Length")
            expected_total = (offset if resumed else 0) + int(declared) if declared is not None else None
            logging.info("downloading %s to %s%s", url, destination, f" from byte {offset}" if resumed else "")
            with open(partial, "ab" if resumed else "wb") as target:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    target.write(chunk)
        size = os.path.getsize(partial)
        if expected_total is not None and size != expected_total:
            raise DownloadError(f"{url}: received {size} of {expected_total} bytes; call again to resume")
    if expected_sha256 is not None:
        digest = hashlib.sha256()
        with open(partial, "rb") as source:
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                digest.update(chunk)
        if digest.hexdigest() != expected_sha256.lower():
            os.remove(partial)
            raise DownloadError(f"{url}: SHA-256 {digest.hexdigest()} is not the expected {expected_sha256}; the partial file was removed")
    os.replace(partial, destination)
    return destination
