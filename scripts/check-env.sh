#!/bin/sh
# The first command of every dvc.yaml stage. DVC runs stage commands in the calling shell's
# environment, so without the project's venv a stage would end in "No module named 'torch'";
# this prints what is missing and the fix instead.
missing=$(python -c 'import importlib.util as u
print(" ".join(m for m in ("torch", "actid", "papermill", "jupytext", "seaborn") if u.find_spec(m) is None))' 2>/dev/null) \
  || missing="a 'python' command"
if [ -n "$missing" ]; then
  echo "actid: missing in this shell: $missing. Activate the project's environment first" \
       "('. .venv/bin/activate'; set-up command in README.md), then run 'dvc repro' again." >&2
  exit 1
fi
