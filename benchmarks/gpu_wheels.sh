#!/usr/bin/env bash
# Fetches, on this machine, the wheels that the lent GPU machine lacks (it has no network; its
# image holds CuPy, PyTorch, nanobind and the build tools, but not the asr extra's audio packages
# nor ESPnet): into .whl/ (git-ignored), which the device call carries and gpu_session.sh installs.
#   bash benchmarks/gpu_wheels.sh      # ~4.5 MB; then run gpu_session.sh with carry [".whl"]
# The device's python3 is CPython 3.12 on manylinux x86-64 (/work/.library/device/KINDS.md).
# ESPnet comes without its dependencies: its RNN decoders and attentions import only torch, and
# they are all that the decode benchmark's PyTorch side uses.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl soundfile==0.14.0 cffi==2.0.0 pycparser==3.0 kaldi-native-fbank==1.22.5 soxr==1.1.0 espnet==202511
ls -l .whl
