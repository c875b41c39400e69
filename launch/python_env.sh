# Sourced by the launch scripts: picks the interpreter and (re)creates the virtual environment.
#   PYTHON=python3.11 ./launch/test.sh    # a given interpreter (default: the newest supported one found)
#   VENV=.venv-py311 ./launch/test.sh     # another environment folder (default .venv)

# find_python 3.X: that interpreter, from PATH or pyenv's installed versions (pyenv's shims exist
# for every installed version but fail unless it is selected, so each candidate is run once).
find_python() {
  local candidate
  for candidate in "python$1" "$(pyenv root 2>/dev/null)"/versions/"$1".*/bin/python"$1"; do
    if "$candidate" -c 'import sys' >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

# The newest supported Python found here.
newest_python() {
  find_python 3.13 || find_python 3.12 || find_python 3.11 || echo python3
}

# ensure_venv INSTALL_SPEC STAMP_NAME: $VENV holds $PYTHON's version with INSTALL_SPEC installed;
# rebuilt when the interpreter's version changed, reinstalled when setup.cfg/pyproject.toml changed.
ensure_venv() {
  local spec="$1" stamp="$VENV/.lama_jax_$2"
  local want have
  want="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [[ -x "$VENV/bin/python" ]]; then
    have="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
    if [[ "$have" != "$want" ]]; then
      echo "== $VENV has Python ${have:-?}, $PYTHON is $want: recreating it" >&2
      rm -rf "$VENV"
    fi
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
  fi
  if [[ ! -f "$stamp" || setup.cfg -nt "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    echo "== installing lama_jax ($spec) into $VENV (Python $want)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$spec"
    touch "$stamp"
  fi
}

PYTHON="${PYTHON:-$(newest_python)}"
VENV="${VENV:-.venv}"
