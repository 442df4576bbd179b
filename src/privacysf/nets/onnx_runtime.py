"""A network answered by ONNX Runtime instead of torch: the same weights, exported once, run faster.

Why: a query maps one code at a time in the service. At batch 1 the grid mapper is about a hundred
small operations, and torch's eager CPU kernels run each one alone; ONNX Runtime fuses normalisation,
activation and convolution and plans memory once. On one thread it mapped a query's code in
0.64-0.73 of torch's time at batch 1 (``tools/mapper_latency.py``, "mapper in ONNX Runtime").

The export traces the module with torch's ``torch.export``-based exporter (a few seconds, once per
loaded model) and leaves the batch size free. Answers agree with torch's up to float rounding.
Inference only: nothing flows back, so a module served this way cannot train.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from privacysf.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator


def require_onnx_runtime() -> None:
    """Stop with an install hint unless ONNX Runtime, torch's exporter and a torch that exports a free
    batch size are here (a service checks at start, not at its first mapping request)."""
    try:  # imported here: only a model that is served this way needs them
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401 (torch's exporter needs it)
    except ImportError:
        raise ConfigError(
            "mapper.runtime=onnxruntime needs ONNX Runtime and the ONNX exporter, which this "
            "install lacks: pip install 'privacysf[onnx]', or use mapper.runtime=torch"
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


class OnnxRuntimeModule:
    """``module``'s forward on one (N, ...) float tensor, answered by ONNX Runtime on the CPU.

    ``example`` fixes every dimension but the first (the batch). ``threads`` defaults to torch's at
    export time and stays fixed; the threads sleep between calls instead of spinning, so they leave
    the cores to the torch work (encode, decode) around a map in the same process."""

    def __init__(self, module: nn.Module, example: torch.Tensor, threads: int | None = None) -> None:
        require_onnx_runtime()
        import onnxruntime

        name = next(iter(inspect.signature(module.forward).parameters))
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                module.eval(),
                (example,),
                dynamo=True,
                dynamic_shapes={name: {0: torch.export.Dim.DYNAMIC}},
                verbose=False,
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        assert program is not None  # export returns the program whenever no file is given
        self.session = onnxruntime.InferenceSession(
            program.model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        array = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: array})[0])
