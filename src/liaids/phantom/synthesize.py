"""Render a phantom patient into a triple-phase CT study with liver, lesion and anatomy masks.

Rendering, per phase:

1. organ labels are painted at half the in-plane resolution on ``n_sub`` sub-slices per slice (partial
   volume along z), with the organs shifted by that phase's breathing displacement;
2. labels become HU through the patient's attenuation table (plus liver and spleen texture), sub-slices
   are averaged and the image is upsampled to 512 x 512 (about 0.7 pixel of blur);
3. lesions are rendered at full resolution on finer sub-slices (their partial volume is exact to about
   0.7 mm), blurred to the background's resolution and composited;
4. the profile's reconstruction kernel blurs the whole image, and one correlated noise field
   (SD ~ 1/sqrt(mAs x thickness), scaled by body size) is added everywhere.

The output geometry is the canonical one of :mod:`liaids.types`: identity direction, ``k`` superior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from liaids.codes import PHASES
from liaids.phantom.anatomy import Anatomy, build_anatomy, paint
from liaids.phantom.enhancement import Attenuation, sample_attenuation
from liaids.phantom.labels import N_TISSUES, Tissue
from liaids.phantom.lesions import LesionSpec, place_lesions, render_lesion
from liaids.phantom.patient import PatientPlan, plan_patient
from liaids.phantom.profiles import Profile
from liaids.types import Study, Volume

MATRIX = 512
# Raised whenever the same profile and seed would give different images; written to dataset.json so a
# model folder can say which phantom it was trained on (history in docs/phantom-profiles.md).
PHANTOM_VERSION = 2
_KERNELS = {"Siemens": "B30f", "GE": "STANDARD", "Philips": "B", "Toshiba": "FC08", "UIH": "B_SOFT_B"}
_MODELS = {
    "Siemens": "SOMATOM Definition AS",
    "GE": "Optima CT660",
    "Philips": "Brilliance 64",
    "Toshiba": "Aquilion ONE",
    "UIH": "uCT 760",
}
# Bilinear 2x upsampling (align_corners=False) scales white-noise std by 0.75^2 + 0.25^2 per axis.
_UPSAMPLE_NOISE_STD = 0.625
# Gaussian sigma (pixels) equivalent to rendering at half resolution and upsampling bilinearly.
_BACKGROUND_BLUR_PX = 0.7


@dataclass
class PhantomCase:
    """One synthetic patient: images and masks per phase, and everything case.json records."""

    case_id: str
    study: Study
    liver: dict[str, Volume]
    lesions: dict[str, Volume]
    anatomy: dict[str, Volume]
    plan: PatientPlan
    lesion_specs: list[LesionSpec]
    acquisition: dict[str, Any]
    phantom: dict[str, Any] = field(default_factory=dict)


def _choice(rng: np.random.Generator, table: dict[str, float]) -> str:
    keys = list(table)
    w = np.array([table[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def _upsample2(a: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling of the last two axes (pixel-centre aligned, edges replicated)."""
    for axis in (-1, -2):
        n = a.shape[axis]
        prev = np.take(a, np.r_[0, np.arange(n - 1)], axis=axis)
        nxt = np.take(a, np.r_[np.arange(1, n), n - 1], axis=axis)
        shape = list(a.shape)
        shape[axis] = 2 * n
        out = np.empty(shape, a.dtype)
        even = [slice(None)] * a.ndim
        odd = [slice(None)] * a.ndim
        even[axis] = slice(0, None, 2)
        odd[axis] = slice(1, None, 2)
        out[tuple(even)] = 0.75 * a + 0.25 * prev
        out[tuple(odd)] = 0.75 * a + 0.25 * nxt
        a = out
    return a


def _index_range(coords: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    return int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "right"))


def _texture(
    rng: np.random.Generator, amplitude: float, wavelength_mm: float
) -> dict[str, np.ndarray | float]:
    dirs = rng.normal(size=(4, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return {
        "amp": amplitude,
        "k": dirs * (2 * np.pi / wavelength_mm) * rng.uniform(0.7, 1.3, (4, 1)),
        "phase": rng.uniform(0, 2 * np.pi, 4),
    }


def _apply_texture(values: np.ndarray, tex: dict, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    out = np.zeros(values.shape, np.float32)
    for k, ph in zip(tex["k"], tex["phase"], strict=True):
        out += np.sin(k[0] * x + k[1] * y + k[2] * z + ph)
    return values + out * (tex["amp"] / 2.0)


@dataclass(frozen=True)
class _Grid:
    """Sampling positions of one phase (mm, LPS)."""

    x: np.ndarray  # full-resolution column centres (512)
    y: np.ndarray  # full-resolution row centres (512)
    z: np.ndarray  # slice centres (nz)
    thickness: float
    n_sub: int

    @property
    def xh(self) -> np.ndarray:
        return 0.5 * (self.x[0::2] + self.x[1::2])

    @property
    def yh(self) -> np.ndarray:
        return 0.5 * (self.y[0::2] + self.y[1::2])

    def sub_z(self, z: np.ndarray | None = None) -> np.ndarray:
        z = self.z if z is None else z
        offsets = self.thickness * ((np.arange(self.n_sub) + 0.5) / self.n_sub - 0.5)
        return (z[:, None] + offsets[None, :]).reshape(-1)


def _render_phase(
    rng: np.random.Generator,
    anat: Anatomy,
    lesions: list[LesionSpec],
    att: Attenuation,
    phase: str,
    grid: _Grid,
    shift: np.ndarray,
    noise_sd: float,
    kernel_px: float,
    textures: dict[str, dict],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    nz, ns = grid.z.size, grid.n_sub
    labels, envelope = paint(anat.shapes, grid.xh, grid.yh, grid.sub_z(), shift)
    lut = att.table[phase].astype(np.float32)
    hu = lut[labels]
    zs = grid.sub_z()
    for tissue, tex in textures.items():
        if tissue == Tissue.SPLEEN and phase != "ART":
            continue
        sel = labels == tissue
        if sel.any():
            kz, ky, kx = np.nonzero(sel)
            hu[sel] = _apply_texture(
                hu[sel], tex, grid.xh[kx] - shift[0], grid.yh[ky] - shift[1], zs[kz] - shift[2]
            )
    image = _upsample2(hu.reshape(nz, ns, *hu.shape[1:]).mean(axis=1))
    # n_sub is odd, so the middle sub-slice lies at the slice centre.
    anatomy = labels.reshape(nz, ns, *labels.shape[1:])[:, ns // 2]
    anatomy = np.repeat(np.repeat(anatomy, 2, axis=1), 2, axis=2)

    liver = np.zeros(image.shape, np.uint8)
    env = envelope.reshape(nz, ns, *envelope.shape[1:]).mean(axis=1, dtype=np.float32)
    if env.any():
        kz, ky, kx = np.nonzero(env)
        sl = (
            slice(kz.min(), kz.max() + 1),
            slice(max(ky.min() - 1, 0), ky.max() + 2),
            slice(max(kx.min() - 1, 0), kx.max() + 2),
        )
        full = (
            slice(sl[0].start, sl[0].stop),
            slice(2 * sl[1].start, 2 * sl[1].stop),
            slice(2 * sl[2].start, 2 * sl[2].stop),
        )
        liver[full] = _upsample2(env[sl]) >= 0.5

    lesion_map = np.zeros(image.shape, np.uint8)
    for spec in lesions:
        _composite_lesion(spec, phase, grid, shift, image, liver, lesion_map)
    liver[lesion_map > 0] = 1
    # One reconstruction kernel and one noise field for the whole image, lesions included.
    extra = math.sqrt(max(kernel_px**2 - _BACKGROUND_BLUR_PX**2, 0.0))
    if extra > 0.2:
        image = ndimage.gaussian_filter(image, (0, extra, extra), truncate=3.0)
    noise = rng.standard_normal((nz, *hu.shape[1:]), dtype=np.float32)
    image += _upsample2(noise) * np.float32(noise_sd / _UPSAMPLE_NOISE_STD)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return image, liver, lesion_map, anatomy


def _composite_lesion(
    spec: LesionSpec,
    phase: str,
    grid: _Grid,
    shift: np.ndarray,
    image: np.ndarray,
    liver: np.ndarray,
    lesion_map: np.ndarray,
) -> None:
    c = spec.shape.centre + shift
    reach = spec.shape.extent * (1.8 if spec.lesion_type == "HA" else 1.0) + 3.0
    x0, x1 = _index_range(grid.x, c[0] - reach, c[0] + reach)
    y0, y1 = _index_range(grid.y, c[1] - reach, c[1] + reach)
    half_t = grid.thickness / 2
    z0, z1 = _index_range(grid.z, c[2] - reach - half_t, c[2] + reach + half_t)
    if x0 >= x1 or y0 >= y1 or z0 >= z1:
        return
    nzp = z1 - z0
    # Lesions are small: sample their slab finely so a 3 mm lesion in a 7 mm slice gets its true share.
    n_fine = max(grid.n_sub, math.ceil(grid.thickness / 0.7))
    offsets = grid.thickness * ((np.arange(n_fine) + 0.5) / n_fine - 0.5)
    X = (grid.x[x0:x1] - shift[0]).astype(np.float32)[None, None, :]
    Y = (grid.y[y0:y1] - shift[1]).astype(np.float32)[None, :, None]
    Z = ((grid.z[z0:z1, None] + offsets[None, :]).reshape(-1) - shift[2]).astype(np.float32)[:, None, None]
    alpha, hu, peri = render_lesion(spec, X, Y, Z, phase)
    shape = (nzp, n_fine, y1 - y0, x1 - x0)
    alpha = alpha.reshape(shape)
    a_mean = alpha.mean(axis=1)
    weighted = (alpha * hu.reshape(shape)).mean(axis=1)
    peri_mean = ((1.0 - alpha) * peri.reshape(shape)).mean(axis=1)
    # Match the background's resolution (rendered at half resolution, then upsampled).
    sigma = (0, _BACKGROUND_BLUR_PX, _BACKGROUND_BLUR_PX)
    a_blur = ndimage.gaussian_filter(a_mean, sigma)
    w_blur = ndimage.gaussian_filter(weighted, sigma)
    region = image[z0:z1, y0:y1, x0:x1]
    liver_patch = liver[z0:z1, y0:y1, x0:x1]
    region[...] = region * (1 - a_blur) + w_blur + peri_mean * liver_patch
    # A lesion thinner than the slice never fills half a voxel: label it where it is most visible.
    peak = float(a_mean.max())
    threshold = 0.5 if peak >= 0.5 else 0.5 * peak
    if peak >= 0.15:
        lesion_map[z0:z1, y0:y1, x0:x1][a_mean >= threshold] = spec.lesion_id


def synthesize_case(profile: Profile, seed: int, index: int, case_id: str | None = None) -> PhantomCase:
    """Draw and render one phantom patient.

    Args:
        profile: centre profile.
        seed: cohort seed; together with ``index`` it fixes the case completely.
        index: case number within the cohort.
        case_id: name of the case (default ``{profile}_{index:04d}``).

    Returns:
        The case, with images (int16 HU), liver masks (0/1), lesion instance masks and anatomy labels for
        NC, ART and PV, each with its own geometry.
    """
    rng = np.random.default_rng([seed, index, sum(map(ord, profile.name))])
    plan = plan_patient(rng, profile)
    anat = build_anatomy(rng, cirrhotic=plan.cirrhotic, fatty=plan.fatty)
    manufacturer = _choice(rng, profile.manufacturers)
    kvp = int(float(_choice(rng, profile.kvp)))
    thickness = float(_choice(rng, profile.slice_thickness_mm))
    mas = float(np.exp(rng.uniform(*np.log(profile.mas_range))))
    kernel_px = float(rng.uniform(*profile.kernel_blur_px))
    att = sample_attenuation(
        rng,
        kvp=kvp,
        dose_sd=profile.contrast_dose_sd,
        timing_sd=profile.arterial_timing_sd,
        fatty=plan.fatty,
        cirrhotic=plan.cirrhotic,
    )
    specs = place_lesions(rng, anat, plan.lesions, att)
    for n, spec in enumerate(specs, start=1):
        spec.lesion_id = n
        if spec.lesion_type == "ICC" and rng.random() < 0.7:
            _add_upstream_ducts(rng, anat, spec)

    body_w = anat.notes["body_width_mm"]
    pixel = float(np.clip(body_w * rng.uniform(1.08, 1.25) / MATRIX, *profile.pixel_spacing_mm))
    table_dy = rng.uniform(-15, 15)
    x = (np.arange(MATRIX) - (MATRIX - 1) / 2) * pixel
    y = (np.arange(MATRIX) - (MATRIX - 1) / 2) * pixel + table_dy
    n_sub = 1 if thickness <= 2.5 else 3  # odd: the middle sub-slice is the slice centre
    noise_sd = float(np.clip(379.5 / math.sqrt(mas * thickness) * (body_w / 320.0), 6.0, 35.0))
    z_lo, z_hi = anat.z_range
    margin_inf, margin_sup = rng.uniform(*profile.scan_margin_mm, 2)
    textures = {
        Tissue.LIVER: _texture(rng, 9.0 if plan.cirrhotic else 4.0, 12.0 if plan.cirrhotic else 40.0),
        Tissue.SPLEEN: _texture(rng, 30.0, 25.0),  # arterial-phase arciform mottling
    }

    shifts: dict[str, np.ndarray] = {}
    phases_img: dict[str, Volume] = {}
    liver: dict[str, Volume] = {}
    lesion_maps: dict[str, Volume] = {}
    anatomy_maps: dict[str, Volume] = {}
    for phase in PHASES:
        dz = float(
            np.clip(
                rng.normal(0, profile.breathing_z_sd_mm),
                -profile.breathing_z_max_mm,
                profile.breathing_z_max_mm,
            )
        )
        shift = np.array([*rng.normal(0, profile.breathing_xy_sd_mm, 2), dz])
        shifts[phase] = shift
        start = z_lo - margin_inf + rng.uniform(-8, 8)
        stop = z_hi + margin_sup + rng.uniform(-8, 8)
        nz = math.floor((stop - start) / thickness) + 1
        z = start + thickness * np.arange(nz)
        grid = _Grid(x, y, z, thickness, n_sub)
        img, liv, les, ana = _render_phase(
            rng, anat, specs, att, phase, grid, shift, noise_sd, kernel_px, textures
        )
        geom = {"spacing": (pixel, pixel, thickness), "origin": (float(x[0]), float(y[0]), float(z[0]))}
        phases_img[phase] = Volume(img, **geom, meta={"phase": phase})
        liver[phase] = Volume(liv, **geom)
        lesion_maps[phase] = Volume(les, **geom)
        anatomy_maps[phase] = Volume(ana, **geom)

    case_id = case_id or f"{profile.name}_{index:04d}"
    acquisition = {
        "manufacturer": manufacturer,
        "model": _MODELS.get(manufacturer, "unknown"),
        "centre": profile.name,
        "kvp": kvp,
        "mas": round(mas, 1),
        "kernel": _KERNELS.get(manufacturer, "STANDARD"),
        "slice_thickness_mm": thickness,
        "slice_spacing_mm": thickness,
        "pixel_spacing_mm": round(pixel, 4),
    }
    phantom = {
        "seed": seed,
        "index": index,
        "profile": profile.name,
        "liver": "cirrhotic" if plan.cirrhotic else ("fatty" if plan.fatty else "normal"),
        "main_type": plan.main_type,
        "breathing_shift_mm": {p: [round(float(v), 2) for v in s] for p, s in shifts.items()},
        "noise_sd_hu": round(noise_sd, 2),
        "kernel_blur_px": round(kernel_px, 3),
        "attenuation": att.to_dict(),
        "lesions": [s.describe() for s in specs],
    }
    study = Study(phases=phases_img, meta={"case_id": case_id})
    return PhantomCase(case_id, study, liver, lesion_maps, anatomy_maps, plan, specs, acquisition, phantom)


def _add_upstream_ducts(rng: np.random.Generator, anat: Anatomy, spec: LesionSpec) -> None:
    """Dilated bile ducts running from an ICC away from the hilum."""
    c = spec.shape.centre
    away = c - anat.hilum
    away /= np.linalg.norm(away) + 1e-6
    n = int(rng.integers(2, 4))
    starts, ends = [], []
    for _ in range(n):
        d = away + rng.normal(0, 0.35, 3)
        d /= np.linalg.norm(d)
        starts.append(c + d * spec.radius_mm * 0.9)
        ends.append(c + d * (spec.radius_mm + rng.uniform(25, 55)))
    anat.add_bile_ducts(np.array(starts), np.array(ends), rng.uniform(2.0, 3.5, n))
    spec.pattern["dilated_ducts"] = n


__all__ = ["MATRIX", "N_TISSUES", "PhantomCase", "synthesize_case"]
