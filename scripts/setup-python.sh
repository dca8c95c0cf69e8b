#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with every backend and the test tools.
#
# Static tools (mypy, pyright) cannot follow setuptools' default editable install, an import hook: with it alone,
# mypy run on your own code outside this repository does not see `discovery` or the adapters. setuptools'
# `editable_mode=compat` names only the first package root (so not backends/) and is being removed, so instead a
# plain .pth file names both source roots; Python and the import hook find the same files either way.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[all,test]'
site_packages=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$PWD" "$PWD/backends" > "$site_packages/service_discovery_sources.pth"
