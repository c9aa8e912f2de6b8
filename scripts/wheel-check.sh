#!/usr/bin/env bash
# A wheel built from the committed tree, installed into a fresh venv outside the repository, run
# by that venv's python without activating it, on a PATH without ninja, builds the compiled CPU
# loops from site-packages (a fresh extension folder) and prints where and for which instruction
# set. torch and the other dependencies come from the repository's .venv through a .pth file (no
# download); ninja is installed into the fresh venv, as a real install of the wheel does. ~2 min.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
PY="${PYTHON:-$REPO/.venv/bin/python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
git archive HEAD | tar -x -C "$WORK" --one-top-level=src-tree
"$PY" -m pip wheel -q --no-deps --no-build-isolation "$WORK/src-tree" -w "$WORK/wheel"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --no-deps "$WORK"/wheel/targetprop-*.whl
"$PY" -c "import site; print(site.getsitepackages()[0])" > "$WORK/venv/lib/python$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')/site-packages/zz_deps.pth"
"$WORK/venv/bin/pip" install -q --ignore-installed ninja
mkdir "$WORK/bin" "$WORK/ext"
for d in $(echo "$PATH" | tr ':' ' '); do
  [ -d "$d" ] || continue
  for f in "$d"/*; do n="$(basename "$f")"; [ "$n" = ninja ] || [ -e "$WORK/bin/$n" ] || ln -s "$f" "$WORK/bin/$n"; done
done
cd "$WORK"
env -i HOME="$HOME" PATH="$WORK/bin" TORCH_EXTENSIONS_DIR="$WORK/ext" "$WORK/venv/bin/python" - <<'PYEOF'
import argparse, shutil
import targetprop
from targetprop.kernels import commands
print("ninja on PATH:", shutil.which("ninja"), "| package:", targetprop.__file__)
p = argparse.ArgumentParser(prog="targetprop")
commands.add_commands(p.add_subparsers(dest="command", required=True))
args = p.parse_args(["kernels", "build"])
raise SystemExit(args.handler(args, args.subparser))
PYEOF
