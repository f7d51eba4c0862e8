#!/usr/bin/env bash
# Installs the Debian 12 packages needed to build and test collie (offline
# Bazel, compilers, header-only dependencies, RDMA/MPI development files, the
# tools used by multi-process tests, matplotlib for bench/compare.py's plots,
# and CMake and pkg-config for the consumer projects of tests/consumers/).
# Does nothing when all are present.
set -euo pipefail

packages=(
  bazel-bootstrap
  bazel-platforms
  g++
  clang
  libasio-dev
  doctest-dev
  nlohmann-json3-dev
  libcli11-dev
  libibverbs-dev
  librdmacm-dev
  libopenmpi-dev
  openmpi-bin
  libbenchmark-dev
  iproute2
  iputils-ping
  procps
  python3
  python3-matplotlib
  cmake
  pkgconf
)

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo=()
if ((EUID != 0)); then
  sudo=(sudo)
fi

echo "setup: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
