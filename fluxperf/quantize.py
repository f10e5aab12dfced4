"""torchao float8 dynamic activation + float8 weight quantization. The only module importing torchao.

Counts and reports conversions: torchao silently skips Linear layers whose dims are not multiples of 16
(lesson 7), so the report says how many of how many Linear layers became float8, and which were skipped.
"""

from __future__ import annotations

from .errors import UnavailableError
from .optional import install_hint, require
from .recipe import QuantizeConfig


def float8_linear_count(module) -> int:
    """Number of nn.Linear layers whose weight is a torchao Float8Tensor (0 without torchao)."""
    import torch

    float8_cls = _float8_tensor_class()
    if float8_cls is None:
        return 0
    return sum(isinstance(m.weight, float8_cls) for m in module.modules() if isinstance(m, torch.nn.Linear))


def linear_names(module) -> list[str]:
    import torch

    return [name for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)]


def check_float8_hardware(device) -> None:
    """float8 matmuls need CUDA compute capability >= 8.9 (Ada/Hopper); raise a clear error otherwise."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        raise UnavailableError(
            "float8 quantization", f"the model is on {device}, but torchao's float8 matmul needs a CUDA GPU",
            "move the pipeline to an sm89+ GPU (L4/L40/H100) before apply(), or use a recipe without quantize",
        )
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        raise UnavailableError(
            "float8 quantization", f"GPU compute capability {cap[0]}.{cap[1]} < 8.9",
            "use an Ada/Hopper GPU (sm89/sm90), or a recipe without quantize",
        )


def quantize_float8(module, cfg: QuantizeConfig) -> dict:
    """Quantize every Linear of `module` in place with Float8DynamicActivationFloat8WeightConfig.

    Args:
        module: the transformer (on its GPU, in bf16).
        cfg: granularity "tensor" (PerTensor) or "row" (PerRow).
    Returns:
        report: linear_count, float8_count, skipped (names of Linear layers left unconverted), granularity.
    """
    torchao = require("torchao")
    check_float8_hardware(next(module.parameters()).device)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    granularity = PerRow() if cfg.granularity == "row" else PerTensor()
    # set_inductor_config=False: torchao would otherwise flip global inductor flags behind our back.
    config = Float8DynamicActivationFloat8WeightConfig(granularity=granularity, set_inductor_config=False)
    names = linear_names(module)
    from .faults import active

    if not active("skip_float8"):  # the fault exists to prove the engagement guard catches a silent skip
        quantize_(module, config)
    converted = _float8_names(module)
    return {
        "torchao": getattr(torchao, "__version__", None),
        "granularity": cfg.granularity,
        "linear_count": len(names),
        "float8_count": len(converted),
        "skipped": [n for n in names if n not in converted],
    }


def _float8_names(module) -> set[str]:
    import torch

    float8_cls = _float8_tensor_class()
    return {n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and isinstance(m.weight, float8_cls)}


def _float8_tensor_class():
    import sys

    if "torchao" not in sys.modules:  # never import torchao just to count: nothing can be float8 without it
        return None
    try:
        from torchao.quantization import Float8Tensor
    except ImportError as exc:
        raise UnavailableError("torchao Float8Tensor", str(exc), install_hint("torchao")) from exc
    return Float8Tensor
