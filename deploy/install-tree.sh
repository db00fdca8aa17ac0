#!/usr/bin/env bash
# Installs tessera's part of the container image, /opt/tessera, from a CMake build directory. Both
# ways of building the image run exactly this: the Dockerfile's build stage (from its own build) and
# deploy/build-image.sh (from an existing build, offline), so both images hold the same files
# (tests/deploy/oci_image_test.py compares them).
#
#   deploy/install-tree.sh BUILD_DIR PREFIX        e.g. deploy/install-tree.sh build /opt/tessera
#
# PREFIX gets:
#   bin/tessera, share/tessera/qwen3-tokenizer/   the CMake install rules (stripped)
#   bin/tessera-entrypoint                        deploy/entrypoint.sh
#   libexec/tessera/image-setup.sh                deploy/image-setup.sh, run once in the image
#   share/tessera/image-packages.txt              the distribution packages the image needs:
#                                                 those owning tessera's libraries
#                                                 (deploy/runtime-packages.sh), Open MPI, ssh
set -euo pipefail

[[ $# -eq 2 ]] || {
  echo "usage: $0 BUILD_DIR PREFIX" >&2
  exit 2
}
build=$1
prefix=$2
here=$(cd "$(dirname "$0")" && pwd)

cmake --install "$build" --prefix "$prefix" --strip >/dev/null
install -D -m 0755 "$here/entrypoint.sh" "$prefix/bin/tessera-entrypoint"
install -D -m 0755 "$here/image-setup.sh" "$prefix/libexec/tessera/image-setup.sh"
packages=$("$here/runtime-packages.sh" "$prefix/bin/tessera")
# openssh-server: workers of a multi-node group run sshd (non-root, port 2222) for mpirun.
printf '%s\n' "$packages" openmpi-bin openssh-client openssh-server | LC_ALL=C sort -u \
  >"$prefix/share/tessera/image-packages.txt"
