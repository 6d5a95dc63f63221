"""fedsim.aws: see ../shared/DESIGN.md; filled by its own issue."""

__all__: list = []
