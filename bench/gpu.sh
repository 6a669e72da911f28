#!/usr/bin/env bash
# he2gene on a real GPU machine without network (issue 13, item 7): unpack what ../shared/tools/gpu/prep.sh
# packed into .gpu/ (Deno, the Vulkan loader), then print the adapter, run the kernel self-test, tune and
# the benchmark (matmul, conv layers, ResNet-50 inference at batch 1/8/32, a training step at 2/32), and
# PyTorch's figures for the same work on the same GPU (bench/peer_torch.py, where python3 has torch), each step
# timed and logged; a failing step does not stop the next ones; a summary ends the run.
#
# Usage (from the project's root, with .gpu/ copied along with the working tree):
#   bash bench/gpu.sh --pack          here, before the run: prep.sh, then a slimmed copy of node_modules/
#                                     (no source maps or unused bundles: 88 → 16 MB) in .gpu/node_modules, so
#                                     that .gpu/ alone (about 46 MB, with the glvnd
#                                     packages NVIDIA's Vulkan driver needs) travels: carry [".gpu"]
#   bash bench/gpu.sh [--quick] [--budget S]
#     --quick     tune --quick, bench --quick (fewer shapes and repetitions)
#     --tune-quick  tune --quick alone (the full benchmark)
#     --full-selftest  every variant in the self-test (default: selftest --quick, which leaves out the
#                 llvmpipe-shaped 32×32 register blocks: 15 s each to build on NVIDIA's driver)
#     --budget S  the whole run should end within S seconds: each step's timeout is cut so that the later
#                 steps keep their share (selftest ≤ 20 %, PyTorch ≤ 20 %, tune ≤ 30 % of what is left)
# Environment:
#   HE2GENE_GPU_SKIP_UNPACK=1   use the deno on PATH and the installed Vulkan loader (no .gpu/ needed;
#                               e.g. to try the script on a machine without a GPU)
#   VK_DRIVER_FILES             the Vulkan ICD (default: NVIDIA's, as prep.sh says, when that file exists)
#   HE2GENE_GPU_LOGS            folder of the logs (default: $OUT/he2gene-gpu if $OUT is set, else
#                               /tmp/he2gene-gpu-<time>)
#   HE2GENE_GPU_STEP_TIMEOUT    seconds each step may run (default 1800)
#   HE2GENE_GPU_BENCH_ARGS      extra arguments for `deno task bench` (e.g. "--no-peer")
#   HE2GENE_GPU_TUNE_ARGS       extra arguments for `he2gene tune` (e.g. "--only matmul,conv2d.fwd")
# Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail

quick=0 tune_quick=0 full_selftest=0 pack=0 budget=0 skip=","
while (($#)); do
  case $1 in
    --quick) quick=1 ;;
    --tune-quick) tune_quick=1 ;;
    --full-selftest) full_selftest=1 ;;
    --pack) pack=1 ;;
    --skip)
      [[ ${2:-} =~ ^(selftest|pytorch|tune|bench)(,(selftest|pytorch|tune|bench))*$ ]] || {
        echo "gpu.sh: --skip takes steps among selftest, pytorch, tune, bench (comma-separated), current value is '${2:-}'" >&2
        exit 2
      }
      skip=",$2,"
      shift
      ;;
    --budget)
      budget=${2:-}
      [[ $budget =~ ^[0-9]+$ ]] || { echo "gpu.sh: --budget needs a number of seconds" >&2; exit 2; }
      shift
      ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    *)
      echo "gpu.sh: unknown argument '$1' (expected --quick, --tune-quick, --full-selftest, --budget S, --skip STEPS or --pack)" >&2
      exit 2
      ;;
  esac
  shift
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
[[ -f deno.json && -f cli/main.ts ]] || { echo "gpu.sh: $root is not the he2gene project" >&2; exit 1; }

# ------------------------------------------------------------------------------------ pack (here)
if ((pack)); then
  [[ -d node_modules/.deno ]] || { echo "gpu.sh --pack: no node_modules/.deno: run 'deno install' first" >&2; exit 1; }
  prep=$root/../shared/tools/gpu/prep.sh
  [[ -x $prep || -f $prep ]] || { echo "gpu.sh --pack: $prep is missing" >&2; exit 1; }
  bash "$prep" || exit 1
  # NVIDIA's Vulkan driver (libGLX_nvidia.so.0) needs libglvnd's dispatch library: without it the loader
  # reports "Could not get 'vkCreateInstance' via 'vk_icdGetInstanceProcAddr'" and there is no adapter (seen
  # on an H200 machine, 2026-12-04). The glvnd packages travel beside the Vulkan loader.
  if ! ls .gpu/libglvnd0_*.deb > /dev/null 2>&1; then
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086 # $o is a list of apt options
    (cd .gpu && apt-get $o download libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2) || {
      echo "gpu.sh --pack: cannot download the glvnd packages" >&2
      exit 1
    }
  fi
  rm -rf .gpu/node_modules.tmp && cp -a node_modules .gpu/node_modules.tmp || exit 1
  (
    cd .gpu/node_modules.tmp || exit 1
    find . -name '*.map' -type f -delete
    # tfjs: Deno loads each package's "main" bundle (dist/*.node.js) and nothing else from dist/.
    for d in .deno/@tensorflow+tfjs-*/node_modules/@tensorflow/tfjs-*; do
      [[ -L $d || ! -f $d/package.json ]] && continue
      main=$(sed -n 's/^ *"main": *"\(.*\)",*$/\1/p' "$d/package.json" | head -n 1)
      [[ -n $main && -f $d/$main ]] || continue
      find "$d/dist" -mindepth 1 -maxdepth 1 ! -name "$(basename "$main")" ! -name package.json -exec rm -rf {} +
      rm -rf "$d/src" "$d/scripts" "$d/wasm-out"
    done
    rm -rf .deno/h5wasm@*/node_modules/h5wasm/dist/iife
  ) || exit 1
  rm -rf .gpu/node_modules && mv .gpu/node_modules.tmp .gpu/node_modules
  # Deno asks the registry for each package's metadata when its cache lacks it, even with node_modules/
  # complete; the metadata (a few hundred kB) travels so that the machine without network never asks.
  cache=${DENO_DIR:-$HOME/.cache/deno}/npm
  rm -rf .gpu/deno_dir && mkdir -p .gpu/deno_dir/npm
  (cd "$cache" && find . -name registry.json -print0 | xargs -0 cp --parents -t "$root/.gpu/deno_dir/npm") || {
    echo "gpu.sh --pack: cannot copy the npm metadata from $cache" >&2
    exit 1
  }
  du -sh .gpu/node_modules .gpu
  echo "gpu.sh --pack: carry [\".gpu\"] and run: bash bench/gpu.sh [--quick] [--budget S]"
  exit 0
fi
if [[ ! -d node_modules && -d .gpu/node_modules ]]; then
  mv .gpu/node_modules node_modules || exit 1
  echo "gpu.sh: node_modules/ from .gpu/node_modules (packed by --pack)"
fi

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
if [[ -z ${DENO_DIR:-} && -d .gpu/deno_dir ]]; then export DENO_DIR=$root/.gpu/deno_dir; fi
[[ -d node_modules ]] || echo "gpu.sh: warning: node_modules/ is missing; the benchmark's peer (tfjs-webgpu) and npm imports need it" >&2
export DENO_NO_UPDATE_CHECK=1 NO_COLOR=1

stamp=$(date -u +%Y%m%dT%H%M%SZ)
logs=${HE2GENE_GPU_LOGS:-${OUT:+$OUT/he2gene-gpu}}
logs=${logs:-/tmp/he2gene-gpu-$stamp}
mkdir -p "$logs" || exit 1
step_timeout=${HE2GENE_GPU_STEP_TIMEOUT:-1800}
t_start=$SECONDS
echo "gpu.sh: $(date -u), deno $(deno --version | head -n 1 | cut -d' ' -f2), logs in $logs"
echo "gpu.sh: DENO_WEBGPU_BACKEND=${DENO_WEBGPU_BACKEND:-} VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"

# ------------------------------------------------------------------------------------ steps
names=() codes=() secs=()

# step_limit PERCENT: this step's timeout: HE2GENE_GPU_STEP_TIMEOUT, and with --budget at most PERCENT % of
# the seconds left (at least 20).
step_limit() {
  local limit=$step_timeout
  if ((budget > 0)); then
    local left=$((budget - (SECONDS - t_start)))
    local share=$((left * $1 / 100))
    ((share < 20)) && share=20
    ((share < limit)) && limit=$share
  fi
  echo "$limit"
}

# run_step NAME PERCENT COMMAND…: run with a timeout, output to the terminal and to $logs/NAME.log, record
# status.
run_step() {
  local name=$1 limit
  if [[ $skip == *",$name,"* ]]; then
    echo
    echo "=== $name: skipped (--skip)"
    return
  fi
  limit=$(step_limit "$2")
  shift 2
  echo
  echo "=== $name (at most ${limit}s): $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  local dt=$((SECONDS - t0))
  ((rc == 124)) && echo "=== $name: timed out after ${limit}s"
  echo "=== $name: exit $rc after ${dt}s"
  names+=("$name") codes+=("$rc") secs+=("$dt")
}

q=()
((quick)) && q=(--quick)
tq=()

run_step info 10 deno task he2gene info
if grep -qi "software adapter" "$logs/info.log"; then
  echo "gpu.sh: warning: the adapter is a software one (llvmpipe?), not the GPU: check VK_DRIVER_FILES" >&2
fi
sq=(--quick)
((full_selftest)) && sq=()
run_step selftest 20 deno task he2gene selftest "${sq[@]}"
# PyTorch's figures for the same work on the same GPU (the image's python3, when it has torch with CUDA).
if python3 -c 'import torch, torchvision, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null; then
  tb=(--batches 1,8,32 --train-batches 2,32 --tf32)
  ((quick)) && tb=(--batches 1,32 --train-batches 32 --tf32)
  run_step pytorch 20 python3 bench/peer_torch.py --device cuda "${tb[@]}"
else
  echo "gpu.sh: python3 has no torch with CUDA here: no PyTorch figures"
fi
tq=("${q[@]}")
((tune_quick)) && tq=(--quick)
# shellcheck disable=SC2086 # HE2GENE_GPU_TUNE_ARGS is a list of words
run_step tune 30 deno task he2gene tune "${tq[@]}" --max-seconds $(($(step_limit 30) * 60 / 100)) ${HE2GENE_GPU_TUNE_ARGS:-}
# the table tune stored, beside the logs
cp "${XDG_CACHE_HOME:-$HOME/.cache}"/he2gene/tuning-*.json "$logs/" 2> /dev/null || true
# ResNet-50 inference at batch 1/8/32 and a training step at batch 32 (issue 13, item 7), defaults and the
# table just tuned side by side; the layers suite shows each conv's variant and GFLOP/s.
batches=(--resnet-batches 1,8,32 --train-batches 2,32)
((quick)) && batches=(--resnet-batches 1,32 --train-batches 32)
# shellcheck disable=SC2086 # HE2GENE_GPU_BENCH_ARGS is a list of words
# tfjs-webgpu's training step at batch 32 outlasts any device lease (7.5 s a step at batch 2 on an H200): the
# peer runs up to batch 8.
run_step bench 100 deno task bench --suite matmul,layers,resnet,train --reps 3 --peer-max-batch 8 --no-torch "${batches[@]}" "${q[@]}" ${HE2GENE_GPU_BENCH_ARGS:-}

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
