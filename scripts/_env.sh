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
EXTRAS="${EXTRAS:-dev}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.embedws-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha1sum | cut -c1-16)-$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    # The filter drops pip's noise about package folders this machine lists but
    # lacks; with pipefail, a failing pip still fails the script.
    quiet() { { grep -v "^WARNING: Location" || true; } >&2; }
    "$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | quiet
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]" 2>&1 | quiet
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
