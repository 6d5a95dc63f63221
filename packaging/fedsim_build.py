"""The PEP 517 build backend: setuptools, run on a scratch copy of the source tree.

setuptools builds in place (`build/`, `fedsim.egg-info/` beside `setup.cfg`) and has no setting
that moves those folders elsewhere, so `pip install .` would leave them in a user's clone. This
backend copies the tree to a temporary directory and runs setuptools' hooks there. Editable
installs are delegated unchanged: they must point at the source tree itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

from setuptools import build_meta as _setuptools

# What a build does not need to copy (and what it would otherwise leave behind).
_NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


@contextlib.contextmanager
def _in_scratch_copy() -> Iterator[None]:
    source = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="fedsim-build-") as scratch:
        copy = os.path.join(scratch, "source")
        shutil.copytree(source, copy, ignore=_NOT_COPIED)
        os.chdir(copy)
        try:
            yield
        finally:
            os.chdir(source)


def _in_copy(hook: Callable) -> Callable:
    def run(*args: Any, **kwargs: Any) -> Any:
        # the frontend's output directories, made absolute before the working directory changes
        args = tuple(os.path.abspath(a) if isinstance(a, str) else a for a in args)
        kwargs = {k: os.path.abspath(v) if k.endswith("_directory") and isinstance(v, str) else v for k, v in kwargs.items()}
        with _in_scratch_copy():
            return hook(*args, **kwargs)

    run.__name__ = hook.__name__
    run.__doc__ = hook.__doc__
    return run


get_requires_for_build_wheel = _in_copy(_setuptools.get_requires_for_build_wheel)
get_requires_for_build_sdist = _in_copy(_setuptools.get_requires_for_build_sdist)
prepare_metadata_for_build_wheel = _in_copy(_setuptools.prepare_metadata_for_build_wheel)
build_wheel = _in_copy(_setuptools.build_wheel)
build_sdist = _in_copy(_setuptools.build_sdist)
get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_editable = _setuptools.build_editable
