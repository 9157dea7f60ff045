"""The repository documents itself: no pointer to files users do not have, every cited pitfall defined,
every relative link in the Markdown files resolving to a file of the repository."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".json", ".txt"))
            and not n.startswith(("runs/", "results/", "figures/")) and n != "dvc.lock"]


def test_no_file_points_outside_the_repository():
    pattern = re.compile(r"\.\./" + "shared|shared/" + "reference|reproduction " + "notes")  # split: not matched here
    offenders = [str(p.relative_to(ROOT)) for p in tracked_text_files() if p.exists() and pattern.search(p.read_text())]
    assert offenders == []


def test_every_cited_pitfall_is_defined_in_docs():
    defined = set(re.findall(r"^\| (P\d+) \|", (ROOT / "docs" / "reproduction.md").read_text(), re.M))
    assert {f"P{i}" for i in range(1, 18)} <= defined
    cited = {m for p in tracked_text_files() if p.exists() for m in re.findall(r"\bP\d{1,2}\b", p.read_text())}
    assert cited <= defined, f"cited but not defined in docs/reproduction.md: {sorted(cited - defined)}"


def test_relative_links_in_markdown_resolve():
    broken = []
    for doc in [p for p in tracked_text_files() if p.suffix == ".md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_readme_embeds_the_generated_claims_table():
    """figures/claims.md is written by the pipeline (stage `claims`); the README shows the same table."""
    claims = (ROOT / "figures" / "claims.md").read_text()
    table = "\n".join(line for line in claims.splitlines() if line.startswith("|"))
    assert table.count("\n") >= 2 and table in (ROOT / "README.md").read_text()
