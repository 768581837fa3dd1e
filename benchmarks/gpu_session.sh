#!/usr/bin/env bash
# What a session with a lent H100/H200 runs, in stages that each fit one device call (a call may
# run 600 s; the device tool runs this in the repository root, and what lands in $OUT comes back):
#   bash benchmarks/gpu_session.sh check    # build, GPU tests, compute-sanitizer  (~5 min)
#   bash benchmarks/gpu_session.sh bench    # build, GPU benchmarks with plots     (~6 min)
#   bash benchmarks/gpu_session.sh tests    # build and GPU tests only
#   bash benchmarks/gpu_session.sh all      # check, then bench (over 600 s: only on a longer limit)
# The machine has nvcc, CMake, nanobind, scikit-build-core, CuPy, PyTorch and pytest, and no
# network: attnkit is built from this checkout without build isolation into build/gpu-site (kept
# while the machine stays warm between calls; rebuilt when a source file changed). The audio
# packages of the asr extra and ESPnet (the decode benchmark's PyTorch side) are not there: run
# benchmarks/gpu_wheels.sh here first and name ".whl" in the call's carry; without them the tests
# that need them skip and the decode benchmark is left out, with a note. Each step has a time cap,
# so one slow step cannot take the whole call; a step that hits it says so.
set -uo pipefail
OUT=${OUT:-/tmp/attnkit-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
what=${1:-check}
case "$what" in check|bench|tests|all) ;; *) echo "usage: $0 [check|bench|tests|all]"; exit 2;; esac

capped() {  # capped SECONDS LOG CMD...: runs CMD with its output in LOG, says how it ended
  local limit=$1 log=$2; shift 2
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "  (stopped at its ${limit} s cap; $log has what it did)"
  return $rc
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nvcc --version | tail -2
  python3 -c "import cupy, torch; print('cupy', cupy.__version__, 'torch', torch.__version__)"; } 2>&1 | tee "$OUT/machine.txt"

echo "== build"
site=build/gpu-site
stamp=$(find CMakeLists.txt pyproject.toml src python -type f -not -name '*.pyc' -print0 | sort -z | xargs -0 sha1sum \
  | sha1sum | cut -c1-16)
if [ "$(cat "$site/.stamp" 2> /dev/null)" != "$stamp" ]; then
  rm -rf "$site"
  python3 -m pip install -q --no-build-isolation --no-deps --target "$site" . > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
  echo "$stamp" > "$site/.stamp"
else
  echo "  (reusing the build of this source, $stamp)"
fi
export PYTHONPATH=$PWD/$site
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-extra \
    .whl/*.whl >> "$OUT/build.log" 2>&1 && export PYTHONPATH=$PYTHONPATH:/tmp/site-extra \
    || echo "carried wheels did not install (build.log)"
fi
python3 -m attnkit info | tee -a "$OUT/machine.txt"

run_tests() {
  echo "== GPU tests, then the CPU SDPA tests as a control"
  capped 300 "$OUT/tests.log" python3 -m pytest tests/test_cuda_sdpa.py tests/test_cuda_espnet.py \
    tests/test_cuda_decoder.py tests/test_dot_product.py -q -p no:cacheprovider
  echo "tests exit $?"; tail -25 "$OUT/tests.log"
  # This project's own machines have no AVX-512, so its kernels' AVX-512 build has only been run
  # as the 'wide16' stand-in (the same tiles in AVX2 code); a GPU host's CPU usually has it.
  if python3 -c "import sys; from attnkit import _core; sys.exit('avx512' not in _core.supported_isas())"; then
    echo "== the CPU kernel tests on this host's AVX-512"
    capped 200 "$OUT/tests-avx512.log" python3 -m pytest tests -q -p no:cacheprovider -k avx512
    echo "avx512 tests exit $?"; tail -5 "$OUT/tests-avx512.log"
  else
    echo "(this host's CPU has no AVX-512: the AVX-512 kernel tests stay unrun)"
  fi
}

run_sanitizers() {
  echo "== compute-sanitizer memcheck and racecheck on the GPU kernels' tests"
  for tool in memcheck racecheck; do
    capped 100 "$OUT/sanitizer-$tool.log" compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -m pytest \
      tests/test_cuda_sdpa.py tests/test_cuda_espnet.py -q -x -p no:cacheprovider -k "not graph and not pytorch"
    echo "$tool exit $?"; tail -3 "$OUT/sanitizer-$tool.log"
  done
}

run_benchmarks() {
  echo "== GPU benchmarks"
  capped 200 "$OUT/bench.log" python3 -m attnkit bench --ops sdpa --backends attnkit-cuda,cupy,torch-cuda \
    --dtype float32,float16 --baseline torch-cuda --no-progress --json "$OUT/gpu-sdpa.json" \
    --markdown "$OUT/gpu-sdpa.md" --plot "$OUT/gpu-plots"
  echo "sdpa bench exit $?"
  tail -45 "$OUT/gpu-sdpa.md" 2> /dev/null || tail -30 "$OUT/bench.log"
  capped 80 "$OUT/bench-espnet.log" python3 -m attnkit bench --ops espnet-step --backends attnkit-cuda,torch-cuda \
    --case AttLoc --case AttAdd --baseline torch-cuda --no-progress --json "$OUT/gpu-espnet-step.json" \
    --markdown "$OUT/gpu-espnet-step.md"
  echo "espnet bench exit $?"
  tail -20 "$OUT/gpu-espnet-step.md" 2> /dev/null || tail -30 "$OUT/bench-espnet.log"
  # End to end (needs the asr extra's soundfile, soxr and kaldi-native-fbank; ESPnet for the
  # PyTorch side): the carried wheels.
  if python3 -c "import soundfile, soxr, kaldi_native_fbank" 2> /dev/null; then
    for ctc in 0.0 0.3; do
      capped 100 "$OUT/bench-decode-ctc$ctc.log" python3 benchmarks/bench_decode.py --device cuda \
        --ctc-weight "$ctc" --out "$OUT/gpu-decode-ctc$ctc"
      echo "decode bench (ctc_weight $ctc) exit $?"
      cat "$OUT/gpu-decode-ctc$ctc.md" 2> /dev/null || tail -20 "$OUT/bench-decode-ctc$ctc.log"
    done
  else
    echo "decode bench left out: soundfile, soxr or kaldi-native-fbank missing (run benchmarks/gpu_wheels.sh, carry .whl)"
  fi
}

case "$what" in
  tests) run_tests ;;
  check) run_tests; run_sanitizers ;;
  bench) run_benchmarks ;;
  all) run_tests; run_sanitizers; run_benchmarks ;;
esac
