"""The paper-claims table: each figure notebook records, for every claim its figure tests, the evidence
(:class:`actid.verdicts.Evidence`) and the id of the claim's rule (:class:`Claims`) into its ``metrics.json``;
``python -m actid.claims <metrics.json> ... -o figures/claims.md`` reads the rules registered in
``actid/claim_rules.yaml``, adjusts p-values by Holm's method within each study and profile, and writes one
Markdown table of verdicts (the last stage of ``dvc.yaml``).

Notebooks measure; this module judges, so that one rule, fixed before the data that judge it, decides each verdict
(:mod:`actid.verdicts`, :mod:`actid.claim_rules`).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from actid import claim_rules
from actid.io import atomic_write_text
from actid.verdicts import CONTRADICTS, INCONCLUSIVE, VERDICTS, Evidence, holm, judge


def _as_dict(evidence: Evidence | dict) -> dict:
    return evidence.to_dict() if isinstance(evidence, Evidence) else dict(evidence)


def claim(figure: str, text: str, paper: str, ours: str, *, rule: str, evidence: Evidence | dict,
          profile: str | None, n_unfinished: int = 0, sensitivity: dict | None = None,
          id_trust: str | None = None) -> dict:
    """One row of the claims table: what the paper says, what we measured (``ours``, for people), the rule that
    judges it and the evidence it reads; for an ID claim, ``sensitivity`` holds the same evidence with the IDs of
    other estimators ({"mle": ..., "gride": ...}), judged by the same rule, and ``id_trust`` the least trustworthy
    calibration flag of its IDs (:func:`actid.calibration.flag`). With ``n_unfinished`` runs behind it no verdict is
    drawn: their values are not final."""
    return {"figure": figure, "claim": text, "paper": paper, "ours": ours, "profile": profile or "?", "rule": rule,
            "evidence": _as_dict(evidence), "n_unfinished": int(n_unfinished),
            "sensitivity": {name: _as_dict(e) for name, e in (sensitivity or {}).items()}, "id_trust": id_trust}


class Claims:
    """The claims one figure notebook tests, in order: :meth:`add` one per statement, then write :attr:`rows` into
    the notebook's ``metrics.json``. ``figure``, ``profile`` and ``n_unfinished`` are those of every claim unless
    :meth:`add` names another figure."""

    def __init__(self, figure: str | None, profile: str | None, n_unfinished: int = 0):
        self.figure, self.profile, self.n_unfinished = figure, profile, n_unfinished
        self.rows: list[dict] = []

    def add(self, text: str, paper: str, ours: str, *, rule: str, evidence: Evidence,
            sensitivity: dict | None = None, id_trust: str | None = None, figure: str | None = None) -> dict:
        """One claim (see :func:`claim`), appended and returned."""
        row = claim(figure or self.figure, text, paper, ours, rule=rule, evidence=evidence, profile=self.profile,
                    n_unfinished=self.n_unfinished, sensitivity=sensitivity, id_trust=id_trust)
        self.rows.append(row)
        return row

    def print(self) -> None:
        """Each claim on one line: its rule, statement and our statistic (the verdict is the claims stage's)."""
        for c in self.rows:
            print(f"[{c['rule']}] {c['claim']}: {c['ours']}")


def profile_label(runs) -> str:
    """The params.yaml profile(s) of the runs behind a figure ("?" when not recorded, e.g. Tracker runs)."""
    profiles = sorted(map(str, runs["profile"].dropna().unique())) if "profile" in runs else []
    return ", ".join(profiles) or "?"


def verdicts(rows: list[dict], rules: dict[str, dict]) -> list[dict]:
    """Each row with ``verdict``, ``why``, ``p_holm`` and its rule's version added. Holm families: (study,
    profile); a near-duplicate (``counted_with``) is not counted in its family but adjusted in the place of the row
    it repeats."""
    for row in rows:
        if row.get("rule") not in rules:
            raise SystemExit(f"claim {row.get('claim')!r} names rule {row.get('rule')!r}, which is not in "
                             f"{claim_rules.REGISTRY.name}: register it there before the runs that judge it")
    families: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        rule = rules[row["rule"]]
        if not rule.get("counted_with"):
            families.setdefault((rule["study"], row["profile"]), []).append(i)
    place: dict[int, tuple[list[int], int]] = {}  # row -> (its Holm family, the member whose place it takes)
    for members in families.values():
        for i in members:
            place[i] = (members, i)
    for i, row in enumerate(rows):  # a near-duplicate is adjusted in the place of the row it repeats
        duplicated = rules[row["rule"]].get("counted_with")
        if duplicated:
            twin = next((j for j, other in enumerate(rows) if other["rule"] == duplicated
                         and other["profile"] == row["profile"]), None)
            if twin is not None and twin in place:
                place[i] = place[twin]

    def adjust_for(i: int):
        """Holm-adjusts a p-value put in row i's place in its family (the leave-one-out and estimator p's too)."""
        if i not in place:
            return lambda p: p
        members, at = place[i]
        ps = [rows[j]["evidence"].get("p") for j in members]

        def adjust(p):
            return holm([p if j == at else q for j, q in zip(members, ps)])[members.index(at)]
        return adjust

    out = []
    for i, row in enumerate(rows):
        rule, evidence = rules[row["rule"]], row["evidence"]
        adjust = adjust_for(i)
        p_holm = None if evidence.get("p") is None else adjust(evidence["p"])
        _check_threshold(row, rule)
        sensitivity = {}
        if row.get("n_unfinished"):
            verdict, why = INCONCLUSIVE, f"{row['n_unfinished']} run(s) unfinished"
        else:
            verdict, why = judge(rule, evidence, p_holm, adjust)
            for name, other in (row.get("sensitivity") or {}).items():  # the same rule, in the same place
                p = None if other.get("p") is None else adjust(other["p"])
                sensitivity[name] = "–" if other.get("untestable") and "recorded" in other["untestable"] else (
                    judge(rule, other, p, adjust)[0])
        first = rule["amendments"][0]["verdict_then"] if rule.get("amendments") else None
        out.append({**row, "verdict": verdict, "why": why, "p_holm": p_holm, "version": rule["version"],
                    "sensitivity_verdicts": sensitivity,
                    "first_rule_verdict": first, "counted_with": rule.get("counted_with")})
    return out


def _check_threshold(row: dict, rule: dict) -> None:
    tolerance = row["evidence"].get("tolerance")
    if tolerance is not None and "tolerance_evaluations" in rule and tolerance != rule["tolerance_evaluations"]:
        raise SystemExit(f"rule {rule['id']} fixes a tolerance of {rule['tolerance_evaluations']:g} evaluations but "
                         f"the notebook used {tolerance:g} (a figure parameter?): changing a rule is an amendment")
    used = row["evidence"].get("threshold")
    if used is not None and "threshold" in rule and not np.isclose(used, rule["threshold"]):
        raise SystemExit(f"rule {rule['id']} fixes the threshold {rule['threshold']:g} but the notebook used "
                         f"{used:g} (a figure parameter in params.yaml?): changing a rule is an amendment")


def _number(x, digits: int = 2) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{digits}f}".rstrip("0").rstrip(".")


def _interval(e: dict) -> str:
    if e.get("untestable"):
        return "–"
    text = _number(e.get("estimate"), 3)
    if e.get("interval") is not None and all(np.isfinite(e["interval"])):
        text += f" [{_number(e['interval'][0], 3)}, {_number(e['interval'][1], 3)}]"
    if e.get("null") is not None:
        text += f" (chance {_number(e['null'], 2)})"
    return text


def table(rows: list[dict]) -> str:
    """The judged claims as Markdown: a count of verdicts per profile, then one row per claim."""
    counts = Counter((r["profile"], r["verdict"]) for r in rows if not r["counted_with"])
    lines = ["Verdicts (a near-duplicate run's rows are shown but not counted): "
             + "; ".join(f"{profile}: " + ", ".join(f"{counts[(profile, v)]} {v}" for v in VERDICTS
                                                    if counts[(profile, v)])
                         for profile in dict.fromkeys(r["profile"] for r in rows)), "",
             "| figure | claim (paper) | paper | ours | estimate [95% interval] | p (Holm) | n, seeds | rule | "
             "profile | verdict | with MLE / GRIDE IDs | IDs calibrated |", "|---" * 12 + "|"]
    for r in rows:
        e = r["evidence"]
        p = "–" if e.get("p") is None else f"{e['p']:.2g} ({r['p_holm']:.2g})"
        n = "–" if e.get("untestable") else f"{e['n']} runs, {e['seeds']} seed(s)"
        rule = f"{r['rule']} v{r['version']}" + (f" (amended; first rule: {r['first_rule_verdict']})"
                                                 if r["first_rule_verdict"] is not None else "")
        verdict = f"**{r['verdict']}**" if r["verdict"] == CONTRADICTS else r["verdict"]
        if r["why"]:
            verdict += f": {r['why']}"
        if r["counted_with"]:
            verdict += f" (near-duplicate of {r['counted_with']}'s run: not counted)"
        others = {k: v for k, v in (r.get("sensitivity_verdicts") or {}).items() if v != "–"}
        sensitivity = " / ".join(f"{others.get(k, '–')}" for k in ("mle", "gride")) if others else "–"
        if others and all(v == r["verdict"] for v in others.values()):
            sensitivity = f"holds ({sensitivity})"
        lines.append(f"| {r['figure']} | {r['claim']} | {r['paper']} | {r['ours']} | {_interval(e)} | {p} | {n} | "
                     f"{rule} | {r['profile']} | {verdict} | {sensitivity} | {r.get('id_trust') or '–'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", nargs="+", type=Path, help="figure metrics.json files, in table order")
    parser.add_argument("-o", "--out", type=Path, required=True, help="Markdown file to write")
    parser.add_argument("--rules", type=Path, default=claim_rules.REGISTRY, help="the claim-rules registry")
    args = parser.parse_args(argv)
    rows = []
    for path in args.metrics:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
            raise SystemExit(f"{path} has no 'claims' list: is it a figure notebook's metrics file?")
        for row in data["claims"]:
            if not isinstance(row, dict) or not isinstance(row.get("evidence"), dict):
                raise SystemExit(f"{path}: a claim without evidence ({row!r:.120}); rerun its figure stage")
        rows += data["claims"]
    try:
        rules = claim_rules.load(args.rules)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    judged = verdicts(rows, rules)
    text = ("<!-- generated by `python -m actid.claims` (dvc stage `claims`) from the figures' metrics and the rules "
            "in actid/claim_rules.yaml; do not edit -->\n" + table(judged))
    atomic_write_text(args.out, text)
    counts = Counter(r["verdict"] for r in judged if not r["counted_with"])
    print(f"{len(judged)} claims ({', '.join(f'{counts[v]} {v}' for v in VERDICTS)}) -> {args.out}")


if __name__ == "__main__":
    main()
