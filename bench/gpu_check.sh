#!/usr/bin/env bash
# nanolit's CUDA paths in one command, for the few minutes a GPU machine is lent (about 5 minutes on one H200):
#   1. pytest -m gpu (tests/test_gpu.py): bf16 autocast forward/backward, torch.compile vs eager, Flash-Attention 3 vs
#      SDPA (where flash_attn_interface imports), FP8 through torch._scaled_mm (tensorwise, rowwise) vs emulation and
#      bf16, and NCCL with 1 and 2 ranks: every collective of nanolit.common, the optimizer's and nanolit_eval's;
#   2. a short d12 base run in bf16 with torch.compile, then the same with --fp8 1: tokens/s and MFU of each;
#   3. 20 midtraining steps from the FP8 run's checkpoint (it inherits --fp8 1, chapter 13).
# Its last line is the headline:  gpu check: <passed>/<total> tests, d12 bf16 <tok/s> (<MFU>% MFU), fp8 <ratio>x
# On a machine without a CUDA GPU only step 1 runs, every test skips, the script says so and exits 0.
#
# The GPU machine has no network and its python3 lacks a few packages. Those the stages import (fastcore, rustbpe) must
# travel as wheels in .whl/ (nbdev, datasets and wandb are not needed: nanolit imports without them); the script
# installs each wheel whose package is missing. On this machine, in the repository's root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl fastcore rustbpe
# then run `bash bench/gpu_check.sh` there with .whl carried along.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
if [ -z "${PYTHON:-}" ]; then if [ -x .venv/bin/python ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi; fi
WORK=$(mktemp -d)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg
export NANOLIT_BASE_DIR=$WORK/nanolit   # a fresh base directory: tokenizer, checkpoints; nothing of the user's is touched
start=$SECONDS
failed=()

if compgen -G ".whl/*.whl" >/dev/null; then
  missing=()
  for whl in .whl/*.whl; do
    "$PYTHON" -m pip show -q "$(basename "$whl" | cut -d- -f1)" >/dev/null 2>&1 || missing+=("$whl")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${#missing[@]} carried wheel(s): ${missing[*]}"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "${missing[@]}" \
      || { echo "gpu check: FAILED: could not install the wheels in .whl/ (see above)"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
  fi
fi
"$PYTHON" -c "import nanolit.base_train, nanolit.midtrain, nanolit.fp8" || {
  echo "gpu check: FAILED: nanolit does not import with $PYTHON (see above): carry the missing packages as wheels in .whl/"
  exit 1; }

echo "== 1/3 pytest -m gpu tests/test_gpu.py"
timeout 240 "$PYTHON" -m pytest -q -m gpu -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$WORK/pytest.log"
summary=$(grep -E '[0-9]+ (passed|failed|skipped|error)' "$WORK/pytest.log" | tail -1)
count() { local n; n=$(grep -oE "[0-9]+ $1" <<<"$summary" | tail -1 | cut -d' ' -f1); echo "${n:-0}"; }
passed=$(count passed); nfailed=$(count failed); skipped=$(count skipped); errors=$(count error)
total=$((passed + nfailed + skipped + errors))
[ "$total" -gt 0 ] && [ $((nfailed + errors)) -eq 0 ] || failed+=("pytest")

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ ${#failed[@]} -eq 0 ] && [ "$skipped" -eq "$total" ]; then
    echo "no CUDA GPU on this machine: all $total GPU tests were skipped and no GPU run was made (the CUDA paths are untested here)"
    echo "gpu check: 0/$total tests, all $total skipped (no CUDA GPU here), no d12 runs"
    exit 0
  fi
  echo "gpu check: FAILED without a GPU: $passed passed, $nfailed failed, $errors errors, $skipped skipped of $total (see above)"
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

echo "== 2/3 d12 base runs: bf16 + torch.compile, then with --fp8 1"
timeout 120 "$PYTHON" -m nanolit.tokenizer --vocab-size 8192 --max-chars 20000000 || failed+=("tokenizer")
BASE=(--depth 12 --max-seq-len 2048 --device-batch-size 32 --total-batch-size 131072 --num-iterations 25 --warmup-steps 5
      --eval-every -1 --compile 1)
timeout 200 "$PYTHON" -m nanolit.base_train "${BASE[@]}" --model-tag d12-bf16 --dry-run 2>&1 | tee "$WORK/bf16.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("d12 bf16")
timeout 200 "$PYTHON" -m nanolit.base_train "${BASE[@]}" --model-tag d12 --fp8 1 2>&1 | tee "$WORK/fp8.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("d12 fp8")

# tokens/s and MFU: medians over the logged steps after the first 5 (compilation, then the warmup's recompiles)
speed() { "$PYTHON" - "$1" <<'EOF'
import re, statistics, sys
rows = [l for l in open(sys.argv[1]) if re.match(r'step \d+/\d+ \(', l)][5:]
tok = [float(re.search(r'\| ([\d,]+) tok/s', l).group(1).replace(',', '')) for l in rows]
mfu = [float(m.group(1)) for l in rows if (m := re.search(r'\| mfu ([\d.]+)%', l))]
print(f"{statistics.median(tok):.0f} {statistics.median(mfu) if mfu else 0:.1f}" if tok else "0 0")
EOF
}
read -r bf16_tok bf16_mfu <<<"$(speed "$WORK/bf16.log")"
read -r fp8_tok fp8_mfu <<<"$(speed "$WORK/fp8.log")"
grep -E '^(fp8: converted|warning: --fp8)' "$WORK/fp8.log" | head -2
echo "d12 bf16: $bf16_tok tok/s ($bf16_mfu% MFU); d12 fp8: $fp8_tok tok/s ($fp8_mfu% of the bf16 peak)"

echo "== 3/3 20 midtraining steps from the FP8 run's checkpoint"
timeout 150 "$PYTHON" -m nanolit.midtrain --model-tag d12 --num-iterations 20 --eval-tokens 131072 --mixture-scale 0.1 \
  2>&1 | tee "$WORK/mid.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("midtraining")

ratio=$("$PYTHON" -c "print(f'{$fp8_tok / $bf16_tok:.2f}' if $bf16_tok > 0 else 'n/a')")
line="gpu check: $passed/$total tests"
[ "$skipped" -gt 0 ] && line+=" ($skipped skipped)"
line+=", d12 bf16 $("$PYTHON" -c "print(f'{$bf16_tok:,.0f}')") tok/s ($bf16_mfu% MFU), fp8 ${ratio}x"
echo "(took $((SECONDS - start)) s; logs in $WORK)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "$line; FAILED: ${failed[*]}"
  exit 1
fi
echo "$line"
