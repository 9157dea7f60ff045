"""The registry of claim rules (``actid/claim_rules.yaml``): one versioned rule per claim, with its amendments.

A rule's *digest* is a hash of the keys that decide its verdict (:data:`DECIDING`); the registry stores it, and
:func:`check` fails when a rule's keys no longer match its stored digest, i.e. when a rule was edited instead of
amended. An amendment records the date, the reason, the previous rule and the verdict it gave then; the rule's
``version`` is one more than its number of amendments.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

REGISTRY = Path(__file__).with_name("claim_rules.yaml")
DECIDING = ("study", "statistic", "test", "direction", "paper_effect", "threshold", "tolerance_evaluations",
            "min_seeds", "counted_with")
"""The keys a verdict depends on: changing any of them is an amendment."""
TESTS = ("correlation", "threshold", "timing")


def digest(rule: dict) -> str:
    """12 hex digits of SHA-256 over the rule's deciding keys."""
    deciding = {k: rule[k] for k in DECIDING if k in rule}
    return hashlib.sha256(json.dumps(deciding, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load(path: Path | str = REGISTRY) -> dict[str, dict]:
    """Every rule by id (with ``id`` and ``amended`` added), checked (:func:`problems` must be empty)."""
    rules = yaml.safe_load(Path(path).read_text())
    if not isinstance(rules, dict):
        raise ValueError(f"{path}: expected a mapping of rule id -> rule")
    rules = {name: {**rule, "id": name, "amended": bool(rule.get("amendments"))} for name, rule in rules.items()}
    found = problems(rules)
    if found:
        raise ValueError(f"{path}:\n  " + "\n  ".join(found))
    return rules


def problems(rules: dict[str, dict]) -> list[str]:
    """What is wrong with a registry: missing or unknown keys, a stale digest (an edit without an amendment), a
    version that does not count the amendments, a duplicate pointing nowhere."""
    out = []
    for name, rule in rules.items():
        for key in ("study", "statistic", "test", "fixed", "version", "digest"):
            if key not in rule:
                out.append(f"{name}: no '{key}'")
        if rule.get("test") not in TESTS:
            out.append(f"{name}: test {rule.get('test')!r} is not one of {TESTS}")
        elif rule["test"] == "correlation" and not ({"direction", "paper_effect"} <= rule.keys()):
            out.append(f"{name}: a correlation rule needs 'direction' (-1 or 1) and 'paper_effect'")
        elif rule["test"] == "threshold" and (rule.get("direction") not in ("below", "above")
                                              or "threshold" not in rule):
            out.append(f"{name}: a threshold rule needs 'direction' (below or above) and 'threshold'")
        amendments = rule.get("amendments") or []
        for a in amendments:
            missing = {"date", "reason", "previous", "verdict_then"} - set(a)
            if missing:
                out.append(f"{name}: an amendment lacks {sorted(missing)}")
        if rule.get("version") != len(amendments) + 1:
            out.append(f"{name}: version {rule.get('version')} but {len(amendments)} amendment(s): the version is one "
                       "more than the number of amendments")
        if "digest" in rule and rule["digest"] != digest(rule):
            out.append(f"{name}: its deciding keys changed without an amendment (stored digest {rule['digest']}, now "
                       f"{digest(rule)}); record {{date, reason, previous, verdict_then}} under 'amendments', raise "
                       f"'version', then store digest {digest(rule)}")
        if rule.get("counted_with") and rule["counted_with"] not in rules:
            out.append(f"{name}: counted_with {rule['counted_with']!r} is not a rule")
    return out


def check(path: Path | str = REGISTRY) -> None:
    """Raise ValueError naming every problem of the registry at ``path``."""
    load(path)
