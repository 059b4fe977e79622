"""The phantom: determinism, geometry, enhancement per phase, breathing, lesion patterns, clinical links."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from liaids.codes import LESION_TYPES, PHASES
from liaids.phantom.anatomy import LIVER_TISSUES
from liaids.phantom.enhancement import sample_attenuation
from liaids.phantom.labels import Tissue
from liaids.phantom.lesions import make_lesion, render_lesion, sample_diameter
from liaids.phantom.measure import liver_centroid_shifts, tissue_means
from liaids.phantom.patient import plan_patient
from liaids.phantom.profiles import load_profile
from liaids.phantom.synthesize import PhantomCase, _composite_lesion, _Grid, synthesize_case


@pytest.fixture(scope="module")
def case() -> PhantomCase:
    return synthesize_case(load_profile("internal"), seed=11, index=3)


def test_same_seed_same_case_other_index_other_case(case: PhantomCase) -> None:
    again = synthesize_case(load_profile("internal"), seed=11, index=3)
    for p in PHASES:
        assert np.array_equal(again.study[p].array, case.study[p].array)
        assert np.array_equal(again.lesions[p].array, case.lesions[p].array)
    other = synthesize_case(load_profile("internal"), seed=11, index=4)
    assert other.study["PV"].shape != case.study["PV"].shape or not np.array_equal(
        other.study["PV"].array, case.study["PV"].array
    )


def test_geometry_follows_the_profile(case: PhantomCase) -> None:
    prof = load_profile("internal")
    for p in PHASES:
        vol = case.study[p]
        assert vol.array.dtype == np.int16
        assert vol.shape[1:] == (512, 512)
        assert prof.pixel_spacing_mm[0] <= vol.spacing[0] <= prof.pixel_spacing_mm[1]
        assert str(vol.spacing[2]) in prof.slice_thickness_mm
        assert np.allclose(vol.direction_matrix, np.eye(3))
        for masks in (case.liver, case.lesions, case.anatomy):
            assert masks[p].same_geometry(vol)


def test_enhancement_follows_the_phases(case: PhantomCase) -> None:
    m = tissue_means(case)
    assert m["aorta"]["ART"] > m["aorta"]["PV"] + 40 > m["aorta"]["NC"] + 40
    assert m["portal_vein"]["PV"] > m["portal_vein"]["ART"] > m["portal_vein"]["NC"]
    assert m["liver"]["PV"] > m["liver"]["ART"] > m["liver"]["NC"]
    assert 20 < m["liver"]["NC"] < 75 and 30 < m["aorta"]["NC"] < 55


def test_breathing_moves_the_liver_between_phases(case: PhantomCase) -> None:
    shifts = case.phantom["breathing_shift_mm"]
    dz = [abs(shifts[a][2] - shifts[b][2]) for a, b in (("NC", "ART"), ("NC", "PV"), ("ART", "PV"))]
    assert max(dz) > 1.0 and max(dz) <= 40.0
    measured = liver_centroid_shifts(case)
    assert max(measured.values()) > 1.0


@pytest.mark.parametrize("index", [0, 3, 7, 14, 26, 30])
def test_lesions_lie_in_liver_parenchyma(index: int) -> None:
    """Under every lesion the organ map shows liver (or its vessels), never IVC, bone, kidney, gallbladder."""
    case = synthesize_case(load_profile("internal"), seed=0, index=index)
    parenchyma = np.isin(np.arange(256), [*LIVER_TISSUES, Tissue.BILE_DUCT])
    for spec in case.lesion_specs:
        for p in PHASES:
            voxels = case.anatomy[p].array[case.lesions[p].array == spec.lesion_id]
            if voxels.size:
                # The organ map is painted at half resolution: allow its blocky edge.
                assert parenchyma[voxels].mean() > 0.95, (spec.lesion_type, spec.diameter_mm, p)
                assert not (case.liver[p].array[case.lesions[p].array == spec.lesion_id] == 0).any()


def test_lesion_thinner_than_the_slice_is_still_labelled() -> None:
    att = sample_attenuation(
        np.random.default_rng(0), kvp=120, dose_sd=0, timing_sd=0, fatty=False, cirrhotic=False
    )
    spec = make_lesion(np.random.default_rng(1), 1, "HC", np.array([0.0, 0.0, 1.0]), 3.0, att)
    axis = (np.arange(64) - 31.5) * 0.7
    grid = _Grid(axis, axis, np.array([-7.0, 0.0, 7.0]), 7.0, 3)
    image = np.full((3, 64, 64), 60.0, np.float32)
    lesion_map = np.zeros(image.shape, np.uint8)
    _composite_lesion(spec, "PV", grid, np.zeros(3), image, np.ones(image.shape, np.uint8), lesion_map)
    assert lesion_map[1].sum() > 0  # labelled on its slice
    assert image[1].min() < 50  # and visible there, at reduced contrast


def _grid(spec, n: int = 41):
    r = spec.shape.extent * 1.1
    ax = np.linspace(-r, r, n, dtype=np.float32)
    c = spec.shape.centre
    return (ax[None, None, :] + c[0], ax[None, :, None] + c[1], ax[:, None, None] + c[2])


@pytest.fixture(scope="module")
def attenuation():
    return sample_attenuation(
        np.random.default_rng(0), kvp=120, dose_sd=0.0, timing_sd=0.0, fatty=False, cirrhotic=False
    )


def _render(lesion_type: str, diameter: float, attenuation, seed: int = 0):
    rng = np.random.default_rng(seed)
    spec = make_lesion(rng, 1, lesion_type, np.zeros(3), diameter, attenuation)
    x, y, z = _grid(spec)
    out = {p: render_lesion(spec, x, y, z, p) for p in PHASES}
    _u, _v, _w = spec.shape.local(x, y, z)
    rho = spec.shape.radius_field(x, y, z)
    return spec, out, np.broadcast_to(rho, out["PV"][0].shape)


def test_cyst_is_water_in_every_phase(attenuation) -> None:
    _, out, rho = _render("HC", 30, attenuation)
    for p in PHASES:
        _alpha, hu, _ = out[p]
        assert -1 <= hu[rho < 0.8].mean() <= 20


def test_haemangioma_has_peripheral_nodules_bright_as_blood(attenuation) -> None:
    spec, out, rho = _render("HH", 50, attenuation, seed=3)
    assert spec.variant == "typical"
    _, hu_art, _ = out["ART"]
    aorta_art = attenuation.hu(Tissue.AORTA, "ART")
    periphery, centre = hu_art[(rho > 0.6) & (rho < 1)], hu_art[rho < 0.3]
    assert periphery.max() > 0.7 * aorta_art
    assert centre.mean() < attenuation.hu(Tissue.LIVER, "ART")
    # Centripetal fill-in: in PV more of the lesion is blood-bright than in ART.
    _, hu_pv, _ = out["PV"]
    inside = rho < 1
    assert (hu_pv[inside] > 130).mean() > (hu_art[inside] > 130).mean()
    # ... but at PV (about 70 s) the fill-in is incomplete: the centre is still darker than the liver.
    assert hu_pv[rho < 0.3].mean() < attenuation.hu(Tissue.LIVER, "PV")


def test_fnh_scar_is_darker_than_the_lesion_in_art(attenuation) -> None:
    for seed in range(20):
        spec, out, rho = _render("FNH", 40, attenuation, seed=seed)
        if spec.variant == "with-scar":
            break
    _, hu, _ = out["ART"]
    assert hu[rho < 0.15].mean() < hu[(rho > 0.75) & (rho < 0.95)].mean() - 20


def test_hcc_washes_out_with_a_capsule(attenuation) -> None:
    for seed in range(30):
        spec, out, rho = _render("HCC", 30, attenuation, seed=seed)
        if spec.variant == "typical" and spec.pattern.get("capsule_mm", 0) > 0:
            break
    liver = {p: attenuation.hu(Tissue.LIVER, p) for p in PHASES}
    core = rho < 0.5
    assert out["ART"][1][core].mean() > liver["ART"]
    assert out["PV"][1][core].mean() < liver["PV"]
    rim = (rho > 0.96) & (rho < 1.0)
    assert out["PV"][1][rim].mean() > out["PV"][1][core].mean() + 15


def test_abscess_has_fluid_centre_enhancing_rim_and_oedema(attenuation) -> None:
    _spec, out, rho = _render("HA", 60, attenuation)
    _alpha, hu, peri = out["PV"]
    assert hu[rho < 0.3].mean() < 45
    assert hu[(rho > 0.97) & (rho < 1.0)].mean() > 90
    assert peri[(rho > 1.02) & (rho < 1.08)].mean() < -20


def test_metastasis_target_pattern(attenuation) -> None:
    for seed in range(30):
        spec, out, rho = _render("HM", 30, attenuation, seed=seed)
        if spec.variant == "typical":
            break
    hu = out["PV"][1]
    assert hu[(rho > 0.95) & (rho < 1.0)].mean() > hu[rho < 0.5].mean() + 25


def test_sizes_span_small_to_very_large() -> None:
    rng = np.random.default_rng(0)
    d = np.array([sample_diameter(rng, t) for t in LESION_TYPES for _ in range(400)])
    assert (d < 10).mean() > 0.15
    assert (d < 5).any() and (d > 100).any()


def test_clinical_fields_follow_the_diagnosis_but_weakly() -> None:
    prof = load_profile("internal")
    rng = np.random.default_rng(1)
    plans = [plan_patient(rng, prof) for _ in range(3000)]
    by_type: dict[str | None, list] = {}
    for pl in plans:
        by_type.setdefault(pl.main_type, []).append(pl.clinical)

    def rate(t: str | None, field: str) -> float:
        return float(np.mean([getattr(c, field) for c in by_type[t]]))

    assert rate("HCC", "hepatitis_b") > 3 * rate(None, "hepatitis_b")
    assert rate("HM", "extrahepatic_tumour") > 4 * rate(None, "extrahepatic_tumour")
    assert rate("HM", "extrahepatic_tumour") < 0.9  # not a giveaway
    assert np.mean([c.age for c in by_type["FNH"]]) < np.mean([c.age for c in by_type["HCC"]]) - 10
    no_lesion = sum(pl.main_type is None for pl in plans) / len(plans)
    assert abs(no_lesion - prof.no_lesion_fraction) < 0.05
    counts = Counter(t for pl in plans for t, _ in pl.lesions)
    assert counts["HC"] > counts["FNH"]


def test_very_large_lesions_enlarge_the_liver_and_stay_inside_it() -> None:
    from liaids.phantom.anatomy import build_anatomy
    from liaids.phantom.lesions import place_lesions

    sizes = []
    for seed in (0, 1, 5):
        rng = np.random.default_rng(seed)
        anatomy = build_anatomy(rng, cirrhotic=False, fatty=False)
        att = sample_attenuation(rng, kvp=120, dose_sd=0.1, timing_sd=0.3, fatty=False, cirrhotic=False)
        sizes += [s.diameter_mm for s in place_lesions(rng, anatomy, [("HA", 115.0)], att)]
    assert max(sizes) > 100
