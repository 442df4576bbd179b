"""Server side: sees only codes. Imports torch, the exchange format and shared network blocks only."""

from privacysf.server.mapping import MappingServer

__all__ = ["MappingServer"]
