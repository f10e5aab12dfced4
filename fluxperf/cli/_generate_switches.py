"""`fluxperf generate`'s optimization switches: the ONE place mapping each `--no-X` onto Recipe fields.

The command starts from the ladder's top rung (`fluxperf.ladder.rung("export")`: bf16, fused QKV, channels_last VAE,
FA3 fp8 attention, torchao float8, inductor flags, torch.export + AOTInductor under CUDA graphs) and each switch
turns its step off. The seed's (huggingface/flux-fast gen_image.py / run_benchmark.py) equivalents are named in
each help text.

On a CPU device the steps that need a GPU (fp8 attention, float8, export: fluxperf.requirements' hardware needs)
are switched off too, and `cpu_switch_off` SAYS which, with the flag that does it by hand: never silently.

Example:
    >>> switched_recipe_dict(["--no-quant"])["quantize"]["kind"]
    'none'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TOP_RUNG = "export"  # fluxperf.ladder.LADDER[-1] (tests pin it): every optimization of the ladder on


@dataclass(frozen=True)
class Switch:
    """One `--no-X` flag.

    Args:
        flag: the option, e.g. "--no-quant".
        changes: nested Recipe dict changes it makes (merged onto the top rung, in SWITCHES order).
        help: what it turns off; the seed's flag in parentheses.
        stage: the apply() stage it removes (fluxperf.apply.plan names), to name it for a missing package/GPU.
    """

    flag: str
    changes: dict[str, Any]
    help: str
    stage: str | None = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


# Order matters where two switches touch one field: --no-compile (after --no-export) leaves neither compiler on.
SWITCHES: tuple[Switch, ...] = (
    Switch("--no-bf16", {"dtype": "float32"}, "run in float32 instead of bfloat16 (flux-fast --disable_bf16)",
           "dtype"),
    Switch("--no-fuse-qkv", {"fuse_qkv": False}, "keep Q/K/V projections unfused (flux-fast --disable_fused_projections)",
           "fuse_qkv"),
    Switch("--no-channels-last", {"channels_last": False},
           "keep the VAE in the default memory format (flux-fast --disable_channels_last)", "channels_last"),
    Switch("--no-fp8-attention", {"attention": {"backend": "sdpa"}},
           "torch SDPA instead of FlashAttention-3 on fp8 inputs (flux-fast --disable_fa3)", "attention"),
    Switch("--no-quant", {"quantize": {"kind": "none"}},
           "no torchao float8 quantization of the transformer's Linear layers (flux-fast --disable_quant)", "quantize"),
    Switch("--no-flags", {"inductor_flags": {"enabled": False}},
           "no Inductor tuning flags (flux-fast --disable_inductor_tuning_flags)", None),
    Switch("--no-export", {"export": {"enabled": False}, "compile": {"enabled": True}},
           "torch.compile (regional) instead of torch.export + AOTInductor + CUDA graphs "
           "(flux-fast --compile_export_mode compile)", "export"),
    Switch("--no-compile", {"export": {"enabled": False}, "compile": {"enabled": False}},
           "neither torch.compile nor export: eager (flux-fast --compile_export_mode disabled; needs --no-flags too, "
           "the flags only change Inductor code)", "compile"),
)
BY_FLAG = {s.flag: s for s in SWITCHES}
BY_STAGE = {s.stage: s for s in SWITCHES if s.stage}

# Recipe fields named in RecipeError messages -> the switch (or option) that sets them, to word errors in flags.
FIELD_OPTIONS = {
    "inductor_flags.enabled": "--no-flags", "compile.enabled": "--no-compile", "export.enabled": "--no-export",
    "quantize.kind": "--no-quant", "attention.backend": "--no-fp8-attention", "dtype": "--no-bf16",
    "cache_dit.enabled": "--cache-dit-config",
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge (changes win); neither argument is modified."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def switched_recipe_dict(flags: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The top rung's recipe dict with the given `--no-X` flags applied (in SWITCHES order, not argument order).

    Raises:
        KeyError: an unknown flag (a programming error: argparse only passes SWITCHES' flags).
    """
    from fluxperf.ladder import rung

    unknown = [f for f in flags if f not in BY_FLAG]
    if unknown:
        raise KeyError(f"unknown switches {unknown}; known: {list(BY_FLAG)}")
    data = rung(TOP_RUNG).to_dict()
    for switch in SWITCHES:
        if switch.flag in flags:
            data = merge(data, switch.changes)
    return data


def cpu_switch_off(device: str, given: tuple[str, ...]) -> list[tuple[Switch, str]]:
    """The switches a CPU `device` adds: each top-rung stage whose hardware need fails there (fluxperf.requirements),
    with the hardware it needs in words; [] on a CUDA device or when the user already gave the switch.

    Only hardware counts: a missing optional package is refused later (missing()), never switched off.
    """
    if not device.startswith("cpu"):
        return []
    import torch

    from fluxperf.requirements import HARDWARE, requirements

    out: list[tuple[Switch, str]] = []
    for need in requirements(TOP_RUNG).needs:
        if need.kind != "hardware" or need.check(torch.device(device)) is None:
            continue
        switch = BY_STAGE[need.stage]
        if switch.flag not in given and all(s is not switch for s, _ in out):
            instead = "; torch.compile runs instead" if switch.flag == "--no-export" and "--no-compile" not in given \
                else ""
            out.append((switch, f"{need.setting} needs {HARDWARE[need.name][0]}{instead}"))
    return out


def in_flags(message: str) -> str:
    """A RecipeError message with the switches that set the fields it names appended, e.g. "[--no-flags]"."""
    named = [f"{field} <- {option}" for field, option in FIELD_OPTIONS.items() if f"{field}=" in message]
    return f"{message} [{'; '.join(named)}]" if named else message
