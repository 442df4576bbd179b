"""Peak memory of one piece of work, on the CPU and on CUDA.

Training cost per stage is a published figure (``privacysf bench``), so every call of the training
loop measures it. The CPU figure is the process's resident set size sampled by a background thread
(``ru_maxrss`` would only give the peak of the whole process so far, not of one stage); on CUDA the
allocator's own peak counter is exact.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil
import torch

SAMPLE_SECONDS = 0.05
MB = 2**20


@dataclass
class MemoryUse:
    """Peak resident memory during the work and its rise over the start, in MiB (CUDA: allocator peak)."""

    peak_rss_mb: float
    rss_growth_mb: float
    cuda_peak_mb: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "rss_growth_mb": round(self.rss_growth_mb, 1),
            "cuda_peak_mb": None if self.cuda_peak_mb is None else round(self.cuda_peak_mb, 1),
        }


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.result`` holds the :class:`MemoryUse`.

    ``pid`` meters another process instead (the service's load bench samples the server's RSS);
    ``interval`` is the seconds between two samples (a short peak needs a short one)."""

    def __init__(
        self, device: torch.device | None = None, pid: int | None = None, interval: float = SAMPLE_SECONDS
    ) -> None:
        self.cuda = device is not None and device.type == "cuda"
        self.interval = interval
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._start_rss = self._peak_rss = 0
        self.result: MemoryUse | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak_rss = max(self._peak_rss, self._process.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._start_rss = self._peak_rss = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak_rss = max(self._peak_rss, self._process.memory_info().rss)
        cuda_peak = torch.cuda.max_memory_allocated() / MB if self.cuda else None
        self.result = MemoryUse(self._peak_rss / MB, (self._peak_rss - self._start_rss) / MB, cuda_peak)
