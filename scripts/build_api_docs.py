"""Build the API reference (pdoc) into a folder and check it: every module's page exists and every link inside the
reference points to a page or anchor that exists. ``python scripts/build_api_docs.py build/api`` (CI runs it)."""

import re
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

SHIMS = ["actid.progress", "actid.slurm", "actid.models.grokking_mlp"]
"""Old import paths kept for compatibility (actid/_moved.py): not part of the reference."""


class Links(HTMLParser):
    """The hrefs and the ids of one page."""

    def __init__(self):
        super().__init__()
        self.hrefs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


def modules() -> list[str]:
    """``actid`` and each of its modules and subpackages (pdoc walks a subpackage's modules itself; the package's
    ``__all__`` lists only the public names, so pdoc would not find its modules from ``actid`` alone)."""
    root = Path(__file__).resolve().parents[1] / "actid"
    children = sorted(p.stem if p.is_file() else p.name for p in root.iterdir()
                      if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists())
    return ["actid"] + [f"actid.{c}" for c in children if not c.startswith("_") and f"actid.{c}" not in SHIMS]


def build(out: Path) -> None:
    import pdoc
    warnings.simplefilter("ignore", DeprecationWarning)
    pdoc.render.configure(docformat="restructuredtext", search=False, show_source=False)
    pdoc.pdoc(*modules(), *[f"!{m}" for m in SHIMS], output_directory=out)


def check(out: Path) -> list[str]:
    """Broken links inside the reference (links to other sites are not followed)."""
    pages = {p: Links() for p in out.rglob("*.html")}
    for path, parser in pages.items():
        parser.feed(path.read_text())
    problems = []
    for path, parser in pages.items():
        for href in parser.hrefs:
            if re.match(r"^[a-z]+:", href):  # https:, mailto:
                continue
            target, _, anchor = href.partition("#")
            page = (path.parent / target).resolve() if target else path
            if page not in pages:
                problems.append(f"{path.relative_to(out)}: link to a missing page {href}")
            elif anchor and anchor not in pages[page].ids:
                problems.append(f"{path.relative_to(out)}: link to a missing anchor {href}")
    return problems


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/api").resolve()
    build(out)
    expected = [out / "actid.html", out / "actid" / "estimators.html", out / "actid" / "pipeline" / "plan.html"]
    missing = [str(p) for p in expected if not p.exists()]
    problems = check(out) + [f"missing page {p}" for p in missing]
    print(f"API reference: {len(list(out.rglob('*.html')))} pages in {out}; {len(problems)} problem(s)")
    for problem in problems[:50]:
        print("  " + problem)
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
