# shellcheck shell=bash
# Sourced by scripts/test and scripts/serve: make .venv (Python 3.11+) if it is missing and
# install the project into it with the given extra. The install is repeated only when
# pyproject.toml changed since the last one (the install is editable, so code changes
# need none).

ensure_venv() {
  local extra=$1 python="" candidate
  if [ ! -x .venv/bin/python ]; then
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
      if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$candidate
        break
      fi
    done
    if [ -z "$python" ]; then
      echo "Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2
      return 1
    fi
    echo "creating .venv with $python" >&2
    "$python" -m venv .venv
  fi

  local stamp=".venv/.tether-installed-$extra"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing tether[$extra] into .venv" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extra]"
    touch "$stamp"
  fi
}
