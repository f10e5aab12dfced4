"""How to call the installed FA3 build's `flash_attn_func`: its signature inspected once, adapted or refused.

FA3 builds differ in keyword names: upstream flash-attention/hopper, tokenspeed-fa3 and fa3-fwd take the fp8
descales as `q_descale, k_descale, v_descale`; earlier hopper builds took `descale_q, descale_k, descale_v`.
Passing a name the build does not know is a raw TypeError at the first forward, so:

* descales are passed only when the kernel scales (fp8 with per-head scaling), never as `None`s otherwise;
* `Fa3Api.of(module)` reads `inspect.signature(module.flash_attn_func)` once (cached per function) and picks
  the descale names the build takes (a `**kwargs` build takes the current names);
* `Fa3Api.reason(scaled)` says why the build cannot run a mode (no `softmax_scale`; no descales when scaling; a
  signature that cannot be inspected), naming the module and the build (distribution and version):
  `fluxperf.steps.attention.apply_attention` refuses there, at apply time, not at the first forward.

Example:
    >>> import types
    >>> m = types.ModuleType("flash_attn_interface")
    >>> m.flash_attn_func = lambda q, k, v, softmax_scale=None, causal=False, descale_q=None, descale_k=None, \\
    ...     descale_v=None: q
    >>> api = Fa3Api.of(m)
    >>> api.descales, api.kwargs(None, ("dq", "dk", "dv"))["descale_k"]
    (('descale_q', 'descale_k', 'descale_v'), 'dk')
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

DESCALE_NAMES = (("q_descale", "k_descale", "v_descale"), ("descale_q", "descale_k", "descale_v"))


@dataclass(frozen=True)
class Fa3Api:
    """What one FA3 build's flash_attn_func accepts.

    Args:
        module: the FA3 module's name (e.g. "fa3_fwd_interface").
        build: its distribution and version (e.g. "fa3-fwd 0.0.3"), or what is known about it.
        signature: str(inspect.signature(flash_attn_func)), or None when it cannot be inspected.
        descales: the three keyword names it takes for q/k/v descales, None if it takes none.
        causal: whether it takes `causal` (every known build does; the default is non-causal).
        softmax_scale: whether it takes `softmax_scale`.
    """

    module: str
    build: str
    signature: str | None
    descales: tuple[str, str, str] | None
    causal: bool
    softmax_scale: bool

    @classmethod
    def of(cls, module) -> Fa3Api:
        """The API of `module.flash_attn_func` (inspected once per function object)."""
        return _inspect(module.flash_attn_func, module.__name__)

    def reason(self, scaled: bool) -> str | None:
        """Why this build cannot run the requested mode (None: it can). `scaled`: fp8 with descales."""
        where = f"{self.module}.flash_attn_func ({self.build})"
        if self.signature is None:
            return (f"{where} has no inspectable signature, so fluxperf cannot tell which keywords it takes; "
                    "use a build whose flash_attn_func is a Python function (fa3-fwd, tokenspeed-fa3, flash-attention/hopper)")
        if not self.softmax_scale:
            return f"{where} takes no softmax_scale: its signature is {self.signature}"
        if scaled and self.descales is None:
            names = " or ".join("/".join(n) for n in DESCALE_NAMES)
            return (f"{where} takes no fp8 descales ({names}), which fp8_scaling='per_head' needs: its signature is "
                    f"{self.signature}; use attention.fp8_scaling='unscaled' or a current FA3 build")
        return None

    def kwargs(self, softmax_scale: float | None, descales: tuple | None = None) -> dict:
        """Keyword arguments for one call: softmax_scale, causal=False where taken, descales only when given."""
        kw = {"softmax_scale": softmax_scale}
        if self.causal:
            kw["causal"] = False
        if descales is not None:
            if self.descales is None:
                raise TypeError(self.reason(scaled=True))
            kw.update(zip(self.descales, descales))
        return kw


@functools.cache
def _inspect(func, module_name: str) -> Fa3Api:
    build = build_of(module_name)
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin / extension function without signature metadata
        return Fa3Api(module_name, build, None, None, False, False)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    descales = next((names for names in DESCALE_NAMES if all(n in params for n in names)), None)
    if descales is None and var_kw:
        descales = DESCALE_NAMES[0]
    return Fa3Api(module_name, build, str(inspect.signature(func)), descales,
                  causal=var_kw or "causal" in params, softmax_scale=var_kw or "softmax_scale" in params)


@functools.cache
def build_of(module_name: str) -> str:
    """"<distribution> <version>" of the package that provides top-level module `module_name`, else what is known.

    Example:
        >>> build_of("torch").startswith("torch ")
        True
    """
    import importlib.metadata as md
    import sys

    top = module_name.split(".")[0]
    for dist in md.packages_distributions().get(top, []):
        try:
            return f"{dist} {md.version(dist)}"
        except md.PackageNotFoundError:
            continue
    module = sys.modules.get(module_name)
    version = getattr(module, "__version__", None)
    where = getattr(module, "__file__", None)
    return f"version {version}" if version else f"unknown build ({where or 'not from a distribution'})"
