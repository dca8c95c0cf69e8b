#!/usr/bin/env bash
# Create the anchor venvs the --full benchmark profile runs its comparison clients in, outside the project's
# main venv (docs/decisions/benchmarks-anchor-venvs.md). Idempotent: a venv whose stamp matches is left alone.
#
#   benchmarks/.venvs/tooz         tooz 9.x (zookeeper via kazoo, etcd3gw drivers) + matplotlib for the plots
#   benchmarks/.venvs/tooz-consul  tooz 8.1.0, the last release with a Consul driver (pulls python-consul2,
#                                  which would overwrite py-consul in the main venv)
#   /usr/share/java/curator-recipes.jar  (Debian libcurator-recipes-java) for the Curator ServiceCache anchor
#
# Usage: bash benchmarks/setup_anchors.sh [PYTHON]   (default python3.11, else python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venvs="$here/.venvs"
python="${1:-$(command -v python3.11 || command -v python3)}"
mkdir -p "$venvs"

make_venv() {
    local name="$1"; shift
    local dir="$venvs/$name"
    local want="$*"
    if [[ -x "$dir/bin/python" && -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$want" ]]; then
        echo "anchor venv $name: up to date"
        return
    fi
    echo "anchor venv $name: installing $want"
    rm -rf "$dir"
    "$python" -m venv "$dir"
    # shellcheck disable=SC2086  # the package specs are separate words on purpose
    "$dir/bin/pip" install --quiet --disable-pip-version-check $want 2>&1 | { grep -v "is ignored: it is neither" || true; }
    echo "$want" > "$dir/.stamp"
}

make_venv tooz "tooz>=9,<10 kazoo etcd3gw matplotlib"
make_venv tooz-consul "tooz[consul]==8.1.0"

# Curator's ServiceCache needs curator-recipes, which the interop test's packages do not pull in.
if [[ ! -f /usr/share/java/curator-recipes.jar ]] && command -v apt-get >/dev/null; then
    echo "installing libcurator-recipes-java (Curator ServiceCache anchor)"
    apt-get install -y -q libcurator-recipes-java >/dev/null || echo "could not install libcurator-recipes-java"
fi

if command -v javac >/dev/null; then
    echo "javac: $(javac -version 2>&1)"
else
    echo "javac missing: the Curator anchor will be reported as not run (apt-get install openjdk-17-jdk-headless)"
fi
