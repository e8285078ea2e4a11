"""Parameter and FLOP counts, counted the way the papers (and SlowFast) report them.

GFLOPs are fvcore's ``FlopCountAnalysis`` total / 1e9 for one sample in eval mode, with
fvcore's default operator handles (a multiply-add counts as one FLOP; convolutions, linears,
matmuls and norms are counted, elementwise ops are not), as SlowFast's
``misc.get_model_stats`` reports them. fvcore does not know
``aten::scaled_dot_product_attention``, which our attention uses instead of two explicit
matmuls; it is counted here as exactly those two matmuls (``q @ k^T`` and ``attn @ v``).
``register_fvcore_handles`` gives every fvcore analysis that handle, Detectron2's
``FlopCountAnalysis`` / ``flop_count_operators`` included; ``import revdet`` and
``import revvideo`` call it. fvcore is an optional dependency, imported only when counting.
"""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Any, List, Optional, Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shape(value: Any) -> List[int]:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``softmax(q k^T) v`` as two matmuls: ``B*heads*Nq*Nk*(d_qk + d_v)`` multiply-adds."""
    q, k, v = (_shape(x) for x in inputs[:3])
    *batch, nq, d = q
    nk, dv = k[-2], v[-1]
    return math.prod(batch) * nq * nk * (d + dv)


SDPA = "aten::scaled_dot_product_attention"


def register_fvcore_handles() -> None:
    """Make every fvcore ``FlopCountAnalysis`` count fused attention, so that Detectron2's
    ``FlopCountAnalysis`` and ``flop_count_operators`` count revvision models fully.

    fvcore has no per-model registration: each analysis, Detectron2's subclass included,
    starts from fvcore's global handle table, so the handle is added there. This is a global
    registration, kept additive and idempotent: it never replaces a handle that is already
    there (the user's, or fvcore's own in a version that counts the op itself), and calling
    it again changes nothing.
    """
    # the module, not the function ``fvcore.nn.flop_count`` that shadows it as an attribute
    handles = importlib.import_module("fvcore.nn.flop_count")._DEFAULT_SUPPORTED_OPS
    handles.setdefault(SDPA, sdpa_flop_jit)


def count_flops(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> float:
    """GFLOPs of one forward of ``model`` on a single input of ``input_size``.

    ``input_size`` is ``(H, W)`` or ``(T, H, W)``; the model's configured size by default.
    Raises ``ImportError`` with an install hint when fvcore is missing.
    """
    with warnings.catch_warnings():
        # tracing chatter: fvcore uses the deprecated torch.jit; shape checks become constants
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            from fvcore.nn import FlopCountAnalysis
        except ImportError as e:
            raise ImportError("counting FLOPs needs fvcore: pip install fvcore") from e
        cfg = getattr(model, "cfg", None)
        if input_size is None:
            if cfg is None:
                raise ValueError("pass input_size: the model has no cfg.input_size")
            input_size = cfg.input_size
        in_chans = cfg.in_chans if cfg is not None else 3
        param = next(model.parameters())
        x = torch.zeros(1, in_chans, *input_size, dtype=param.dtype, device=param.device)
        was_training = model.training
        model.eval()
        try:
            analysis = FlopCountAnalysis(model, (x,))
            analysis.set_op_handle(SDPA, sdpa_flop_jit)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            with torch.no_grad():
                total = analysis.total()
        finally:
            model.train(was_training)
    return total / 1e9
