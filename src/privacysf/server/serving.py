"""Trained mappers kept loaded for the mapping endpoint, so a request does not reload weights."""

from __future__ import annotations

import threading
from collections import OrderedDict

from privacysf.config import AugmentConfig, MapperConfig, TrainConfig
from privacysf.server.mapping import MappingServer
from privacysf.server.store import Store
from privacysf.server.tables import ModelRow


class ModelCache:
    """At most ``store.cfg.model_cache`` mappers in memory, least recently used dropped first."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.loaded: OrderedDict[int, MappingServer] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, row: ModelRow) -> MappingServer:
        with self.lock:
            if row.id in self.loaded:
                self.loaded.move_to_end(row.id)
                return self.loaded[row.id]
        server = MappingServer(MapperConfig(**row.mapper), AugmentConfig(), TrainConfig(device="cpu"))
        server.load(self.store.files.model(row.file), tuple(row.grid), row.in_channels, row.out_channels)
        with self.lock:
            self.loaded[row.id] = server
            while len(self.loaded) > self.store.cfg.model_cache:
                self.loaded.popitem(last=False)
        return server
