#!/usr/bin/env bash
# Prints, one per line, the distribution packages (dpkg) that hold the shared libraries the given
# executables load directly (their DT_NEEDED entries). The image's build stage runs it on the
# installed tessera and the runtime stage installs exactly that list, so the runtime image follows
# whatever the build linked, on whichever Debian or Ubuntu release the base images use.
#
#   deploy/runtime-packages.sh BINARY...
#
# Libraries the NVIDIA driver brings in at run time (the container toolkit mounts them) are left
# out. So are the CUDA libraries the nvidia/cuda runtime base image ships (CUDA runtime, cuBLAS,
# NCCL): they must resolve here, but no package of ours provides them, and a toolkit installed
# from NVIDIA's tarball or runfile (as on CI machines) is owned by no package at all. Any other
# library that does not resolve, or that no package owns, is an error: the image would not run.
set -euo pipefail

driver_libs=" libcuda.so.1 libnvidia-ml.so.1 "
base_image_lib='^lib(cudart|cublas|cublasLt|nccl)\.so\.[0-9]+$'

[[ $# -gt 0 ]] || {
  echo "usage: $0 BINARY..." >&2
  exit 2
}
status=0
needed=() # "binary<TAB>library<TAB>path" ("" when it does not resolve)
for binary in "$@"; do
  [[ -f $binary ]] || {
    echo "runtime-packages: no such file: $binary" >&2
    exit 2
  }
  declare -A resolved=()
  while read -r first second third _; do
    if [[ $second == "=>" ]]; then
      resolved[$first]=$third
    elif [[ $first == /* ]]; then # the dynamic loader: "/lib64/ld-linux-x86-64.so.2 (0x...)"
      resolved[${first##*/}]=$first
    fi
  done < <(ldd "$binary")
  while read -r name; do
    [[ $driver_libs == *" $name "* ]] && continue
    path=${resolved[$name]:-}
    [[ $path == not ]] && path=
    needed+=("$binary"$'\t'"$name"$'\t'"$path")
  done < <(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  unset resolved
done

# One dpkg query for every spelling of every path: with a merged /usr, dpkg may know a file under
# /lib or /usr/lib, whichever its package used.
declare -A owner=()
candidates=()
for entry in "${needed[@]}"; do
  path=${entry##*$'\t'}
  [[ -n $path ]] || continue
  real=$(readlink -f "$path")
  candidates+=("$path" "$real" "/usr${path#/usr}" "${path#/usr}" "/usr${real#/usr}" "${real#/usr}")
done
while IFS= read -r line; do
  owner[${line#*: }]=${line%%: *}
done < <(dpkg-query -S "${candidates[@]}" 2>/dev/null || true)

packages=()
for entry in "${needed[@]}"; do
  IFS=$'\t' read -r binary name path <<<"$entry"
  if [[ -z $path ]]; then
    echo "runtime-packages: $binary needs $name, which does not resolve" >&2
    status=1
    continue
  fi
  [[ $name =~ $base_image_lib ]] && continue
  real=$(readlink -f "$path")
  package=
  for candidate in "$path" "$real" "/usr${path#/usr}" "${path#/usr}" "/usr${real#/usr}" \
    "${real#/usr}"; do
    package=${owner[$candidate]:-}
    [[ -n $package ]] && break
  done
  if [[ -z $package ]]; then
    echo "runtime-packages: $binary needs $path, which no package owns" >&2
    status=1
    continue
  fi
  packages+=("${package%%:*}") # "libfoo1:amd64" -> "libfoo1"
done
((status == 0)) || exit "$status"
printf '%s\n' "${packages[@]}" | LC_ALL=C sort -u
