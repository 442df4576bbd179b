"""A network answered by ONNX Runtime instead of torch: the same weights, exported once, run faster.

Why: a query maps one code at a time in the service. At batch 1 the grid mapper is about a hundred
small operations, and torch's eager CPU kernels run each one alone; ONNX Runtime fuses normalisation,
activation and convolution and plans memory once. On one thread it mapped a query's code in
0.64-0.79 of torch's time at batch 1 (``tools/mapper_latency.py``, "mapper in ONNX Runtime").

The export traces the module with torch's ``torch.export``-based exporter and leaves the batch size
free. It takes about 3 s, so a served model keeps it in a file beside its checkpoint and later loads
(a restarted service, a model the cache dropped, the next ``segment``) read it back in a fraction of a
second. Answers agree with torch's up to float rounding. Inference only: nothing flows back, so a
module served this way cannot train.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import stat
import threading
import warnings
from contextlib import contextmanager
from importlib import metadata
from typing import TYPE_CHECKING

import torch
from torch import nn

from privacysf.common.runs import atomic_write
from privacysf.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import onnxruntime

log = logging.getLogger(__name__)

FINGERPRINT = "privacysf.fingerprint"
"""The ONNX metadata entry of a kept export that names what it was made from (:func:`fingerprint`)."""


def require_onnx_runtime() -> None:
    """Stop with an install hint unless ONNX Runtime, torch's exporter and a torch that exports a free
    batch size are here (a service checks at start, not at its first mapping request)."""
    # found, not imported: a server whose models all have kept exports never loads torch's exporter
    # or onnxscript (about 175 MiB of resident memory once an export has run)
    if any(importlib.util.find_spec(name) is None for name in ("onnxruntime", "onnxscript")):
        raise ConfigError(
            "mapper.runtime=onnxruntime needs ONNX Runtime and the ONNX exporter, which this "
            "install lacks: pip install 'privacysf[onnx]', or use mapper.runtime=torch (for the "
            "service: privacysf server serve --mapper-runtime torch)"
        )
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
    """A digest of what an export of ``module`` depends on besides the network's code: the versions of
    torch and of the exporter's ONNX packages, the input's shape past the batch, and every parameter
    and buffer (persistent or not, such as the position grids) by name, dtype, shape and bytes.

    A kept export is reused only where this matches. A change in the network's code would not show
    here, so a reused export must also answer a probe as torch does (:class:`OnnxRuntimeModule`)."""
    digest = hashlib.sha256()

    def add(part: bytes) -> None:  # length-prefixed, so no two sequences of parts run together
        digest.update(len(part).to_bytes(8, "little") + part)

    versions = (torch.__version__, metadata.version("onnx"), metadata.version("onnxscript"))
    for part in (*versions, str(tuple(example.shape[1:]))):
        add(part.encode())
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        values = tensor.detach().to("cpu").contiguous().reshape(-1)
        add(f"{name} {values.dtype} {tuple(tensor.shape)}".encode())
        add(values.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_EXPORTING = threading.Lock()
"""One export at a time: the exporter's quieting changes process-wide logging and warning filters."""


class OnnxRuntimeModule:
    """``module``'s forward on one (N, ...) float tensor, answered by ONNX Runtime on the CPU.

    ``example`` fixes every dimension but the first (the batch). ``threads`` defaults to torch's at
    export time and stays fixed; the threads sleep between calls instead of spinning, so they leave
    the cores to the torch work (encode, decode) around a map in the same process.

    A module loaded from a ``checkpoint`` keeps its export beside it, under the same name with
    ``.onnx``: the export is read from there when it was made from these weights for this shape, keeps
    the batch free and answers a probe as torch does; otherwise the module is exported and the file
    written atomically with the checkpoint's permission bits (it holds the same weights). Where it
    cannot be written, the log says so and the export serves from memory. The kept file is a graph
    ONNX Runtime executes, so it must be trusted like the checkpoint and the code beside it.
    """

    def __init__(
        self,
        module: nn.Module,
        example: torch.Tensor,
        threads: int | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        require_onnx_runtime()
        import onnxruntime

        self._options = onnxruntime.SessionOptions()
        self._options.intra_op_num_threads = threads or torch.get_num_threads()
        self._options.inter_op_num_threads = 1
        self._options.log_severity_level = 3  # errors only
        self._options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # no memory arena: it keeps the largest batch's activations for the session's life. Four
        # 256² sessions held 540-549 MiB after a query of 1 and one of 32 codes each, 63 MiB without
        # it, at the same batch-1 time and 1.13 x the batch-32 time (docs/results.md, "The service
        # maps in ONNX Runtime")
        self._options.enable_cpu_mem_arena = False
        module = module.eval()
        digest = "" if checkpoint is None else fingerprint(module, example)
        kept = None if checkpoint is None else self._kept(checkpoint, module, example, digest)
        self.reused = kept is not None
        """Whether the export was read back from beside the checkpoint instead of made now."""
        if kept is None:
            with _EXPORTING:
                exported = _export(module, example, digest)
            kept = self._session(exported)
            if checkpoint is not None:
                _keep(checkpoint, exported)
        self.session = kept
        self.input = kept.get_inputs()[0].name

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: _array(inputs)})[0])

    def _session(self, model: bytes) -> onnxruntime.InferenceSession:
        import onnxruntime

        return onnxruntime.InferenceSession(model, self._options, providers=["CPUExecutionProvider"])

    def _kept(
        self, checkpoint: Path, module: nn.Module, example: torch.Tensor, digest: str
    ) -> onnxruntime.InferenceSession | None:
        """A session on the export kept beside ``checkpoint`` if it was made from these weights, keeps
        the batch free and answers as ``module`` does on a random probe; None (export afresh) otherwise."""
        import onnx

        cache = _beside(checkpoint)
        if not cache.is_file():
            return None
        try:
            kept = cache.read_bytes()
            model = onnx.load_model_from_string(kept)
            if {p.key: p.value for p in model.metadata_props}.get(FINGERPRINT) != digest:
                log.info("the kept ONNX export %s is of other weights or versions; exporting again", cache)
                return None
            if _points_elsewhere(model.graph):
                raise ValueError("it points to weights in other files")
            session = self._session(kept)
            if not isinstance(session.get_inputs()[0].shape[0], str):
                raise ValueError("its batch size is fixed")
            draw = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))  # not torch's own
            probe = torch.rand((3, *example.shape[1:]), generator=draw) * 2 - 1
            with torch.no_grad():
                expected = module(probe.to(example.device)).cpu()
            name = session.get_inputs()[0].name
            answer = torch.from_numpy(session.run(None, {name: _array(probe)})[0])
            if not torch.allclose(answer, expected, rtol=1e-3, atol=1e-4):
                raise ValueError("it answers unlike its network (changed code?)")
        except Exception as error:  # unreadable, not ONNX, or not this network: export afresh
            log.warning("the kept ONNX export %s cannot be used (%s); exporting again", cache, error)
            return None
        return session


def _points_elsewhere(graph) -> bool:
    """Whether any tensor of ``graph`` (an ONNX GraphProto), its nodes' constants or its subgraphs
    keeps its values in another file, which ONNX Runtime would resolve against the working folder."""
    from onnx.external_data_helper import uses_external_data

    tensors = list(graph.initializer)
    graphs = []
    for node in graph.node:
        for attribute in node.attribute:
            tensors += [attribute.t, *attribute.tensors]
            graphs += [attribute.g, *attribute.graphs]
    return any(uses_external_data(t) for t in tensors) or any(_points_elsewhere(g) for g in graphs)


def _array(inputs: torch.Tensor):
    """``inputs`` as the float32 C-ordered numpy array ONNX Runtime takes."""
    return inputs.detach().to("cpu", torch.float32).contiguous().numpy()


def _export(module: nn.Module, example: torch.Tensor, digest: str) -> bytes:
    """The ONNX model of ``module`` with a free batch size, ``digest`` in its metadata."""
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


def _beside(checkpoint: Path) -> Path:
    """Where the export of the network in ``checkpoint`` is kept: the same name, ``.onnx``."""
    return checkpoint.with_suffix(".onnx")


def _keep(checkpoint: Path, exported: bytes) -> None:
    """Write ``exported`` beside ``checkpoint`` with its permission bits, set once the bytes are in; a
    failure is logged, not raised, since the export in memory still serves."""
    cache, mode = _beside(checkpoint), checkpoint.stat().st_mode & 0o777

    def write(tmp: Path) -> None:
        os.chmod(tmp, mode | stat.S_IWUSR)  # writable by us while it fills, whatever ``mode`` says
        tmp.write_bytes(exported)
        os.chmod(tmp, mode)

    try:
        atomic_write(cache, write)
    except OSError as error:
        log.warning("could not keep the ONNX export in %s (%s); the next load exports it again", cache, error)
