#!/usr/bin/env bash
# Builds tessera's container image without Docker, from an existing build and Debian packages,
# and saves it as an OCI archive (a tar of an OCI image layout) that podman, skopeo, containerd
# and registries take. This is how CI builds the image and starts the demo inside it; users with
# Docker and a registry can build deploy/Dockerfile instead: both install /opt/tessera through
# deploy/install-tree.sh and set the image up with deploy/image-setup.sh.
#
#   deploy/build-image.sh [--build DIR] [--out FILE]
#   IMAGE=registry.example.com/tessera:0.2.0 deploy/build-image.sh --out tessera.oci.tar
#   skopeo copy oci-archive:tessera.oci.tar docker://registry.example.com/tessera:0.2.0   # push
#   podman load -i tessera.oci.tar                                                     # or run
#
# Layers:
#   1. Debian 12 (mmdebstrap, variant apt) with the packages of share/tessera/image-packages.txt,
#      the CUDA libraries tessera links (libcudart, libcublasLt, libnccl: copied from the CUDA
#      toolkit this build used, into /usr/local/cuda/lib64; none when built without CUDA), the user
#      tessera (10001). The NVIDIA container toolkit mounts the driver (libcuda) at run time.
#   2. /opt/tessera (deploy/install-tree.sh): the binary, tokenizer data, entrypoint.
# Configuration as the Dockerfile's runtime stage: user 10001, entrypoint tessera-entrypoint,
# command serve, ports 50051/8000/9400/2222, the same environment.
#
# Needs root (mmdebstrap's root mode), mmdebstrap and umoci (Debian packages, in
# scripts/install-deps.sh)
# and network access to a Debian mirror. Downloaded .debs are kept in TESSERA_IMAGE_CACHE
# (default ~/.cache/tessera/image-debs); apt checks each against the mirror's signed index, so the
# cache only saves downloads. TESSERA_DEBIAN_MIRROR replaces mmdebstrap's default mirrors
# (deb.debian.org with bookworm-updates and bookworm-security), e.g. a local mirror's URL.
# IMAGE names the image in the archive (default localhost/tessera:dev): the name `podman load` gives
# it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=build
out=tessera-image.oci.tar
while [[ $# -gt 0 ]]; do
  case $1 in
    --build)
      build=$2
      shift 2
      ;;
    --out)
      out=$2
      shift 2
      ;;
    *)
      echo "usage: $0 [--build DIR] [--out FILE]" >&2
      exit 2
      ;;
  esac
done
image=${IMAGE:-localhost/tessera:dev}
cache=${TESSERA_IMAGE_CACHE:-$HOME/.cache/tessera/image-debs}
log() { echo "build-image: $*" >&2; }

[[ $(id -u) == 0 ]] || {
  log "needs root (mmdebstrap's root mode)"
  exit 2
}
for tool in mmdebstrap umoci cmake; do
  command -v "$tool" >/dev/null || {
    log "$tool missing: run scripts/install-deps.sh"
    exit 2
  }
done
[[ -f $build/CMakeCache.txt ]] || {
  log "$build is not a CMake build directory"
  exit 2
}

work=$(mktemp -d "${TMPDIR:-/tmp}/tessera-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS

# Layer 2 first: the package list comes from the installed binary.
"$here/install-tree.sh" "$build" "$work/tree/opt/tessera"
packages=$(paste -sd, "$work/tree/opt/tessera/share/tessera/image-packages.txt")
log "packages: $packages"

# The CUDA libraries tessera links, and theirs, from wherever the host's loader finds them.
mkdir -p "$work/cuda/usr/local/cuda/lib64" "$work/cuda/etc/ld.so.conf.d"
cuda_lib='^lib(cudart|cublas|cublasLt|nccl)\.so\.[0-9]+$'
queue=("$work/tree/opt/tessera/bin/tessera")
declare -A copied=()
while [[ ${#queue[@]} -gt 0 ]]; do
  object=${queue[0]}
  queue=("${queue[@]:1}")
  while read -r name _ path _; do
    [[ $name =~ $cuda_lib && -z ${copied[$name]:-} ]] || continue
    [[ -f $path ]] || {
      log "$name does not resolve on this machine"
      exit 1
    }
    cp -L "$path" "$work/cuda/usr/local/cuda/lib64/$name"
    copied[$name]=1
    queue+=("$path")
  done < <(ldd "$object")
done
if [[ ${#copied[@]} -gt 0 ]]; then
  echo /usr/local/cuda/lib64 >"$work/cuda/etc/ld.so.conf.d/000-cuda.conf"
  log "CUDA libraries: ${!copied[*]}"
fi

mkdir -p "$cache"
mirrors=()
if [[ -n ${TESSERA_DEBIAN_MIRROR:-} ]]; then read -r -a mirrors <<<"$TESSERA_DEBIAN_MIRROR"; fi
# The cache hooks follow mmdebstrap(1)'s example: debs in before the download, out before cleanup.
# No fsync per file in dpkg: a half-written root filesystem is thrown away anyway. No manuals,
# translations or documentation but the copyright files.
archives="\"\$1/var/cache/apt/archives\"" # expanded by mmdebstrap's hook shell
mmdebstrap --quiet --mode=root --variant=apt --include="$packages" --dpkgopt=force-unsafe-io \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --skip=download/empty --skip=essential/unlink \
  --setup-hook="mkdir -p $archives" \
  --setup-hook="find '$cache' -maxdepth 1 -name '*.deb' -exec cp -t $archives {} +" \
  --customize-hook="find $archives -maxdepth 1 -name '*.deb' -exec cp -u -t '$cache' {} +" \
  --customize-hook="cp -a '$work/cuda/.' '$work/tree/.' \"\$1/\"" \
  --customize-hook="chroot \"\$1\" /opt/tessera/libexec/tessera/image-setup.sh" \
  --customize-hook="mv \"\$1/opt/tessera\" '$work/opt-tessera'" \
  bookworm "$work/rootfs" "${mirrors[@]}"
# mmdebstrap empties /run last; sshd needs its directory there (image-setup.sh made it).
install -d -m 0755 "$work/rootfs/run/sshd"
log "root filesystem in $((SECONDS - start)) s"

oci=$work/oci
umoci init --layout "$oci"
umoci new --image "$oci:$image"
umoci insert --image "$oci:$image" --history.created_by "mmdebstrap bookworm + image-setup.sh" \
  "$work/rootfs" /
umoci insert --image "$oci:$image" --history.created_by "deploy/install-tree.sh" \
  "$work/opt-tessera" /opt/tessera
env_args=()
# As the Dockerfile's runtime stage (ENV there; tests/deploy/oci_image_test.py compares).
for kv in PATH=/opt/tessera/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  OMPI_MCA_btl_vader_single_copy_mechanism=none XDG_CACHE_HOME=/tmp/cache; do
  env_args+=(--config.env "$kv")
done
if [[ ${#copied[@]} -gt 0 ]]; then
  # What the nvidia/cuda base image sets for the NVIDIA container toolkit.
  for kv in NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64; do
    env_args+=(--config.env "$kv")
  done
fi
umoci config --image "$oci:$image" --os linux --architecture amd64 "${env_args[@]}" \
  --config.user 10001 --config.workingdir /home/tessera \
  --config.entrypoint /opt/tessera/bin/tessera-entrypoint --config.cmd serve \
  --config.exposedports 50051/tcp --config.exposedports 8000/tcp --config.exposedports 9400/tcp \
  --config.exposedports 2222/tcp --config.label "org.opencontainers.image.ref.name=$image"
umoci gc --layout "$oci"
tar -C "$oci" -cf "$out.tmp" .
mv "$out.tmp" "$out"
log "$out ($(du -h "$out" | cut -f1), $image) in $((SECONDS - start)) s"
