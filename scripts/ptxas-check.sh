#!/usr/bin/env bash
# Assembles every kernels/*.ptx with ptxas for sm_80 and sm_90, so a broken kernel fails CI on a
# machine with no GPU. ptxas comes from NVIDIA's `nvidia-cuda-nvcc` wheel on PyPI (pip download +
# unzip; cached under target/ptxas). Also: the files are ASCII (the driver's JIT refused a
# non-ASCII comment) and lora_merge.ptx and kquant.ptx equal what kernels/unroll.py and
# kernels/kquant.py write.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NVCC_WHEEL_VERSION="${NVCC_WHEEL_VERSION:-13.5.37}"
dir="${PTXAS_DIR:-target/ptxas}"
ptxas="$dir/nvidia/cu13/bin/ptxas"
if [ ! -x "$ptxas" ]; then
    mkdir -p "$dir"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        -d "$dir" "nvidia-cuda-nvcc==$NVCC_WHEEL_VERSION"
    unzip -q -o "$dir"/nvidia_cuda_nvcc-*.whl 'nvidia/cu13/bin/ptxas' -d "$dir"
    chmod +x "$ptxas"
fi
"$ptxas" --version | tail -n 1
python3 kernels/unroll.py --check
python3 kernels/kquant.py --check
for f in kernels/*.ptx; do
    if LC_ALL=C grep -n '[^[:print:][:space:]]' "$f"; then
        echo "ptxas-check: $f: non-ASCII bytes (the driver's JIT may refuse them)" >&2
        exit 1
    fi
    for arch in sm_80 sm_90; do
        "$ptxas" -arch="$arch" -v -o /dev/null "$f" 2>&1 \
            | sed -n "s/^ptxas info *: Function properties for \(.*\)/\1 ($arch):/p; s/^ptxas info *: Used \(.*\)/    used \1/p; s/^ *\([0-9]* bytes stack frame.*\)/    \1/p"
        "$ptxas" -arch="$arch" -o /dev/null "$f"
    done
    echo "ptxas-check: $f: ok (sm_80, sm_90)"
done
