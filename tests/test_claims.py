"""The paper-claims table: rows from the figures' metrics, agreement rules, errors for a wrong file."""

import json

import pytest

from actid.claims import claim, correlation_agrees, main


def test_agreement_needs_the_paper_sign_and_significance():
    assert correlation_agrees(-0.9, 0.001, -1) is True
    assert correlation_agrees(-0.9, 0.2, -1) is False  # right sign, not significant
    assert correlation_agrees(0.9, 0.001, -1) is False
    assert correlation_agrees(float("nan"), float("nan"), 1) is None


def test_table_collects_claims_in_file_order(tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps({"r": 1, "claims": [claim("A", "x lowers y", "r = -0.9", "r = -0.5", False, "default")]}))
    b.write_text(json.dumps({"claims": [claim("D", "z drops", "drop", "3 of 4", True, "paper"),
                                        claim("D", "w", "v", "n/a", None, None)]}))
    main([str(a), str(b), "-o", str(tmp_path / "claims.md")])
    lines = (tmp_path / "claims.md").read_text().splitlines()
    assert lines[1].startswith("| figure | claim")
    assert lines[3:] == ["| A | x lowers y | r = -0.9 | r = -0.5 | default | **no** |",
                         "| D | z drops | drop | 3 of 4 | paper | yes |",
                         "| D | w | v | n/a | ? | n/a |"]


def test_a_metrics_file_without_claims_is_refused(tmp_path):
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(SystemExit, match="no 'claims' list"):
        main([str(tmp_path / "m.json"), "-o", str(tmp_path / "claims.md")])
    assert not (tmp_path / "claims.md").exists()


def test_claims_of_unfinished_runs_get_no_verdict():
    row = claim("X", "text", "paper", "r = 0.9", True, "default", n_unfinished=2)
    assert row["agrees"] is None and row["ours"] == "r = 0.9 [2 run(s) unfinished: no verdict]"
    assert claim("X", "text", "paper", "r = 0.9", True, "default")["agrees"] is True
