"""fedsim: federated learning in the style of TensorFlow Federated, on TensorFlow 2.16+ / Keras 3.

The federated core is re-exported here, as TFF's top level does, and the other packages are
reachable after `import fedsim` (loaded on first use, so `import fedsim` stays fast and boto3
stays optional)::

    import fedsim as tff
    import tensorflow as tf

    @tff.federated_computation(tff.FederatedType(tf.float32, tff.CLIENTS))
    def average(readings):
        return tff.federated_mean(readings)

    average([1.0, 2.0, 6.0])  # -> 3.0
    tff.learning.algorithms.build_weighted_fed_avg   # fedsim.learning, imported on this access
"""

import importlib
import sys
import types as _types

from fedsim import core, templates
from fedsim.core import *  # noqa: F401,F403 - the core is fedsim's top level, as in TFF
from fedsim.core import __all__ as _core_all

__version__ = "0.1.0"

_LAZY_PACKAGES = ("learning", "simulation", "aggregators", "aws")

# TFF 0.87+ spells the TensorFlow entry points `tff.tensorflow.computation` / `.to_type`.
tensorflow = _types.ModuleType("fedsim.tensorflow", "TFF 0.87+ spellings: `computation` (= tf_computation), `to_type`.")
tensorflow.computation = core.tf_computation
tensorflow.to_type = core.to_type
sys.modules["fedsim.tensorflow"] = tensorflow

# TFF's `tff.backends.native.set_sync_local_cpp_execution_context()` and friends: the local context.
backends = _types.ModuleType("fedsim.backends", "TFF's context setters; each selects fedsim's local context.")
backends.native, backends.test = core.backends.native, core.backends.test
sys.modules.update({"fedsim.backends": backends, "fedsim.backends.native": backends.native, "fedsim.backends.test": backends.test})

# TFF's `tff.types.type_at_clients` / `type_at_server`.
types = _types.ModuleType("fedsim.types", "TFF's type helpers.")
types.type_at_clients = core.type_at_clients
types.type_at_server = core.type_at_server
sys.modules["fedsim.types"] = types


def __getattr__(name: str):
    """`fedsim.learning`, `.simulation`, `.aggregators`, `.aws`: imported on first access."""
    if name in _LAZY_PACKAGES:
        module = importlib.import_module(f"fedsim.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_PACKAGES))


__all__ = ["core", "templates", "tensorflow", "backends", "types", "__version__", *_core_all]  # the lazy packages: by attribute
