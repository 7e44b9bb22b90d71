#!/usr/bin/env bash
# One entry point that sets up a fresh Debian machine and runs the project:
#   bash scripts/run.sh demo [digits demo options]   the main job: a demo batch through queue, worker, database
#   bash scripts/run.sh test [pytest options]        ruff, mypy, then the test suite (chromium for the station)
# Set-up is idempotent: Debian packages only when their binaries are missing, the virtualenv (.venv)
# only when pyproject.toml changed since it was last installed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  local missing=()
  for pair in "$@"; do
    local bin=${pair%%:*} pkg=${pair#*:}
    compgen -G "$bin" >/dev/null || command -v "$bin" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
}

python_bin() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
      echo "$candidate"; return 0
    fi
  done
  echo "Python 3.11 or newer is required" >&2; exit 1
}

setup_venv() {
  local py stamp want
  py=$(python_bin)
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv 2>/dev/null || { apt_install "/nonexistent:python3-venv"; rm -rf .venv; "$py" -m venv .venv; }
  fi
  stamp=.venv/.digits-installed
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing the project and its dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev]"
    echo "$want" > "$stamp"
  fi
}

default_mnist() {
  if [ -z "${DIGITS_MNIST_DIR:-}" ] && [ -d "$root/../shared/datasets/mnist" ]; then
    export DIGITS_MNIST_DIR="$root/../shared/datasets/mnist"
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    apt_install "redis-server:redis-server"
    setup_venv
    default_mnist
    exec .venv/bin/digits demo "$@"
    ;;
  test)
    # chromium and chromium-driver: the review station's tests drive a real headless browser.
    apt_install "redis-server:redis-server" "/usr/lib/postgresql/*/bin/initdb:postgresql" \
      "docker-compose:docker-compose" "chromium:chromium" "chromedriver:chromium-driver"
    setup_venv
    default_mnist
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy  # model/ and worker/, configured in pyproject.toml
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: bash scripts/run.sh demo|test [options]" >&2
    exit 2
    ;;
esac
