#!/usr/bin/env bash
# Build .venv with a Python that NNabla ships wheels for (3.8-3.10) and install the
# package (editable) with its development extra. Safe to run again: it only redoes
# the install when setup.py changed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
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

want=$(cat setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "Installing nnabla-sgd-influence and its development tools into $venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
    "$venv/bin/python" -m pip install --quiet -e ".[dev]"
    echo "$want" > "$stamp"
fi
