"""A network answered by ONNX Runtime instead of torch: the same weights, exported once, run faster.

Why: a query maps one code at a time in the service. At batch 1 the grid mapper is about a hundred
small operations, and torch's eager CPU kernels run each one alone; ONNX Runtime fuses normalisation,
activation and convolution and plans memory once. On one thread it mapped a query's code in
0.64-0.78 of torch's time at batch 1 (``tools/mapper_latency.py``, "mapper in ONNX Runtime").

The export traces the module with torch's ``torch.export``-based exporter and leaves the batch size
free. It takes about 3 s, so a served model keeps it in a file beside its checkpoint and later loads
(a restarted service, a model the cache dropped, the next ``segment``) read it back in a fraction of a
second. Answers agree with torch's up to float rounding. Inference only: nothing flows back, so a
module served this way cannot train.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from privacysf.common.runs import write_bytes
from privacysf.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger(__name__)

FINGERPRINT = "privacysf.fingerprint"
"""The ONNX metadata entry of a kept export that names the weights and input shape it was made from."""


def require_onnx_runtime() -> None:
    """Stop with an install hint unless ONNX Runtime, torch's exporter and a torch that exports a free
    batch size are here (a service checks at start, not at its first mapping request)."""
    try:  # imported here: only a model that is served this way needs them
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401 (torch's exporter needs it)
    except ImportError:
        raise ConfigError(
            "mapper.runtime=onnxruntime needs ONNX Runtime and the ONNX exporter, which this "
            "install lacks: pip install 'privacysf[onnx]', or use mapper.runtime=torch (for the "
            "service: privacysf server serve --mapper-runtime torch)"
        ) from None
    if not hasattr(torch.export.Dim, "DYNAMIC"):
        raise ConfigError(
            f"mapper.runtime=onnxruntime needs torch 2.7 or later (this is {torch.__version__}); "
            "use mapper.runtime=torch"
        )


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a line per optional operator library it does not find (e.g. torchvision's)
    and torch 2.13's own pytree code warns of a deprecation inside it; neither concerns these networks
    or anything a user can change."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def fingerprint(module: nn.Module, example: torch.Tensor) -> str:
    """A digest of what an export of ``module`` depends on besides the code: torch's version, the
    input's shape past the batch, and every parameter and buffer by name and value.

    A kept export is reused only where this matches. A change in the network's code would not show
    here, so a reused export must also answer a probe as torch does (:class:`OnnxRuntimeModule`)."""
    digest = hashlib.sha256(f"{torch.__version__} {tuple(example.shape[1:])}".encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class OnnxRuntimeModule:
    """``module``'s forward on one (N, ...) float tensor, answered by ONNX Runtime on the CPU.

    ``example`` fixes every dimension but the first (the batch). ``threads`` defaults to torch's at
    export time and stays fixed; the threads sleep between calls instead of spinning, so they leave
    the cores to the torch work (encode, decode) around a map in the same process.

    With a ``cache`` file the export is read from it when it was made from these weights for this
    shape and answers a probe as torch does; otherwise the module is exported and the file written
    (atomically; where it cannot be written, the log says so and serving goes on).
    """

    def __init__(
        self, module: nn.Module, example: torch.Tensor, threads: int | None = None, cache: Path | None = None
    ) -> None:
        require_onnx_runtime()
        import onnxruntime

        self.options = onnxruntime.SessionOptions()
        self.options.intra_op_num_threads = threads or torch.get_num_threads()
        self.options.inter_op_num_threads = 1
        self.options.log_severity_level = 3  # errors only
        self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        module = module.eval()
        digest = fingerprint(module, example)
        self.reused = cache is not None and self._reuse(cache, module, example, digest)
        if not self.reused:
            exported = _export(module, example, digest)
            self.session = self._session(exported)
            if cache is not None:
                _keep(cache, exported)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        array = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: array})[0])

    def _session(self, model: bytes):
        import onnxruntime

        return onnxruntime.InferenceSession(model, self.options, providers=["CPUExecutionProvider"])

    def _reuse(self, cache: Path, module: nn.Module, example: torch.Tensor, digest: str) -> bool:
        """Whether ``cache`` holds an export of these weights that answers as ``module`` does (and is
        now this object's session)."""
        try:
            self.session = self._session(cache.read_bytes())
        except Exception:  # absent, unreadable or not an ONNX model: export afresh
            return False
        if self.session.get_modelmeta().custom_metadata_map.get(FINGERPRINT) != digest:
            return False
        probe = torch.rand((2, *example.shape[1:]), generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            expected = module(probe.to(example.device)).cpu()
        self.input = self.session.get_inputs()[0].name
        if torch.allclose(self(probe), expected, rtol=1e-3, atol=1e-4):
            return True
        log.warning(
            "the kept ONNX export %s answers unlike its network (changed code?); exporting again", cache
        )
        return False


def _export(module: nn.Module, example: torch.Tensor, digest: str) -> bytes:
    """The ONNX model of ``module`` with a free batch size, its ``digest`` in the metadata."""
    name = next(iter(inspect.signature(module.forward).parameters))
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            dynamic_shapes={name: {0: torch.export.Dim.DYNAMIC}},
            verbose=False,
        )
    assert program is not None  # export returns the program whenever no file is given
    model = program.model_proto  # a fresh proto at each access
    model.metadata_props.add(key=FINGERPRINT, value=digest)
    return model.SerializeToString()


def _keep(cache: Path, exported: bytes) -> None:
    try:
        write_bytes(cache, exported)
    except OSError as error:
        log.warning("could not keep the ONNX export in %s (%s); the next load exports it again", cache, error)
