#!/usr/bin/env bash
# Installs everything IronClaw needs on a Debian 12 host, then builds it.
# Idempotent: a second run only checks and (re)builds what changed.
set -euo pipefail

VHOST_DEVICE_VSOCK_VERSION=0.3.0
# iproute2: the confinement tests list the VMM's network namespace with `ip`.
# python3-venv: the MCP tests' client runs in a virtualenv (target/pyenv).
APT_PACKAGES=(qemu-system-x86 linux-image-cloud-amd64 busybox-static debootstrap e2fsprogs iproute2 python3-venv)
# The microVM guest kernel (scripts/build-kernel.sh, docs/kernel.md): Debian
# 12's kernel sources (the 6.1 line of linux-image-cloud-amd64, which stays
# installed for --kernel) and what building them takes (lz4: the compression
# of the bzImage; libelf-dev: objtool; patch: kernel/patches).
KERNEL_BUILD_PACKAGES=(linux-source-6.1 gcc make libc6-dev bc flex bison libelf-dev lz4 xz-utils patch)
APT_PACKAGES+=("${KERNEL_BUILD_PACKAGES[@]}")

cd "$(dirname "$0")/.."
# Routine steps are quiet under IRONCLAW_SETUP_QUIET (scripts/ironclaw runs
# this before every command); long first-time work always says what it does.
say() { [ -n "${IRONCLAW_SETUP_QUIET:-}" ] || echo "setup: $*" >&2; }
loud() { echo "setup: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  loud "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU 8.2 or later lets clones map their prototype's memory copy-on-write
# (`memory-backend-file,readonly=on,rom=off`; docs/decisions.md). Debian 12
# ships 7.2, so there QEMU comes from bookworm-backports, pinned; elsewhere
# the distribution's QEMU is used as it is (7.2 still works: clones copy).
QEMU_BACKPORTS_VERSION="1:10.0.2+ds-2+deb13u1~bpo12+1"
if grep -q '^VERSION_CODENAME=bookworm$' /etc/os-release 2>/dev/null &&
   [ "$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null)" != "$QEMU_BACKPORTS_VERSION" ]; then
  loud "installing QEMU ${QEMU_BACKPORTS_VERSION} from bookworm-backports (clones share their prototype's memory)"
  if ! grep -rqs '^deb .*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' |
      as_root tee /etc/apt/sources.list.d/ironclaw-bookworm-backports.list >/dev/null
  fi
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports "qemu-system-x86=${QEMU_BACKPORTS_VERSION}" >/dev/null
fi

if ! vhost-device-vsock --version 2>/dev/null | grep -q " ${VHOST_DEVICE_VSOCK_VERSION}\$"; then
  loud "installing vhost-device-vsock ${VHOST_DEVICE_VSOCK_VERSION} (takes about a minute and a half)"
  cargo install --locked --quiet vhost-device-vsock --version "${VHOST_DEVICE_VSOCK_VERSION}"
fi

# The official Python MCP SDK and E2B SDK, pinned, for the MCP and E2B tests
# (real clients against `ironclaw mcp`, `/mcp` and `serve --e2b`): a
# virtualenv of Debian's python3 in target/pyenv, remade only when the pins
# or the interpreter change.
PYENV_REQUIREMENTS=(orchestrator/tests/mcp/requirements.txt orchestrator/tests/e2b/requirements.txt)
pyenv_stamp="$(/usr/bin/python3 --version 2>&1) $(cat "${PYENV_REQUIREMENTS[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat target/pyenv/.ironclaw-stamp 2>/dev/null)" != "$pyenv_stamp" ]; then
  loud "installing the Python MCP and E2B SDKs in target/pyenv (for the MCP and E2B tests)"
  rm -rf target/pyenv
  mkdir -p target
  /usr/bin/python3 -m venv target/pyenv
  for r in "${PYENV_REQUIREMENTS[@]}"; do
    target/pyenv/bin/pip install --quiet --disable-pip-version-check --no-input -r "$r"
  done
  echo "$pyenv_stamp" > target/pyenv/.ironclaw-stamp
fi

# The official E2B JavaScript SDK, pinned by its lockfile, for the E2B test's
# JavaScript session: `npm ci` in target/node-e2b with the machine's Node.js,
# redone only when the lockfile or Node.js change.
NODE_E2B=orchestrator/tests/e2b
if command -v node >/dev/null && command -v npm >/dev/null; then
  node_stamp="$(node --version) $(cat "$NODE_E2B/package.json" "$NODE_E2B/package-lock.json" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat target/node-e2b/.ironclaw-stamp 2>/dev/null)" != "$node_stamp" ]; then
    loud "installing the E2B JavaScript SDK in target/node-e2b (for the E2B test)"
    rm -rf target/node-e2b
    mkdir -p target/node-e2b
    cp "$NODE_E2B/package.json" "$NODE_E2B/package-lock.json" target/node-e2b/
    (cd target/node-e2b && npm ci --silent --no-audit --no-fund)
    echo "$node_stamp" > target/node-e2b/.ironclaw-stamp
  fi
else
  echo "setup: no Node.js (node and npm): the E2B test's JavaScript session will fail" >&2
fi

# The guest agent is /init of every VM: a static executable (no musl target
# is available here; glibc's static-pie works).
if [ -x target/release/ironclaw ]; then
  say "building the guest agent and the ironclaw CLI"
else
  loud "building the guest agent and the ironclaw CLI (the first build takes a few minutes)"
fi
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p ironclaw-guest --target x86_64-unknown-linux-gnu
cargo build --quiet --release -p ironclaw-orchestrator

# The microVM kernel every VM boots by default: built once into the cache,
# keyed by kernel/microvm.config and the source version (later runs only
# check it is there). No fallback: without it the set-up fails here, saying
# what failed and where the log is (Debian's kernel stays usable by hand
# with --kernel /boot/vmlinuz-... or IRONCLAW_KERNEL).
if ! nice -n 10 scripts/build-kernel.sh >/dev/null; then
  echo "setup: could not build the microVM kernel (see above)" >&2
  exit 1
fi

# The guest's userland (Debian minbase + python3, read-only under a per-VM
# overlay): built once into the cache, later runs only check it is current.
# Without it `ironclaw run` still works from the initramfs (busybox only).
if ! target/release/ironclaw image build; then
  echo "setup: could not build the default image (needs debootstrap and Debian's mirror);" \
       "ironclaw run will use the initramfs only, and the image tests will try again" >&2
fi
