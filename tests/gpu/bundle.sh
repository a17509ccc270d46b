#!/usr/bin/env bash
# Builds gflex here and assembles a self-contained folder that runs the GPU unit tests and the
# GPU benchmark on a bare CUDA machine (driver, toolkit and PyTorch, but none of Debian's
# libraries the binaries link). See docs/GPU.md, "Running the GPU tests and benchmark on a GPU
# machine".
#
#   bash tests/gpu/bundle.sh [--no-build] [--with-cuda-libs] [--pack | --no-pack] [--out DIR]
#
#   --no-build        use build/bin as it is instead of running .ci/setup first
#   --with-cuda-libs  carry the CUDA libraries too (cudart, cuBLAS, cuDNN with the sub-libraries
#                     it dlopens, NCCL, NVRTC): over 1 GiB; by default run-gpu.sh finds them on
#                     the GPU machine (its toolkit, PyTorch's nvidia-* wheels)
#   --pack            put bin/ and lib/ into payload.tar.xz (run-gpu.sh unpacks it to a
#                     temporary folder); the default packs when the folder would pass 64 MiB
#                     and --with-cuda-libs is not given
#   --no-pack         never pack
#   --out DIR         where to assemble (default build/gpu-bundle; emptied first)
#
# Left out on purpose: libcuda.so.* and the other driver libraries (they must match the GPU
# machine's kernel module) and glibc's core libraries (libc, libm, libpthread, libdl, librt,
# ld-linux: the binaries use the GPU machine's own). libstdc++ and libgcc_s are carried in
# lib/gcc-runtime/, which run-gpu.sh uses only where the host's glibc is new enough for them.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

build=1 cuda_libs=0 pack=auto out=build/gpu-bundle
while (($#)); do
  case "$1" in
    --no-build) build=0 ;;
    --with-cuda-libs) cuda_libs=1 ;;
    --pack) pack=yes ;;
    --no-pack) pack=no ;;
    --out) out=${2:?--out needs a folder}; shift ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bundle: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

programs=(gflex gflex-core gflex-node gflex_unit_tests gflex_bench_step)
limit_bytes=$((64 * 1024 * 1024))

if ((build)); then
  bash .ci/setup
fi
for p in "${programs[@]}"; do
  [ -x "build/bin/$p" ] || { echo "bundle: build/bin/$p is missing (run bash .ci/setup)" >&2; exit 1; }
done

# Fashion-MNIST: where the binaries would look (GFLEX_FASHION_MNIST_DIR, else Debian's
# dataset-fashion-mnist), as the four IDX files, gzipped or not.
data_src=${GFLEX_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
for stem in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
  t10k-labels-idx1-ubyte; do
  [ -f "$data_src/$stem.gz" ] || [ -f "$data_src/$stem" ] || {
    echo "bundle: $data_src/$stem(.gz) not found: install dataset-fashion-mnist or set" \
      "GFLEX_FASHION_MNIST_DIR" >&2
    exit 1
  }
done

# Only a former bundle or an empty folder is emptied.
if [ -d "$out" ] && [ -n "$(ls -A "$out")" ] && [ ! -f "$out/bundle.env" ]; then
  echo "bundle: $out is not empty and holds no bundle; choose another --out" >&2
  exit 1
fi
rm -rf "${out:?}"
mkdir -p "$out"/{bin,lib/gcc-runtime,bench,data/fashion-mnist}
out=$(cd "$out" && pwd)

# Binaries, without their symbol tables (a third of their size; backtraces still name the
# dynamic symbols).
for p in "${programs[@]}"; do
  cp "build/bin/$p" "$out/bin/"
  command -v strip >/dev/null && strip --strip-unneeded "$out/bin/$p"
done

# Shared libraries: ldd lists the whole closure, each by the soname the loader will look for,
# which is the name each copy gets.
is_glibc_core() {
  case "$1" in
    linux-vdso.so.* | ld-linux*.so.* | libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | \
      librt.so.* | libresolv.so.* | libutil.so.* | libanl.so.* | libmvec.so.*) return 0 ;;
  esac
  return 1
}
is_driver() { case "$1" in libcuda.so.* | libnvidia-*.so.*) return 0 ;; esac; return 1; }
is_cuda_toolkit() {
  case "$1" in
    libcudart.so.* | libcublas.so.* | libcublasLt.so.* | libcudnn*.so.* | libnccl.so.* | \
      libnvrtc*.so.* | libnvJitLink.so.* | libcufft*.so.* | libcurand.so.* | libcusolver*.so.* | \
      libcusparse.so.* | libcupti.so.*) return 0 ;;
  esac
  return 1
}

declare -A seen=()
cuda_sonames=() debian_libs=() missing=()
while read -r name arrow path _; do
  name=${name##*/}
  [ -n "${seen[$name]:-}" ] && continue
  seen[$name]=1
  if is_glibc_core "$name" || is_driver "$name"; then continue; fi
  if [ "$arrow" != "=>" ] || [ "$path" = "not" ]; then
    missing+=("$name")
    continue
  fi
  if is_cuda_toolkit "$name"; then
    cuda_sonames+=("$name")
    if ((cuda_libs)); then
      mkdir -p "$out/lib/cuda"
      cp -L "$path" "$out/lib/cuda/$name"
    fi
  elif [[ "$name" == libstdc++.so.* || "$name" == libgcc_s.so.* ]]; then
    cp -L "$path" "$out/lib/gcc-runtime/$name"
  else
    cp -L "$path" "$out/lib/$name"
    debian_libs+=("$name")
  fi
done < <(for p in "${programs[@]}"; do ldd "build/bin/$p"; done)
if ((${#missing[@]})); then
  echo "bundle: ldd cannot resolve ${missing[*]} here" >&2
  exit 1
fi
# The GCC runtime is always carried (the host may lack it or have an older one).
for name in libstdc++.so.6 libgcc_s.so.1; do
  [ -f "$out/lib/gcc-runtime/$name" ] || cp -L "/usr/lib/x86_64-linux-gnu/$name" \
    "$out/lib/gcc-runtime/$name"
done

# cuDNN 9 loads its sub-libraries with dlopen, and its runtime-compiled engines load NVRTC the
# same way: ldd shows neither. They are needed wherever libcudnn.so.9 is (libcudnn_adv, for
# RNNs and attention, only rides along).
cudnn_dlopened=(libcudnn_graph.so.9 libcudnn_ops.so.9 libcudnn_cnn.so.9 libcudnn_heuristic.so.9
  libcudnn_engines_precompiled.so.9 libcudnn_engines_runtime_compiled.so.9)
needs_cudnn=0
for s in "${cuda_sonames[@]}"; do [[ "$s" == libcudnn.so.* ]] && needs_cudnn=1; done
cuda_dir=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && { cuda_dir=$d; break; }
done
cuda_version=""
[ -x /usr/local/cuda/bin/nvcc ] &&
  cuda_version=$(/usr/local/cuda/bin/nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
if ((cuda_libs && needs_cudnn)); then
  for s in "${cudnn_dlopened[@]}" libcudnn_adv.so.9; do
    [ -f "$cuda_dir/$s" ] && cp -L "$cuda_dir/$s" "$out/lib/cuda/$s"
  done
  major=${cuda_version%%.*}
  for s in "libnvrtc.so.$major" "libnvrtc-builtins.so.$cuda_version"; do
    [ -f "$cuda_dir/$s" ] && cp -L "$cuda_dir/$s" "$out/lib/cuda/$s"
  done
fi

# What run-gpu.sh must check on the GPU machine: the newest glibc symbol version the binaries
# and the carried Debian libraries need, the one the carried GCC runtime needs, and the newest
# GLIBCXX the rest needs from whichever libstdc++ is used.
max_version() { { grep -o "$1"'[0-9.]*[0-9]' || true; } | sort -uV | tail -1 | sed "s/^$1//"; }
undefined() {
  for f in "$@"; do
    [ -f "$f" ] || continue
    objdump -T "$f" | grep '\*UND\*' || true
  done
}
needed_glibc=$(undefined "$out"/bin/* "$out"/lib/*.so* | max_version GLIBC_)
gcc_runtime_glibc=$(undefined "$out"/lib/gcc-runtime/* | max_version GLIBC_)
needed_glibcxx=$(undefined "$out"/bin/* "$out"/lib/*.so* "$out"/lib/cuda/*.so* |
  max_version GLIBCXX_)
if ((needs_cudnn)); then cuda_sonames+=("${cudnn_dlopened[@]}"); fi

# Data, benchmark scripts, the run script.
cp "$data_src"/*-idx?-ubyte* "$out/data/fashion-mnist/"
cp tests/bench/gpu_vs_pytorch.sh tests/bench/torch_mlp.py tests/bench/torch_cnn.py \
  tests/bench/lm_vs_torch.py "$out/bench/"
mkdir -p "$out/bench/specs"
cp tests/bench/specs/*.toml "$out/bench/specs/"
# The language model's text: the fortunes files runtime/src/text_corpus.cpp reads (regular
# files without an extension), about 2.5 MB.
fortunes_src=${GFLEX_FORTUNES_DIR:-/usr/share/games/fortunes}
if [ -d "$fortunes_src" ]; then
  mkdir -p "$out/data/fortunes"
  find "$fortunes_src" -maxdepth 1 -type f ! -name '*.*' -exec cp {} "$out/data/fortunes/" \;
else
  echo "bundle: $fortunes_src not found (apt-get install -y fortunes): the language model" \
    "benchmark will say it has no text" >&2
fi
cp tests/gpu/run-gpu.sh tests/gpu/gpu_job.sh tests/gpu/targets.py "$out/"
mkdir -p "$out/jobs"
cp apps/jobs/*.toml "$out/jobs/"
chmod +x "$out/run-gpu.sh" "$out/bench/gpu_vs_pytorch.sh"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit+uncommitted"
{
  echo "# Written by tests/gpu/bundle.sh; read by run-gpu.sh."
  echo "GFLEX_BUNDLE_COMMIT='$commit'"
  echo "GFLEX_BUNDLE_BUILT='$(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME")'"
  echo "GFLEX_BUNDLE_SOURCE_DIR='$root'"
  echo "GFLEX_BUNDLE_CUDA_VERSION='$cuda_version'"
  echo "GFLEX_BUNDLE_CUDA_SONAMES='${cuda_sonames[*]}'"
  echo "GFLEX_BUNDLE_CUDA_CARRIED=$cuda_libs"
  echo "GFLEX_BUNDLE_DEBIAN_LIBS='${debian_libs[*]}'"
  echo "GFLEX_BUNDLE_GLIBC='$needed_glibc'"
  echo "GFLEX_BUNDLE_GCC_RUNTIME_GLIBC='$gcc_runtime_glibc'"
  echo "GFLEX_BUNDLE_GLIBCXX='$needed_glibcxx'"
  echo "GFLEX_BUNDLE_PACKED=0"
} >"$out/bundle.env"

bytes() { du -sb "$1" | cut -f1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
unpacked=$(bytes "$out")
if [ "$pack" = auto ]; then
  pack=no
  ((!cuda_libs && unpacked > limit_bytes)) && pack=yes
fi
if [ "$pack" = yes ]; then
  # The binaries and OpenBLAS shrink about eightfold; the data is gzipped already.
  tar -C "$out" -cf - bin lib | xz -6 -T0 >"$out/payload.tar.xz"
  rm -rf "${out:?}/bin" "${out:?}/lib"
  sed -i 's/^GFLEX_BUNDLE_PACKED=0$/GFLEX_BUNDLE_PACKED=1/' "$out/bundle.env"
fi
total=$(bytes "$out")

echo "bundle: $out"
echo "  commit $commit, CUDA ${cuda_version:-none} (needs ${cuda_sonames[*]:-no CUDA library})"
echo "  carries ${#debian_libs[@]} Debian libraries, the GCC runtime$( ((cuda_libs)) &&
  echo ", the CUDA libraries")"
echo "  needs glibc >= $needed_glibc on the GPU machine (the carried GCC runtime: >= $gcc_runtime_glibc)"
echo "  size $(mib "$total")$([ "$pack" = yes ] && echo " packed ($(mib "$unpacked") unpacked)")"
for d in bin lib data bench payload.tar.xz; do
  [ -e "$out/$d" ] && echo "    $d: $(mib "$(bytes "$out/$d")")"
done
if ((total > limit_bytes)); then
  echo "bundle: WARNING: over 64 MiB, too big to carry to a lent GPU machine" \
    "$( ((cuda_libs)) && echo "(drop --with-cuda-libs)")" >&2
fi
echo "run it there: bash ${out#"$root"/}/run-gpu.sh OUT_DIR"
