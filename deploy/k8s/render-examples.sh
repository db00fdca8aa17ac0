#!/usr/bin/env bash
# Renders every configuration in deploy/k8s/examples/ into deploy/k8s/rendered/ (committed; CI
# checks they are current). Needs Python 3 with PyYAML.
#
#   deploy/k8s/render-examples.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-python3}
mkdir -p deploy/k8s/rendered
for values in deploy/k8s/examples/*.yaml; do
  out=deploy/k8s/rendered/$(basename "$values")
  "$python" deploy/k8s/render.py -f "$values" -o "$out"
  echo "$out"
done
