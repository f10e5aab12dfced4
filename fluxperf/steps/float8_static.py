"""Static float8 activation scales (issue 17's first lever: drop the per-call amax pass of dynamic float8).

Dynamic float8 (fluxperf.steps.quantize.quantize_float8, flux-fast's) computes each activation's amax at every call:
one reduction over the (tokens, features) activation before every GEMM. Static scales take it once: apply() runs
`calibration_calls` transformer forwards on seeded inputs of the call shapes (fluxperf.model.shapes
.transformer_inputs), at timesteps spread evenly over (0, 1], with a forward pre-hook on each Linear recording its
input's amax (float32, max over the calls) and rank; each Linear then gets torchao's
Float8StaticActivationFloat8WeightConfig with the scale amax / 448 (float8_e4m3fn's largest value), shaped
(1,) * rank as torchao's PrototypeFloat8Tensor.from_hp asserts, through one FqnToConfig pass. Tensor-wise only: the
static config supports PerTensor (torchao 0.18's docstring).

The calibration sees the synthetic seeded inputs, not a user's prompts: an activation larger at inference than
anything calibrated saturates at ±448 × scale (float8's cast saturates) instead of taking a larger scale. The
numerics tier's threshold for the static rung is what guards that on the images we check.

Layers the calibration never reached, and layers the float8 shape rule or probe refuses, stay in bf16 and are
reported (skipped, skipped_reasons), as dynamic float8 reports its skips.
"""

from __future__ import annotations

from collections.abc import Callable

from fluxperf.errors import FluxperfError
from fluxperf.optional import require
from fluxperf.recipe import QuantizeConfig

FLOAT8_E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
MIN_AMAX = 1e-12  # an all-zero calibration input would give a zero scale (division by zero in the cast)


def calibration_timesteps(calls: int) -> list[float]:
    """`calls` timesteps spread over (0, 1], highest first (the schedule's order): 1.0, ..., 1/calls.

    Example:
        >>> calibration_timesteps(4)
        [1.0, 0.75, 0.5, 0.25]
    """
    return [(calls - i) / calls for i in range(calls)]


class CalibrationError(FluxperfError, ValueError):
    """A calibration forward gave a Linear a non-finite activation (inf / NaN): no static scale can be taken."""


def record_input_amax(module, names: set[str], run: Callable[[], None]) -> dict[str, tuple[float, set[int]]]:
    """Run `run()` with a forward pre-hook on each Linear of `module` named in `names` (positional or keyword
    `input`); fqn -> (largest |input| over all its calls (float; inf or nan when an input held one), the input ranks
    seen). Hooks are removed afterwards, also on error."""
    import math

    import torch

    seen: dict[str, tuple[float, set[int]]] = {}
    handles = []

    def hook_for(name):
        def hook(_mod, args, kwargs):
            x = args[0] if args else kwargs["input"]
            amax = float(x.detach().abs().amax().float())
            old, ranks = seen.get(name, (0.0, set()))
            nan = math.isnan(old) or math.isnan(amax)  # a NaN must survive: max(0.0, nan) is 0.0
            seen[name] = (math.nan if nan else max(old, amax), ranks | {x.ndim})
        return hook

    for name, mod in module.named_modules():
        if name in names and isinstance(mod, torch.nn.Linear):
            handles.append(mod.register_forward_pre_hook(hook_for(name), with_kwargs=True))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def quantize_float8_static(module, cfg: QuantizeConfig, calibrate: Callable[[], None]) -> dict:
    """Calibrate, then quantize every calibrated, runnable Linear of `module` with its own static activation scale.

    Args:
        module: the transformer (bf16; on its GPU for real use; the float8 hardware check is the caller's).
        cfg: kind "float8", granularity "tensor", activation_scale "static".
        calibrate: runs the calibration forwards of `module` (see calibration_timesteps).
    Returns:
        report: as quantize_float8's, plus activation_scale "static", calibration_calls and scale statistics
        (min / median / max of the per-layer scales).
    Raises:
        UnavailableError: torchao (with its static float8 prototype) is not installed.
        CalibrationError: a calibrated Linear saw an inf or NaN input.
        AlreadyQuantizedError: a Linear of `module` is already quantized.
    """
    import math
    import statistics

    import torch

    from fluxperf.steps.quantize import (
        float8_names,
        float8_shape_reason,
        linear_names,
        quantize_report,
        refuse_quantized,
        runnable_filter,
    )

    torchao = require("torchao")
    refuse_quantized(module)
    from torchao.quantization import Float8StaticActivationFloat8WeightConfig, FqnToConfig, PerTensor, quantize_

    names, reasons = linear_names(module), {}
    keep = runnable_filter("float8_static", "tensor", reasons,
                            lambda m: float8_shape_reason(m.in_features, m.out_features, "tensor"))
    runnable = {n for n, m in module.named_modules() if n in set(names) and keep(m, n)}
    seen = record_input_amax(module, runnable, calibrate)
    bad = {name: amax for name, (amax, _) in seen.items() if not math.isfinite(amax)}
    if bad:
        raise CalibrationError(
            f"static float8 calibration: {len(bad)} Linear input(s) held non-finite values, e.g. "
            f"{sorted(bad.items())[:3]} (layer: amax); no scale can be taken from inf / nan. Fix: calibrate on "
            "finite inputs (check the model's dtype and weights), or use activation_scale='dynamic'.")
    for name in sorted(runnable - set(seen)):
        reasons[name] = "not reached by the calibration forwards: no activation scale to give it"
    for name, (_, ranks) in sorted(seen.items()):
        if len(ranks) > 1:  # torchao's static scale must have the input's rank: one scale cannot serve two
            reasons[name] = (f"called with inputs of ranks {sorted(ranks)} during calibration: a static scale has "
                             "the rank of its input (torchao PrototypeFloat8Tensor.from_hp), one scale cannot serve both")
    scales = {name: max(amax, MIN_AMAX) / FLOAT8_E4M3_MAX for name, (amax, ranks) in seen.items() if len(ranks) == 1}
    device = next(iter(module.parameters()), torch.empty(0)).device
    configs = {
        name: Float8StaticActivationFloat8WeightConfig(
            act_quant_scale=torch.tensor(scale, dtype=torch.float32, device=device).reshape(
                (1,) * next(iter(seen[name][1]))),
            granularity=PerTensor(), set_inductor_config=False)
        for name, scale in scales.items()}
    if configs:
        quantize_(module, FqnToConfig(fqn_to_config=configs), filter_fn=None)
    report = quantize_report(torchao, cfg, names, float8_names(module), reasons)
    values = sorted(scales.values())
    report.update(activation_scale="static", calibration_calls=cfg.calibration_calls,
                  scale_stats={"min": values[0], "median": statistics.median(values), "max": values[-1]}
                  if values else None)
    return report


CALIBRATION_SEED = 7  # not 0 (the benchmarks' and the numerics tier's input seed): no check sees its calibration data


def calibration_run(pipe, spec, calls: int, seed: int = CALIBRATION_SEED) -> Callable[[], None]:
    """The calibration forwards of `pipe.transformer` for `spec` (fluxperf.model.shapes.ShapeSpec): seeded inputs on
    the transformer's device and dtype (CALIBRATION_SEED, not the inputs the numerics tier checks), one forward per
    calibration_timesteps(calls) value."""
    import torch

    from fluxperf.model.configs import dims_of_pipeline
    from fluxperf.model.shapes import transformer_inputs

    transformer = pipe.transformer
    weight = next(transformer.parameters())
    inputs = transformer_inputs(spec, dims_of_pipeline(pipe), device=weight.device, dtype=weight.dtype, seed=seed)

    def run() -> None:
        for t in calibration_timesteps(calls):
            transformer(**{**inputs, "timestep": torch.full_like(inputs["timestep"], t)})

    return run
