"""The claims table: verdicts under the registered rules, Holm within a study, errors for a wrong file or rule."""

import json

import numpy as np
import pytest
import yaml

from actid import claim_rules
from actid.claims import claim, main
from actid.verdicts import correlation_evidence, threshold_evidence, timing_evidence


def rule(study, test="correlation", **keys):
    base = {"correlation": {"direction": -1, "paper_effect": 0.8},
            "threshold": {"direction": "below", "threshold": 0.9}}[test]
    r = {"study": study, "statistic": "s", "test": test, **base, **keys, "fixed": "2026-12-07", "version": 1,
         "amendments": []}
    return {**r, "digest": claim_rules.digest(r)}


@pytest.fixture
def registry(tmp_path):
    rules = {"a1": rule("one"), "a2": rule("one"), "b1": rule("two"), "c": rule("two", "threshold")}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


def evidence(p_target):
    """Correlation evidence over 8 runs with a negative r whose p lies near ``p_target``."""
    x = np.arange(8.0)
    for noise in np.linspace(0, 20, 2000):
        e = correlation_evidence(x, -x + noise * np.sin(3.1 * x))
        if e.p >= p_target:
            return e
    raise AssertionError


def test_table_judges_each_claim_with_holm_inside_its_study_only(tmp_path, registry):
    e, strong = evidence(0.03), evidence(0.001)
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"claims": [claim("A", "x lowers y", "r = -0.9", "r", rule="a1", evidence=e,
                                              profile="default"),
                                        claim("A", "x lowers z", "r = -0.9", "r", rule="a2", evidence=e,
                                              profile="default")]}))
    b = tmp_path / "b.json"
    reverse = correlation_evidence(np.arange(8.0), np.arange(8.0) + 0.1 * np.sin(np.arange(8.0)))
    b.write_text(json.dumps({"claims": [claim("B", "u lowers v", "r = -0.9", "r", rule="b1", evidence=strong,
                                              profile="default", sensitivity={"mle": strong, "gride": reverse},
                                              id_trust="biased")]}))
    main([str(a), str(b), "-o", str(tmp_path / "claims.md"), "--rules", str(registry)])
    lines = (tmp_path / "claims.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| figure")]
    assert len(rows) == 3
    # study "one" has two p-values of 0.03: Holm doubles the smaller -> 0.06 (a family of three would make it 0.09)
    assert "| 0.03 (0.06) |" in rows[0] and "| 0.03 (0.06) |" in rows[1]
    assert rows[0].endswith("| a1 v1 | default | inconclusive: a correlation of the paper's size (0.8) needs n = 10 "
                            "at 80% power; this test had n = 8 | – | – |")
    # the other estimators' evidence is judged by the same rule; the calibration flag is shown
    assert rows[2].endswith("| b1 v1 | default | agrees | agrees / contradicts | biased |")
    assert "default: 1 agrees, 2 inconclusive" in lines[1]


def test_unfinished_runs_withhold_the_verdict(tmp_path, registry):
    e = evidence(0.001)
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"claims": [claim("A", "x", "p", "r", rule="b1", evidence=e, profile="default",
                                              n_unfinished=2)]}))
    main([str(a), "-o", str(tmp_path / "claims.md"), "--rules", str(registry)])
    assert "| inconclusive: 2 run(s) unfinished |" in (tmp_path / "claims.md").read_text()


def test_a_metrics_file_without_claims_or_evidence_is_refused(tmp_path, registry):
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(SystemExit, match="no 'claims' list"):
        main([str(tmp_path / "m.json"), "-o", str(tmp_path / "claims.md"), "--rules", str(registry)])
    (tmp_path / "m.json").write_text(json.dumps({"claims": [{"figure": "A", "agrees": True}]}))
    with pytest.raises(SystemExit, match="a claim without evidence"):
        main([str(tmp_path / "m.json"), "-o", str(tmp_path / "claims.md"), "--rules", str(registry)])
    assert not (tmp_path / "claims.md").exists()


def test_an_unregistered_rule_or_a_changed_threshold_is_refused(tmp_path, registry):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"claims": [claim("A", "x", "p", "r", rule="nope", evidence=evidence(0.01),
                                                 profile="default")]}))
    with pytest.raises(SystemExit, match="register it there before the runs"):
        main([str(path), "-o", str(tmp_path / "claims.md"), "--rules", str(registry)])
    path.write_text(json.dumps({"claims": [claim("C", "x", "p", "r", rule="c", profile="default",
                                                 evidence=threshold_evidence({0: 0.5}, 0.8))]}))
    with pytest.raises(SystemExit, match="fixes the threshold 0.9 but the notebook used 0.8"):
        main([str(path), "-o", str(tmp_path / "claims.md"), "--rules", str(registry)])
    rules = yaml.safe_load(registry.read_text())
    timing = {"study": "two", "statistic": "s", "test": "timing", "tolerance_evaluations": 2, "fixed": "2026-12-07",
              "version": 1, "amendments": []}
    rules["d"] = {**timing, "digest": claim_rules.digest(timing)}
    registry.write_text(yaml.safe_dump(rules))
    path.write_text(json.dumps({"claims": [claim("D", "x", "p", "r", rule="d", profile="default",
                                                 evidence=timing_evidence({0: True}, {0: 0.2}, tolerance=3))]}))
    with pytest.raises(SystemExit, match="fixes a tolerance of 2 evaluations but the notebook used 3"):
        main([str(path), "-o", str(tmp_path / "claims.md"), "--rules", str(registry)])


def test_holm_adjusts_a_left_out_p_in_the_rows_place_and_a_near_duplicate_in_its_twins(tmp_path):
    """Leaving a seed out raises the row's p; in its family that p may rank elsewhere and get a smaller Holm factor
    than the row's own. A near-duplicate's p is adjusted as if it stood where the row it repeats stands."""
    rules = {"a": rule("one"), "b": rule("one"), "c": rule("one"), "dup": rule("one", counted_with="a")}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    x = np.tile(np.arange(6.0), 2)
    y = np.concatenate([-np.arange(6.0), -np.arange(6.0) + np.array([0.0, 1.5, -1, 1.5, -1, 0.5])])
    e = correlation_evidence(x, y, units=[0] * 6 + [1] * 6, seeds=2)
    others = [evidence(0.0004), evidence(0.002)]
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"claims": [claim("A", "t", "p", "o", rule="a", evidence=e, profile="default"),
                                        claim("B", "t", "p", "o", rule="b", evidence=others[0], profile="default"),
                                        claim("C", "t", "p", "o", rule="c", evidence=others[1], profile="default"),
                                        claim("D", "t", "p", "o", rule="dup", evidence=others[1],
                                              profile="default")]}))
    from actid.claims import verdicts
    judged = verdicts(json.loads(m.read_text())["claims"], claim_rules.load(path))
    loo_p = max(loo["p"] for loo in e.to_dict()["leave_one_out"])
    ps = [e.p, others[0].p, others[1].p]
    from actid.verdicts import holm
    assert judged[0]["p_holm"] == pytest.approx(holm(ps)[0])
    in_place = holm([loo_p] + ps[1:])[0]
    assert (judged[0]["verdict"] == "agrees") == (in_place < 0.05 and holm(ps)[0] < 0.05)
    assert judged[3]["p_holm"] == pytest.approx(holm([others[1].p] + ps[1:])[0])  # in a's place

