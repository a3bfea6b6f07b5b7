#!/usr/bin/env bash
# Creates .venv/ with the packages of tools/requirements.txt (from PyPI). Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="${GEMMA3_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$root/tools/requirements.txt" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/pip" install -q -r "$root/tools/requirements.txt"
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
