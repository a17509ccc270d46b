#!/usr/bin/env bash
# Runs gflex's GPU checks from a bundle made by tests/gpu/bundle.sh, on a machine with the
# NVIDIA driver, a CUDA toolkit and PyTorch but none of Debian's libraries:
#
#   bash run-gpu.sh [OUT_DIR [ARCHIVE]]   (default ./gpu-out; ARCHIVE: OUT_DIR packed as a .tar.gz)
#
# 1. finds every library the binaries need: the bundle's lib/ (Debian's), its GCC runtime
#    where the host's glibc is new enough for it, and the CUDA libraries (the bundle's
#    lib/cuda/ if carried, else the toolkit, PyTorch's nvidia-* wheels and torch/lib), then
#    checks with ldd that all resolve and says which do not;
# 2. prints nvidia-smi;
# 3. runs gflex_unit_tests' suites that run the CUDA backend where a device is present (all of
#    them with GFLEX_GPU_UNIT_TESTS=all);
# 4. runs the GPU benchmark, bench/gpu_vs_pytorch.sh (fashion-mlp and fashion-cnn against
#    PyTorch, fashion-mlp by batch size);
# 5. times fashion-cnn's and the small language model's step with and without recorded
#    passes (GFLEX_CUDA_GRAPHS=1: the step as one CUDA graph);
# 6. runs the language model benchmark, bench/lm_vs_torch.py, in bf16 at three sizes (the
#    3.3M model at batches of 64 and 512 x 128 tokens, the 86M one at 16 x 1,024) against
#    PyTorch eager and compiled, then gflex_bench_step's breakdown of gflex's step by
#    operation at the two larger sizes, with attention composed and fused, and the 86M model
#    with its GEMM operands packed in bf16 (GFLEX_LM_BENCH=0 leaves it out);
# 7. runs a core and a node on the GPU, which train fashion-mlp and fashion-cnn as jobs
#    (gpu_job.sh);
# 8. prints the speed targets against what was measured (targets.py).
#
# Time. A session is lent 15 minutes of device time, the machine's start included, so the
# whole run is one device call bounded by GFLEX_GPU_BUDGET_S (default 480 seconds): the steps
# run in the order above, which puts what the targets need first, each bounded by its own cap
# and by what is left of the budget; a step the budget does not reach, or cuts short, is
# named, and the summary says INCOMPLETE.
#
# Everything goes to OUT_DIR (run.log is the whole console); with ARCHIVE, OUT_DIR is packed
# into it at the end (a device call brings back a few files, not a folder of dozens). A
# failing step does not stop the later ones; the exit status is non-zero when any failed or
# was not run (cut short by the budget: incomplete, not failed). No GPU is not a failure: the
# CUDA tests say skipped and the benchmarks say no GPU; but where nvidia-smi lists a GPU,
# gflex or PyTorch seeing none is.
#
# Environment: PYTHON (the python with torch, default python3), GFLEX_CUDA_LIB_DIRS (folders
# searched first for the CUDA libraries, colon-separated), GFLEX_BENCH_ARGS (passed to the
# benchmark: BATCH EPOCHS), GFLEX_GPU_BUDGET_S, GFLEX_GPU_STEPS (the steps from 3 on to run,
# of "unit-tests benchmark graphs lm jobs"; default all: a second call can run again what a
# first did not finish).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-./gpu-out}
archive=${2:-}
mkdir -p "$out" && out=$(cd "$out" && pwd)
if [ -n "$archive" ]; then
  mkdir -p "$(dirname "$archive")" && archive=$(cd "$(dirname "$archive")" && pwd)/$(basename "$archive")
fi
exec > >(tee "$out/run.log") 2>&1
# shellcheck source=/dev/null
. "$here/bundle.env"
python=${PYTHON:-python3}
failed=()
not_run=()
cut_short=()
rerun=()      # the steps (GFLEX_GPU_STEPS names) to run again for what was cut or not run
current=""    # the step running now, by that name
budget=${GFLEX_GPU_BUDGET_S:-480}
step() { printf '\n== %s (%d s of the %d s budget used)\n' "$*" "$SECONDS" "$budget"; }
# Notes the current step as one to run again.
again() {
  case " ${rerun[*]} " in *" $current "*) ;; *) rerun+=("$current") ;; esac
}
# Counts run $1's exit status $2 and says so, naming the run as $3 (and showing the end of
# its log $4, if given, when it failed): 0 passes; 124 or 137 (the budget's bound) was cut
# short, which is incomplete, not failed; anything else failed. Returns 1 unless it passed.
judge() {
  local name=$1 rc=$2 what=$3 log=${4:-}
  if ((rc == 124 || rc == 137)); then
    echo "CUT SHORT: $what (exit $rc: the budget's bound; what it finished is kept)"
    cut_short+=("$name")
    again
    return 1
  elif ((rc != 0)); then
    echo "PROBLEM: $what exited with $rc${log:+:}"
    if [ -n "$log" ]; then tail -5 "$log"; fi
    failed+=("$name")
    return 1
  fi
}
# Whether GFLEX_GPU_STEPS (default: every step) leaves out step $1, saying so.
left_out() {
  case " ${GFLEX_GPU_STEPS:-unit-tests benchmark graphs lm jobs} " in
    *" $1 "*) return 1 ;;
  esac
  echo "left out (GFLEX_GPU_STEPS=\"${GFLEX_GPU_STEPS:-}\")"
}
# Sets `grant` to the seconds that part $1 may take: its cap $2 or what is left of the budget
# less $4 seconds kept for the parts after it (default 0), whichever is less. Where less than
# $3 seconds are left, the part is named as not run and the function returns 1.
grant_time() {
  local name=$1 cap=$2 least=$3 left=$((budget - SECONDS - ${4:-0}))
  if ((left < least)); then
    echo "NOT RUN: $name (${left} s of the budget left; it needs at least ${least} s)"
    not_run+=("$name")
    again
    return 1
  fi
  grant=$((cap < left ? cap : left))
}
# Runs the command after $1 bounded to $1 seconds (SIGTERM, then SIGKILL 10 s later); a run
# that the bound cut short is said, and its rc is 124 or 137.
bounded() {
  local seconds=$1 rc
  shift
  timeout --kill-after=10 "$seconds" "$@"
  rc=$?
  if ((rc == 124 || rc == 137)); then echo "cut short after ${seconds} s (the run's budget)" >&2; fi
  return $rc
}
pack() {
  if [ -n "$archive" ]; then
    tar -C "$(dirname "$out")" -czf "$archive" "$(basename "$out")" &&
      echo "packed $out into $archive ($(du -h "$archive" | cut -f1))"
  fi
}
trap pack EXIT
newer_or_equal() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$2" ]; }

step "bundle"
echo "commit $GFLEX_BUNDLE_COMMIT, built $GFLEX_BUNDLE_BUILT, CUDA $GFLEX_BUNDLE_CUDA_VERSION"
echo "host: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"), $(uname -m)," \
  "$(getconf GNU_LIBC_VERSION 2>/dev/null || echo 'glibc ?')"

# A packed bundle unpacks to a temporary folder: never into the bundle itself, which must stay
# small enough to carry, nor into OUT_DIR, which comes back.
root=$here
if [ "$GFLEX_BUNDLE_PACKED" = 1 ]; then
  root=$(mktemp -d "${TMPDIR:-/tmp}/gflex-bundle.XXXXXX")
  trap 'rm -rf "$root"; pack' EXIT
  if command -v xz >/dev/null; then
    xz -dc "$here/payload.tar.xz" | tar -C "$root" -xf -
  else
    "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$here/payload.tar.xz" "$root"
  fi || { echo "cannot unpack $here/payload.tar.xz"; exit 1; }
  echo "unpacked bin/ and lib/ to $root"
fi
bin=$root/bin

step "libraries"
lib_path=$root/lib
host_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
if [ -z "$host_glibc" ]; then
  echo "cannot tell the host's glibc version; using the bundled GCC runtime"
  lib_path+=:$root/lib/gcc-runtime
elif newer_or_equal "$host_glibc" "$GFLEX_BUNDLE_GCC_RUNTIME_GLIBC"; then
  lib_path+=:$root/lib/gcc-runtime
  echo "glibc $host_glibc: using the bundled libstdc++ and libgcc_s"
else
  echo "glibc $host_glibc is older than the bundled libstdc++ needs ($GFLEX_BUNDLE_GCC_RUNTIME_GLIBC):" \
    "using the host's, which must provide GLIBCXX_$GFLEX_BUNDLE_GLIBCXX"
fi
if [ -n "$host_glibc" ] && ! newer_or_equal "$host_glibc" "$GFLEX_BUNDLE_GLIBC"; then
  echo "PROBLEM: the binaries need glibc >= $GFLEX_BUNDLE_GLIBC, this machine has $host_glibc;" \
    "build the bundle on an older distribution"
  failed+=("glibc")
fi

# Where a CUDA library may be: the bundle's own, folders the user names, the toolkit, and
# PyTorch's (pip wheels put cuBLAS, cuDNN and NCCL under site-packages/nvidia/*/lib).
candidates=()
[ -d "$root/lib/cuda" ] && candidates+=("$root/lib/cuda")
IFS=: read -r -a user_dirs <<<"${GFLEX_CUDA_LIB_DIRS:-}"
candidates+=("${user_dirs[@]}")
[ -n "${CUDA_HOME:-}" ] && candidates+=("$CUDA_HOME/lib64" "$CUDA_HOME/lib")
candidates+=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
for d in /usr/local/cuda-*/lib64; do [ -d "$d" ] && candidates+=("$d"); done
if command -v "$python" >/dev/null; then
  mapfile -t py_dirs < <("$python" - 2>/dev/null <<'PY'
import glob, os, site, sys
roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
try:
    import torch
    print(os.path.join(os.path.dirname(torch.__file__), "lib"))
    roots.insert(0, os.path.dirname(os.path.dirname(torch.__file__)))
except Exception:
    pass
seen = set()
for r in roots:
    for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib"))) + \
             sorted(glob.glob(os.path.join(r, "nvidia", "cu*", "lib"))):
        if d not in seen:
            seen.add(d)
            print(d)
PY
  )
  candidates+=("${py_dirs[@]}")
fi
candidates+=(/usr/lib/x86_64-linux-gnu /usr/lib64 /lib/x86_64-linux-gnu)

cuda_path=""
missing_cuda=()
for soname in $GFLEX_BUNDLE_CUDA_SONAMES; do
  found=""
  for d in "${candidates[@]}"; do
    [ -n "$d" ] && [ -e "$d/$soname" ] && { found=$d; break; }
  done
  if [ -n "$found" ]; then
    printf '  %-42s %s\n' "$soname" "$found"
    case ":$cuda_path:" in *":$found:"*) ;; *) cuda_path+=${cuda_path:+:}$found ;; esac
  else
    stem=${soname%%.so*}
    others=$(for d in "${candidates[@]}"; do ls "$d/$stem".so.* 2>/dev/null; done |
      xargs -r -n1 basename | sort -u | paste -sd' ')
    printf '  %-42s MISSING%s\n' "$soname" "${others:+ (found only: $others)}"
    missing_cuda+=("$soname")
  fi
done
if ((${#missing_cuda[@]})); then
  echo "PROBLEM: CUDA libraries not found: ${missing_cuda[*]}."
  echo "  The bundle was built against CUDA $GFLEX_BUNDLE_CUDA_VERSION. Point GFLEX_CUDA_LIB_DIRS at"
  echo "  folders holding them, bundle with --with-cuda-libs, or build against this machine's"
  echo "  CUDA version (docs/GPU.md)."
  failed+=("cuda-libraries")
fi
export LD_LIBRARY_PATH=$lib_path${cuda_path:+:$cuda_path}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export GFLEX_FASHION_MNIST_DIR=$here/data/fashion-mnist
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
echo "GFLEX_FASHION_MNIST_DIR=$GFLEX_FASHION_MNIST_DIR"

# ldd over every program: all must resolve. libcuda.so.1 is the driver's; cudart loads it with
# dlopen, so it is looked up separately.
unresolved=()
for p in "$bin"/*; do
  echo "# $(basename "$p")"
  ldd "$p" 2>&1
done >"$out/ldd.txt"
mapfile -t unresolved < <(grep 'not found' "$out/ldd.txt" | awk '{print $1}' | sort -u)
if ((${#unresolved[@]})); then
  echo "PROBLEM: ldd cannot resolve: ${unresolved[*]} (see ldd.txt)"
  failed+=("ldd")
else
  echo "ldd: every library of $(ls "$bin" | wc -l) programs resolves (ldd.txt)"
fi
driver=$( (ldconfig -p 2>/dev/null | grep -m1 'libcuda\.so\.1 ' | awk '{print $NF}') || true)
if [ -z "$driver" ]; then
  for d in ${LD_LIBRARY_PATH//:/ } /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib64; do
    [ -e "$d/libcuda.so.1" ] && { driver=$d/libcuda.so.1; break; }
  done
fi
echo "driver library: ${driver:-libcuda.so.1 not found (no NVIDIA driver: CUDA will report no device)}"

step "nvidia-smi"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt"
  driver_cuda=$(sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' "$out/nvidia-smi.txt" | head -1)
  if [ -n "$driver_cuda" ] && [ -n "$GFLEX_BUNDLE_CUDA_VERSION" ] &&
    ! newer_or_equal "$driver_cuda" "$GFLEX_BUNDLE_CUDA_VERSION"; then
    echo "PROBLEM: the driver supports CUDA up to $driver_cuda; the binaries were built with" \
      "CUDA $GFLEX_BUNDLE_CUDA_VERSION (cudart will refuse: build against an older toolkit)"
    failed+=("driver")
  fi
else
  echo "nvidia-smi not found (no NVIDIA driver on this machine)" | tee "$out/nvidia-smi.txt"
fi

# Whether gflex sees a GPU: the steps that time gflex alone leave themselves out without one.
# Where nvidia-smi lists a GPU, gflex seeing none is a failure, not a run without a GPU.
gpus=$(timeout 60 "$bin/gflex" --log-level warn devices --json - 2>/dev/null |
  "$python" -c 'import json, sys; print(len(json.load(sys.stdin)["devices"]))' 2>/dev/null || echo "?")
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU ' &&
  { [ "$gpus" = 0 ] || [ "$gpus" = "?" ]; }; then
  echo "PROBLEM: nvidia-smi lists a GPU and gflex devices reports ${gpus/\?/no answer}:"
  timeout 60 "$bin/gflex" devices 2>&1 | tail -3
  failed+=("gflex-sees-no-gpu")
fi

step "unit tests"
current=unit-tests
if ! left_out unit-tests && grant_time unit-tests 120 30; then
  # test_job_spec reads apps/jobs/fashion-mlp.toml at the source path compiled in; away from
  # that checkout it cannot pass, so it is left out there (and said so).
  exclude=()
  if [ ! -f "$GFLEX_BUNDLE_SOURCE_DIR/apps/jobs/fashion-mlp.toml" ]; then
    exclude=("--test-case-exclude=*shipped*")
    echo "note: $GFLEX_BUNDLE_SOURCE_DIR is not here: the test cases that read the shipped job" \
      "specs are left out"
  fi
  # The suites that run a GPU where there is one (CI runs every suite on the CPU); all of them
  # with GFLEX_GPU_UNIT_TESTS=all.
  suites=("--test-suite=backend,cnn,replica group,device batches,devices,model graph")
  if [ "${GFLEX_GPU_UNIT_TESTS:-}" = all ]; then suites=(); fi
  bounded "$grant" "$bin/gflex_unit_tests" --no-colors=true "${suites[@]}" "${exclude[@]}" \
    >"$out/unit-tests.txt" 2>&1
  rc=$?
  echo "$rc" >"$out/unit-tests.rc"
  # The console gets the end (the last failures and the totals): unit-tests.txt has it all.
  tail -60 "$out/unit-tests.txt"
  judge unit-tests "$rc" gflex_unit_tests
fi

step "benchmark"
current=benchmark
if ! left_out benchmark && grant_time benchmark 180 60; then
  # shellcheck disable=SC2086
  GFLEX_BIN_DIR=$bin GFLEX_BENCH_OUT=$out/bench PYTHON=$python \
    bounded "$grant" bash "$here/bench/gpu_vs_pytorch.sh" ${GFLEX_BENCH_ARGS:-} 2>&1 |
    tee "$out/benchmark.md"
  rc=${PIPESTATUS[0]}
  judge benchmark "$rc" "the benchmark"
fi

# gflex_bench_step with the arguments after NAME and CAP, bounded to CAP seconds or what is
# left of the budget, its JSON in $out/NAME.json and its log in $out/NAME.log; a failure is
# said, counted, and returns 1, as does a run the budget cannot hold.
bench_step() {
  local name=$1 cap=$2 rc
  shift 2
  grant_time "$name" "$cap" 15 || return 1
  bounded "$grant" "$bin/gflex_bench_step" "$@" >"$out/$name.json" 2>"$out/$name.log"
  rc=$?
  judge "$name" "$rc" "$name" "$out/$name.log"
}

step "recorded passes"
current=graphs
# A training step as one CUDA graph (GFLEX_CUDA_GRAPHS=1) against the same step launched
# operation by operation, where launches weigh most: fashion-cnn at batch 128 and the 3.3M
# language model at 64 x 128 in bf16. "replays" counts the steps that ran as graphs.
if left_out graphs; then
  :
elif [ "$gpus" = 0 ]; then
  echo "recorded passes: left out (no GPU)"
else
  for run in "fashion-cnn 128 fp32 0" "fashion-cnn 128 fp32 1" \
    "bench/specs/gpt-4x256.toml 64 bf16 0" "bench/specs/gpt-4x256.toml 64 bf16 1"; do
    read -r workload rows precision graphs <<<"$run"
    name="graphs-$(basename "$workload" .toml)-$rows-$graphs"
    case "$workload" in bench/*) workload="$here/$workload" ;; esac
    GFLEX_CUDA_GRAPHS=$graphs bench_step "$name" 60 0 "$rows" cuda:0 "$workload" "$precision" ||
      continue
    if "$python" - "$out/$name.json" "$graphs" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{s['workload'].split('/')[-1]} batch {s['batch']} {s['precision']}, "
      f"GFLEX_CUDA_GRAPHS={sys.argv[2]}: step {s['step_ms']:.3f} ms, "
      f"{s['samples_per_s']:.0f} samples/s, {s['replays']} steps replayed")
# With graphs asked for, a run that replayed none did not use them.
if sys.argv[2] == "1" and s["replays"] == 0:
    sys.exit("GFLEX_CUDA_GRAPHS=1 replayed no step")
PY
    then :; else failed+=("$name"); fi
  done
fi

step "language model"
current=lm
if left_out lm; then
  :
elif [ "${GFLEX_LM_BENCH:-1}" = 0 ]; then
  echo "left out (GFLEX_LM_BENCH=0)"
elif [ ! -d "$here/data/fortunes" ]; then
  echo "left out: the bundle carries no fortunes text (bundle.sh says why)"
  not_run+=("lm (no fortunes text in the bundle)")  # the summary must not say OK
else
  # Steps are few and each run is bounded; PyTorch's compilation is most of each run's time.
  # A run cut short by the budget still prints and writes the rows it finished. Each keeps
  # 15 s of the budget for each gflex_bench_step run after it (five, below), which are short.
  reserve=$((5 * 15))
  if [ "$gpus" = 0 ]; then reserve=0; fi
  for run in "gpt-4x256 64 200 90" "gpt-4x256 512 100 90" "gpt-12x768 16 40 180"; do
    read -r spec rows steps cap <<<"$run"
    grant_time "lm-$spec-$rows" "$cap" 45 "$reserve" || continue
    GFLEX_FORTUNES_DIR=$here/data/fortunes bounded "$grant" "$python" -u "$here/bench/lm_vs_torch.py" \
      "$bin" --spec "$here/bench/specs/$spec.toml" --batch "$rows" --steps "$steps" \
      --device cuda --precision bf16 --compile --fused-attention --repeats 1 --threads 8 \
      --json "$out/lm-$spec-$rows.json" 2>"$out/lm-$spec-$rows.log" | tee "$out/lm-$spec-$rows.md"
    rc=${PIPESTATUS[0]}
    judge "lm-$spec-$rows" "$rc" "lm_vs_torch.py $spec batch $rows" "$out/lm-$spec-$rows.log"
  done
  # Where gflex's step goes at the two larger sizes, operation by operation (each timed to
  # its completion), with the GEMM peak in bf16 measured in the same run: what to work on next.
  if [ "$gpus" = 0 ]; then
    echo "gflex_bench_step of the language models: left out (no GPU)"
  else
    # Attention composed of cuBLAS GEMMs and softmax kernels (the default) and fused (the
    # flash-attention kernels, GFLEX_FUSED_ATTENTION=1); the 86M model also with its GEMMs'
    # operands packed in bf16 (GFLEX_BF16_OPERANDS=1) instead of converted inside cuBLAS.
    for run in "gpt-12x768 16 0 0" "gpt-12x768 16 1 0" "gpt-12x768 16 0 1" \
      "gpt-4x256 512 0 0" "gpt-4x256 512 1 0"; do
      read -r spec rows fused bf16ops <<<"$run"
      name="lm-step-$spec-$rows"
      if [ "$fused" = 1 ]; then name="$name-fused"; fi
      if [ "$bf16ops" = 1 ]; then name="$name-bf16ops"; fi
      GFLEX_FUSED_ATTENTION=$fused GFLEX_BF16_OPERANDS=$bf16ops bench_step "$name" 60 0 "$rows" \
        cuda:0 "$here/bench/specs/$spec.toml" bf16 || continue
      "$python" - "$out/$name.json" "$fused" "$bf16ops" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
ops = sorted(s["step_breakdown_ms"].items(), key=lambda kv: -kv[1])
print(f"{s['workload'].split('/')[-1]} batch {s['batch']} bf16, attention "
      f"{'fused' if sys.argv[2] == '1' else 'composed'}"
      f"{', GEMM operands packed in bf16' if sys.argv[3] == '1' else ''} (gflex_bench_step): step "
      f"{s['step_ms']:.2f} ms, {s['tokens_per_s']:.0f} tokens/s; GEMM-bound part "
      f"{s['gemm_bound_ms']:.2f} ms at {s['gemm_bound_fraction_of_peak']:.0%} of the "
      f"{s['sgemm_peak_gflops'] / 1e3:.0f} TFLOP/s bf16 GEMM peak; by operation (ms, timed to "
      "completion): " + ", ".join(f"{op} {ms:.2f}" for op, ms in ops[:8]))
PY
    done
  fi
fi

step "jobs"
current="jobs"
if ! left_out jobs && grant_time jobs 150 60; then
  # A core and a node on this GPU: fashion-mlp and fashion-cnn trained as part of jobs.
  bounded "$grant" bash "$here/gpu_job.sh" "$bin" "$here/jobs" "$out/jobs" 2>&1 | tee "$out/jobs.txt"
  rc=${PIPESTATUS[0]}
  judge jobs "$rc" "the GPU job check"
fi

step "targets"
timeout 60 "$python" "$here/targets.py" "$out" 2>&1 | tee "$out/targets.md"

step "summary"
echo "took $SECONDS s (budget $budget s)"
if ((${#failed[@]} + ${#not_run[@]} + ${#cut_short[@]})); then
  {
    if ((${#failed[@]})); then echo "FAILED: ${failed[*]}"; fi
    if ((${#cut_short[@]})); then
      echo "INCOMPLETE: cut short by the budget (what they finished is kept): ${cut_short[*]}"
    fi
    if ((${#not_run[@]})); then echo "INCOMPLETE: not run for want of time: ${not_run[*]}"; fi
    if ((${#rerun[@]})); then
      echo "  GFLEX_GPU_STEPS=\"${rerun[*]}\" runs those steps again"
    fi
  } | tee "$out/summary.txt"
  exit 1
fi
echo "OK" | tee "$out/summary.txt"
