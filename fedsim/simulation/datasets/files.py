"""Finding a published dataset file on local disk, and fetching it only when asked.

`locate_database("emnist_all", cache_dir)` returns the path of `emnist_all.sqlite` in
`cache_dir` (else `$FEDSIM_DATA_DIR`, else `~/.fedsim/datasets`). If only the published
`emnist_all.sqlite.lzma` is there, it is decompressed once beside it (atomically, with an index on
`examples(client_id)` so a client's read touches only its rows). If neither is there, it is
downloaded when `download=True` (or `FEDSIM_DOWNLOAD=1`; see `download`), else the error names
the exact file expected and where to get it.
"""

from __future__ import annotations

import lzma
import os
import shutil
import sqlite3
from typing import Optional

from absl import logging

from fedsim.simulation.datasets import download

__all__ = ["DATA_DIR_ENVIRONMENT_VARIABLE", "PUBLIC_URL", "data_dir", "locate_database", "public_url"]

DATA_DIR_ENVIRONMENT_VARIABLE = "FEDSIM_DATA_DIR"
PUBLIC_URL = "https://storage.googleapis.com/tff-datasets-public/{name}.sqlite.lzma"


def data_dir(cache_dir: Optional[str] = None) -> str:
    if cache_dir is not None:
        return os.path.expanduser(os.fspath(cache_dir))
    return os.path.expanduser(os.environ.get(DATA_DIR_ENVIRONMENT_VARIABLE, "~/.fedsim/datasets"))


def public_url(name: str) -> str:
    """Where `<name>.sqlite.lzma` is published (or mirrored, with `FEDSIM_DATASETS_URL`)."""
    mirror = os.environ.get(download.URL_ENVIRONMENT_VARIABLE)
    if mirror:
        return f"{mirror.rstrip('/')}/{name}.sqlite.lzma"
    return PUBLIC_URL.format(name=name)


def locate_database(name: str, cache_dir: Optional[str] = None, download_missing: Optional[bool] = None) -> str:
    """The path of `<name>.sqlite`, decompressing `<name>.sqlite.lzma` if that is what is there.

    A missing file is downloaded first if a download was asked for.

    Args:
        name: the dataset's file stem (e.g. `"emnist_digitsonly"`).
        cache_dir: where the files are (default: `$FEDSIM_DATA_DIR`, else `~/.fedsim/datasets`).
        download_missing: download a missing file from TFF's published location (None: as
            `FEDSIM_DOWNLOAD=1` says).

    Returns:
        The `.sqlite` file's path.

    Raises:
        FileNotFoundError: if the file is missing and no download was asked for, saying where to put it.
        ValueError: if the compressed file is corrupt or not a TFF database.
    """
    directory = data_dir(cache_dir)
    database = os.path.join(directory, f"{name}.sqlite")
    compressed = database + ".lzma"
    if os.path.isfile(database):
        return database
    if not os.path.isfile(compressed) and download.download_requested(download_missing):
        download.download_file(public_url(name), compressed)
    if not os.path.isfile(compressed):
        where = "cache_dir" if cache_dir is not None else f"${DATA_DIR_ENVIRONMENT_VARIABLE} or ~/.fedsim/datasets"
        raise FileNotFoundError(
            f"dataset file not found: expected {compressed} (or the decompressed {database}), looked in {where}. "
            f"Pass download=True (or set ${download.DOWNLOAD_ENVIRONMENT_VARIABLE}=1) to fetch {public_url(name)}, "
            f"or put the file in {directory} / pass cache_dir= / set ${DATA_DIR_ENVIRONMENT_VARIABLE} to where it is."
        )
    _decompress(compressed, database)
    return database


def _decompress(compressed: str, database: str) -> None:
    partial = f"{database}.partial-{os.getpid()}"
    logging.info("decompressing %s", compressed)
    try:
        with lzma.open(compressed, "rb") as source, open(partial, "wb") as target:
            shutil.copyfileobj(source, target, length=1 << 20)
        connection = sqlite3.connect(partial)
        try:
            connection.execute("CREATE INDEX IF NOT EXISTS fedsim_examples_by_client ON examples (client_id, split_name)")
            connection.commit()
        finally:
            connection.close()
    except lzma.LZMAError as error:
        _remove(partial)
        raise ValueError(f"{compressed}: not a valid LZMA file ({error}); download it again") from None
    except sqlite3.DatabaseError as error:
        _remove(partial)
        raise ValueError(f"{compressed}: decompressed, but not a SQLite database with an 'examples' table ({error})") from None
    except BaseException:
        _remove(partial)
        raise
    os.replace(partial, database)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
