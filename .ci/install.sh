#!/usr/bin/env bash
# Install everything fasttrain needs, from scratch, idempotently: apt packages (ffcv's build reads
# pkg-config for OpenCV and libturbojpeg), then a venv keyed by a hash of the pinned requirements so
# a second run reuses it. Prints the venv path on its last line.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
req="$repo/.ci/requirements.txt"
key=$( (cat "$req"; python3 --version) | sha256sum | cut -c1-16)
venv=${FASTTRAIN_VENV:-$HOME/.cache/fasttrain/venv-$key}

need_apt=0
for pkg in pkg-config libturbojpeg0-dev libopencv-dev g++ ninja-build; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt=1
done
if [[ $need_apt == 1 ]]; then
  sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
  echo "[install] apt packages" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    pkg-config libturbojpeg0-dev libopencv-dev g++ ninja-build >&2
fi

if [[ ! -f "$venv/.complete" ]]; then
  echo "[install] creating venv $venv" >&2
  rm -rf "$venv.tmp"
  python3 -m venv "$venv.tmp"
  "$venv.tmp/bin/pip" install -q --upgrade pip wheel setuptools >&2
  # numpy first: ffcv's setup.py imports it at build time.
  "$venv.tmp/bin/pip" install -q numpy Cython pkgconfig >&2
  "$venv.tmp/bin/pip" install -q -r "$req" >&2
  rm -rf "$venv"
  mv "$venv.tmp" "$venv"
  # venv scripts hard-code their interpreter path: rewrite it after the rename.
  grep -rlI --null "$venv.tmp" "$venv/bin" | xargs -0 -r sed -i "s#$venv.tmp#$venv#g"
  touch "$venv/.complete"
fi
# The package itself is always (re)installed editable: cheap, and picks up new entry points.
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$repo" >&2
echo "$venv"
