"""Numerics thresholds per hardware: one versioned JSON file per GPU under baselines/<gpu-slug>/numerics.json.

Each rung has a minimum image PSNR (dB, vs the bf16 eager reference image) and maximum relative errors of one
transformer forward and one VAE decode (vs bf16 eager on the same inputs). Thresholds are derived from measured
values with a stated margin (`derive`), and checks fail with the rung, the measured value, the threshold and the
other image metrics (SSIM, max abs error).

Example:
    >>> t = Thresholds(version=1, margin={"psnr_db": 3.0, "rel_err_factor": 1.5},
    ...                rungs={"compile": RungThreshold(psnr_min_db=40.0, forward_rel_err_max=0.01)})
    >>> t.check_psnr("compile", {"psnr_db": 45.0, "ssim": 0.99, "max_abs_error": 0.1}) is None
    True
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import BaselineError
from .io import atomic_write_json

FILE_NAME = "numerics.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RungThreshold:
    psnr_min_db: float | None = None
    forward_rel_err_max: float | None = None
    vae_rel_err_max: float | None = None
    measured: dict = field(default_factory=dict)  # the values the thresholds were derived from


@dataclass(frozen=True)
class Thresholds:
    version: int
    margin: dict
    rungs: dict[str, RungThreshold]
    gpu: str | None = None
    provenance: dict = field(default_factory=dict)

    def rung(self, name: str) -> RungThreshold:
        if name not in self.rungs:
            raise BaselineError(f"no numerics thresholds for rung {name!r} (have {sorted(self.rungs)}). Fix: "
                                "measure it (scripts/gpu-tier.sh writes numerics-measured.json) and run "
                                "`python scripts/derive_thresholds.py` to add it.")
        return self.rungs[name]

    def check_psnr(self, name: str, metrics: dict) -> str | None:
        """None if the image passes, else the failure message."""
        limit = self.rung(name).psnr_min_db
        value = metrics["psnr_db"]
        if limit is None or value >= limit:
            return None
        return (f"rung {name!r}: image PSNR {value:.2f} dB < threshold {limit:.2f} dB "
                f"(SSIM {metrics.get('ssim', float('nan')):.4f}, max abs error "
                f"{metrics.get('max_abs_error', float('nan')):.4f}; thresholds: {self.source})")

    def check_rel_err(self, name: str, kind: str, value: float) -> str | None:
        limit = getattr(self.rung(name), f"{kind}_rel_err_max")
        if limit is None or value <= limit:
            return None
        return f"rung {name!r}: {kind} relative error {value:.5f} > threshold {limit:.5f} ({self.source})"

    @property
    def source(self) -> str:
        return f"{FILE_NAME} v{self.version} for {self.gpu}"

    def to_dict(self) -> dict:
        return {"version": self.version, "gpu": self.gpu, "margin": self.margin, "provenance": self.provenance,
                "rungs": {k: asdict(v) for k, v in self.rungs.items()}}


def path_for(root: str | Path, slug: str) -> Path:
    return Path(root) / slug / FILE_NAME


def load(path: str | Path) -> Thresholds:
    """Load and validate a thresholds file; a corrupt file is an error, never a silent pass."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        rungs = {k: RungThreshold(**v) for k, v in data["rungs"].items()}
        thresholds = Thresholds(version=int(data["version"]), margin=dict(data["margin"]), rungs=rungs,
                                gpu=data.get("gpu"), provenance=data.get("provenance", {}))
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BaselineError(f"corrupt numerics thresholds file {path}: {exc}. Fix: restore it from git.") from exc
    if thresholds.version != SCHEMA_VERSION:
        raise BaselineError(f"{path}: version {thresholds.version}, this fluxperf reads version {SCHEMA_VERSION}.")
    return thresholds


def derive(measured: dict[str, dict], *, psnr_margin_db: float = 3.0, rel_err_factor: float = 1.5,
           rel_err_floor: float = 1e-3, gpu: str | None = None, provenance: dict | None = None) -> Thresholds:
    """Thresholds from measured values: PSNR minus a margin (dB), relative errors times a factor (with a floor).

    Args:
        measured: rung -> {"psnr_db": ..., "forward_rel_err": ..., "vae_rel_err": ...}.
    """
    rungs = {}
    for name, m in measured.items():
        psnr = m.get("psnr_db")
        rungs[name] = RungThreshold(
            psnr_min_db=None if psnr is None else (psnr - psnr_margin_db if math.isfinite(psnr) else 60.0),
            forward_rel_err_max=_scaled(m.get("forward_rel_err"), rel_err_factor, rel_err_floor),
            vae_rel_err_max=_scaled(m.get("vae_rel_err"), rel_err_factor, rel_err_floor),
            measured=dict(m),
        )
    margin = {"psnr_db": psnr_margin_db, "rel_err_factor": rel_err_factor, "rel_err_floor": rel_err_floor}
    return Thresholds(SCHEMA_VERSION, margin, rungs, gpu=gpu, provenance=provenance or {})


def save(thresholds: Thresholds, path: str | Path) -> Path:
    return atomic_write_json(path, thresholds.to_dict())


def _scaled(value, factor: float, floor: float):
    if value is None:
        return None
    return max(value * factor, floor)
