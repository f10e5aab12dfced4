"""CUDA-graph wrapper logic on CPU: signature keys (hypothesis) and the runner with a CPU graph backend."""

from __future__ import annotations

import enum

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxperf.errors import FluxperfError
from fluxperf.steps.export.cudagraph import (
    CudaGraphRunner,
    EagerReplayBackend,
    GraphKeyError,
    cudagraph,
    signature_key,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64]
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
dtypes = st.sampled_from(DTYPES)


def _make(shape, dtype, fill=0.0):
    return torch.full(shape, fill).to(dtype)


# -- signature_key ---------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(pos=st.lists(st.tuples(shapes, dtypes), max_size=3),
       kw=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.tuples(shapes, dtypes), max_size=3),
       scalar=st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=3)))
def test_equal_signatures_give_equal_keys(pos, kw, scalar):
    # same shapes/dtypes, different values and different objects: same key
    a_args = tuple(_make(s, d, 0.0) for s, d in pos) + (scalar,)
    b_args = tuple(_make(s, d, 1.0) for s, d in pos) + (scalar,)
    a_kw = {k: _make(s, d, 0.0) for k, (s, d) in kw.items()}
    b_kw = {k: _make(s, d, 2.0) for k, (s, d) in reversed(list(kw.items()))}  # keyword order does not matter
    assert signature_key(a_args, a_kw) == signature_key(b_args, b_kw)
    assert hash(signature_key(a_args, a_kw)) == hash(signature_key(b_args, b_kw))


@settings(max_examples=60, deadline=None)
@given(pos=st.lists(st.tuples(shapes, dtypes), min_size=1, max_size=3),
       kw=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.tuples(shapes, dtypes), min_size=1, max_size=3),
       where=st.sampled_from(["positional", "keyword"]), what=st.sampled_from(["shape", "dtype"]),
       data=st.data())
def test_any_shape_or_dtype_change_gives_a_new_key(pos, kw, where, what, data):
    args = [_make(s, d) for s, d in pos]
    kwargs = {k: _make(s, d) for k, (s, d) in kw.items()}
    if where == "positional":
        i = data.draw(st.integers(0, len(args) - 1))
        old = args[i]
    else:
        i = data.draw(st.sampled_from(sorted(kwargs)))
        old = kwargs[i]
    if what == "shape":
        new_shape = data.draw(shapes.filter(lambda s: s != tuple(old.shape)))
        new = _make(new_shape, old.dtype)
    else:
        new = old.to(data.draw(dtypes.filter(lambda d: d != old.dtype)))
    changed_args, changed_kwargs = list(args), dict(kwargs)
    if where == "positional":
        changed_args[i] = new
    else:
        changed_kwargs[i] = new
    assert signature_key(tuple(args), kwargs) != signature_key(tuple(changed_args), changed_kwargs)


def test_key_covers_nesting_strides_devices_and_plain_values():
    x = torch.zeros(4, 6)
    base = signature_key((x,), {})
    assert signature_key((x.t().contiguous(),), {}) != base  # shape (6, 4)
    assert signature_key((torch.zeros(6, 4).t(),), {}) != base  # same shape (4, 6), transposed strides
    assert signature_key(([x],), {}) != signature_key(((x,),), {})  # list vs tuple
    assert signature_key(({"a": x},), {}) != signature_key(({"b": x},), {})
    assert signature_key((x,), {}) != signature_key((), {"x": x})  # positional vs keyword
    assert signature_key((x, 1), {}) != signature_key((x, 1.0), {}) != signature_key((x, True), {})
    assert signature_key((x,), {"s": 0.5}) != signature_key((x,), {"s": 0.25})
    assert signature_key((x,), {"mode": "a"}) != signature_key((x,), {"mode": "b"})
    assert signature_key((float("nan"),), {}) == signature_key((float("nan"),), {})
    assert signature_key((torch.float32, torch.device("cpu")), {}) == signature_key((torch.float32, torch.device("cpu")), {})

    class Mode(enum.Enum):
        A = 1
        B = 2

    assert signature_key((Mode.A,), {}) != signature_key((Mode.B,), {})
    assert signature_key((Mode.A,), {}) != signature_key((1,), {})


def test_unkeyable_argument_raises_naming_the_argument():
    with pytest.raises(GraphKeyError, match=r"kwargs\['opts'\]\[1\].*object.*Allowed: torch.Tensor") as info:
        signature_key((torch.zeros(1),), {"opts": [1, object()]})
    assert isinstance(info.value, TypeError) and isinstance(info.value, FluxperfError)
    with pytest.raises(GraphKeyError, match=r"args\[0\] has a dict key"):
        signature_key(({(1, 2): 3},), {})


# -- runner with the CPU graph backend --------------------------------------------------------------------
class Recorder:
    """A function that remembers which tensor objects it ran on."""

    def __init__(self):
        self.seen = []

    def __call__(self, x, scale=None, *, y=None):
        self.seen.append((x, y))
        out = x * 2 if y is None else x * 2 + y
        return (out, {"sum": out.sum()}) if scale is None else [out * scale]


def runner(fn=None, **kw):
    return CudaGraphRunner(fn or Recorder(), backend=EagerReplayBackend(), **kw)


def test_inputs_are_copied_into_static_buffers():
    fn = Recorder()
    run = runner(fn)
    a, b = torch.ones(3), torch.full((3,), 5.0)
    run(a, y=b)
    first_x, first_y = fn.seen[0]
    assert first_x is not a and first_y is not b  # captured on static buffers, not on the caller's tensors
    out, extra = run(torch.full((3,), 2.0), y=torch.zeros(3))
    assert all(x is first_x and y is first_y for x, y in fn.seen)  # every run reads the same buffers
    assert out.tolist() == [4.0, 4.0, 4.0] and extra["sum"].item() == 12.0  # ...filled with the new values
    assert a.tolist() == [1.0, 1.0, 1.0]  # the caller's tensors are untouched
    assert run.stats.recorded == 1 and run.stats.replays == 2


def test_outputs_are_cloned_so_later_replays_do_not_overwrite_them():
    run = runner()
    held, _ = run(torch.ones(3))
    again, _ = run(torch.full((3,), 10.0))
    assert held.tolist() == [2.0, 2.0, 2.0] and again.tolist() == [20.0, 20.0, 20.0]
    entry_out = run._graphs[run.keys()[0]].outputs[0]
    assert held.data_ptr() != entry_out.data_ptr() and again.data_ptr() != entry_out.data_ptr()


def test_positional_shape_change_records_a_new_graph():
    # flux-fast keyed only on kwargs shapes: this positional change replayed the (3,)-graph on (3,)-buffers
    run = runner()
    run(torch.ones(3), y=torch.ones(1))
    out, _ = run(torch.ones(5), y=torch.ones(1))
    assert out.shape == (5,) and run.stats.recorded == 2
    out, _ = run(torch.ones(5), y=torch.ones(5))  # keyword change too
    assert out.shape == (5,) and run.stats.recorded == 3
    run(torch.ones(5).double(), y=torch.ones(5).double())  # dtype change
    assert run.stats.recorded == 4


def test_non_tensor_argument_value_selects_the_graph():
    run = runner()
    assert run(torch.ones(2), 3.0)[0].tolist() == [6.0, 6.0]
    assert run(torch.ones(2), 0.5)[0].tolist() == [1.0, 1.0]  # a new graph, not the 3.0 one
    assert run.stats.recorded == 2
    with pytest.raises(GraphKeyError, match=r"args\[1\]"):
        run(torch.ones(2), object())


def test_lru_eviction_is_bounded_and_counted():
    run = runner(max_graphs=2)
    run(torch.ones(1))
    run(torch.ones(2))
    run(torch.ones(1))  # touch size 1: size 2 is now the oldest
    run(torch.ones(3))  # evicts size 2
    assert run.stats.as_dict() == {"recorded": 3, "replays": 4, "evictions": 1, "cached": 2}
    assert [k[1][0][1] for k in run.keys()] == [(1,), (3,)]
    run(torch.ones(2))  # re-recorded, evicting size 1
    assert run.stats.recorded == 4 and run.stats.evictions == 2
    assert [k[1][0][1] for k in run.keys()] == [(3,), (2,)]


def test_expanded_input_gets_a_writable_buffer():
    # the pipeline passes guidance.expand(batch): stride 0, cannot be a copy_ target itself
    run = runner(lambda g: g * 1.0)
    out = run(torch.tensor([3.5]).expand(4))
    out2 = run(torch.tensor([1.5]).expand(4))
    assert out.tolist() == [3.5] * 4 and out2.tolist() == [1.5] * 4 and run.stats.recorded == 1


def test_bad_max_graphs_and_decorator():
    with pytest.raises(FluxperfError, match="max_graphs=0"):
        CudaGraphRunner(lambda x: x, max_graphs=0)
    deco = cudagraph(backend=EagerReplayBackend(), max_graphs=3)

    @deco
    def f(x):
        return x + 1

    assert isinstance(f, CudaGraphRunner) and f.max_graphs == 3 and f(torch.zeros(1)).item() == 1.0


def test_teardown_drops_graphs_before_the_function_they_replay():
    """A graph replays kernels owned by `fn` (a loaded AOTInductor package): graphs must go first."""
    import gc

    order = []

    class Owner:  # stands in for a loaded package
        def __call__(self, x):
            return x * 2

        def __del__(self):
            order.append("fn")

    class Handle:  # stands in for a captured CUDA graph
        def __del__(self):
            order.append("graph")

    class Backend:
        def capture(self, fn, args, kwargs):
            return Handle(), fn(*args, **kwargs)

        def replay(self, handle):
            pass

    run = CudaGraphRunner(Owner(), backend=Backend())
    run(torch.ones(2))
    run(torch.ones(3))
    del run
    gc.collect()
    assert order == ["graph", "graph", "fn"]


def test_cuda_backend_refuses_capture_without_warmup():
    from fluxperf.steps.export.cudagraph import CudaGraphBackend

    with pytest.raises(FluxperfError, match=r"warmup=0 .*Fix: pass e.g. warmup=2"):
        CudaGraphBackend(warmup=0)
    assert CudaGraphBackend(capture_error_mode="thread_local").capture_error_mode == "thread_local"


# -- inputs updated in place by the recorded function ------------------------------------------------------
def euler_step(latents, noise, dt):
    """A sampler step that updates its input in place (what a scheduler's step does to latents)."""
    latents.add_(noise * dt)
    return latents.sum()


def test_in_place_input_update_is_copied_back_and_applied_once_per_call():
    # eager: 0.5 per call, so sums 2, 4, 6 and the caller's tensor ends at 1.5 (before: [4, 2, 2], still zeros)
    run = runner(euler_step)
    latents, noise = torch.zeros(4), torch.ones(4)
    outs = [run(latents, noise, 0.5).item() for _ in range(3)]
    assert outs == [2.0, 4.0, 6.0]
    assert latents.tolist() == [1.5] * 4 and noise.tolist() == [1.0] * 4
    assert run.stats.recorded == 1
    assert list(run.mutated_inputs().values()) == [(0,)]  # latents only; noise is read, not written


def test_in_place_update_with_the_warmup_of_a_graph_backend_is_not_applied_twice():
    """A backend that runs fn several times before the first replay (CUDA: warm-up runs, then capture)."""

    class WarmupEager(EagerReplayBackend):
        def capture(self, fn, static_args, static_kwargs):
            fn(*static_args, **static_kwargs)  # warm-up run: updates the static input once more
            return super().capture(fn, static_args, static_kwargs)

    run = CudaGraphRunner(euler_step, backend=WarmupEager())
    latents = torch.zeros(4)
    outs = [run(latents, torch.ones(4), 0.5).item() for _ in range(3)]
    assert outs == [2.0, 4.0, 6.0] and latents.tolist() == [1.5] * 4


def test_pure_function_marks_no_input_as_mutated():
    run = runner()
    a = torch.ones(3)
    run(a, y=torch.ones(3))
    assert list(run.mutated_inputs().values()) == [()] and a.tolist() == [1.0, 1.0, 1.0]
