#!/usr/bin/env bash
# The GPU check from a copy of this repository (lorabench need not be installed):
#   bash benchmarks/gpu_check.sh OUT_DIR [gpu_check.py flags, e.g. --bnb-wheel PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [flags]}"
shift
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec python benchmarks/gpu_check.py --out "$out" "$@"
