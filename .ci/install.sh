#!/usr/bin/env bash
# Install everything fasttrain needs, from scratch, idempotently: apt packages (ffcv's build reads
# pkg-config for OpenCV and libturbojpeg), then a venv keyed by a hash of the pinned requirements so
# a second run reuses it. Prints the venv path on its last (and only) stdout line.
#
# The console (stderr) gets one line per step; apt's and pip's own output goes to a log file under the
# cache directory, whose path is printed when a step fails.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
req="$repo/.ci/requirements.txt"
key=$( (cat "$req"; python3 --version) | sha256sum | cut -c1-16)
cache=${FASTTRAIN_CACHE:-$HOME/.cache/fasttrain}
venv=${FASTTRAIN_VENV:-$cache/venv-$key}
mkdir -p "$cache"
log="$cache/install.log"
: >"$log"

# step "what" command...: one console line, the command's output appended to the log; stop on failure.
step() {
  local what=$1
  shift
  echo "[install] $what" >&2
  quiet_step "$what" "$@"
}

# quiet_step "what" command...: as step, but silent unless it fails (for what runs on every call).
quiet_step() {
  local what=$1
  shift
  printf '\n=== %s: %s\n' "$(date -u +%FT%TZ)" "$what" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    echo "[install] failed: $what; the full output is in $log (tail -n 50 $log)" >&2
    exit 1
  fi
}

apt_packages=(pkg-config libturbojpeg0-dev libjpeg62-turbo-dev libopencv-dev g++ ninja-build)
apt_install() {
  local sudo=""
  [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
}

need_apt=0
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt=1
done
if [[ $need_apt == 1 ]]; then
  step "apt packages: ${apt_packages[*]}" apt_install
fi

if [[ ! -f "$venv/.complete" ]]; then
  rm -rf "$venv.tmp"
  step "creating venv $venv" python3 -m venv "$venv.tmp"
  step "pip: pip, wheel, setuptools" "$venv.tmp/bin/pip" install --upgrade pip wheel setuptools
  # numpy first: ffcv's setup.py imports it at build time.
  step "pip: numpy, Cython, pkgconfig (ffcv's build needs them first)" \
    "$venv.tmp/bin/pip" install numpy Cython pkgconfig
  step "pip: pinned requirements (torch, DALI, ffcv, ...; several minutes)" "$venv.tmp/bin/pip" install -r "$req"
  rm -rf "$venv"
  mv "$venv.tmp" "$venv"
  # venv scripts hard-code their interpreter path: rewrite it after the rename.
  grep -rlI --null "$venv.tmp" "$venv/bin" | xargs -0 -r sed -i "s#$venv.tmp#$venv#g"
  touch "$venv/.complete"
fi
# The package itself is always (re)installed editable: cheap, and picks up new entry points.
quiet_step "pip: fasttrain itself (editable)" "$venv/bin/pip" install --no-deps --no-build-isolation -e "$repo"
echo "$venv"
