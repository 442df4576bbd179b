"""Trained mappers kept loaded for the mapping endpoint, so a request does not reload weights (nor, for
encrypted queries, the center's evaluation keys)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from privacysf.config import AugmentConfig, MapperConfig, TrainConfig
from privacysf.errors import ConflictError
from privacysf.server.mapping import MappingServer
from privacysf.server.store import Store
from privacysf.server.tables import EvaluationKeyRow, ModelRow


class ModelCache:
    """At most ``store.cfg.model_cache`` mappers in memory, least recently used dropped first."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.loaded: OrderedDict[int, MappingServer] = OrderedDict()
        self.registered: dict[tuple[int, str], str] = {}
        """The key file each loaded model took for a key id: a center's new keys replace the old."""
        self.lock = threading.Lock()
        self.loading: dict[int, threading.Lock] = {}
        """One lock per model being loaded: concurrent first requests for a model wait for one load
        (with ``mapper_runtime=onnxruntime`` an export of a few seconds) instead of each doing it."""

    def get(self, row: ModelRow) -> MappingServer:
        with self.lock:
            if (server := self._cached(row.id)) is not None:
                return server
            loading = self.loading.setdefault(row.id, threading.Lock())
        with loading:
            with self.lock:
                if (server := self._cached(row.id)) is not None:  # loaded while this one waited
                    return server
            mapper = MapperConfig.saved(row.mapper)
            if mapper.exportable:
                mapper = mapper.updated(runtime=self.store.cfg.mapper_runtime)
            server = MappingServer(mapper, AugmentConfig(), TrainConfig(device="cpu"))
            path = self.store.files.model(row.file)
            try:
                server.load(path, tuple(row.grid), row.in_channels, row.out_channels)
                with self.lock:
                    self.loaded[row.id] = server
                    while len(self.loaded) > self.store.cfg.model_cache:
                        dropped, _ = self.loaded.popitem(last=False)
                        self.registered = {k: v for k, v in self.registered.items() if k[0] != dropped}
            finally:  # loaded (later requests find it cached) or failed (the next one tries afresh)
                with self.lock:
                    self.loading.pop(row.id, None)
        return server

    def _cached(self, model_id: int) -> MappingServer | None:
        """The loaded model, marked most recently used (call with ``lock`` held)."""
        if model_id in self.loaded:
            self.loaded.move_to_end(model_id)
            return self.loaded[model_id]
        return None

    def with_keys(self, row: ModelRow, keys: EvaluationKeyRow) -> MappingServer:
        """The model, holding the center's evaluation ``keys`` (read from the store once per key file,
        and again whenever the loaded model lacks them: it may have been evicted and reloaded)."""
        server = self.get(row)
        with self.lock:
            current = self.registered.get((row.id, keys.key_id))
        if current != keys.file or keys.key_id not in server.key_ids():
            try:
                message = self.store.files.key(keys.file).read_bytes()
            except FileNotFoundError:  # replaced by a PUT since this request looked them up
                raise ConflictError(
                    f"evaluation keys {keys.key_id} were just replaced; send the query again"
                ) from None
            server.register_keys(message)
            with self.lock:
                self.registered[(row.id, keys.key_id)] = keys.file
        return server
