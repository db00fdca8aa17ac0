#!/usr/bin/env bash
# Run once as root inside the image's root filesystem, after the packages of
# /opt/tessera/share/tessera/image-packages.txt are installed: the Dockerfile's runtime stage and
# deploy/build-image.sh both call it, so both images end up set up alike.
#
# It adds the user tessera (uid/gid 10001: numeric, so runAsNonRoot can check it), removes the ssh
# host keys the package generated (workers use the one from the Kubernetes Secret), creates sshd's
# privilege-separation directory, refreshes the loader cache and fails if any library of tessera
# does not resolve (except the driver's, which the NVIDIA container toolkit mounts at run time).
set -euo pipefail

rm -f /etc/ssh/ssh_host_*
mkdir -p /run/sshd
if ! getent passwd tessera >/dev/null; then
  groupadd --gid 10001 tessera
  useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash tessera
fi
ldconfig
missing=$(ldd /opt/tessera/bin/tessera | grep -v -e libcuda.so -e libnvidia-ml.so |
  grep 'not found' || true)
if [[ -n $missing ]]; then
  echo "image-setup: tessera's libraries do not all resolve:" >&2
  echo "$missing" >&2
  exit 1
fi
