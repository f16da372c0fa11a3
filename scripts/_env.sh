# Sourced by the scripts: make (or reuse) the virtual environment and install
# embedws into it with the extras named in $EXTRAS. PYTHON picks the interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: $PYTHON not found (set PYTHON to a Python 3.11+ interpreter)" >&2
    exit 1
fi
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$PYVER" in
    3.1[1-9]) ;;
    *) echo "error: embedws needs Python 3.11 or newer; $PYTHON is $PYVER" >&2; exit 1 ;;
esac
VENV="${VENV:-$ROOT/.venv-$PYVER}"
EXTRAS="${EXTRAS-dev}"  # empty: embedws alone
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.embedws-installed"
HASH="$(sha1sum < "$ROOT/pyproject.toml" | cut -c1-16)"
WANT="$HASH-$EXTRAS"
HAVE="$(cat "$STAMP" 2>/dev/null || true)"
# Any install of this pyproject.toml has what embedws alone needs.
if [ "$HAVE" != "$WANT" ] && { [ -n "$EXTRAS" ] || [ "${HAVE%%-*}" != "$HASH" ]; }; then
    TARGET="$ROOT"
    if [ -n "$EXTRAS" ]; then TARGET="$ROOT[$EXTRAS]"; fi
    # The filter drops pip's noise about package folders this machine lists but
    # lacks; with pipefail, a failing pip still fails the script.
    quiet() { { grep -v "^WARNING: Location" || true; } >&2; }
    "$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | quiet
    "$VENV/bin/python" -m pip install --quiet -e "$TARGET" 2>&1 | quiet
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
