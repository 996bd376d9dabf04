#!/usr/bin/env bash
# CI has no GPU: runs kernels/kquant.ptx in kernels/kquant_emu.py (an emulator of the PTX it
# uses, with the GPU's NaN and alignment rules) on the edge cases examples/kquant-cases.rs
# writes, and compares every block with the CPU encoder's. Needs a python3 with numpy
# ($PYTHON, default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
cases="$(mktemp -d)"
trap 'rm -rf "$cases"' EXIT
cargo run --release --quiet --example kquant-cases -- "$cases"
"$PYTHON" kernels/kquant_emu.py "$cases"
