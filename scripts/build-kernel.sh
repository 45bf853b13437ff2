#!/usr/bin/env bash
# Builds IronClaw's microVM guest kernel (see docs/kernel.md) from Debian's
# linux-source-6.1, patched with kernel/patches/*.patch, with
# kernel/microvm.config, into the cache:
#
#   <cache>/kernels/<source version>-<config hash>/{bzImage,vmlinux,config}
#
# <cache> is $IRONCLAW_CACHE_DIR, else $XDG_CACHE_HOME/ironclaw, else
# ~/.cache/ironclaw (what the orchestrator uses, orchestrator/src/cache.rs).
# <config hash> is the SHA-256 (first 16 hex digits) of kernel/microvm.config
# followed by the patches (the config also carries the recipe number of this script: bump it there when a
# change here changes the kernel built); the orchestrator computes the same
# hash to find the kernel (boot::kernel::microvm_config_hash). An existing kernel is not
# rebuilt. The build runs out of tree in a temporary directory; the result is
# staged in the cache and renamed into place, so an interrupted or failed
# build never leaves a directory that counts as a kernel.
#
#   scripts/build-kernel.sh            build unless built; print its bzImage
#   scripts/build-kernel.sh --hash     print the config hash only
set -euo pipefail

cd "$(dirname "$0")/.."
CONFIG=kernel/microvm.config
SOURCE_PACKAGE=linux-source-6.1
SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz
# What this host takes, measured (2 shared cores, nice 10): see docs/kernel.md.
BUILD_MINUTES="5 to 17"

# Applied to Debian's sources in name order (docs/kernel.md).
PATCHES=(kernel/patches/*.patch)

config_hash=$(cat "$CONFIG" "${PATCHES[@]}" | sha256sum | cut -c1-16)
if [ "${1:-}" = "--hash" ]; then
  echo "$config_hash"
  exit 0
fi

fail() { echo "build-kernel: $*" >&2; exit 1; }

source_version=$(dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE" 2>/dev/null) ||
  fail "$SOURCE_PACKAGE is not installed (apt-get install $SOURCE_PACKAGE; scripts/setup.sh does)"
[ -f "$SOURCE_TARBALL" ] || fail "$SOURCE_TARBALL is missing (reinstall $SOURCE_PACKAGE)"

cache=${IRONCLAW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ironclaw}
# The cache holds what the guest boots: the current user's alone (the
# orchestrator refuses a cache others can write).
mkdir -p -m 0700 "$cache"
mkdir -p -m 0700 "$cache/kernels"
dest="$cache/kernels/${source_version}-${config_hash}"
if [ -f "$dest/bzImage" ] && [ -f "$dest/vmlinux" ]; then
  echo "$dest/bzImage"
  exit 0
fi

# One build at a time (two set-ups at once wait for each other).
exec 9>"$cache/kernels/.lock"
flock 9
if [ -f "$dest/bzImage" ] && [ -f "$dest/vmlinux" ]; then
  echo "$dest/bzImage"
  exit 0
fi

log="$cache/kernels/build-${source_version}-${config_hash}.log"
work=$(mktemp -d "${TMPDIR:-/tmp}/ironclaw-kernel.XXXXXX")
stage=""
cleanup() {
  rm -rf "$work"
  [ -z "$stage" ] || rm -rf "$stage"
}
trap cleanup EXIT

echo "setup: building the microVM kernel (Linux $source_version, config $config_hash;" \
     "takes $BUILD_MINUTES min here, by load; log: $log)" >&2
start=$(date +%s)
: >"$log"
step() {
  local what=$1
  shift
  echo "== $what" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    echo "build-kernel: $what failed; the end of $log:" >&2
    tail -n 30 "$log" >&2
    fail "the microVM kernel was not built ($what failed; full log: $log)"
  fi
}

step "unpacking $SOURCE_TARBALL" tar -xJf "$SOURCE_TARBALL" -C "$work"
src="$work/linux-source-6.1"
[ -f "$src/Makefile" ] || fail "$SOURCE_TARBALL has no linux-source-6.1/Makefile"
for p in "${PATCHES[@]}"; do
  step "applying $p" patch -d "$src" -p1 --forward --batch -i "$PWD/$p"
done
mkdir "$work/out"
cp "$CONFIG" "$work/microvm.config"
step "configuring (make allnoconfig with $CONFIG)" \
  make -C "$src" O="$work/out" KCONFIG_ALLCONFIG="$work/microvm.config" allnoconfig

# kconfig drops an option whose dependencies are not met without a word:
# every option the fragment sets must be in the result as set.
missing=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF -- "$line" "$work/out/.config" || missing+=("$line") ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }; opt=${opt%% *}
      ! grep -q "^${opt}=" "$work/out/.config" || missing+=("$line") ;;
  esac
done <"$CONFIG"
if [ ${#missing[@]} -gt 0 ]; then
  printf '%s\n' "options of $CONFIG not in the resulting .config:" "${missing[@]}" >>"$log"
  fail "$CONFIG asks for options the kernel configuration did not take" \
       "(unmet dependencies?): ${missing[*]} (log: $log)"
fi

jobs=$(nproc)
step "compiling (make -j$jobs bzImage)" \
  make -C "$src" O="$work/out" -j"$jobs" KBUILD_BUILD_USER=ironclaw KBUILD_BUILD_HOST=ironclaw bzImage

stage=$(mktemp -d "$cache/kernels/.stage.XXXXXX")
cp "$work/out/arch/x86/boot/bzImage" "$stage/bzImage"
cp "$work/out/vmlinux" "$stage/vmlinux"
cp "$work/out/.config" "$stage/config"
echo "$source_version" >"$stage/source-version"
chmod 0644 "$stage"/*
chmod 0755 "$stage"
# The rename makes the kernel visible only once complete.
mv -T "$stage" "$dest"
stage=""
echo "setup: built the microVM kernel in $(( $(date +%s) - start )) s: $dest" >&2
echo "$dest/bzImage"
