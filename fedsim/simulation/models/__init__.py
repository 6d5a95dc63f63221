"""Small helpers TFF keeps under `tff.simulation.models`."""

from fedsim.simulation.models import mnist

__all__ = ["mnist"]
