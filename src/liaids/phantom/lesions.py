"""The seven focal liver lesion types: size, placement, and their appearance in each phase.

Each lesion is an ellipsoid with lobulation whose interior pattern depends on its type and the phase,
following ``shared/reference/ct-appearance.md``: cyst (water, sharp), haemangioma (peripheral nodules as
bright as the aorta, centripetal fill-in, small ones flash-filling), FNH (homogeneous arterial
hyperenhancement, iso in PV, central scar), abscess (fluid centre, enhancing inner rim, oedema ring,
septa, gas, arterial wedge of the surrounding liver), HCC (mosaic arterial hyperenhancement, washout,
capsule, hypovascular variant, necrosis), ICC (irregular rim, progressive central fill, dilated ducts),
metastasis (rim/target, hypervascular variant). Intensities are set relative to the patient's own liver
and blood values so that contrast dose and timing act on lesions as on organs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from liaids.codes import PHASES
from liaids.phantom.anatomy import LIVER_TISSUES, Anatomy, Ellipsoid, paint, union_bbox
from liaids.phantom.enhancement import Attenuation
from liaids.phantom.labels import Tissue

# Diameter distribution per type: (median mm, log-normal sigma).
_SIZE = {
    "HC": (9.0, 0.75),
    "HH": (13.0, 0.75),
    "HM": (12.0, 0.7),
    "HCC": (28.0, 0.75),
    "ICC": (42.0, 0.5),
    "HA": (45.0, 0.55),
    "FNH": (22.0, 0.6),
}
_EXTRA_COUNT = {"HC": 1.3, "HH": 0.5, "HM": 2.0, "HCC": 0.3, "ICC": 0.0, "HA": 0.3, "FNH": 0.3}
_MAX_COUNT = {"HC": 8, "HH": 4, "HM": 10, "HCC": 3, "ICC": 1, "HA": 2, "FNH": 3}
_EDGE_MM = 0.6


@dataclass
class LesionSpec:
    """One lesion: geometry in the liver frame (mm, before breathing shift) and per-phase intensities."""

    lesion_id: int
    lesion_type: str
    shape: Ellipsoid
    variant: str
    hu: dict[str, dict[str, float]]  # phase -> component -> HU
    pattern: dict[str, Any] = field(default_factory=dict)

    @property
    def radius_mm(self) -> float:
        return float(np.cbrt(np.prod(self.shape.axes)))

    @property
    def diameter_mm(self) -> float:
        return 2.0 * float(self.shape.axes.max())

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.lesion_id,
            "type": self.lesion_type,
            "variant": self.variant,
            "centre_mm": [round(float(v), 2) for v in self.shape.centre],
            "diameter_mm": round(self.diameter_mm, 2),
        }


def lesion_count(rng: np.random.Generator, lesion_type: str) -> int:
    """Number of lesions of the patient's main diagnosis."""
    return int(min(_MAX_COUNT[lesion_type], 1 + rng.poisson(_EXTRA_COUNT[lesion_type])))


def sample_diameter(rng: np.random.Generator, lesion_type: str, scale: float = 1.0) -> float:
    median, sigma = _SIZE[lesion_type]
    return float(np.clip(median * scale * np.exp(rng.normal(0, sigma)), 3.0, 130.0))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def make_lesion(
    rng: np.random.Generator,
    lesion_id: int,
    lesion_type: str,
    centre: np.ndarray,
    diameter: float,
    att: Attenuation,
) -> LesionSpec:
    """Draw shape, variant and per-phase intensities of one lesion.

    Args:
        rng: random generator.
        lesion_id: instance id (>= 1) used in the lesion masks.
        lesion_type: one of the seven codes.
        centre: lesion centre in the liver frame (mm).
        diameter: largest diameter in mm.
        att: the patient's attenuation table.
    """
    liver = {p: att.hu(Tissue.LIVER, p) for p in PHASES}
    aorta = {p: att.hu(Tissue.AORTA, p) for p in PHASES}
    portal_pv = att.hu(Tissue.PORTAL_VEIN, "PV")
    r = diameter / 2.0
    lobulation = {"FNH": 0.12, "ICC": 0.16, "HM": 0.06, "HCC": 0.06, "HA": 0.08, "HH": 0.05, "HC": 0.02}[
        lesion_type
    ]
    axes = r * np.array([1.0, _u(rng, 0.75, 1.0), _u(rng, 0.75, 1.0)])
    rng.shuffle(axes)
    shape = Ellipsoid.random(rng, centre, axes, rotate_deg=90, bumps=lobulation, freq=(1.5, 3.0))
    hu: dict[str, dict[str, float]] = {p: {} for p in PHASES}
    pattern: dict[str, Any] = {"texture": _texture(rng, 0.0)}
    # Rims and capsules are a few mm thick but never most of a small lesion: a 6 mm metastasis is a
    # hypodense focus, not a ring.
    variant = "typical"
    if lesion_type == "HC":
        v = _u(rng, 0, 15)
        for i, p in enumerate(PHASES):
            hu[p]["core"] = v + i * _u(rng, 0, 1.5)
    elif lesion_type == "HH":
        nc = aorta["NC"] + rng.normal(0, 3)
        if diameter < 20 and rng.random() < 0.5:
            variant = "flash-filling"
            hu["NC"]["core"] = nc
            hu["ART"]["core"] = aorta["ART"] * _u(rng, 0.5, 0.7)
            hu["PV"]["core"] = portal_pv * _u(rng, 0.82, 0.98)
        else:
            n = int(rng.integers(4, 10))
            dirs = rng.normal(size=(n, 3))
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            pattern["nodules"] = dirs * _u(rng, 0.75, 0.9)
            pattern["nodule_r"] = rng.uniform(0.16, 0.28, n)
            # Radius fraction of the centre still unfilled at PV (~70 s): fill-in is progressive and
            # completes only on delayed images, so at PV a third to a half of most lesions is still dark;
            # giant ones keep a larger centre.
            pattern["fill_front"] = _u(rng, 0.6, 0.9) if diameter > 40 else _u(rng, 0.45, 0.85)
            hu["NC"].update(core=nc, nodule=nc)
            # The nodules are isoattenuating to the blood pool in every phase (the classic criterion).
            hu["ART"].update(core=nc + _u(rng, 3, 12), nodule=aorta["ART"] * _u(rng, 0.85, 1.0))
            hu["PV"].update(core=nc + _u(rng, 5, 20), nodule=portal_pv * _u(rng, 0.9, 1.0))
    elif lesion_type == "FNH":
        hu["NC"]["core"] = liver["NC"] - _u(rng, 2, 9)
        hu["ART"]["core"] = liver["ART"] + _u(rng, 40, 80)
        hu["PV"]["core"] = liver["PV"] + _u(rng, -6, 8)
        pattern["texture"] = _texture(rng, 4.0)
        if diameter >= 15 and rng.random() < 0.85:
            variant = "with-scar"
            spokes = rng.normal(size=(int(rng.integers(3, 7)), 3))
            pattern["spokes"] = spokes / np.linalg.norm(spokes, axis=1, keepdims=True)
            hu["NC"]["scar"] = hu["NC"]["core"] - _u(rng, 12, 22)
            hu["ART"]["scar"] = liver["ART"] - _u(rng, 0, 15)
            hu["PV"]["scar"] = liver["PV"] - _u(rng, 8, 22)
    elif lesion_type == "HA":
        fluid = _u(rng, 10, 28)
        hu["NC"].update(core=fluid, rim=_u(rng, 35, 45))
        hu["ART"].update(core=fluid + _u(rng, 0, 5), rim=liver["ART"] + _u(rng, 10, 35))
        hu["PV"].update(core=fluid + _u(rng, 0, 8), rim=liver["PV"] + _u(rng, -10, 8))
        pattern["rim_mm"] = min(_u(rng, 2.5, 5.0), 0.25 * r)
        n_septa = int(rng.integers(4, 7)) if rng.random() < 0.4 else int(rng.integers(0, 3))
        normals = rng.normal(size=(n_septa, 3))
        pattern["septa"] = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-6)
        pattern["septa_offset"] = rng.uniform(-0.4, 0.4, n_septa)
        if rng.random() < 0.25:
            variant = "gas-containing"
            pattern["gas"] = rng.uniform([-0.4, -0.7, -0.4], [0.4, -0.3, 0.4], (int(rng.integers(2, 6)), 3))
        # Oedema ring (hypo, all phases) and an arterial wedge of the neighbouring liver; not in the mask.
        pattern["oedema_mm"] = _u(rng, 3, 7)
        pattern["oedema_delta"] = {"NC": -_u(rng, 5, 10), "ART": -_u(rng, 10, 20), "PV": -_u(rng, 35, 50)}
        wedge = rng.normal(size=3)
        pattern["wedge_dir"] = wedge / np.linalg.norm(wedge)
        pattern["wedge_delta"] = _u(rng, 15, 35)
    elif lesion_type == "HCC":
        hu["NC"]["core"] = liver["NC"] - _u(rng, 6, 18)
        if rng.random() < 0.15:
            variant = "hypovascular"
            hu["ART"]["core"] = liver["ART"] - _u(rng, 5, 20)
        else:
            hu["ART"]["core"] = liver["ART"] + _u(rng, 15, 50)
        hu["PV"]["core"] = liver["PV"] - _u(rng, 12, 30)
        hu["NC"]["capsule"] = hu["NC"]["core"]
        hu["ART"]["capsule"] = hu["ART"]["core"]
        hu["PV"]["capsule"] = liver["PV"] + _u(rng, 8, 25)
        pattern["capsule_mm"] = min(_u(rng, 1.2, 2.5), 0.15 * r) if rng.random() < 0.8 else 0.0
        pattern["texture"] = _texture(rng, _u(rng, 8, 18), freq=(3.0, 7.0))
        if diameter > 40 and rng.random() < 0.6:
            pattern["necrosis"] = _u(rng, 0.25, 0.5)
            for p in PHASES:
                hu[p]["necrosis"] = _u(rng, 22, 35)
    elif lesion_type == "ICC":
        nc = liver["NC"] - _u(rng, 14, 24)
        hu["NC"].update(core=nc, rim=nc)
        hu["ART"].update(core=nc + _u(rng, 5, 15), rim=liver["ART"] + _u(rng, 10, 35))
        hu["PV"].update(core=nc + _u(rng, 30, 50), rim=liver["PV"] - _u(rng, 0, 15))
        pattern["rim_mm"] = min(_u(rng, 2.0, 4.5), 0.25 * r)
        pattern["rim_texture"] = _texture(rng, 0.35, freq=(4.0, 8.0))
    elif lesion_type == "HM":
        nc = liver["NC"] - _u(rng, 12, 24)
        if rng.random() < 0.15:
            variant = "hypervascular"
            hu["NC"].update(core=nc, rim=nc)
            hu["ART"].update(core=liver["ART"] + _u(rng, 25, 55), rim=liver["ART"] + _u(rng, 25, 55))
            hu["PV"].update(core=liver["PV"] - _u(rng, 10, 30), rim=liver["PV"] - _u(rng, 5, 20))
            pattern["rim_mm"] = 0.0
            if diameter > 25:
                pattern["necrosis"] = _u(rng, 0.25, 0.45)
                for p in PHASES:
                    hu[p]["necrosis"] = nc + _u(rng, 0, 12)
        else:
            hu["NC"].update(core=nc, rim=nc + _u(rng, 0, 6))
            hu["ART"].update(core=nc + _u(rng, 4, 15), rim=liver["ART"] + _u(rng, -5, 20))
            hu["PV"].update(core=liver["PV"] - _u(rng, 40, 65), rim=liver["PV"] - _u(rng, -5, 15))
            pattern["rim_mm"] = min(_u(rng, 1.5, 4.0), 0.2 * r)
        pattern["texture"] = _texture(rng, 4.0)
    else:  # pragma: no cover - the type list is closed
        raise ValueError(f"unknown lesion type {lesion_type!r}")
    return LesionSpec(lesion_id, lesion_type, shape, variant, hu, pattern)


def _texture(
    rng: np.random.Generator, amplitude: float, freq: tuple[float, float] = (1.5, 4.0)
) -> dict[str, Any]:
    dirs = rng.normal(size=(4, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return {
        "amp": amplitude,
        "dirs": dirs,
        "freq": rng.uniform(*freq, 4),
        "phase": rng.uniform(0, 2 * np.pi, 4),
    }


def _wave(tex: dict[str, Any], u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray | float:
    if tex["amp"] == 0:
        return 0.0
    out = np.zeros_like(u)
    for d, f, ph in zip(tex["dirs"], tex["freq"], tex["phase"], strict=True):
        out += np.sin(f * np.pi * (d[0] * u + d[1] * v + d[2] * w) + ph)
    return out * (tex["amp"] / 2.0)


def render_lesion(
    spec: LesionSpec, x: np.ndarray, y: np.ndarray, z: np.ndarray, phase: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Appearance of one lesion on sample points (mm, liver frame).

    Returns:
        ``(alpha, hu, peri)``: lesion occupancy in [0, 1] (soft edge of about one pixel), lesion HU
        where it is present, and an additive HU change of the liver around it (oedema, arterial wedge).
    """
    sh = spec.shape
    u, v, w = sh.local(x, y, z)
    u, v, w = np.broadcast_arrays(u, v, w)
    rho = sh.radius_field(x, y, z)
    rho = np.broadcast_to(rho, u.shape)
    rmean = spec.radius_mm
    depth = (1.0 - rho) * rmean  # mm inside the surface (negative outside)
    alpha = np.clip(0.5 + depth / _EDGE_MM, 0.0, 1.0).astype(np.float32)
    h = spec.hu[phase]
    pat = spec.pattern
    hu = np.full(u.shape, h["core"], np.float32)
    peri = np.zeros(u.shape, np.float32)
    t = spec.lesion_type
    if t == "HH" and "nodules" in pat and phase in ("ART", "PV"):
        # By PV the nodules have grown and coalesce into a lobulated front that moves inwards.
        growth = 1.4 if phase == "PV" else 1.0
        near = np.zeros(u.shape, bool)
        for c, nr in zip(pat["nodules"], pat["nodule_r"], strict=True):
            near |= (u - c[0]) ** 2 + (v - c[1]) ** 2 + (w - c[2]) ** 2 < (growth * nr) ** 2
        if phase == "PV":
            near |= rho > pat["fill_front"]
        hu[near] = h["nodule"]
    elif t == "FNH" and "spokes" in pat:
        scar = rho < 0.2
        r = np.sqrt(u * u + v * v + w * w) + 1e-6
        for d in pat["spokes"]:
            proj = (u * d[0] + v * d[1] + w * d[2]) / r
            scar |= (proj > 0.97) & (rho < 0.7)
        hu[scar] = h["scar"]
    elif t == "HA":
        hu[depth < pat["rim_mm"]] = h["rim"]
        for n, off in zip(pat["septa"], pat["septa_offset"], strict=True):
            hu[np.abs(u * n[0] + v * n[1] + w * n[2] - off) < 0.04] = h["rim"]
        if "gas" in pat:
            for g in pat["gas"]:
                hu[(u - g[0]) ** 2 + (v - g[1]) ** 2 + (w - g[2]) ** 2 < 0.012] = -900.0
        ring = (depth < 0) & (depth > -pat["oedema_mm"])
        peri[ring] = pat["oedema_delta"][phase]
        if phase == "ART":
            r = np.sqrt(u * u + v * v + w * w) + 1e-6
            d = pat["wedge_dir"]
            cone = ((u * d[0] + v * d[1] + w * d[2]) / r > 0.8) & (depth <= -pat["oedema_mm"]) & (rho < 2.2)
            peri[cone] = pat["wedge_delta"]
    elif t == "HCC":
        if pat.get("capsule_mm", 0) > 0:
            hu[depth < pat["capsule_mm"]] = h["capsule"]
        if "necrosis" in pat:
            hu[rho < pat["necrosis"]] = h["necrosis"]
    elif t in ("ICC", "HM") and pat.get("rim_mm", 0) > 0:
        irregular = 1.0 + (_wave(pat["rim_texture"], u * 3, v * 3, w * 3) if "rim_texture" in pat else 0.0)
        hu[depth < pat["rim_mm"] * irregular] = h["rim"]
        if "necrosis" in pat:
            hu[rho < pat["necrosis"]] = h["necrosis"]
    elif t == "HM" and "necrosis" in pat:
        hu[rho < pat["necrosis"]] = h["necrosis"]
    tex = pat.get("texture")
    if tex is not None and tex["amp"] > 0:
        hu += _wave(tex, u, v, w).astype(np.float32)
    return alpha, hu, peri


_GROW_ABOVE_MM = 60.0  # lesions larger than this enlarge the liver around them


def _liver_depth(anatomy: Anatomy, step: float) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Distance (mm) to the nearest non-parenchyma voxel of the *painted* liver, the parenchyma mask, and
    the coarse grid's axes."""
    lo, hi = union_bbox(anatomy.liver_parts)
    axes = tuple(np.arange(lo[i] - step, hi[i] + 2 * step, step) for i in range(3))
    labels, envelope = paint(anatomy.shapes, axes[0], axes[1], axes[2], np.zeros(3))
    parenchyma = envelope & np.isin(labels, LIVER_TISSUES)
    return ndimage.distance_transform_edt(parenchyma) * step, parenchyma, axes


def _clear_of(anatomy: Anatomy, centre: np.ndarray, reach: float) -> bool:
    """A cylinder of ``reach`` around ``centre`` stays in the body cavity, off the spine, aorta and IVC."""
    if any(np.hypot(centre[0] - x, centre[1] - y) < reach + r for x, y, r in anatomy.keep_out):
        return False
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    xs = (centre[0] + reach * np.cos(angles)).astype(np.float32)
    ys = (centre[1] + reach * np.sin(angles)).astype(np.float32)
    return bool((anatomy.cavity.normalised_radius(xs, ys) < 0.98).all())


def place_lesions(
    rng: np.random.Generator,
    anatomy: Anatomy,
    wanted: list[tuple[str, float]],
    att: Attenuation,
) -> list[LesionSpec]:
    """Place lesions inside the painted liver parenchyma, largest first, without overlap.

    A lesion over 6 cm enlarges the liver around itself where that keeps the liver off the spine, aorta,
    IVC and body wall (as big tumours do); every lesion must then fit wholly inside liver parenchyma
    (no overlap with the IVC, gallbladder, kidney or bone), and one that cannot is shrunk.

    Args:
        rng: random generator.
        anatomy: the patient; its liver may be grown.
        wanted: (type, diameter mm) per lesion.
        att: attenuation table for the lesions' intensities.

    Returns:
        The placed lesions, ids in the order of ``wanted`` (a lesion that cannot be placed is dropped).
    """
    if not wanted:
        return []
    step = 3.0
    order = sorted(range(len(wanted)), key=lambda i: -wanted[i][1])
    specs: dict[int, LesionSpec] = {}
    for idx in order:
        lesion_type, diameter = wanted[idx]
        if diameter <= _GROW_ABOVE_MM:
            break
        for _try in range(40):
            c = np.array([rng.uniform(*_span(p)) for p in zip(*union_bbox(anatomy.liver_parts), strict=True)])
            if not anatomy.liver_inside(*(np.float32([[[v]]]) for v in c)).item():
                continue
            spec = make_lesion(rng, idx + 1, lesion_type, c, diameter, att)
            # Big tumours grow most along the body axis: longest axis craniocaudal, slight tilt.
            sh = spec.shape
            axes = np.sort(sh.axes)
            axes[:2] = axes[2] * rng.uniform(0.55, 0.8, 2)
            tilted = replace(sh, axes=axes, rotation=_tilt(rng, 15.0))
            spec = replace(spec, shape=tilted)
            gain = 1.0 + float(sh.wave_amp.sum()) + 0.02
            reach = float(axes[1]) * gain + 5.0  # in-plane
            if _clear_of(anatomy, c, reach) and all(
                np.linalg.norm(c - o.shape.centre) > tilted.extent + o.shape.extent + 5
                for o in specs.values()
            ):
                # A rim of parenchyma around the tumour (gain covers the lobulation).
                anatomy.grow_liver(Ellipsoid(c, axes * gain + 5.0, tilted.rotation))
                specs[idx] = spec
                break
    depth, parenchyma, (gx, gy, gz) = _liver_depth(anatomy, step)
    placed: list[LesionSpec] = []
    for idx in order:
        lesion_type, diameter = wanted[idx]
        spec = specs.pop(idx, None)
        for _attempt in range(12):
            if spec is None:
                spec = make_lesion(rng, idx + 1, lesion_type, np.zeros(3), diameter, att)
            need = spec.shape.extent + step / 2
            c = spec.shape.centre
            grid = (gx, gy, gz)
            fits_here = diameter > _GROW_ABOVE_MM and _inside_parenchyma(spec.shape, parenchyma, grid)
            if not fits_here:
                cand = np.argwhere(depth >= need)
                c = None
                for k in rng.permutation(len(cand))[:300]:
                    kz, ky, kx = cand[k]
                    trial = np.array([gx[kx], gy[ky], gz[kz]])
                    if all(
                        np.linalg.norm(trial - o.shape.centre) > need + o.shape.extent + 2 for o in placed
                    ):
                        c = trial
                        break
            if c is not None and all(
                np.linalg.norm(c - o.shape.centre) > need + o.shape.extent + 2
                for o in placed
                if o is not spec
            ):
                spec = _moved(spec, c)
                placed.append(spec)
                break
            diameter *= 0.8
            spec = None
    placed.sort(key=lambda sp: sp.lesion_id)
    return placed


def _tilt(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay = np.deg2rad(rng.uniform(-max_deg, max_deg, 2))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return ry @ rx


def _span(bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = bounds
    return lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo)


def _inside_parenchyma(shape: Ellipsoid, parenchyma: np.ndarray, axes: tuple[np.ndarray, ...]) -> bool:
    """Every coarse-grid point inside the lesion (grown by one grid step) lies in liver parenchyma."""
    gx, gy, gz = axes
    step = float(gx[1] - gx[0])
    grown = replace(shape, axes=shape.axes + step)
    inside = grown.inside(
        gx[None, None, :].astype(np.float32),
        gy[None, :, None].astype(np.float32),
        gz[:, None, None].astype(np.float32),
    )
    return bool(inside.any() and parenchyma[inside].all())


def _moved(spec: LesionSpec, centre: np.ndarray) -> LesionSpec:
    return replace(spec, shape=replace(spec.shape, centre=np.asarray(centre, float)))
