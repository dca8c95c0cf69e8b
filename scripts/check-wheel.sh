#!/usr/bin/env bash
# The package as a user gets it from an index: builds the sdist and the wheel (`python -m build`, the wheel from
# the sdist), checks their metadata (`twine check --strict`) and that the build printed no deprecation warning,
# installs the wheel non-editable with the [all] extra (and [testing]: the README names the conformance
# kit, which needs pytest) into a fresh venv outside the source tree, and there, with
# the working directory outside the source tree too, runs scripts/smoke_installed.py: `discovery --version`,
# `discovery --help`, `--help` of every subcommand, `discovery demo`, and every module the README names.
# Needs .venv with the [test] extra (build, twine): scripts/setup-python.sh. Exit 1 on the first failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${DISCOVERY_BUILD_PYTHON:-$root/.venv/bin/python}
work=$(mktemp -d "${TMPDIR:-/tmp}/discovery-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "-- build (sdist, then the wheel from it) into $work/dist"
if ! "$python" -m build --outdir "$work/dist" "$root" > "$work/build.log" 2>&1; then
  tail -40 "$work/build.log"; echo "check-wheel: build failed" >&2; exit 1
fi
if grep -i -B2 -A6 "deprecat" "$work/build.log"; then
  echo "check-wheel: the build printed a deprecation warning (above)" >&2; exit 1
fi
ls "$work/dist"

echo "-- twine check --strict"
"$python" -m twine check --strict "$work"/dist/*

echo "-- fresh venv, wheel installed non-editable with [all,testing]"
python3 -m venv "$work/venv"
wheel=$(ls "$work"/dist/*.whl)
# opentelemetry-sdk: the README's OpenTelemetry example brings its own SDK, as it tells users to (the extra is API only)
"$work/venv/bin/python" -m pip install -q "${wheel}[all,testing]" opentelemetry-sdk

echo "-- the installed command line and the README's modules (cwd $work, isolated mode: no source tree on sys.path)"
cp "$root/scripts/smoke_installed.py" "$root/README.md" "$work/"
cd "$work"
env -u PYTHONPATH "$work/venv/bin/python" -I smoke_installed.py README.md
echo "check-wheel: ok"
