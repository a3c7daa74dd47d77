#!/usr/bin/env bash
# Build a virtual environment with a Python that NNabla ships wheels for (3.8-3.10).
#
#   scripts/bootstrap.sh          .venv: the package (editable) with its development extra
#   scripts/bootstrap.sh oldest   .venv-oldest: scripts/oldest-requirements.txt only (the oldest
#                                 supported nnabla and dependencies), without the package
#
# Safe to run again: it only reinstalls when setup.py (or the requirements file) changed.
set -euo pipefail
cd "$(dirname "$0")/.."

kind=${1:-dev}
case "$kind" in
    dev) venv=.venv; spec=setup.py ;;
    oldest) venv=.venv-oldest; spec=scripts/oldest-requirements.txt ;;
    *) echo "usage: $0 [oldest]" >&2; exit 2 ;;
esac
stamp="$venv/.installed-setup-hash"

supported() { "$1" -c 'import sys; sys.exit(0 if (3, 8) <= sys.version_info[:2] <= (3, 10) else 1)' 2>/dev/null; }

find_python() {
    if [ -n "${NNSI_PYTHON:-}" ]; then
        supported "$NNSI_PYTHON" && { echo "$NNSI_PYTHON"; return; }
        echo "NNSI_PYTHON=$NNSI_PYTHON is not a Python 3.8-3.10 interpreter" >&2; return 1
    fi
    local c
    for c in python3.10 python3.9 python3.8; do
        if command -v "$c" >/dev/null 2>&1 && supported "$(command -v "$c")"; then command -v "$c"; return; fi
    done
    local root="${PYENV_ROOT:-}"
    [ -z "$root" ] && command -v pyenv >/dev/null 2>&1 && root="$(pyenv root)"
    [ -z "$root" ] && root="$HOME/.pyenv"
    for c in $(ls -d "$root"/versions/3.10.* "$root"/versions/3.9.* "$root"/versions/3.8.* 2>/dev/null | sort -rV); do
        if [ -x "$c/bin/python" ] && supported "$c/bin/python"; then echo "$c/bin/python"; return; fi
    done
    return 1
}

if [ ! -x "$venv/bin/python" ] || ! supported "$venv/bin/python"; then
    py=$(find_python) || {
        echo "error: no Python 3.8-3.10 found (NNabla has no wheels for newer versions)." >&2
        echo "Install one, e.g. 'pyenv install 3.10' or 'apt-get install python3.10-venv'," >&2
        echo "or point NNSI_PYTHON at it." >&2
        exit 1
    }
    echo "Creating $venv with $py ($("$py" --version 2>&1))"
    rm -rf "$venv"
    "$py" -m venv "$venv"
fi

want=$(cat "$spec" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
    if [ "$kind" = dev ]; then
        echo "Installing nnabla-sgd-influence and its development tools into $venv"
        "$venv/bin/python" -m pip install --quiet -e ".[dev]"
    else
        echo "Installing the oldest supported nnabla and dependencies into $venv"
        # Wheels only: a pin without a wheel for this Python fails here instead of compiling.
        "$venv/bin/python" -m pip install --quiet --only-binary=:all: -r "$spec"
        # It stands for NNC's Python: nnabla, but not this package.
        if (cd / && "$venv/bin/python" -c 'import nnabla_sgd_influence' 2>/dev/null); then
            echo "error: $venv has nnabla-sgd-influence installed; remove $venv and run again" >&2
            exit 1
        fi
    fi
    echo "$want" > "$stamp"
fi
