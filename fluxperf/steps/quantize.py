"""torchao dynamic quantization of the transformer's Linear layers: float8 (Float8DynamicActivationFloat8WeightConfig,
flux-fast's) or int8 (Int8DynamicActivationInt8WeightConfig: per-token int8 activations, int8 weights). The only
module importing torchao.

Counts and reports conversions: torchao silently skips Linear layers whose dims are not multiples of 16
(lesson 7), so the report says how many of how many Linear layers were quantized, and which were skipped and why.
`quantize_transformer` picks the kind; the report's `quantized_count` is the generic count and `float8_count` /
`int8_count` the per-kind ones (0 for the other kind), so `AppliedStack.float8_linear_count` keeps its meaning.

int8 (torchao 0.18, torchao/kernel/intmm.py): runs on CPU (`_int_scaled_matmul_cpu`) and CUDA (torch._int_mm via
`safe_int_mm`). On CUDA a layer whose in/out features are not multiples of 8 silently takes the fallback that copies
both operands to the CPU at every call; `int8_shape_reason` leaves such layers unconverted (reported). torch._int_mm
also needs more than 16 activation rows: the Linears fed one row per sample (the AdaLN modulation and the
timestep/guidance/pooled-text embedders; `per_sample_linears`) get batch-size rows, where torchao's eager path
catches the error and silently runs an fp32 matmul instead, and the compiled path fails ("self.size(0) needs to be
greater than 16, but got 1": compile_int8 on the H200, 2026-11-30, perf/results/h200-session4/). On CUDA those stay
unconverted (`int8_rows_reason`, reported). No GPU capability floor beyond what torch._int_mm needs; the probe below
runs one forward per shape on the model's device.

Only layers whose forward runs are converted (a `filter_fn` for quantize_); the others stay in the model's
dtype and are reported in `skipped_reasons`. For float8:
* the shape rule (`float8_shape_reason`, checked on any machine): torch._scaled_mm needs in and out features that
  are multiples of 16; and with tensor-wise scaling torchao 0.18 takes a 128x128 weight (block_size == shape ==
  (128, 128)) for a 128x128 BLOCK-scaled one (`_is_128_128_scaled` in float8_tensor.py's addmm) and asserts
  "input_tensor must be 1x128 scaled" at the first forward (row-wise weights have block_size (1, in): unaffected);
* a probe (`float8_probe_reason`, `probe_reason` for either kind): one fresh Linear per distinct (in, out, bias)
  shape is quantized with the same config and run once on the model's device; a shape whose forward raises is left
  unconverted, with the error.
"""

from __future__ import annotations

import functools

from fluxperf.errors import FluxperfError, RecipeError, UnavailableError
from fluxperf.optional import install_hint, require
from fluxperf.recipe import QuantizeConfig


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


def float8_shape_reason(in_features: int, out_features: int, granularity: str) -> str | None:
    """Why torchao's float8 Linear cannot run a weight of this shape (None: it can); see the module docstring.

    Args:
        in_features, out_features: the Linear's sizes.
        granularity: "tensor" (PerTensor) or "row" (PerRow).

    Example:
        >>> float8_shape_reason(24, 128, "row")
        'in/out features 24->128: torch._scaled_mm needs both to be multiples of 16'
        >>> float8_shape_reason(128, 128, "row") is None
        True
    """
    if in_features % 16 or out_features % 16:
        return f"in/out features {in_features}->{out_features}: torch._scaled_mm needs both to be multiples of 16"
    if granularity == "tensor" and (in_features, out_features) == (128, 128):
        return ("128->128 with tensor-wise scaling: torchao 0.18 takes a tensor-scaled 128x128 weight for a "
                "128x128 block-scaled one and fails at forward ('input_tensor must be 1x128 scaled')")
    return None


def float8_config(granularity: str):
    """torchao's Float8DynamicActivationFloat8WeightConfig for "tensor" (PerTensor) or "row" (PerRow) scaling."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor

    # set_inductor_config=False: torchao would otherwise flip global inductor flags behind our back.
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if granularity == "row" else PerTensor(),
                                                     set_inductor_config=False)


def int8_shape_reason(in_features: int, out_features: int, device_type: str) -> str | None:
    """Why an int8 Linear of this shape should not be converted on `device_type` (None: it should).

    Example:
        >>> int8_shape_reason(24, 36, "cuda")[:40]
        'in/out features 24->36: torchao\'s int8 m'
        >>> int8_shape_reason(24, 36, "cpu") is None
        True
    """
    if device_type == "cuda" and (in_features % 8 or out_features % 8):
        return (f"in/out features {in_features}->{out_features}: torchao's int8 matmul (torch._int_mm) needs both to "
                "be multiples of 8 on CUDA; torchao's fallback copies both operands to the CPU at every call")
    return None


# diffusers modules whose Linears take one row per sample (conditioning vectors), not one per token
PER_SAMPLE_PARENTS = ("AdaLayerNormZero", "AdaLayerNormZeroSingle", "AdaLayerNormContinuous", "TimestepEmbedding",
                      "PixArtAlphaTextProjection")
INT_MM_MIN_ROWS = 17  # torch._int_mm on CUDA: self.size(0) needs to be greater than 16


def per_sample_linears(module) -> set[str]:
    """Names of the Linear layers of `module` inside a PER_SAMPLE_PARENTS module: their activation has one row per
    sample (FLUX.1: the AdaLN modulations of every block and norm_out, the timestep/guidance/pooled-text embedders;
    81 of 504 on schnell), so `batch` rows where the other Linears have batch x tokens."""
    import torch

    names: set[str] = set()
    for parent_name, parent in module.named_modules():
        if type(parent).__name__ in PER_SAMPLE_PARENTS:
            for name, child in parent.named_modules():
                if isinstance(child, torch.nn.Linear):
                    names.add(f"{parent_name}.{name}" if parent_name else name)
    return names


def int8_rows_reason(per_sample: bool, device_type: str) -> str | None:
    """Why an int8 Linear fed one row per sample should not be converted on `device_type` (None: it should).

    Example:
        >>> int8_rows_reason(True, "cuda")[:30]
        'one activation row per sample'
        >>> int8_rows_reason(True, "cpu") is None and int8_rows_reason(False, "cuda") is None
        True
    """
    if device_type == "cuda" and per_sample:
        return (f"one activation row per sample (a conditioning Linear): torch._int_mm needs at least "
                f"{INT_MM_MIN_ROWS} rows; torchao runs an fp32 matmul instead in eager and fails under torch.compile")
    return None


def int8_config(granularity: str):
    """torchao's Int8DynamicActivationInt8WeightConfig for "tensor" (PerTensor) or "row" (PerRow: per-token
    activations, per-output-channel weights; torchao's default) scaling."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, PerTensor

    # set_inductor_config=False: as for float8, no global inductor flags behind our back
    return Int8DynamicActivationInt8WeightConfig(granularity=PerRow() if granularity == "row" else PerTensor(),
                                                 set_inductor_config=False)


def float8_static_probe_config(granularity: str, device="cpu"):
    """torchao's static float8 config with a unit activation scale on `device`, shaped for the probe's 3-D input
    (the probe checks that a shape runs; fluxperf.steps.float8_static gives each layer its calibrated scale)."""
    import torch
    from torchao.quantization import Float8StaticActivationFloat8WeightConfig, PerTensor

    return Float8StaticActivationFloat8WeightConfig(act_quant_scale=torch.ones(1, 1, 1, device=device),
                                                    granularity=PerTensor(), set_inductor_config=False)


_CONFIGS = {"float8": float8_config, "int8": int8_config, "float8_static": float8_static_probe_config}


def float8_probe_reason(linear, granularity: str) -> str | None:
    """probe_reason(linear, "float8", granularity)."""
    return probe_reason(linear, "float8", granularity)


def probe_reason(linear, kind: str, granularity: str) -> str | None:
    """Run one fresh Linear of `linear`'s shape through the `kind` ("float8"/"int8") config on its device and dtype;
    the error of its forward as a reason (None: it runs). Cached per (in, out, bias, dtype, device, kind, granularity)."""
    weight = linear.weight
    return _probe(linear.in_features, linear.out_features, linear.bias is not None, str(weight.dtype).split(".")[-1],
                  str(weight.device), granularity, kind)


@functools.cache
def _probe(in_features, out_features, bias, dtype, device, granularity, kind="float8") -> str | None:
    import torch
    from torchao.quantization import quantize_

    dtype = getattr(torch, dtype)
    probe = torch.nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
    # a config error (e.g. PerRow on fp32 weights) is the caller's, not a shape reason: it raises here
    config = _CONFIGS[kind](granularity, device) if kind == "float8_static" else _CONFIGS[kind](granularity)
    quantize_(probe, config)
    x = torch.randn(2, 3, in_features, device=device, dtype=dtype)  # 3-D, 6 rows: as the transformer calls it
    try:
        with torch.no_grad():
            probe(x)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)  # an asynchronous kernel error belongs to this probe
    except Exception as exc:  # recorded as the reason the layer stays unconverted (reported, never swallowed)
        return f"torchao's {kind} forward fails on {in_features}->{out_features}: {type(exc).__name__}: {exc}"
    return None


def quantize_transformer(module, cfg: QuantizeConfig) -> dict:
    """Quantize `module` as `cfg.kind` says ("float8": quantize_float8, "int8": quantize_int8); see those.

    Raises:
        RecipeError: cfg.kind is "none" (nothing to quantize: the quantize stage should not run).
    """
    if cfg.kind == "float8":
        return quantize_float8(module, cfg)
    if cfg.kind == "int8":
        return quantize_int8(module, cfg)
    raise RecipeError(f"quantize.kind={cfg.kind!r}: nothing to quantize. Fix: 'float8' or 'int8'.")


def quantize_int8(module, cfg: QuantizeConfig) -> dict:
    """Quantize every Linear of `module` whose int8 forward runs (and, on CUDA, runs on the GPU: dims multiples of
    8, more than 16 activation rows), in place, with Int8DynamicActivationInt8WeightConfig; the others keep their
    dtype and are reported.

    Args:
        module: the transformer (any device; bf16, fp16 or fp32 weights).
        cfg: kind "int8"; granularity "row" (PerRow, torchao's default) or "tensor" (PerTensor).
    Returns:
        report: kind, linear_count, quantized_count, int8_count (= quantized_count), float8_count (0), skipped,
        skipped_reasons ({name: why}), granularity, torchao version.
    Raises:
        UnavailableError: torchao is not installed.
    """
    torchao = require("torchao")
    refuse_quantized(module)
    from torchao.quantization import Int8Tensor, quantize_

    device_type = next(module.parameters()).device.type
    names, reasons, per_sample = linear_names(module), {}, per_sample_linears(module)
    fqn_of = {id(m): name for name, m in module.named_modules()}

    def rule(linear) -> str | None:
        return (int8_rows_reason(fqn_of.get(id(linear)) in per_sample, device_type)
                or int8_shape_reason(linear.in_features, linear.out_features, device_type))

    quantize_(module, int8_config(cfg.granularity), filter_fn=runnable_filter("int8", cfg.granularity, reasons, rule))
    converted = _names_with_weight(module, Int8Tensor)
    return quantize_report(torchao, cfg, names, converted, reasons)


def quantize_float8(module, cfg: QuantizeConfig) -> dict:
    """Quantize every Linear of `module` whose float8 forward runs, in place, with
    Float8DynamicActivationFloat8WeightConfig; the others keep their dtype and are reported.

    Args:
        module: the transformer (on its GPU, in bf16).
        cfg: granularity "tensor" (PerTensor) or "row" (PerRow).
    Returns:
        report: kind, linear_count, quantized_count, float8_count (= quantized_count), int8_count (0), skipped
        (names of Linear layers left unconverted), skipped_reasons
        ({name: why}), granularity, torchao version.
    """
    torchao = require("torchao")
    refuse_quantized(module)
    check_float8_hardware(next(module.parameters()).device)
    from torchao.quantization import quantize_

    config = float8_config(cfg.granularity)
    names = linear_names(module)
    reasons: dict[str, str] = {}
    from fluxperf.faults import active

    if not active("skip_float8"):  # the fault exists to prove the engagement guard catches a silent skip
        quantize_(module, config, filter_fn=runnable_filter(
            "float8", cfg.granularity, reasons,
            lambda m: float8_shape_reason(m.in_features, m.out_features, cfg.granularity)))
    return quantize_report(torchao, cfg, names, float8_names(module), reasons)


def quantize_report(torchao, cfg: QuantizeConfig, names: list[str], converted: set[str], reasons: dict) -> dict:
    skipped = [n for n in names if n not in converted]
    return {
        "torchao": getattr(torchao, "__version__", None),
        "kind": cfg.kind,
        "granularity": cfg.granularity,
        "linear_count": len(names),
        "quantized_count": len(converted),
        "float8_count": len(converted) if cfg.kind == "float8" else 0,
        "int8_count": len(converted) if cfg.kind == "int8" else 0,
        "skipped": skipped,
        "skipped_reasons": {n: reasons.get(n, "torchao left it unconverted") for n in skipped},
    }


class AlreadyQuantizedError(FluxperfError, ValueError):
    """The module's Linear layers already hold torchao tensors: a weight is quantized once."""


def refuse_quantized(module) -> None:
    """Raise AlreadyQuantizedError when a Linear of `module` already holds a tensor-subclass weight (torchao float8 /
    int8): torchao fails inside its own code on a second quantization, or quantizes the quantized weight."""
    import torch

    done = {}
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Linear):
            data = m.weight.data if type(m.weight) is torch.nn.Parameter else m.weight
            if type(data) is not torch.Tensor:
                done[name] = type(data).__name__
    if done:
        first = next(iter(done.items()))
        raise AlreadyQuantizedError(
            f"{len(done)} Linear layer(s) are already quantized (e.g. {first[0]!r}: {first[1]}); a weight is quantized "
            "once. Fix: quantize a freshly built model (fluxperf.remove cannot undo quantization).")


def runnable_filter(kind: str, granularity: str, reasons: dict, shape_reason):
    """quantize_'s filter_fn: a Linear passes if `shape_reason(linear)` (the kind's shape rule) and the probe say
    its `kind` forward runs; the reason of every refusal is recorded in `reasons` (fqn -> why)."""
    import torch

    def keep(module, fqn: str) -> bool:
        if not isinstance(module, torch.nn.Linear):
            return False
        reason = shape_reason(module) or probe_reason(module, kind, granularity)
        if reason is not None:
            reasons[fqn] = reason
        return reason is None

    return keep


def float8_names(module) -> set[str]:
    return _names_with_weight(module, _float8_tensor_class())


def _names_with_weight(module, weight_cls) -> set[str]:
    import torch

    return {n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and isinstance(m.weight, weight_cls)}


def int8_linear_count(module) -> int:
    """Number of nn.Linear layers whose weight is a torchao Int8Tensor (0 without torchao imported)."""
    import sys

    if "torchao" not in sys.modules:  # never import torchao just to count: nothing can be int8 without it
        return 0
    from torchao.quantization import Int8Tensor

    return len(_names_with_weight(module, Int8Tensor))


def _float8_tensor_class():
    """torchao's float8 weight classes, for isinstance: Float8Tensor (dynamic scales) and, where this torchao has it,
    the PrototypeFloat8Tensor of static activation scales (fluxperf.steps.float8_static); None without torchao."""
    import sys

    if "torchao" not in sys.modules:  # never import torchao just to count: nothing can be float8 without it
        return None
    try:
        from torchao.quantization import Float8Tensor
    except ImportError as exc:
        raise UnavailableError("torchao Float8Tensor", str(exc), install_hint("torchao")) from exc
    try:
        from torchao.prototype.quantization.float8_static_quant.prototype_float8_tensor import PrototypeFloat8Tensor
    except ImportError:  # an older/newer torchao without the prototype: static scales are refused there
        return Float8Tensor
    return (Float8Tensor, PrototypeFloat8Tensor)
