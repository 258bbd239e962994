"""The native runtime: Redis, the instances, nginx and the health loop as children of supervisord."""

from farmctl.native.farm import NativeFarm

__all__ = ["NativeFarm"]
