"""CUDA-graph capture/replay keyed on the signature of ALL arguments, positional and keyword.

`CudaGraphRunner(fn)` records one graph per input signature and replays it. flux-fast's helper keyed graphs
only on keyword-tensor shapes, so a positional input of a new shape silently replayed the old graph on the old
buffers (DESIGN.md, lesson 4). Here the key (`signature_key`) covers every tensor anywhere in args/kwargs
(nested lists, tuples and dicts): shape, dtype, device, and the strides of non-contiguous tensors; plus the
values of plain non-tensor arguments. Anything else is refused with `GraphKeyError`.

Per call: the caller's tensors are copied (`copy_`) into the graph's static input buffers, the graph replays,
and the static outputs are cloned, so a later replay cannot overwrite what the caller holds.

Inputs mutated in place (e.g. a step function doing ``latents.add_(noise * dt)``) are COPIED BACK, so results
equal eager: at capture the runner compares each static input's version counter (``Tensor._version``) before and
after the backend's warm-up/capture runs; an input whose counter moved is "mutated". Every call, the first one
included, refills ALL static inputs from the caller's tensors right before the replay (so the warm-up runs'
updates are discarded and the update is applied exactly once per call), and after the replay the mutated static
inputs are copied back into the caller's tensors. `CudaGraphRunner.mutated_inputs()` names them. At most
`max_graphs` graphs are kept (least recently used evicted first). Inference only: capture and replay run
under `torch.no_grad()`.

The graph backend is pluggable (`GraphBackend`: capture / replay): `CudaGraphBackend` uses
torch.cuda.CUDAGraph (warm-up on a side stream, one memory pool shared by all graphs);
`EagerReplayBackend` re-runs the function on the static buffers and writes into the static outputs in place,
which reproduces a graph's buffer semantics on a CPU (tests, debugging).

Example:
    >>> import torch
    >>> run = CudaGraphRunner(lambda x, *, y: x + y, backend=EagerReplayBackend())
    >>> run(torch.ones(2), y=torch.ones(2)).tolist()
    [2.0, 2.0]
    >>> run.stats.recorded, run.stats.replays
    (1, 1)
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from fluxperf.errors import FluxperfError

_PLAIN = (type(None), bool, int, float, str, bytes)
ALLOWED_TYPES = "torch.Tensor, list, tuple, dict (str/int keys), None, bool, int, float, str, bytes, Enum, torch.dtype, torch.device"


class GraphKeyError(FluxperfError, TypeError):
    """An argument cannot be part of a CUDA-graph key (its value could change what the graph computes)."""


# -- keys ------------------------------------------------------------------------------------------------
def signature_key(args: tuple, kwargs: dict) -> tuple:
    """The CUDA-graph key of a call: a hashable, pure function of the call's signature.

    Tensors contribute (shape, dtype, device, strides if non-contiguous), never their values; plain
    non-tensor arguments contribute their type and value; the nesting structure (list vs tuple, dict keys,
    argument positions and keyword names) is part of the key. Keyword order does not matter.

    Args:
        args: positional arguments of the call.
        kwargs: keyword arguments of the call.

    Raises:
        GraphKeyError: an argument of another type (its path, e.g. ``kwargs['opts'][0]``, is named).

    Example:
        >>> import torch
        >>> signature_key((torch.zeros(2, 3),), {}) == signature_key((torch.ones(2, 3),), {})
        True
        >>> signature_key((torch.zeros(2, 3),), {}) == signature_key((torch.zeros(3, 2),), {})
        False
    """
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise GraphKeyError(f"signature_key(args, kwargs) needs a tuple and a dict, got {type(args).__name__} "
                            f"and {type(kwargs).__name__}.")
    pos = tuple(_key(a, f"args[{i}]") for i, a in enumerate(args))
    kw = tuple((name, _key(kwargs[name], f"kwargs[{name!r}]")) for name in sorted(kwargs))
    return ("args", pos, "kwargs", kw)


def _key(x: Any, path: str):
    import torch

    if isinstance(x, torch.Tensor):
        # strides matter only when the layout is not the default one (views, expand, channels_last)
        layout = None if x.is_contiguous() else tuple(x.stride())
        return ("T", tuple(x.shape), str(x.dtype), str(x.device), layout)
    if isinstance(x, enum.Enum):  # before the plain types: str/int Enums are values of their class
        return ("E", f"{type(x).__module__}.{type(x).__qualname__}", x.name)
    if isinstance(x, float):
        return ("float", repr(x))  # repr: nan == nan, -0.0 != 0.0
    if isinstance(x, _PLAIN):
        return (type(x).__name__, x)
    if isinstance(x, (torch.dtype, torch.device)):
        return (type(x).__name__, str(x))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(_key(v, f"{path}[{i}]") for i, v in enumerate(x)))
    if isinstance(x, dict):
        for k in x:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise GraphKeyError(f"{path} has a dict key {k!r} of type {type(k).__name__}: CUDA-graph keys "
                                    "take str or int dict keys. Fix: use string keys.")
        items = sorted(x.items(), key=lambda kv: (type(kv[0]).__name__, kv[0]))
        return ("dict", tuple((k, _key(v, f"{path}[{k!r}]")) for k, v in items))
    raise GraphKeyError(
        f"{path} is a {type(x).__module__}.{type(x).__qualname__} ({x!r:.80}), which cannot be part of a "
        f"CUDA-graph key: a replay would silently reuse whatever the first call captured for it. Allowed: "
        f"{ALLOWED_TYPES}. Fix: pass tensors or plain values, or bind the object into the function (functools.partial)."
    )


def _tensors(tree: Any) -> list:
    """The tensors of a nested args/kwargs structure, in a deterministic order (the key's order)."""
    import torch

    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in _tensors(v)]
    if isinstance(tree, dict):
        return [t for k in sorted(tree, key=lambda k: (type(k).__name__, k)) for t in _tensors(tree[k])]
    return []


# -- backends --------------------------------------------------------------------------------------------
class GraphBackend(Protocol):
    """How graphs are recorded and replayed.

    capture(fn, static_args, static_kwargs) -> (handle, static_outputs): record `fn` on the static inputs;
    replay(handle): re-run the recording, refreshing static_outputs in place from the static inputs.
    """

    def capture(self, fn: Callable, static_args: tuple, static_kwargs: dict) -> tuple[Any, Any]: ...

    def replay(self, handle: Any) -> None: ...


class CudaGraphBackend:
    """torch.cuda.CUDAGraph: warm-up on a side stream, then capture into one memory pool shared by all graphs.

    Sharing the pool is safe here because replays never overlap and the runner clones outputs right after
    each replay (a graph's static outputs may be overwritten by another graph's replay; they are never read
    again before their own next replay).

    Args:
        warmup: eager runs on the side stream before capture (lazy init, autotuning, allocator warm-up); the device
            is synchronized after them, so an error of an eager run surfaces there, not inside the capture.
        capture_error_mode: torch.cuda.graph's capture_error_mode ("global", "thread_local", "relaxed"); None:
            torch's default.
    """

    def __init__(self, warmup: int = 2, capture_error_mode: str | None = None):
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 1:
            raise FluxperfError(f"warmup={warmup!r} must be an integer >= 1: kernels are loaded and the allocator "
                                "warmed up by eager runs, not inside a capture. Fix: pass e.g. warmup=2.")
        self.warmup = warmup
        self.capture_error_mode = capture_error_mode
        self.pool = None

    def capture(self, fn, static_args, static_kwargs):
        import torch

        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn(*static_args, **static_kwargs)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        mode = {} if self.capture_error_mode is None else {"capture_error_mode": self.capture_error_mode}
        with torch.cuda.graph(graph, pool=self.pool, **mode):
            outputs = fn(*static_args, **static_kwargs)
        return graph, outputs

    def replay(self, handle) -> None:
        handle.replay()


class EagerReplayBackend:
    """CPU stand-in for a CUDA graph with the same buffer semantics: replay re-runs `fn` on the static
    inputs and copies the results into the SAME static output tensors (as a graph overwrites its outputs)."""

    def capture(self, fn, static_args, static_kwargs):
        outputs = fn(*static_args, **static_kwargs)
        return (fn, static_args, static_kwargs, outputs), outputs

    def replay(self, handle) -> None:
        fn, args, kwargs, outputs = handle
        for static, fresh in zip(_tensors(outputs), _tensors(fn(*args, **kwargs))):
            static.copy_(fresh)


# -- runner ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GraphStats:
    """Counters of a CudaGraphRunner: graphs recorded, replays (one per call), evictions, graphs cached now."""

    recorded: int = 0
    replays: int = 0
    evictions: int = 0
    cached: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Entry:
    handle: Any
    static_args: tuple
    static_kwargs: dict
    static_inputs: list  # the tensors of (static_args, static_kwargs), in key order
    outputs: Any
    mutated: tuple[int, ...] = ()  # indices into static_inputs that fn updates in place (copied back per call)


class CudaGraphRunner:
    """Call `fn` through recorded graphs, one per `signature_key`, least recently used evicted first.

    Args:
        fn: the function to record (inference only; its outputs: a tensor or nested lists/tuples/dicts of them).
        backend: a GraphBackend (default: CudaGraphBackend()).
        max_graphs: how many graphs to keep (>= 1).
        name: label for errors and reports.

    Example:
        >>> runner = CudaGraphRunner(model)  # doctest: +SKIP
        >>> out = runner(x, t=t)  # doctest: +SKIP
    """

    def __init__(self, fn: Callable, *, backend: GraphBackend | None = None, max_graphs: int = 8, name: str = ""):
        if not isinstance(max_graphs, int) or isinstance(max_graphs, bool) or max_graphs < 1:
            raise FluxperfError(f"max_graphs={max_graphs!r} must be an integer >= 1 (graphs kept per runner). "
                                "Fix: pass e.g. max_graphs=8.")
        self.fn = fn
        self.backend = backend if backend is not None else CudaGraphBackend()
        self.max_graphs = max_graphs
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self._graphs: OrderedDict[tuple, _Entry] = OrderedDict()
        self._recorded = self._replays = self._evictions = 0

    @property
    def stats(self) -> GraphStats:
        return GraphStats(self._recorded, self._replays, self._evictions, len(self._graphs))

    def __repr__(self) -> str:
        s = self.stats
        return (f"CudaGraphRunner(name={self.name!r}, recorded={s.recorded}, replays={s.replays}, "
                f"evictions={s.evictions}, cached={s.cached}, max_graphs={self.max_graphs})")

    def keys(self) -> list[tuple]:
        """Signature keys of the cached graphs, least recently used first."""
        return list(self._graphs)

    def mutated_inputs(self) -> dict[tuple, tuple[int, ...]]:
        """Signature key -> indices (in key order, see `signature_key`) of the tensor inputs that the recorded
        function updates in place; those are copied back into the caller's tensors after each replay."""
        return {key: entry.mutated for key, entry in self._graphs.items()}

    def clear(self) -> None:
        """Drop every graph (counters are kept)."""
        self._graphs.clear()

    def __del__(self):
        # graphs first: a graph replays kernels that `fn` owns (e.g. a loaded AOTInductor package); the default
        # teardown would release `fn` (set first in __init__) before the graphs that use its kernels
        graphs = self.__dict__.get("_graphs")
        if graphs is not None:
            graphs.clear()

    def __call__(self, *args, **kwargs):
        import torch

        key = signature_key(args, kwargs)
        given = _tensors((args, kwargs))
        # the static buffers are normal tensors whatever the caller's mode: inference tensors (torch.inference_mode,
        # which the numerics tier uses) have no version counter to detect mutated inputs with, and could not be
        # refilled by a later no_grad caller; reading the caller's inference tensors from here is allowed
        with torch.inference_mode(False), torch.no_grad():
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._record(key, args, kwargs)
            else:
                self._graphs.move_to_end(key)
            # also after a fresh capture: warm-up/capture runs may have updated the static inputs in place
            for static, tensor in zip(entry.static_inputs, given):
                static.copy_(tensor)
            self.backend.replay(entry.handle)
            self._replays += 1
        with torch.no_grad():  # back in the caller's inference mode: its tensors and the returned copies are its own
            for i in entry.mutated:  # in-place updates reach the caller, as in eager
                given[i].copy_(entry.static_inputs[i])
            return _clone_tensors(entry.outputs)

    def _record(self, key, args, kwargs) -> _Entry:
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
            self._evictions += 1
        static_args, static_kwargs = _static_copy((args, kwargs))
        static_inputs = _tensors((static_args, static_kwargs))
        before = [t._version for t in static_inputs]
        handle, outputs = self.backend.capture(self.fn, static_args, static_kwargs)
        # the version counter moves on every in-place op (eager, warm-up or under capture): fn mutates these
        mutated = tuple(i for i, (t, v) in enumerate(zip(static_inputs, before)) if t._version != v)
        entry = _Entry(handle, static_args, static_kwargs, static_inputs, outputs, mutated)
        self._graphs[key] = entry
        self._recorded += 1
        return entry


def cudagraph(fn: Callable | None = None, **options):
    """Wrap `fn` in a CudaGraphRunner (usable as a decorator, with or without options).

    Example:
        >>> @cudagraph(max_graphs=4)          # doctest: +SKIP
        ... def step(x, t): ...
    """
    if fn is None:
        return lambda f: CudaGraphRunner(f, **options)
    return CudaGraphRunner(fn, **options)


def _static_copy(tree):
    """Same structure, every tensor replaced by a fresh buffer holding a copy (empty_like keeps dense strides;
    an overlapping view such as expand() gets a contiguous buffer, which copy_ can fill)."""
    import torch

    if isinstance(tree, torch.Tensor):
        buf = torch.empty_like(tree)
        buf.copy_(tree)
        return buf
    if isinstance(tree, (list, tuple, dict)):
        return _rebuild(tree, _static_copy)
    return tree


def _clone_tensors(tree):
    import torch

    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, (list, tuple, dict)):
        return _rebuild(tree, _clone_tensors)
    return tree


def _rebuild(tree, fn):
    """Apply fn to the children of a list/tuple/namedtuple/dict, keeping its type."""
    if isinstance(tree, dict):
        items = {k: fn(v) for k, v in tree.items()}
        if type(tree) is dict:
            return items
        if dataclasses.is_dataclass(tree):  # diffusers' BaseOutput (e.g. Transformer2DModelOutput): a dataclass dict
            return type(tree)(**items)
        return type(tree)(items)
    items = [fn(v) for v in tree]
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuple
        return type(tree)(*items)
    return type(tree)(items)
