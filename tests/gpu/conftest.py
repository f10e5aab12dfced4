"""Fixtures of the GPU numerics tier: one full-size model on the GPU at a time, references computed once.

The reference is the bf16 eager full-size synthetic schnell pipeline at 1024x1024: one transformer forward, one
VAE decode and one 4-step image on fixed inputs (seeded prompt embeddings and initial noise). Each rung's
pipeline is built fresh, measured once (module-scoped, parametrized by rung) and freed before the next.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SLUG_ROOT = Path(__file__).resolve().parents[2] / "baselines"
SPEC_ARGS = ("schnell", 1024, 1024, 1)


class NumericsRecord(dict):
    """rung -> measured values. Written to $OUT/numerics-measured.json (atomically) after every rung, so a tier
    stopped by a timeout or a watchdog keeps what it measured (thresholds are derived from this file)."""

    def __setitem__(self, rung, values):
        super().__setitem__(rung, values)
        out = os.environ.get("OUT")
        if out:
            from fluxperf.io import atomic_write_json

            atomic_write_json(Path(out) / "numerics-measured.json", dict(self))


@pytest.fixture(scope="session")
def numerics_record():
    """rung -> measured values (NumericsRecord: saved to $OUT/numerics-measured.json as each rung is measured)."""
    return NumericsRecord()


@pytest.fixture(scope="session")
def gpu_identity():
    """The CUDA device in use (fluxperf.env.gpu_identity); skips without a GPU."""
    import torch

    from fluxperf.env import gpu_identity

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return gpu_identity()


@pytest.fixture(scope="session")
def gpu_slug(gpu_identity):
    return gpu_identity.slug


@pytest.fixture(scope="session")
def thresholds(gpu_identity, record_testsuite_property):
    """This GPU's numerics thresholds, or its architecture family's (baselines/sm90/...); the file used and why
    are printed and stored as JUnit properties."""
    from fluxperf.errors import BaselineError
    from fluxperf.measure.thresholds import lookup

    try:
        found = lookup(SLUG_ROOT, gpu_identity.name, gpu_identity.family)
    except BaselineError as exc:
        pytest.fail(str(exc))
    record_testsuite_property("numerics_thresholds_file", found.path)
    record_testsuite_property("numerics_thresholds_why", found.why)
    print(f"\n[numerics] thresholds: {found.path} ({found.why})")
    return found


@pytest.fixture(scope="session")
def reference(gpu_slug):
    """bf16 eager outputs on fixed inputs (kept on the GPU; small): forward, VAE decode, image."""
    from fluxperf.measure.runner import prepared

    with prepared("schnell", "full", None, device="cuda", dtype="bfloat16") as run:  # freed afterwards
        return _reference_outputs(run.pipe)


def _reference_outputs(pipe) -> dict:
    import torch

    from fluxperf.measure.numerics import fixed_inputs, image_of

    inputs = fixed_inputs(pipe, SPEC_ARGS)
    with torch.inference_mode():
        return {"forward": pipe.transformer(**inputs["transformer"])[0].float(),
                "vae": pipe.vae.decode(inputs["latents"], return_dict=False)[0].float(),
                "image": image_of(pipe, inputs), "inputs": inputs}
