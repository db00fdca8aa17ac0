#!/usr/bin/env bash
# Installs the Python packages the reference checks use (Hugging Face tokenizers/transformers,
# numpy, jinja2, safetensors) into a virtual environment. The product never needs Python.
# torch is NOT installed here: only tests/golden/make_fixtures.py needs it (see its header).
# Prints the environment's python path on the last line.
set -euo pipefail
venv=${TESSERA_PYENV:-$HOME/.cache/tessera/pyenv}
if [ ! -x "$venv/bin/python3" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python3" -m pip install -q --disable-pip-version-check \
  tokenizers==0.23.3 transformers==5.23.0 jinja2==3.1.6 numpy==2.4.6 safetensors==0.8.0 >&2
echo "$venv/bin/python3"
