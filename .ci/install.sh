#!/usr/bin/env bash
# Install everything fasttrain needs, from scratch, idempotently: apt packages (ffcv's build reads
# pkg-config for OpenCV and libturbojpeg), then the third-party packages in a venv keyed by a hash of the
# pinned requirements (shared by every checkout, so a second run or a second clone reuses it), then a small
# venv of this checkout's own, layered on the shared one, that runs this checkout's code. fasttrain itself
# is never installed into the shared venv: two clones must not run each other's code. Prints the
# checkout's venv path on its last (and only) stdout line (the Makefile runs its bin/fasttrain and
# bin/python).
#
# The console (stderr) gets one line per step; apt's and pip's own output goes to a log file under the
# cache directory, whose path is printed when a step fails.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
req="$repo/.ci/requirements.txt"
key=$( (cat "$req"; python3 --version) | sha256sum | cut -c1-16)
cache=${FASTTRAIN_CACHE:-$HOME/.cache/fasttrain}
venv=${FASTTRAIN_VENV:-$cache/venv-$key}
# this checkout's venv: named after the checkout's folder and a hash of its absolute path
checkout_venv=$cache/checkouts/$(basename "$repo")-$(printf %s "$repo" | sha256sum | cut -c1-12)
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

# The shared venv's site-packages (a venv's layout on Linux: lib/pythonX.Y/site-packages).
version_of() { "$1" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")'; }
pyver=$(version_of python3)
shared_site=$venv/lib/$pyver/site-packages
# Earlier versions of this script installed fasttrain editable into the shared venv, pointing at whichever
# checkout ran last: remove it, once (its own site-packages only).
if compgen -G "$shared_site/fasttrain-*.dist-info" >/dev/null; then
  quiet_step "pip: removing fasttrain from the shared venv (each checkout has its own venv now)" \
    "$venv/bin/pip" uninstall -y fasttrain
fi

# This checkout's venv: no packages of its own, only a .pth that puts the checkout first on sys.path (a
# source checkout imports as installed: fasttrain/__init__.py maps pipelines/ and cuda_ext/) and then the
# shared venv's site-packages, and the `fasttrain` command. Rewritten on every run (cheap): it follows the
# shared venv when the requirements change, and the checkout when it moves.
make_checkout_venv() {
  if [[ $(version_of "$checkout_venv/bin/python" 2>/dev/null) != "$pyver" ]]; then  # missing, or another Python
    rm -rf "$checkout_venv"
    python3 -m venv --without-pip "$checkout_venv"
  fi
  local site=$checkout_venv/lib/$pyver/site-packages
  mkdir -p "$site"
  python3 -c 'import sys; print(sys.argv[1]); print(f"import site; site.addsitedir({sys.argv[2]!r})")' \
    "$repo" "$shared_site" >"$site/fasttrain-checkout.pth.tmp"
  mv "$site/fasttrain-checkout.pth.tmp" "$site/fasttrain-checkout.pth"
  # the shared venv's commands (pytest, torchrun, ruff, ...): its Python scripts run by this venv's Python
  # (so they import this checkout), its programs linked
  local script name
  for script in "$venv"/bin/*; do
    name=$(basename "$script")
    case $name in python* | pip* | activate* | Activate* | fasttrain) continue ;; esac
    if [[ $(head -c 2 "$script") == "#!" ]] && head -n 1 "$script" | grep -q "python"; then
      { echo "#!$checkout_venv/bin/python"; tail -n +2 "$script"; } >"$checkout_venv/bin/$name.tmp"
      chmod +x "$checkout_venv/bin/$name.tmp"
      mv "$checkout_venv/bin/$name.tmp" "$checkout_venv/bin/$name"
    else
      ln -sfn "$script" "$checkout_venv/bin/$name"
    fi
  done
  printf '#!%s\nimport sys\nfrom fasttrain.cli import main\nsys.exit(main())\n' "$checkout_venv/bin/python" \
    >"$checkout_venv/bin/fasttrain.tmp"
  chmod +x "$checkout_venv/bin/fasttrain.tmp"
  mv "$checkout_venv/bin/fasttrain.tmp" "$checkout_venv/bin/fasttrain"
}
quiet_step "this checkout's venv $checkout_venv (runs $repo)" make_checkout_venv
echo "$checkout_venv"
