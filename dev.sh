#!/usr/bin/env bash
# Set-up and entry points. Each command installs whatever is missing first and is safe to re-run:
#   ./dev.sh demo   - the whole ECLIPSE pipeline end to end on the embedded CIFAR-10 sample
#   ./dev.sh test   - the whole test suite; extra arguments go to pytest, e.g.
#                     ./dev.sh test -m "not slow"   (the quick subset: no DDP, subprocess or harness runs)
#                     ./dev.sh test tests/core      (one layer: core, ffcv, lightning, defenses, harness)
#   ./dev.sh setup  - only the installation
# Installs: Debian packages FFCV needs to build (pkg-config, libturbojpeg, libopencv), a venv in .venv,
# and the package with its [dev] extra. Set ECLIPSE_VENV to use another venv location.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${ECLIPSE_VENV:-.venv}"
PY="$VENV/bin/python"

install_system_packages() {
  if pkg-config --exists libturbojpeg opencv4 2>/dev/null; then return; fi
  echo ">> installing FFCV's build dependencies (apt)"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq pkg-config libturbojpeg0-dev libopencv-dev >/dev/null
}

install_python_packages() {
  [ -x "$PY" ] || { echo ">> creating $VENV"; python3 -m venv "$VENV"; }
  local stamp="$VENV/.eclipse-loader-installed"
  local want; want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "import eclipse_loader, ffcv, torchvision" 2>/dev/null; then
    return
  fi
  echo ">> installing Python packages into $VENV (torch + torchvision CUDA wheels, ~5 GB on first run)"
  "$PY" -m pip install -q --upgrade pip setuptools wheel
  "$PY" -m pip install -q -e .
  # ffcv 1.0.2 is an sdist whose setup.py imports distutils: build it with the venv's setuptools
  "$PY" -m pip install -q --no-build-isolation "ffcv==1.0.2"
  "$PY" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
}

setup() { install_system_packages; install_python_packages; }

case "${1:-}" in
  setup) setup ;;
  demo) setup; shift; exec "$VENV/bin/eclipse-loader" demo "$@" ;;
  test) setup; shift; ECLIPSE_REQUIRE_FFCV=1 exec "$PY" -m pytest -q "$@" ;;
  *) echo "usage: ./dev.sh demo|test|setup [extra args]" >&2; exit 2 ;;
esac
