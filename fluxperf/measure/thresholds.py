"""Numerics thresholds per hardware: baselines/<gpu-slug>/numerics.json, else baselines/<family>/numerics.json.

A rung's numerics depend on the GPU *architecture*, not on the card: the H100's thresholds held on the H200 to
0.1 dB (../shared/DEVICE.md; PSNR 46.63 / 46.62 / 46.63 / 38.07 / 32.09 dB vs the H100's 46.6 / 46.6 / 46.6 /
38.1 / 32.1). So `lookup` takes the exact GPU's file first, then its compute-capability family's (e.g.
baselines/sm90/numerics.json for every Hopper GPU), and says which file it used and why.

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from fluxperf.errors import BaselineError
from fluxperf.io import atomic_write_json

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
    family: str | None = None  # set on a family file (e.g. "sm90"), whose thresholds hold for every GPU of it
    path: str | None = None  # the file it was read from
    why: str = ""  # why this file was chosen (exact GPU, or its architecture family)

    def rung(self, name: str) -> RungThreshold:
        if name not in self.rungs:
            raise BaselineError(f"no numerics thresholds for rung {name!r} in {self.source} (have "
                                f"{sorted(self.rungs)}). Fix: measure it (scripts/tiers/gpu-tier.sh writes "
                                "numerics-measured.json) and add it: fluxperf baseline numerics MEASURED.json --gpu SLUG")
        return self.rungs[name]

    def check_psnr(self, name: str, metrics: dict) -> str | None:
        """None if the image passes, else the failure message (a non-finite measurement never passes)."""
        limit = self.rung(name).psnr_min_db
        value = metrics["psnr_db"]
        if limit is None:
            raise BaselineError(f"rung {name!r} has no psnr_min_db in {self.source}. Fix: re-derive the file.")
        if value == math.inf or (math.isfinite(value) and value >= limit):
            return None
        return (f"rung {name!r}: image PSNR {value:.2f} dB < threshold {limit:.2f} dB "
                f"(SSIM {metrics.get('ssim', float('nan')):.4f}, max abs error "
                f"{metrics.get('max_abs_error', float('nan')):.4f}; thresholds: {self.source})")

    def check_rel_err(self, name: str, kind: str, value: float) -> str | None:
        """None if `value` (a relative error) is within the rung's limit, else the failure message."""
        limit = getattr(self.rung(name), f"{kind}_rel_err_max")
        if limit is None:
            raise BaselineError(f"rung {name!r} has no {kind}_rel_err_max in {self.source}. Fix: re-derive the file.")
        if math.isfinite(value) and value <= limit:
            return None
        return f"rung {name!r}: {kind} relative error {value:.5f} > threshold {limit:.5f} ({self.source})"

    @property
    def source(self) -> str:
        return self.path or f"{FILE_NAME} v{self.version} for {self.gpu}"

    def to_dict(self) -> dict:
        out = {"version": self.version, "gpu": self.gpu, "margin": self.margin, "provenance": self.provenance,
               "rungs": {k: asdict(v) for k, v in self.rungs.items()}}
        if self.family:
            out["family"] = self.family
        return out


def path_for(root: str | Path, slug: str) -> Path:
    return Path(root) / slug / FILE_NAME


PSNR_RANGE_DB = (1.0, 100.0)  # a minimum image PSNR outside it guards nothing (or everything)
REL_ERR_RANGE = (1e-6, 1.0)  # relative error 1.0 = the output is as far from eager as eager is from zero


def load(path: str | Path, *, expected_gpu: str | None = None, family: str | None = None) -> Thresholds:
    """Load and validate a thresholds file field by field; a corrupt file is an error, never a silent pass.

    Every rung needs psnr_min_db, forward_rel_err_max and vae_rel_err_max, finite numbers (not booleans) in
    PSNR_RANGE_DB / REL_ERR_RANGE. `gpu` must name the GPU whose folder holds it (expected_gpu's slug), or
    `family` must match for a family file.

    Raises:
        BaselineError: unreadable JSON or any field of the wrong type or range (names file, key, value, fix).
    """
    path = Path(path)
    fix = f"restore it from git (git checkout -- {path}) or re-derive it: fluxperf baseline numerics MEASURED.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"numerics thresholds {path} are unreadable or not JSON ({exc}). Fix: {fix}.") from exc
    return check_data(data, path, fix, expected_gpu=expected_gpu, family=family)


def check_data(data, path, fix: str, *, expected_gpu: str | None = None, family: str | None = None) -> Thresholds:
    """Validate the content of a thresholds file (also before one is written); returns it as Thresholds."""
    from fluxperf.bench.validate import fail, mapping, number

    mapping(data, path, "", fix=fix)
    if isinstance(data.get("version"), bool) or data.get("version") != SCHEMA_VERSION:
        raise fail(path, "version", data.get("version"), f"is not {SCHEMA_VERSION} (this fluxperf's format)", fix)
    rungs = {}
    if not mapping(data.get("rungs"), path, "rungs", fix=fix):
        raise fail(path, "rungs", {}, "is empty: no rung would be checked", fix)
    for name, v in data["rungs"].items():
        mapping(v, path, f"rungs.{name}", fix=fix)
        rungs[name] = RungThreshold(
            psnr_min_db=number(v.get("psnr_min_db"), path, f"rungs.{name}.psnr_min_db", lo=PSNR_RANGE_DB[0],
                               hi=PSNR_RANGE_DB[1], fix=fix),
            forward_rel_err_max=number(v.get("forward_rel_err_max"), path, f"rungs.{name}.forward_rel_err_max",
                                       lo=REL_ERR_RANGE[0], hi=REL_ERR_RANGE[1], fix=fix),
            vae_rel_err_max=number(v.get("vae_rel_err_max"), path, f"rungs.{name}.vae_rel_err_max",
                                   lo=REL_ERR_RANGE[0], hi=REL_ERR_RANGE[1], fix=fix),
            measured=dict(mapping(v.get("measured") or {}, path, f"rungs.{name}.measured", fix=fix)))
    gpu = data.get("gpu")
    if (gpu is None) == (data.get("family") is None):
        raise fail(path, "gpu/family", (gpu, data.get("family")), "must name exactly one: a GPU or a family", fix)
    _check_owner(path, gpu, data.get("family"), expected_gpu, family, fix)
    return Thresholds(version=SCHEMA_VERSION, margin=dict(mapping(data.get("margin"), path, "margin", fix=fix)),
                      rungs=rungs, gpu=gpu, provenance=data.get("provenance") or {}, family=data.get("family"),
                      path=str(path))


def _check_owner(path: Path, gpu, file_family, expected_gpu: str | None, family: str | None, fix: str) -> None:
    from fluxperf.bench.validate import fail
    from fluxperf.env import gpu_slug

    if expected_gpu is not None and gpu_slug(gpu if isinstance(gpu, str) else None) != gpu_slug(expected_gpu):
        raise fail(path, "gpu", gpu, f"does not name the GPU of its folder ({expected_gpu!r})", fix)
    if family is not None and file_family != family:
        raise fail(path, "family", file_family, f"is not {family!r}, the architecture family of its folder", fix)


def lookup(root: str | Path, gpu_name: str, family: str | None) -> Thresholds:
    """The thresholds for a GPU: baselines/<slug>/numerics.json, else baselines/<family>/numerics.json.

    The result's `path` and `why` say which file was used and why (test output and JUnit properties show them).

    Raises:
        BaselineError: neither file exists (names both and the commands that create them), or the file is invalid.
    """
    from fluxperf.env import gpu_slug

    exact = path_for(root, gpu_slug(gpu_name))
    if exact.exists():
        t = load(exact, expected_gpu=gpu_name)
        return replace(t, why=f"thresholds of this GPU ({gpu_name})")
    fam = path_for(root, family) if family else None
    if fam is not None and fam.exists():
        t = load(fam, family=family)
        return replace(t, why=f"no file for {gpu_name}: thresholds of its architecture family {family}")
    raise BaselineError(
        f"no numerics thresholds for GPU {gpu_name!r}: neither {exact} nor "
        f"{fam or '(unknown architecture family)'} exists. Fix: run the tier once to measure "
        f"(scripts/tiers/gpu-tier.sh writes $OUT/numerics-measured.json), then `fluxperf baseline numerics "
        f"numerics-measured.json --gpu {gpu_slug(gpu_name)}` (or --family {family or 'smXY'}).")


MEASURED_KEYS = ("psnr_db", "forward_rel_err", "vae_rel_err")


def worst_of(measurements: list[dict[str, dict]]) -> dict[str, dict]:
    """Per rung, the worst value over several tier runs (lowest PSNR, largest relative errors): family files are
    derived from every GPU of the family that was measured."""
    out: dict[str, dict] = {}
    for measured in measurements:
        for rung, m in measured.items():
            _require_measured(rung, m)
            cur = out.setdefault(rung, dict(m))
            cur["psnr_db"] = min(cur["psnr_db"], m["psnr_db"])
            for key in ("forward_rel_err", "vae_rel_err"):
                cur[key] = max(cur[key], m[key])
    return out


MEASURED_FIX = "pass the numerics-measured.json of a complete GPU tier run (scripts/tiers/gpu-tier.sh writes it to $OUT)"


def check_measured(measured, source) -> dict[str, dict]:
    """Validate one numerics-measured.json: rung -> {psnr_db (dB, may be Infinity: identical images),
    forward_rel_err, vae_rel_err}, at least one rung. Raises BaselineError naming the file and key."""
    from fluxperf.bench.validate import fail, mapping, number

    if not mapping(measured, source, "", fix=MEASURED_FIX):
        raise fail(source, "", {}, "measures no rung", MEASURED_FIX)
    for rung, m in measured.items():
        mapping(m, source, rung, fix=MEASURED_FIX)
        for key in MEASURED_KEYS:
            if key not in m:
                raise fail(source, f"{rung}.{key}", None, "is missing", MEASURED_FIX)
        if m["psnr_db"] != math.inf:
            number(m["psnr_db"], source, f"{rung}.psnr_db", lo=0, fix=MEASURED_FIX)
        for key in ("forward_rel_err", "vae_rel_err"):
            number(m[key], source, f"{rung}.{key}", lo=0, fix=MEASURED_FIX)
    return measured


def _require_measured(rung: str, m) -> None:
    check_measured({rung: m}, "measured values")


def derive(measured: dict[str, dict], *, psnr_margin_db: float = 3.0, rel_err_factor: float = 1.5,
           rel_err_floor: float = 1e-3, gpu: str | None = None, family: str | None = None,
           provenance: dict | None = None) -> Thresholds:
    """Thresholds from measured values: PSNR minus a margin (dB), relative errors times a factor (with a floor).

    Args:
        measured: rung -> {"psnr_db": ..., "forward_rel_err": ..., "vae_rel_err": ...} (all three required).

    Raises:
        BaselineError: a rung lacks a measured value, or one is not a finite number (an infinite PSNR — outputs
            identical to eager — becomes a 60 dB minimum).
    """
    from fluxperf.bench.validate import number

    rungs = {}
    for name, m in measured.items():
        _require_measured(name, m)
        psnr = m["psnr_db"] if m["psnr_db"] == math.inf else number(m["psnr_db"], "measured", f"{name}.psnr_db", lo=0)
        rungs[name] = RungThreshold(
            psnr_min_db=psnr - psnr_margin_db if math.isfinite(psnr) else 60.0,
            forward_rel_err_max=max(number(m["forward_rel_err"], "measured", f"{name}.forward_rel_err", lo=0)
                                    * rel_err_factor, rel_err_floor),
            vae_rel_err_max=max(number(m["vae_rel_err"], "measured", f"{name}.vae_rel_err", lo=0) * rel_err_factor,
                                rel_err_floor),
            measured={k: ("inf" if v == math.inf else v) for k, v in m.items()},  # JSON has no Infinity
        )
    margin = {"psnr_db": psnr_margin_db, "rel_err_factor": rel_err_factor, "rel_err_floor": rel_err_floor}
    return Thresholds(SCHEMA_VERSION, margin, rungs, gpu=gpu, family=family, provenance=provenance or {})


def save(thresholds: Thresholds, path: str | Path) -> Path:
    """Write atomically, after the loader's own validation: a file load() would refuse is never written.

    Raises:
        BaselineError: a threshold outside the loader's ranges (e.g. a PSNR minimum under 1 dB).
    """
    fix = "re-measure: the derived thresholds would guard nothing (check the measured values and the margins)"
    check_data(thresholds.to_dict(), path, fix)
    return atomic_write_json(path, thresholds.to_dict())
