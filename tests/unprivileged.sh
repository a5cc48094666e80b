#!/usr/bin/env bash
# Run the test suite as uid/gid 65534 (nobody): image building must never need root.
# Used by `make test` when it runs as root (as CI does). If the checkout is not reachable by
# that user (a parent directory is private), a readable copy with its own venv is used.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp
           IMGKIT_CACHE="${IMGKIT_CACHE:-/tmp/imgkit-cache}" PATH="$PATH:/usr/sbin:/sbin")
venv=${VENV:-.venv}
chmod -R a+rX "$repo"
if "${as_nobody[@]}" test -x "$repo/$venv/bin/python" -a -r "$repo/pyproject.toml"; then
    cd "$repo"
else
    copy=$(mktemp -d /tmp/imgkit-unprivileged.XXXXXX)
    trap 'rm -rf "$copy"' EXIT
    echo "checkout not reachable by uid 65534: testing a copy in $copy"
    git -C "$repo" ls-files -z | (cd "$repo" && xargs -0 cp --parents -t "$copy")
    "${PYTHON:-python3}" -m venv "$copy/$venv"
    "$copy/$venv/bin/pip" install -q -e "$copy[test]"
    chmod -R a+rX "$copy"
    cd "$copy"
fi
"${as_nobody[@]}" "$venv/bin/python" -m pytest -p no:cacheprovider -q -ra "$@"
