"""The claim-rules registry: a rule edited without an amendment fails, and every claim the pipeline writes has a
registered rule (actid/claim_rules.yaml)."""

import json
from pathlib import Path

import pytest
import yaml

from actid import claim_rules

ROOT = Path(__file__).resolve().parents[1]


def test_the_registry_is_consistent():
    """Fails when a rule's deciding keys changed without an amendment: the message names the rule, what to record,
    and the digest to store afterwards."""
    problems = claim_rules.problems({k: {**v, "id": k} for k, v in yaml.safe_load(
        claim_rules.REGISTRY.read_text()).items()})
    assert not problems, "\n".join(problems)


def test_an_edit_without_an_amendment_is_caught_and_an_amendment_passes(tmp_path):
    rules = yaml.safe_load(claim_rules.REGISTRY.read_text())
    rule = rules["brown_b"]
    edited = {**rule, "paper_effect": 0.5}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"brown_b": edited}))
    with pytest.raises(ValueError, match="brown_b: its deciding keys changed without an amendment"):
        claim_rules.load(path)
    amendment = {"date": "2026-12-08", "reason": "r", "previous": {"paper_effect": 0.92}, "verdict_then": "x"}
    amended = {**edited, "amendments": [amendment], "version": 2}
    amended["digest"] = claim_rules.digest(amended)
    path.write_text(yaml.safe_dump({"brown_b": amended}))
    assert claim_rules.load(path)["brown_b"]["amended"]
    path.write_text(yaml.safe_dump({"brown_b": {**amended, "version": 1}}))
    with pytest.raises(ValueError, match="version 1 but 1 amendment"):
        claim_rules.load(path)


def test_every_committed_claim_names_a_registered_rule_and_every_rule_is_used():
    rules = claim_rules.load()
    used = set()
    for metrics in (ROOT / "figures").glob("*/*.json"):
        data = json.loads(metrics.read_text())
        for row in data.get("claims", []) if isinstance(data, dict) else []:
            assert row["rule"] in rules, f"{metrics}: {row['rule']}"
            used.add(row["rule"])
    pending = {name for name, rule in rules.items() if rule.get("pending")}
    assert not used & pending, f"used, so no longer pending (drop 'pending'): {sorted(used & pending)}"
    assert used == set(rules) - pending, f"registered but never used: {sorted(set(rules) - pending - used)}"
