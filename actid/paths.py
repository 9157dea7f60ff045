"""Repository paths, so notebooks resolve the same files from JupyterLab (cwd notebooks/) and papermill."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def resolve(path: str | Path) -> Path:
    """An absolute path as is; a relative one from the repository root."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path
