"""Notice when a module's weights are no longer the tensors an exported package was given, and act on it.

With weights="user" a package reads the live module's tensors (`load_constants(..., user_managed=True)`): an
in-place update (`param.copy_(...)`) is seen at once. Replacing the tensor is not: `load_state_dict(assign=True)`,
`param.data = ...`, `module.to(dtype)`, a LoRA hot-swap or a loader that sets new Parameters leave the package on
the OLD storage (issue 13.4: max error 2.72 on the H200), silently. A WeightsGuard records, for every constant
the package was given, which tensor object and storage it was, and checks that cheaply before each call
(identity and data pointer of each tensor: about 0.4 ms for the full transformer's 1156 tensors on a slow core,
and in a pipeline the CPU runs ahead of the GPU). On a change:
  "user": the package is re-pointed at the current tensors (load_constants, no copy) and the caller must drop
          captured CUDA graphs (they hold the old addresses): `check()` returns True for that;
  "copy" / "so": the package holds its own snapshot of the weights, so following the module would mean a full
          copy or a rebuild behind the user's back: WeightsReplacedError names the changed tensors and the fix.
A replaced submodule (e.g. a Linear swapped for a LoRA layer) changes the graph, not just the weights: it is
refused in every mode with the fix (remove_export, then apply_export again).

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(2, 2)
    >>> guard = WeightsGuard(None, lin, ["weight", "bias"], "copy")
    >>> guard.changed()
    []
    >>> lin.weight = torch.nn.Parameter(torch.zeros(2, 2))
    >>> guard.changed()
    ['weight']
"""

from __future__ import annotations

import re
import weakref

from fluxperf.errors import FluxperfError

_FIX = ("Fix: fluxperf.steps.export.apply.remove_export(pipe) and apply_export(...) again, or "
        "export with weights='user' to follow replaced weights automatically")


class WeightsReplacedError(FluxperfError, RuntimeError):
    """The module's weights were replaced after export and the package cannot follow them in its weights mode."""


# AOTInductor hands a tensor-subclass weight (torchao Float8Tensor / Int8Tensor) to the package as its plain inner
# tensors, named as torch.nn.utils.parametrize names them: "<path>.parametrizations.<leaf>.original<i>"
# (torch._functorch._aot_autograd.subclass_parametrization.UnwrapTensorSubclass). Measured on the H200, 2026-11-29:
# the float8 export rung's package asked for 350 such constants that the live module's parameter names lack.
_PARAMETRIZED = re.compile(r"^(?P<path>(?:.+\.)?)parametrizations\.(?P<leaf>[^.]+)\.original\d+$")


def owner_fqn(constant: str) -> str:
    """The module parameter/buffer a package constant comes from ("a.parametrizations.weight.original1" ->
    "a.weight"; a plain name is its own owner)."""
    m = _PARAMETRIZED.match(constant)
    return f"{m['path']}{m['leaf']}" if m else constant


def flat_constants(module) -> dict:
    """FQN -> tensor of every parameter and buffer, plus, for a tensor-subclass weight, its plain inner tensors
    under the names AOTInductor gives them (same storage: a "user" package reads the live quantized weights).

    The inner tensors come from torch's own UnwrapTensorSubclass.right_inverse, the function that numbered them at
    export time, so names and order match the package's.
    """
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    out = dict(module.named_parameters(remove_duplicate=False))
    out.update(module.named_buffers(remove_duplicate=False))
    for name, tensor in list(out.items()):
        if is_traceable_wrapper_subclass(tensor):
            from torch._functorch._aot_autograd.subclass_parametrization import UnwrapTensorSubclass

            path, _, leaf = name.rpartition(".")
            prefix = f"{path}." if path else ""
            for i, inner in enumerate(UnwrapTensorSubclass().right_inverse(tensor.detach())):
                out[f"{prefix}parametrizations.{leaf}.original{i}"] = inner
    return out


def _pointer(tensor) -> int | None:
    """The storage address a package reads; None for tensor subclasses without one (torchao): identity alone."""
    try:
        return tensor.data_ptr()
    except RuntimeError:
        return None


class WeightsGuard:
    """Tracks the tensors behind a loaded package's constants (see the module docstring).

    Args:
        package: the loaded AOTInductor package (needs `load_constants`), or None to only detect.
        module: the wrapper module the package was exported from (constant names are its FQNs).
        fqns: the package's constant names that are this module's parameters/buffers.
        mode: the weights mode the package was loaded with ("user", "copy" or "so").

    `fqns` may name the flattened inner tensors of a tensor-subclass weight (flat_constants): the guard watches
    the owning parameter and hands the package all of its inner tensors again on a refresh.
    """

    def __init__(self, package, module, fqns, mode: str):
        self.package, self.module, self.mode = package, module, mode
        self.constants = list(fqns)  # the package's names
        self.refreshes = 0
        self._record(list(dict.fromkeys(owner_fqn(n) for n in self.constants)))

    def _record(self, fqns: list[str]) -> None:
        self.fqns = fqns
        # per constant: (its module's _parameters/_buffers dict, leaf name, weakref to the tensor, data pointer,
        # dtype, shape); per module on the way: (parent's _modules dict, child name, weakref to the child), so a
        # swapped submodule is seen too. Weak references: a replaced 24 GB of weights is not kept alive by us, and
        # a live object's storage cannot be freed and reused at the same address while it still holds it.
        self._slots, modules = [], {}
        for fqn in fqns:
            path, _, leaf = fqn.rpartition(".")
            owner = self.module.get_submodule(path) if path else self.module
            table = owner._parameters if leaf in owner._parameters else owner._buffers
            tensor = table[leaf]
            self._slots.append((table, leaf, weakref.ref(tensor), _pointer(tensor), tensor.dtype, tuple(tensor.shape)))
            parts = path.split(".") if path else []
            for i in range(len(parts)):
                parent = self.module.get_submodule(".".join(parts[:i]))
                modules[(id(parent), parts[i])] = (parent._modules, parts[i], weakref.ref(parent._modules[parts[i]]))
        self._modules = list(modules.values())

    def swapped_modules(self) -> list[str]:
        """Names of submodules on a constant's path that were replaced by other module objects."""
        return [name for children, name, child in self._modules if children.get(name) is not child()]

    def changed(self) -> list[str]:
        """FQNs whose tensor is no longer the recorded one (another object or another storage). About 1 us per
        tensor: ~0.4 ms per call for the full FLUX transformer's 1156 tensors on a slow CPU core."""
        out = []
        for fqn, (table, leaf, ref, pointer, _, _) in zip(self.fqns, self._slots):
            current = table.get(leaf)
            if current is None or current is not ref() or (pointer is not None and current.data_ptr() != pointer):
                out.append(fqn)
        return out

    def check(self) -> bool:
        """Raise or refresh if the weights were replaced; True when the package was re-pointed (drop graphs).

        Raises:
            WeightsReplacedError: a submodule was swapped (any mode); tensors replaced in mode "copy"/"so"; or a
                replacement has another shape/dtype than the package was built for.
        """
        swapped = self.swapped_modules()
        if swapped:
            raise WeightsReplacedError(
                f"submodules {swapped[:5]} were replaced after export (e.g. a LoRA layer swapped in): the package "
                f"was traced with the old modules and cannot run the new ones. {_FIX.split(', or')[0]}.")
        changed = self.changed()
        if not changed:
            return False
        if self.mode != "user" or self.package is None:
            raise WeightsReplacedError(
                f"{len(changed)} weight tensors were replaced after export (e.g. {changed[:3]}; load_state_dict("
                f"assign=True), param.data=..., a LoRA hot-swap or module.to(...) do that), but the package holds its "
                f"own snapshot of the weights (weights={self.mode!r}) and would keep computing with the old ones. "
                f"{_FIX}.")
        self._refresh(changed)
        return True

    def _refresh(self, changed: list[str]) -> None:
        for fqn, (table, leaf, _, _, dtype, shape) in zip(self.fqns, self._slots):
            new = table.get(leaf)
            if new is None or (new.dtype, tuple(new.shape)) != (dtype, shape):
                raise WeightsReplacedError(
                    f"weight {fqn} was replaced by {'nothing' if new is None else f'a {new.dtype} tensor of shape {tuple(new.shape)}'}"
                    f", but the package was built for {dtype} {shape}. {_FIX.split(', or')[0]}.")
        flat = flat_constants(self.module)
        current = {name: flat[name].detach() for name in self.constants}
        # the package reads these tensors from now on; they stay referenced for as long as it does
        self.package.load_constants(current, check_full_update=True, user_managed=True)
        self.package._fluxperf_constants = current
        self.refreshes += 1
        self._record(self.fqns)
