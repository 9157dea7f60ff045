"""Fetch the Vega scripts that `dvc plots show` pages load from a CDN, for viewing them offline.

DVC's HTML loads vega 5.20.2, vega-lite 5.2.0 and vega-embed 6.18.2 from cdn.jsdelivr.net. On a machine without
that CDN (CI), this script downloads the same versions from the npm registry, checks each tarball against the
registry's sha512, and writes ``vega.min.js``, ``vega-lite.min.js`` and ``vega-embed.min.js`` to ``build/vega/``
(or the folder given). ``dvc plots show --html-template`` with a page that loads them renders offline
(tests/test_integrations.py does this in headless Chromium).

    python scripts/fetch_vega.py [OUT_DIR]
"""

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGES = {  # name: (version, the npm registry's sha512 integrity of its tarball)
    "vega": ("5.20.2",
             "qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    "vega-lite": ("5.2.0",
                  "Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    "vega-embed": ("6.18.2",
                   "wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
}


def fetch(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, (version, integrity) in PACKAGES.items():
        target = out / f"{name}.min.js"
        if target.exists():
            continue
        url = f"https://registry.npmjs.org/{name}/-/{name}-{version}.tgz"
        data = urllib.request.urlopen(url, timeout=60).read()
        digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
        if digest != integrity:
            raise SystemExit(f"{url}: sha512 {digest} is not the registry's {integrity}; nothing written")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            script = tar.extractfile(f"package/build/{name}.min.js").read()
        partial = target.with_suffix(".part")
        partial.write_bytes(script)
        partial.replace(target)
        print(f"{target} ({name} {version}, {len(script) // 1024} KB)")


if __name__ == "__main__":
    fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "build" / "vega")
