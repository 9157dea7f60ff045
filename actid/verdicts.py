"""Evidence behind a claim, and the four verdicts a fixed rule draws from it.

A figure notebook measures; it does not judge. For each claim it records an :class:`Evidence` (the statistic, its
95% interval, a p-value where there is a test, the number of runs and seeds, and the same statistic with each
run or seed left out) into its ``metrics.json``. The ``claims`` stage reads the rule registered for the claim
(``actid/claim_rules.yaml``, :mod:`actid.claim_rules`), adjusts the p-values by Holm's method within the claim's
study, and calls :func:`judge`:

* **agrees** - the test passes in the paper's direction (Holm-adjusted p < 0.05, or an interval wholly on the
  claimed side of a threshold) *and* no single run or seed left out changes that;
* **contradicts** - the data rule the paper's statement out (an effect of the opposite sign; a correlation whose
  interval excludes half the paper's size; a threshold interval wholly on the wrong side; co-occurrence rarer
  than chance), with the same leave-one-out stability;
* **inconclusive** - neither, or a verdict that flips when one run or seed is left out, or fewer seeds than the
  rule asks; the row says what would settle it (e.g. the n a paper-sized correlation needs at 80% power);
* **not testable here** - the statistic does not exist on these runs (no grok step, a change at the run's edge).

Leave-one-out stands in for "would another seed or CPU flip it?": a verdict resting on one run's last bits is not
evidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

AGREES, CONTRADICTS, INCONCLUSIVE, NOT_TESTABLE = "agrees", "contradicts", "inconclusive", "not testable here"
VERDICTS = (AGREES, CONTRADICTS, INCONCLUSIVE, NOT_TESTABLE)
ALPHA = 0.05
POWER = 0.8


@dataclass
class Evidence:
    """What a claim's test found. ``kind`` names the test: ``correlation`` (estimate r or ρ, Fisher-z interval),
    ``threshold`` (a statistic against the rule's threshold, interval over seeds or resamples) or ``timing``
    (estimate: the fraction of runs whose change co-occurs with the event; ``null``: that fraction's expectation
    when the change's timing is uniform over its window; p from that null). ``leave_one_out`` holds the same
    evidence with each run or seed (``unit``) left out, as plain dicts. ``untestable`` says why there is no
    statistic."""

    kind: str
    estimate: float | None = None
    interval: tuple[float, float] | None = None
    p: float | None = None
    n: int = 0
    seeds: int = 1
    unit: str = "run"
    method: str = ""
    null: float | None = None
    threshold: float | None = None
    tolerance: float | None = None
    leave_one_out: list[dict] = field(default_factory=list)
    untestable: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["interval"] = None if self.interval is None else [float(v) for v in self.interval]
        return out


def not_testable(kind: str, why: str) -> Evidence:
    """Evidence for a statistic that does not exist on these runs."""
    return Evidence(kind, untestable=why)


# --- statistics ----------------------------------------------------------------------------------------------

def fisher_interval(r: float, n: int, spearman: bool = False, level: float = 0.95) -> tuple[float, float]:
    """Interval for a correlation by Fisher's z; Spearman's ρ with Bonett and Wright's variance
    (1 + ρ²/2) / (n - 3). NaNs for n < 4 or an undefined r."""
    if n < 4 or not np.isfinite(r):
        return float("nan"), float("nan")
    from scipy import stats
    se = math.sqrt((1 + r * r / 2 if spearman else 1.0) / (n - 3))
    z, q = math.atanh(min(max(r, -0.999999), 0.999999)), stats.norm.ppf(0.5 + level / 2)
    return math.tanh(z - q * se), math.tanh(z + q * se)


def n_for_correlation(r: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Runs a two-sided test needs to detect a correlation of size ``r`` (Fisher z approximation)."""
    if not r or not np.isfinite(r):
        return None
    from scipy import stats
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return math.ceil((z / math.atanh(min(abs(r), 0.999999))) ** 2 + 3)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (NaNs for n = 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    from scipy import stats
    q = stats.norm.ppf(0.5 + level / 2)
    p = k / n
    centre = (p + q * q / (2 * n)) / (1 + q * q / n)
    half = q * math.sqrt(p * (1 - p) / n + q * q / (4 * n * n)) / (1 + q * q / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_intervals(accuracies, n: int, level: float = 0.95) -> np.ndarray:
    """Wilson intervals of accuracies each computed on ``n`` examples: an array (len, 2) of lower and upper bounds
    (``n`` from :func:`actid.analysis.stats.examples_behind` where it is not known)."""
    return np.array([wilson_interval(round(a * n), n, level) for a in np.asarray(accuracies, float)]).reshape(-1, 2)


def mean_band(curves, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean over seeds (columns) at each step (rows) of ``curves``, and the Student-t interval of that mean
    (NaNs with fewer than two seeds): a curve's seed mean and its band."""
    values = np.asarray(curves, float)
    mean, n = values.mean(axis=1), values.shape[1]
    if n < 2:
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    from scipy import stats
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(axis=1, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def mean_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of per-seed values (NaNs with fewer than two)."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return float("nan"), float("nan")
    from scipy import stats
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def at_least_tail(probabilities, observed: int) -> float:
    """P(at least ``observed`` successes) for independent Bernoulli trials with the given probabilities (the exact
    Poisson-binomial tail: the null of a change whose timing in each run is uniform over its window)."""
    dist = np.array([1.0])
    for q in probabilities:
        dist = np.convolve(dist, [1 - q, q])
    return float(min(1.0, dist[observed:].sum()))


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of one family's p-values (None stays None and is not counted)."""
    index = [i for i, p in enumerate(pvalues) if p is not None and np.isfinite(p)]
    order = sorted(index, key=lambda i: pvalues[i])
    adjusted: list[float | None] = list(pvalues)
    running, m = 0.0, len(order)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


# --- evidence builders ---------------------------------------------------------------------------------------

def _correlation(x, y, spearman: bool) -> tuple[float, float]:
    from actid.analysis.stats import pearson, spearman as rank
    r, p, _ = (rank if spearman else pearson)(x, y)
    return r, p


def correlation_evidence(x, y, *, spearman: bool = False, units=None, seeds: int = 1) -> Evidence:
    """Pearson's r (or Spearman's ρ) of x and y with its Fisher-z interval, p, and the same with each unit left
    out (``units``: one label per point, e.g. the seed; with one seed, or none given, each point is its own run)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if units is None or len(set(np.asarray(units).tolist())) < 2:  # one seed: each run is its own unit
        units = np.arange(len(x))
    finite = np.isfinite(x) & np.isfinite(y)  # a run without the value (e.g. unfinished) drops out, with its unit
    x, y, units = x[finite], y[finite], np.asarray(units)[finite]
    r, p = _correlation(x, y, spearman)
    method = ("Spearman ρ, Bonett-Wright interval" if spearman else "Pearson r, Fisher z interval")
    if not np.isfinite(r):
        return not_testable("correlation", f"{method.split(',')[0]} undefined (n = {len(x)} or a constant)")
    unique = list(dict.fromkeys(units.tolist()))
    loo = []
    if len(unique) > 1:
        for u in unique:
            keep = units != u
            r_u, p_u = _correlation(x[keep], y[keep], spearman)
            loo.append({"left_out": str(u), "estimate": r_u, "p": p_u,
                        "interval": list(fisher_interval(r_u, int(keep.sum()), spearman))})
    unit = "seed" if len(unique) < len(x) else "run"
    return Evidence("correlation", r, fisher_interval(r, len(x), spearman), p, len(x), seeds, unit, method,
                    leave_one_out=loo)


def threshold_evidence(values_by_seed: dict, threshold: float, *, interval: tuple[float, float] | None = None,
                       method: str = "", n: int | None = None) -> Evidence:
    """A statistic compared with ``threshold`` (recorded, so that the claims stage can check it against the rule):
    its mean over seeds (``values_by_seed``: seed -> value), a t-interval over seeds (or the given ``interval``, e.g.
    a bootstrap over runs), and the mean and interval with each seed left out."""
    seeds = {str(k): float(v) for k, v in values_by_seed.items() if v is not None and np.isfinite(v)}
    if not seeds:
        return not_testable("threshold", "no value on these runs")
    values = np.array(list(seeds.values()))
    if interval is None and len(values) >= 2:
        interval, method = mean_interval(values), method or f"mean over {len(values)} seeds, t interval"
    loo = []
    for s in seeds if len(seeds) > 1 else ():
        rest = [v for t, v in seeds.items() if t != s]
        loo.append({"left_out": s, "estimate": float(np.mean(rest)), "p": None,
                    "interval": list(mean_interval(rest)) if len(rest) >= 2 else None})
    return Evidence("threshold", float(values.mean()), interval, None, n or len(values), len(values), "seed",
                    method or ("one run, no interval" if len(values) == 1 else ""), threshold=float(threshold),
                    leave_one_out=loo)


def bootstrap_ratio_of_medians(numerator, denominator, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of median(numerator) / median(denominator), each group resampled over its runs."""
    a, b = np.asarray(numerator, float), np.asarray(denominator, float)
    rng = np.random.default_rng(seed)
    ratios = (np.median(rng.choice(a, (n_boot, len(a))), axis=1) / np.median(rng.choice(b, (n_boot, len(b))), axis=1))
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def timing_evidence(hits: dict, chance: dict, *, seeds: int = 1, tolerance: float | None = None) -> Evidence:
    """Co-occurrence of a change with an event over runs. ``hits``: run -> whether its change fell within the
    tolerance of the event; ``chance``: run -> the probability of that if the change's position were uniform over
    the evaluations it was searched among. p: P(at least as many hits) under that null (exact). ``tolerance``: the
    evaluations within which a change counts as a hit (recorded, so that the claims stage can check it)."""
    names = [n for n in hits if n in chance]
    if not names:
        return not_testable("timing", "no run with both the event and the change")

    def evidence(subset) -> dict:
        k = sum(bool(hits[n]) for n in subset)
        return {"estimate": k / len(subset), "p": at_least_tail([chance[n] for n in subset], k),
                "interval": list(wilson_interval(k, len(subset))),
                "null": float(np.mean([chance[n] for n in subset]))}

    full = evidence(names)
    loo = [{"left_out": n, **evidence([m for m in names if m != n])} for n in names] if len(names) > 1 else []
    return Evidence("timing", full["estimate"], tuple(full["interval"]), full["p"], len(names), seeds, "run",
                    "fraction of runs co-occurring, Wilson interval; p: exact null of uniform timing",
                    null=float(np.mean([chance[n] for n in names])), tolerance=tolerance, leave_one_out=loo)


def estimator_column(id_column: str, estimator: str) -> str:
    """The column of an ID column (``llid``, ``pid``, ``id/<layer>``) as measured by another estimator beside
    TwoNN (the ID measure's ``also``): ``id_<estimator>/llid``, ``id_<estimator>/<layer>``."""
    key = id_column.split("/", 1)[1] if id_column.startswith("id/") else id_column
    return f"id_{estimator}/{key}"


def sensitivity(evidence_of, columns, id_columns: list[str], estimators=("mle", "gride")) -> dict:
    """The same evidence with each other estimator's IDs: ``evidence_of(mapping)`` is called with {TwoNN column:
    that estimator's column} for ``id_columns``; not testable where ``columns`` lack them (runs without ``also``)."""
    out = {}
    for estimator in estimators:
        mapping = {c: estimator_column(c, estimator) for c in id_columns}
        out[estimator] = (evidence_of(mapping) if set(mapping.values()) <= set(columns) else
                          not_testable("", f"no {estimator.upper()} IDs recorded in these runs"))
    return out


# --- the verdict ---------------------------------------------------------------------------------------------

def _decide(rule: dict, kind: str, estimate, interval, p_adjusted, n: int, null) -> str:
    """The verdict of one piece of evidence under a rule, before the stability and seed checks."""
    lo, hi = interval if interval is not None else (float("nan"), float("nan"))
    if rule["test"] == "correlation":
        sign = rule["direction"]
        if p_adjusted is not None and p_adjusted < ALPHA and estimate * sign > 0:
            return AGREES
        if (p_adjusted is not None and p_adjusted < ALPHA and estimate * sign < 0) or (
                np.isfinite(hi) and max(lo * sign, hi * sign) < rule["paper_effect"] / 2):
            return CONTRADICTS
        return INCONCLUSIVE
    if rule["test"] == "threshold":
        below = rule["direction"] == "below"
        t = rule["threshold"]
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return INCONCLUSIVE
        if (hi < t) if below else (lo > t):
            return AGREES
        if (lo >= t) if below else (hi <= t):
            return CONTRADICTS
        return INCONCLUSIVE
    if rule["test"] == "timing":
        if p_adjusted is not None and p_adjusted < ALPHA:
            return AGREES
        if n >= 3 and np.isfinite(hi) and null is not None and hi < null:
            return CONTRADICTS
        return INCONCLUSIVE
    raise ValueError(f"unknown test {rule['test']!r} in rule {rule.get('id')}: use correlation, threshold or timing")


def judge(rule: dict, evidence: dict, p_adjusted: float | None, adjust=None) -> tuple[str, str]:
    """(verdict, why) of a claim's evidence (an :meth:`Evidence.to_dict`) under its rule, with its Holm-adjusted p.
    ``adjust(p)``: the Holm-adjusted value of another p in this row's place in its family (default: p itself).

    Stability: each leave-one-out evidence must give the same verdict: for correlations and timing the whole test
    again (its p adjusted in the row's place, against its own null); for thresholds the side of the threshold on
    which the remaining seeds' mean falls (two seeds' t-interval is too wide to mean anything). Seeds: ``agrees`` and
    ``contradicts`` need ``rule['min_seeds']`` seeds per condition (default 1 for tests over runs, 3 for threshold
    tests)."""
    if evidence.get("untestable"):
        return NOT_TESTABLE, evidence["untestable"]
    if evidence["kind"] != rule["test"]:
        raise ValueError(f"rule {rule['id']} tests {rule['test']!r} but the notebook recorded {evidence['kind']!r} "
                         "evidence: the rule or the notebook changed; changing a rule is an amendment")
    verdict = _decide(rule, evidence["kind"], evidence["estimate"], evidence["interval"], p_adjusted,
                      evidence["n"], evidence.get("null"))
    if verdict == INCONCLUSIVE:
        return verdict, _what_would_settle(rule, evidence)
    min_seeds = rule.get("min_seeds", 3 if rule["test"] == "threshold" else 1)
    if evidence["seeds"] < min_seeds:
        return INCONCLUSIVE, (f"would read {verdict}, but rests on {evidence['seeds']} seed(s); the rule asks for "
                              f"{min_seeds}")
    adjust = adjust or (lambda p: p)
    for loo in evidence.get("leave_one_out", []):
        if rule["test"] == "threshold":  # the side of the threshold the remaining seeds' mean falls on
            t, below = rule["threshold"], rule["direction"] == "below"
            other = AGREES if ((loo["estimate"] < t) if below else (loo["estimate"] > t)) else CONTRADICTS
        else:  # the whole test again, its p adjusted in the row's place
            p = None if loo.get("p") is None else adjust(loo["p"])
            other = _decide(rule, evidence["kind"], loo["estimate"], loo.get("interval"), p, evidence["n"] - 1,
                            loo.get("null", evidence.get("null")))
        if other != verdict:
            return INCONCLUSIVE, f"would read {verdict}, but reads {other} without {evidence['unit']} {loo['left_out']}"
    return verdict, ""


def _what_would_settle(rule: dict, evidence: dict) -> str:
    if rule["test"] == "correlation":
        lo, hi = evidence["interval"]
        if max(lo * rule["direction"], hi * rule["direction"]) < rule["paper_effect"]:
            return (f"the interval excludes the paper's size ({rule['paper_effect']:g}) but not half of it, nor "
                    f"zero (n = {evidence['n']})")
        n = n_for_correlation(rule["paper_effect"])
        return (f"a correlation of the paper's size ({rule['paper_effect']:g}) needs n = {n} at 80% power; "
                f"this test had n = {evidence['n']}")
    if rule["test"] == "threshold" and evidence.get("interval") is None:
        return f"one value, no interval: needs ≥ {rule.get('min_seeds', 3)} seeds"
    if rule["test"] == "timing":
        return f"co-occurrence {evidence['estimate']:.2f} against {evidence['null']:.2f} by chance, n = {evidence['n']}"
    return "the interval straddles the threshold"
