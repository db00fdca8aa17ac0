#!/usr/bin/env bash
# Installs exactly the Debian 12 packages tessera needs to build and test.
# The CUDA toolkit is optional (the build turns the CUDA backend off without it).
# Python packages are only for reference scripts and tests: see scripts/install-test-deps.sh.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git curl openssl
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev
  libopenmpi-dev openmpi-bin
  nlohmann-json3-dev libpcre2-dev libicu-dev libcpp-httplib-dev
  libcli11-dev # command-line flags (launch/cli.h)
  libspdlog-dev # logs with time and level (launch/log.h)
  libgtest-dev libgmock-dev
  clang libclang-rt-14-dev clang-format
  python3 python3-venv python3-pip
  openssh-client # ssh-keygen, for the test of deploy/k8s/make-ssh-secret.sh
  mmdebstrap umoci # deploy/build-image.sh: the container image from Debian packages, offline
)

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
