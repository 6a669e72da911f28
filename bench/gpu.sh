#!/usr/bin/env bash
# he2gene on a real GPU machine without network (issue 13, item 7): unpack what ../shared/tools/gpu/prep.sh
# packed into .gpu/ (Deno, the Vulkan loader), then print the adapter, run the kernel self-test, tune and
# the benchmark (matmul, conv layers, ResNet-50 inference at batch 1/8/32, a training step at 2/32), each step timed
# and logged; a failing step does not stop the next ones; a summary ends the run.
#
# Usage (from the project's root, with .gpu/ and node_modules/ copied along with the working tree):
#   bash bench/gpu.sh [--quick]
#     --quick   selftest --quick, bench --quick (fewer shapes and repetitions)
# Environment:
#   HE2GENE_GPU_SKIP_UNPACK=1   use the deno on PATH and the installed Vulkan loader (no .gpu/ needed;
#                               e.g. to try the script on a machine without a GPU)
#   VK_DRIVER_FILES             the Vulkan ICD (default: NVIDIA's, as prep.sh says, when that file exists)
#   HE2GENE_GPU_LOGS            folder of the logs (default: $OUT/he2gene-gpu if $OUT is set, else
#                               /tmp/he2gene-gpu-<time>)
#   HE2GENE_GPU_STEP_TIMEOUT    seconds each step may run (default 1800)
#   HE2GENE_GPU_BENCH_ARGS      extra arguments for `deno task bench` (e.g. "--no-peer")
# Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail

quick=0
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    -h | --help)
      sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "gpu.sh: unknown argument '$arg' (expected --quick)" >&2
      exit 2
      ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
[[ -f deno.json && -f cli/main.ts ]] || { echo "gpu.sh: $root is not the he2gene project" >&2; exit 1; }

# ------------------------------------------------------------------------------------ unpack (prep.sh)
if [[ ${HE2GENE_GPU_SKIP_UNPACK:-0} == 1 ]]; then
  echo "gpu.sh: HE2GENE_GPU_SKIP_UNPACK=1: using $(command -v deno || echo 'no deno on PATH') and the installed Vulkan loader"
else
  [[ -s .gpu/deno.xz ]] || { echo "gpu.sh: .gpu/deno.xz is missing: run ../shared/tools/gpu/prep.sh and copy .gpu/ along" >&2; exit 1; }
  shopt -s nullglob
  debs=(.gpu/*.deb)
  shopt -u nullglob
  ((${#debs[@]})) || { echo "gpu.sh: no .gpu/*.deb (the Vulkan loader): run prep.sh again" >&2; exit 1; }
  for f in "${debs[@]}"; do dpkg -x "$f" / || { echo "gpu.sh: cannot unpack $f (needs root)" >&2; exit 1; }; done
  ldconfig
  xz -dc .gpu/deno.xz > /usr/local/bin/deno && chmod +x /usr/local/bin/deno || {
    echo "gpu.sh: cannot write /usr/local/bin/deno (needs root)" >&2
    exit 1
  }
  export PATH="/usr/local/bin:$PATH"
  nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [[ -z ${VK_DRIVER_FILES:-} && -f $nvidia_icd ]]; then export VK_DRIVER_FILES=$nvidia_icd; fi
  export DENO_WEBGPU_BACKEND=${DENO_WEBGPU_BACKEND:-vulkan}
fi
command -v deno > /dev/null || { echo "gpu.sh: no deno on PATH" >&2; exit 1; }
[[ -d node_modules ]] || echo "gpu.sh: warning: node_modules/ is missing; the benchmark's peer (tfjs-webgpu) and npm imports need it" >&2
export DENO_NO_UPDATE_CHECK=1 NO_COLOR=1

stamp=$(date -u +%Y%m%dT%H%M%SZ)
logs=${HE2GENE_GPU_LOGS:-${OUT:+$OUT/he2gene-gpu}}
logs=${logs:-/tmp/he2gene-gpu-$stamp}
mkdir -p "$logs" || exit 1
step_timeout=${HE2GENE_GPU_STEP_TIMEOUT:-1800}
echo "gpu.sh: $(date -u), deno $(deno --version | head -n 1 | cut -d' ' -f2), logs in $logs"
echo "gpu.sh: DENO_WEBGPU_BACKEND=${DENO_WEBGPU_BACKEND:-} VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"

# ------------------------------------------------------------------------------------ steps
names=() codes=() secs=()

# run_step NAME COMMAND…: run with a timeout, output to the terminal and to $logs/NAME.log, record status.
run_step() {
  local name=$1
  shift
  echo
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=30 "$step_timeout" "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  local dt=$((SECONDS - t0))
  ((rc == 124)) && echo "=== $name: timed out after ${step_timeout}s"
  echo "=== $name: exit $rc after ${dt}s"
  names+=("$name") codes+=("$rc") secs+=("$dt")
}

q=()
((quick)) && q=(--quick)

run_step info deno task he2gene info
if grep -qi "software adapter" "$logs/info.log"; then
  echo "gpu.sh: warning: the adapter is a software one (llvmpipe?), not the GPU: check VK_DRIVER_FILES" >&2
fi
run_step selftest deno task he2gene selftest "${q[@]}"
run_step tune deno task he2gene tune "${q[@]}"
# ResNet-50 inference at batch 1/8/32 and a training step at batch 32 (issue 13, item 7), defaults and the
# table just tuned side by side; the layers suite shows each conv's variant and GFLOP/s.
batches=(--resnet-batches 1,8,32 --train-batches 2,32)
((quick)) && batches=(--resnet-batches 1,32 --train-batches 32)
# shellcheck disable=SC2086 # HE2GENE_GPU_BENCH_ARGS is a list of words
run_step bench deno task bench --suite matmul,layers,resnet,train --reps 3 "${batches[@]}" "${q[@]}" ${HE2GENE_GPU_BENCH_ARGS:-}

# ------------------------------------------------------------------------------------ summary
echo
echo "=== summary ($(date -u), logs in $logs)"
adapter=$(grep -m1 '^adapter:' "$logs/info.log" 2> /dev/null || true)
backend=$(grep -m1 '^backend:' "$logs/info.log" 2> /dev/null || true)
echo "${adapter:-adapter: unknown}; ${backend:-backend: unknown}"
printf '%-10s %-8s %8s  %s\n' step status seconds note
failed=0
for i in "${!names[@]}"; do
  name=${names[$i]} rc=${codes[$i]} note=""
  status=ok
  if ((rc != 0)); then
    status="FAIL($rc)"
    failed=1
  fi
  note="$logs/$name.log"
  if [[ $name == selftest ]]; then note=$(grep -E '^selftest: [0-9]+ passed' "$logs/selftest.log" | tail -n 1); fi
  printf '%-10s %-8s %8s  %s\n' "$name" "$status" "${secs[$i]}" "$note"
done
exit $failed
