#!/usr/bin/env bash
# tessera-fetch-model: puts a Hugging Face model into a directory once; the optional init container
# of the Kubernetes manifests runs it on the weights volume.
#
#   tessera-fetch-model REPO_ID DIR [REVISION]      e.g. Qwen/Qwen3-14B /models/Qwen3-14B main
#
# A finished download leaves DIR/.tessera-fetched holding "REPO_ID@REVISION"; with that marker in
# place the script does nothing, so a restarted pod does not download again. Pods that start
# together on a shared volume take turns through DIR/.tessera-fetch.lock (flock). Pin REVISION to a
# commit hash for reproducible deployments: a branch name is not re-checked once fetched.
#
# Environment: HF_TOKEN for gated or private models and HF_ENDPOINT for a mirror (read by `hf`);
# TESSERA_FETCH_ARGS adds `hf download` flags, e.g. "--include *.safetensors --include *.json";
# TESSERA_HF is the Hugging Face CLI (default hf).
set -euo pipefail

log() { echo "tessera-fetch-model: $*" >&2; }

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: tessera-fetch-model REPO_ID DIR [REVISION]" >&2
  exit 2
fi
repo=$1
dir=$2
revision=${3:-main}
want="$repo@$revision"
marker=$dir/.tessera-fetched

mkdir -p "$dir"
exec 9>"$dir/.tessera-fetch.lock"
if ! flock -n 9; then
  log "another pod is fetching into $dir; waiting"
  flock 9
fi
if [[ -f $marker && $(<"$marker") == "$want" ]]; then
  log "$dir already holds $want"
  exit 0
fi
rm -f "$marker"
extra=()
if [[ -n ${TESSERA_FETCH_ARGS:-} ]]; then read -r -a extra <<<"$TESSERA_FETCH_ARGS"; fi
log "downloading $want into $dir"
"${TESSERA_HF:-hf}" download "$repo" --revision "$revision" --local-dir "$dir" "${extra[@]}"
if [[ ! -f $dir/config.json ]]; then
  log "$want has no config.json: not a model tessera can serve"
  exit 1
fi
echo "$want" >"$marker.tmp"
mv "$marker.tmp" "$marker"
log "done: $want"
