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


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", doc.read_text(), re.M)}


def test_relative_links_in_markdown_resolve():
    """Every relative link of every Markdown file points to a file of the repository, and its #anchor (if any) to a
    heading of that file."""
    broken = []
    for doc in [p for p in tracked_text_files() if p.suffix == ".md"]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path = (doc.parent / target) if target else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{doc.relative_to(ROOT)} -> {target}#{anchor}")
    assert broken == []


def test_the_readme_is_a_front_door_and_links_the_generated_claims():
    """The README stays short and links figures/claims.md, which the pipeline rewrites on every machine, instead of
    copying it (a copy goes stale on another CPU, and a test comparing the two then fails after `dvc repro`)."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "(figures/claims.md)" in readme
    rows = [line for line in (ROOT / "figures" / "claims.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) > 2 and not any(row in readme for row in rows[2:])
    for page in ("estimators", "measures", "training", "pipeline", "lineage", "notebooks", "cluster", "extending",
                 "api", "grokking", "regularization", "memorization", "mnist_grokking", "geometry", "reproduction"):
        assert f"(docs/{page}.md)" in readme, f"the README does not link docs/{page}.md"
