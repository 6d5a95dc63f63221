"""Every public entry point carries reference documentation: a docstring, and `Args:` when it takes arguments."""

import importlib
import inspect

import pytest

PACKAGES = [
    "fedsim", "fedsim.core", "fedsim.core.secagg", "fedsim.learning", "fedsim.learning.algorithms",
    "fedsim.learning.metrics", "fedsim.learning.models", "fedsim.learning.optimizers", "fedsim.learning.templates",
    "fedsim.templates", "fedsim.aggregators", "fedsim.simulation", "fedsim.simulation.datasets", "fedsim.aws",
]


def _documented_elsewhere(cls) -> bool:
    """attrs classes document their fields as Attributes; others may put Args in the class docstring."""
    doc = cls.__doc__ or ""
    return hasattr(cls, "__attrs_attrs__") or "Args:" in doc or "Attributes:" in doc


def _entry_points(package: str):
    module = importlib.import_module(package)
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if inspect.isfunction(obj):
            yield f"{package}.{name}", obj
        elif inspect.isclass(obj) and obj.__module__.startswith("fedsim"):
            yield f"{package}.{name}", obj
            for attribute, member in vars(obj).items():
                if attribute == "__init__" and _documented_elsewhere(obj):
                    continue
                if (attribute.startswith("_") and attribute != "__init__") or not inspect.isfunction(member):
                    continue
                yield f"{package}.{name}.{attribute}", member


def _problem(function) -> str:
    doc = inspect.getdoc(function) or ""
    if not doc:
        return "no docstring"
    if inspect.isclass(function):
        return ""
    try:
        parameters = [p for p in inspect.signature(function).parameters if p not in ("self", "cls")]
    except (TypeError, ValueError):
        return ""
    if parameters and "Args:" not in doc:
        return f"takes {parameters} but has no Args: section"
    return ""


@pytest.mark.parametrize("package", PACKAGES)
def test_public_entry_points_have_reference_docstrings(package):
    problems = [f"{where}: {problem}" for where, function in _entry_points(package) if (problem := _problem(function))]
    assert not problems, "\n".join(problems)
