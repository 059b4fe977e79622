"""Classification statistics against scikit-learn, scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats
from sklearn import metrics as skm

from liaids.errors import LiaidsError
from liaids.evaluate.statistics import (
    EvaluationInputError,
    _tango_z,
    binary_auc,
    binary_metrics,
    bootstrap_ci,
    bootstrap_distribution,
    classification_report,
    confusion_matrix,
    mcnemar_exact,
    multiclass_auc,
    one_vs_rest_metrics,
    paired_non_inferiority,
    proportion_ci,
    roc_curve,
    summary_metrics,
    triage_metrics,
    triage_threshold,
)


def _seven_class(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels covering all 7 classes and softmax probabilities that favour the true class."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.arange(7), rng.integers(0, 7, n - 7)]
    logits = rng.normal(size=(n, 7))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------- AUC / ROC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    score = np.round(rng.random(300) + 0.4 * y, 1)  # coarse rounding: many ties
    assert binary_auc(y, score) == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)


def test_binary_auc_batched_rows_and_undefined_rows() -> None:
    rng = np.random.default_rng(3)
    y = rng.random((4, 50)) < 0.5
    s = rng.random((4, 50))
    y[3] = True  # no negative case
    batched = binary_auc(y, s)
    for r in range(3):
        assert batched[r] == pytest.approx(binary_auc(y[r], s[r]))
    assert math.isnan(batched[3])
    assert binary_auc([1, 0, 1], [0.9, 0.1, 0.9]) == 1.0
    assert binary_auc([1, 0], [0.5, 0.5]) == 0.5  # a tie counts one half


def test_multiclass_auc_matches_sklearn_ovr() -> None:
    y, p = _seven_class(400, 0)
    per_class, macro = multiclass_auc(y, p)
    assert macro == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    for c in range(7):
        assert per_class[c] == pytest.approx(skm.roc_auc_score(y == c, p[:, c]), abs=1e-12)


def test_multiclass_auc_absent_class_is_nan_and_left_out_of_macro() -> None:
    y, p = _seven_class(200, 1)
    y = np.where(y == 6, 0, y)  # no HA left
    per_class, macro = multiclass_auc(y, p)
    assert math.isnan(per_class[6])
    assert macro == pytest.approx(np.mean(per_class[:6]))


def test_roc_curve_matches_sklearn() -> None:
    rng = np.random.default_rng(4)
    y = rng.random(120) < 0.4
    s = np.round(rng.random(120), 2)
    fpr, tpr, thr = roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert thr[0] == np.inf
    with pytest.raises(EvaluationInputError):
        roc_curve([1, 1], [0.2, 0.3])


# ---------------------------------------------------------------------------------------------- counts


def test_confusion_matrix_hand_computed() -> None:
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    per = one_vs_rest_metrics(cm)
    # Class 0: TP 1, FN 1, FP 1, TN 3.
    assert per["sensitivity"][0] == pytest.approx(0.5)
    assert per["specificity"][0] == pytest.approx(0.75)
    assert per["precision"][0] == pytest.approx(0.5)
    assert per["f1"][0] == pytest.approx(0.5)
    # Class 1: TP 1, FN 0, FP 1, TN 4.
    assert per["sensitivity"][1] == 1.0 and per["precision"][1] == 0.5
    assert per["f1"][1] == pytest.approx(2 / 3)
    # Class 2: TP 2, FN 1, FP 0, TN 3.
    assert per["precision"][2] == 1.0 and per["specificity"][2] == 1.0
    assert per["accuracy"][2] == pytest.approx(5 / 6)
    summary = summary_metrics(cm)
    assert summary["accuracy"] == pytest.approx(4 / 6)
    assert summary["macro_sensitivity"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)


def test_confusion_matrix_batched_and_vs_sklearn() -> None:
    rng = np.random.default_rng(5)
    t = rng.integers(0, 7, (3, 90))
    p = rng.integers(0, 7, (3, 90))
    batched = confusion_matrix(t, p, 7)
    for r in range(3):
        np.testing.assert_array_equal(batched[r], skm.confusion_matrix(t[r], p[r], labels=range(7)))
    s = summary_metrics(batched[0])
    assert s["macro_f1"] == pytest.approx(skm.f1_score(t[0], p[0], average="macro"))
    assert s["macro_sensitivity"] == pytest.approx(skm.recall_score(t[0], p[0], average="macro"))
    with pytest.raises(EvaluationInputError, match="outside"):
        confusion_matrix([0, 7], [0, 1], 7)


def test_binary_metrics_hand_computed() -> None:
    m = binary_metrics([1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0, 0])
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 4)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert math.isnan(binary_metrics([0, 0], [0, 0])["sensitivity"])  # no positive case: undefined


@pytest.mark.parametrize(("k", "n"), [(8, 10), (0, 12), (12, 12), (99, 100), (1, 557)])
def test_wilson_interval_matches_scipy(k: int, n: int) -> None:
    low, high = proportion_ci(k, n, 0.95)
    ref = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert low == pytest.approx(ref.low, abs=1e-12)
    assert high == pytest.approx(ref.high, abs=1e-12)


def test_wilson_interval_vectorised_and_empty() -> None:
    low, high = proportion_ci(np.array([1, 5, 0]), np.array([2, 10, 0]))
    assert low[1] == pytest.approx(stats.binomtest(5, 10).proportion_ci(method="wilson").low)
    assert math.isnan(low[2]) and math.isnan(high[2])
    with pytest.raises(LiaidsError):
        proportion_ci(3, 2)


# ---------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_of_mean_matches_scipy() -> None:
    x = np.random.default_rng(6).normal(10.0, 2.0, 150)
    low, high = bootstrap_ci(np.mean, x, n_resamples=4000, seed=1)
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", rng=np.random.default_rng(2))
    width = ref.confidence_interval.high - ref.confidence_interval.low
    # Monte Carlo error of a 2.5 % quantile with 4000 resamples is about 2 % of the CI width per estimate.
    assert low == pytest.approx(ref.confidence_interval.low, abs=0.08 * width)
    assert high == pytest.approx(ref.confidence_interval.high, abs=0.08 * width)


def test_bootstrap_ci_of_paired_auc_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    y = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    s = rng.normal(size=200) + 1.0 * y
    low, high = bootstrap_ci(binary_auc, y, s, n_resamples=3000, seed=3, vectorized=True)
    ref = stats.bootstrap(
        (y, s),
        lambda a, b, axis: binary_auc(np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)),
        paired=True,
        vectorized=True,
        n_resamples=3000,
        method="percentile",
        rng=np.random.default_rng(4),
    )
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert low == pytest.approx(ref.confidence_interval.low, abs=0.08 * width)
    assert high == pytest.approx(ref.confidence_interval.high, abs=0.08 * width)
    # The loop path gives the same numbers as the vectorised path for one seed.
    assert bootstrap_ci(binary_auc, y, s, n_resamples=200, seed=9) == pytest.approx(
        bootstrap_ci(binary_auc, y, s, n_resamples=200, seed=9, vectorized=True)
    )


def test_bootstrap_skips_degenerate_resamples() -> None:
    y = np.zeros(20, bool)
    y[0] = True  # one positive: about a third of the resamples lose it and have no AUC
    s = np.linspace(0.0, 1.0, 20)
    values = bootstrap_distribution(binary_auc, y, s, n_resamples=500, seed=0, vectorized=True)
    assert 0.2 < np.isnan(values).mean() < 0.5
    low, high = bootstrap_ci(binary_auc, y, s, n_resamples=500, seed=0, vectorized=True)
    finite = values[np.isfinite(values)]
    assert (low, high) == pytest.approx(tuple(np.quantile(finite, [0.025, 0.975])))
    all_bad = bootstrap_ci(binary_auc, np.zeros(5, bool), np.arange(5.0), n_resamples=20)
    assert math.isnan(all_bad[0]) and math.isnan(all_bad[1])


def test_bootstrap_basic_method_reflects_percentiles() -> None:
    x = np.random.default_rng(8).exponential(size=80)
    q_low, q_high = bootstrap_ci(np.mean, x, n_resamples=300, seed=5)
    b_low, b_high = bootstrap_ci(np.mean, x, n_resamples=300, seed=5, method="basic")
    assert b_low == pytest.approx(2 * x.mean() - q_high)
    assert b_high == pytest.approx(2 * x.mean() - q_low)
    with pytest.raises(EvaluationInputError, match="method"):
        bootstrap_ci(np.mean, x, method="bca")


def test_classification_report_matches_direct_computation() -> None:
    y, p = _seven_class(300, 9)
    r = classification_report(y, p, n_resamples=200, seed=0)
    assert r["multiclass"]["accuracy"]["value"] == pytest.approx(np.mean(p.argmax(1) == y))
    assert r["multiclass"]["macro_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    malignant = y < 3  # HCC, ICC, HM come first in LESION_TYPES
    assert r["binary"]["auc"]["value"] == pytest.approx(skm.roc_auc_score(malignant, p[:, :3].sum(1)))
    pred_mal = p[:, :3].sum(1) >= 0.5
    assert r["binary"]["sensitivity"]["value"] == pytest.approx(skm.recall_score(malignant, pred_mal))
    assert r["per_class"]["HH"]["f1"]["value"] == pytest.approx(skm.f1_score(y == 4, p.argmax(1) == 4))
    np.testing.assert_array_equal(r["confusion_matrix"], skm.confusion_matrix(y, p.argmax(1)))
    for group in (r["multiclass"], r["binary"]):
        for stat in group.values():
            assert stat["ci_low"] <= stat["value"] + 1e-9 and stat["value"] <= stat["ci_high"] + 1e-9


def test_classification_report_with_absent_class() -> None:
    y, p = _seven_class(150, 10)
    y = np.where(y == 3, 4, y)  # no FNH
    r = classification_report(y, p, n_resamples=100)
    assert r["per_class"]["FNH"]["n"] == 0
    assert math.isnan(r["per_class"]["FNH"]["auc"]["value"])
    assert math.isfinite(r["multiclass"]["macro_auc"]["ci_low"])


# ---------------------------------------------------------------------------------------------- triage


def test_triage_threshold_hand_built() -> None:
    p = [0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.9]
    t = [False, False, False, False, False, True, False, True]
    strict = triage_threshold(p, t, 0.99)
    assert strict.threshold == 0.3 and strict.npv == 1.0 and strict.low_risk_share == 5 / 8
    assert strict.target_met
    # NPV is 5/6 at 0.3 and 6/7 at 0.4: the search must look past the first failure.
    loose = triage_threshold(p, t, 0.85)
    assert loose.threshold == 0.9 and loose.npv == pytest.approx(6 / 7) and loose.n_low_risk == 7
    everyone = triage_threshold(p, [False] * 8, 0.99)
    assert everyone.threshold == math.inf and everyone.low_risk_share == 1.0
    m = triage_metrics(p, t, strict.threshold)
    assert m["npv"] == 1.0 and m["low_risk_share"] == 5 / 8 and m["sensitivity"] == 1.0


def test_triage_threshold_keeps_no_lesion_patients_low_risk() -> None:
    # A malignant patient with no detected lesion (probability 0): the target cannot be met.
    r = triage_threshold([0.0, 0.0, 0.5], [True, False, False], 0.99)
    assert not r.target_met
    assert r.threshold == 0.5 and r.n_low_risk == 2 and r.npv == 0.5


def test_triage_threshold_against_brute_force() -> None:
    rng = np.random.default_rng(11)
    p = np.r_[np.zeros(300), np.round(rng.random(700), 3)]
    truth = np.r_[rng.random(300) < 0.002, rng.random(700) < np.round(rng.random(700), 3) ** 3]
    r = triage_threshold(p, truth, 0.97)
    best = None
    for t in np.r_[np.unique(p), np.inf]:
        low = p < t
        if low.any() and 1 - truth[low].mean() >= 0.97:
            best = t
    assert r.threshold == best
    assert r.npv >= 0.97 and r.npv == pytest.approx(1 - truth[p < best].mean())


# ---------------------------------------------------------------------------------------------- paired tests


def test_mcnemar_exact_hand_computed() -> None:
    a = np.r_[np.ones(10, bool), True, np.zeros(9, bool)]
    b = np.r_[np.ones(10, bool), False, np.ones(9, bool)]
    m = mcnemar_exact(a, b)
    assert (m["a_only"], m["b_only"]) == (1, 9)
    assert m["p_value"] == pytest.approx(2 * 11 / 1024)  # 2 * P(X <= 1), X ~ Bin(10, 1/2)
    assert mcnemar_exact(a, a)["p_value"] == 1.0


@pytest.mark.parametrize(("b", "c", "n", "theta"), [(7, 8, 183, -0.1), (0, 0, 50, -0.1), (3, 20, 40, 0.05)])
def test_tango_restricted_mle_against_numerical_optimum(b: int, c: int, n: int, theta: float) -> None:
    # Maximise the multinomial likelihood of (b, c, rest) with P(b) = q + theta, P(c) = q numerically.
    lo, hi = max(0.0, -theta) + 1e-9, (1.0 - theta) / 2.0 - 1e-9

    def nll(q: float) -> float:
        return -(b * math.log(q + theta) + c * math.log(q) + (n - b - c) * math.log(1.0 - 2.0 * q - theta))

    q = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}).x
    z = (b - c - n * theta) / math.sqrt(n * (2.0 * q + theta * (1.0 - theta)))
    assert _tango_z(b, c, n, theta) == pytest.approx(z, rel=1e-5)


def test_non_inferiority_decision_matches_interval() -> None:
    rng = np.random.default_rng(12)
    for _ in range(20):
        n = int(rng.integers(30, 300))
        new = rng.random(n) < rng.uniform(0.7, 0.99)
        ref = np.where(rng.random(n) < 0.7, new, rng.random(n) < 0.9)
        r = paired_non_inferiority(new, ref)
        assert r.ci_low <= r.difference <= r.ci_high
        assert r.non_inferior == (r.ci_low > -r.margin)
        if r.ci_low > -1.0:  # the bound is where the score statistic reaches z(1 - alpha)
            assert _tango_z(r.new_only, r.reference_only, n, r.ci_low) == pytest.approx(stats.norm.ppf(0.95))


def test_non_inferiority_close_to_wald_for_large_samples() -> None:
    b, c, n = 120, 150, 3000
    new = np.r_[np.ones(b, bool), np.zeros(c, bool), np.ones(n - b - c, bool)]
    ref = np.r_[np.zeros(b, bool), np.ones(c, bool), np.ones(n - b - c, bool)]
    # Score and Wald statistics agree when the null lies near the observed difference (-0.01).
    r = paired_non_inferiority(new, ref, margin=0.02, alpha=0.05)
    d = (b - c) / n
    se = math.sqrt((b + c) / n**2 - (b - c) ** 2 / n**3)
    assert r.statistic == pytest.approx((d + 0.02) / se, rel=0.03)
    assert r.non_inferior and r.p_value == pytest.approx(stats.norm.sf(r.statistic))
    # Same accuracies, tiny sample: not enough evidence.
    small = paired_non_inferiority([True, False, True], [False, True, True], margin=0.1)
    assert not small.non_inferior and small.p_value > 0.05
