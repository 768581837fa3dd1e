#!/usr/bin/env bash
# Everything a session with a lent H100/H200 needs, in one device call (the device tool runs it
# in the repository root; what lands in $OUT comes back):
#   bash benchmarks/gpu_session.sh            # build, GPU tests, memcheck, GPU benchmarks
#   bash benchmarks/gpu_session.sh tests      # build and GPU tests only
# The machine has nvcc, CMake, nanobind, scikit-build-core, CuPy, PyTorch and pytest, and no
# network: attnkit is built from this checkout without build isolation, into /tmp/site. The
# audio packages of the asr extra and ESPnet (the decode benchmark's PyTorch side) are not there:
# run benchmarks/gpu_wheels.sh here first and name ".whl" in the call's carry; without them the
# tests that need them skip and the decode benchmark is left out, with a note.
set -uo pipefail
OUT=${OUT:-/tmp/attnkit-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
what=${1:-all}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nvcc --version | tail -2
  python3 -c "import cupy, torch; print('cupy', cupy.__version__, 'torch', torch.__version__)"; } 2>&1 | tee "$OUT/machine.txt"

echo "== build"
python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
export PYTHONPATH=/tmp/site
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-extra \
    .whl/*.whl >> "$OUT/build.log" 2>&1 && export PYTHONPATH=/tmp/site:/tmp/site-extra \
    || echo "carried wheels did not install (build.log)"
fi
python3 -m attnkit info | tee -a "$OUT/machine.txt"

echo "== GPU tests, then the CPU SDPA tests as a control"
python3 -m pytest tests/test_cuda_sdpa.py tests/test_cuda_espnet.py tests/test_cuda_decoder.py tests/test_dot_product.py -q \
  -p no:cacheprovider \
  2>&1 | tee "$OUT/tests.log" | tail -25
[ "$what" = tests ] && exit 0

echo "== compute-sanitizer memcheck and racecheck on the GPU tests"
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -m pytest tests/test_cuda_sdpa.py \
    tests/test_cuda_espnet.py -q -x -p no:cacheprovider -k "not graph and not pytorch" > "$OUT/sanitizer-$tool.log" 2>&1
  echo "$tool exit $?"; tail -3 "$OUT/sanitizer-$tool.log"
done

echo "== GPU benchmark"
python3 -m attnkit bench --ops sdpa --backends attnkit-cuda,cupy,torch-cuda --dtype float32,float16 \
  --baseline torch-cuda --no-progress --json "$OUT/gpu-sdpa.json" --markdown "$OUT/gpu-sdpa.md" \
  --plot "$OUT/gpu-plots" > "$OUT/bench.log" 2>&1
echo "bench exit $?"
tail -45 "$OUT/gpu-sdpa.md" 2>/dev/null || tail -30 "$OUT/bench.log"
python3 -m attnkit bench --ops espnet-step --backends attnkit-cuda,torch-cuda --case AttLoc --case AttAdd \
  --baseline torch-cuda --no-progress --json "$OUT/gpu-espnet-step.json" --markdown "$OUT/gpu-espnet-step.md" \
  > "$OUT/bench-espnet.log" 2>&1
echo "espnet bench exit $?"
tail -20 "$OUT/gpu-espnet-step.md" 2>/dev/null || tail -30 "$OUT/bench-espnet.log"
# End to end (needs the asr extra's soundfile, soxr and kaldi-native-fbank; ESPnet for the PyTorch
# side): the carried wheels.
if python3 -c "import soundfile, soxr, kaldi_native_fbank" 2> /dev/null; then
  python3 benchmarks/bench_decode.py --device cuda --out "$OUT/gpu-decode" > "$OUT/bench-decode.log" 2>&1
  echo "decode bench exit $?"
  cat "$OUT/gpu-decode.md" 2>/dev/null || tail -20 "$OUT/bench-decode.log"
  python3 benchmarks/bench_decode.py --device cuda --ctc-weight 0.3 --out "$OUT/gpu-decode-ctc" \
    > "$OUT/bench-decode-ctc.log" 2>&1
  echo "decode bench (ctc 0.3) exit $?"
  cat "$OUT/gpu-decode-ctc.md" 2>/dev/null || tail -20 "$OUT/bench-decode-ctc.log"
else
  echo "decode bench left out: soundfile, soxr or kaldi-native-fbank missing (run benchmarks/gpu_wheels.sh, carry .whl)"
fi
