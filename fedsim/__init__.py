"""fedsim: federated learning in the style of TensorFlow Federated, on TensorFlow 2.16+ / Keras 3.

The federated core is re-exported here, as TFF's top level does::

    import fedsim
    import tensorflow as tf

    @fedsim.federated_computation(fedsim.FederatedType(tf.float32, fedsim.CLIENTS))
    def average(readings):
        return fedsim.federated_mean(readings)

    average([1.0, 2.0, 6.0])  # -> 3.0
"""

from fedsim import core, templates
from fedsim.core import *  # noqa: F401,F403 - the core is fedsim's top level, as in TFF
from fedsim.core import __all__ as _core_all

__version__ = "0.1.0"

__all__ = ["core", "templates", "__version__", *_core_all]
