"""fedsim.simulation: see ../shared/DESIGN.md; filled by its own issue."""

__all__: list = []
