"""CUDA-graph runner on a real GPU: replay equals eager, new shapes get new graphs, held outputs stay intact.

Run: pytest -m gpu tests/gpu/test_cudagraph_gpu.py
"""

from __future__ import annotations

import pytest
import torch

from fluxperf.steps.export.cudagraph import CudaGraphBackend, CudaGraphRunner

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.numerics,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; run `pytest -m gpu` on the H100"),
]

# Replay runs the kernels eager ran, on the same inputs: fp32 results agree to rounding (TF32 is off by default).
ATOL = RTOL = 1e-6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).cuda().eval()


def step(model):
    # positional `x`, keyword `bias`: both must be part of the key (flux-fast keyed kwargs only)
    def fn(x, *, bias, scale=1.0):
        return model(x) * scale + bias

    return fn


def rand(*shape):
    return torch.randn(*shape, device="cuda")


def eager(model, x, bias, scale=1.0):
    with torch.no_grad():
        return model(x) * scale + bias


def test_replay_equals_eager(model):
    run = CudaGraphRunner(step(model))
    for _ in range(3):  # first call records, the others replay with new values
        x, b = rand(8, 64), rand(64)
        torch.testing.assert_close(run(x, bias=b), eager(model, x, b), atol=ATOL, rtol=RTOL)
    assert run.stats.as_dict() == {"recorded": 1, "replays": 3, "evictions": 0, "cached": 1}
    assert isinstance(run.backend, CudaGraphBackend) and run.backend.pool is not None


def test_new_shape_records_new_graph_and_old_graph_still_replays(model):
    run = CudaGraphRunner(step(model))
    b = rand(64)
    x8, x16 = rand(8, 64), rand(16, 64)
    run(x8, bias=b)
    out16 = run(x16, bias=b)  # positional shape change: a new graph, not the 8-row buffers
    assert out16.shape == (16, 64) and run.stats.recorded == 2
    torch.testing.assert_close(out16, eager(model, x16, b), atol=ATOL, rtol=RTOL)
    x8b = rand(8, 64)
    torch.testing.assert_close(run(x8b, bias=b), eager(model, x8b, b), atol=ATOL, rtol=RTOL)  # old graph
    run(x8b, bias=rand(1, 64))  # keyword shape change
    run(x8b, bias=b, scale=2.0)  # non-tensor value change
    assert run.stats.recorded == 4 and run.stats.replays == 5


def test_held_outputs_are_not_overwritten_by_later_replays(model):
    run = CudaGraphRunner(step(model))
    b = rand(64)
    x1, x2 = rand(8, 64), rand(8, 64)
    held = run(x1, bias=b)
    snapshot = held.clone()
    later = run(x2, bias=b)
    assert torch.equal(held, snapshot) and not torch.equal(held, later)
    torch.testing.assert_close(held, eager(model, x1, b), atol=ATOL, rtol=RTOL)


def test_eviction_and_rerecord_with_shared_pool(model):
    run = CudaGraphRunner(step(model), max_graphs=2)
    b = rand(64)
    xs = {n: rand(n, 64) for n in (4, 8, 12)}
    for n in (4, 8, 12, 4):  # 12 evicts 4; 4 is recorded again and evicts 8
        torch.testing.assert_close(run(xs[n], bias=b), eager(model, xs[n], b), atol=ATOL, rtol=RTOL)
    assert run.stats.as_dict() == {"recorded": 4, "replays": 4, "evictions": 2, "cached": 2}
    torch.testing.assert_close(run(xs[12], bias=b), eager(model, xs[12], b), atol=ATOL, rtol=RTOL)


def test_in_place_input_update_is_copied_back_and_applied_once_per_call():
    """A sampler step doing latents.add_(noise * dt): the warm-up runs and capture must not add their updates,
    and the caller's tensor receives the update after each replay, exactly as eager."""

    def euler_step(latents, noise, dt):
        latents.add_(noise * dt)
        return latents.sum()

    run = CudaGraphRunner(euler_step)  # CudaGraphBackend(warmup=2): two eager runs and a capture before the first replay
    latents, noise = torch.zeros(4, device="cuda"), torch.ones(4, device="cuda")
    outs = [run(latents, noise, 0.5).item() for _ in range(3)]
    assert outs == [2.0, 4.0, 6.0]
    assert latents.tolist() == [1.5] * 4 and noise.tolist() == [1.0] * 4
    assert list(run.mutated_inputs().values()) == [(0,)]
