#!/usr/bin/env bash
# The Debian packages in a clean root: builds gflex-core, gflex-node, gflex-client and
# libgflex-dev with CPack from a CPU build (build-deb/), makes a minimal Debian 12 root with
# debootstrap, installs the four packages there with apt (which must find every dependency
# they declare in Debian's archive), and from the installed files: runs `gflex demo` to
# >= 0.88 test accuracy, starts gflex-core with its dashboard (Chart.js from the declared
# libjs-chart.js) and checks the systemd units point at /usr/bin. Needs root and Debian's
# archive; exits 77 (skipped, saying why) without root. Downloaded packages are cached in
# /var/cache/gflex-clean-root between runs; the root itself is made fresh each time and
# removed at the end.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIPPED: the clean-root package test needs root (debootstrap, chroot, mount)"
  exit 77
fi
BUILD=$SRC/build-deb
CACHE=/var/cache/gflex-clean-root
MIRROR=${GFLEX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d /tmp/gflex-root-XXXXXX)
chmod 755 "$ROOT"  # apt downloads as its own user, who must reach the root's files
mounts=()
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  # A process the test left in the root (a core) is killed by its pid file.
  [ -f "$ROOT/tmp/core.pid" ] && kill -KILL "$(cat "$ROOT/tmp/core.pid")" 2>/dev/null || true
  rm -rf --one-file-system "$ROOT"
}
trap cleanup EXIT
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }

# -- the packages -----------------------------------------------------------------------------
start=$SECONDS
export CCACHE_BASEDIR=$SRC CCACHE_NOHASHDIR=1
cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGFLEX_CUDA=OFF \
  -DCMAKE_INSTALL_PREFIX=/usr \
  -DGFLEX_BUILD_TESTS=OFF >/dev/null
cmake --build "$BUILD" --parallel "$(nproc)"
rm -f "$BUILD"/*.deb
(cd "$BUILD" && cpack -G DEB >"$BUILD/cpack.log" 2>&1) || { tail -20 "$BUILD/cpack.log"; exit 1; }
debs=("$BUILD"/*.deb)
[ "${#debs[@]}" -eq 4 ] || { echo "FAIL: cpack made ${#debs[@]} packages, not 4"; exit 1; }
for d in "${debs[@]}"; do
  echo "built $(basename "$d"): $(dpkg-deb -f "$d" Depends)"
done
echo "packages built in $((SECONDS - start)) s"

# -- a clean root -----------------------------------------------------------------------------
start=$SECONDS
mkdir -p "$CACHE/debootstrap" "$CACHE/apt"
debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" bookworm "$ROOT" "$MIRROR" \
  >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
cat >"$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
mount -t proc proc "$ROOT/proc" && mounts+=("$ROOT/proc")
mount --bind /dev "$ROOT/dev" && mounts+=("$ROOT/dev")
mount --bind "$CACHE/apt" "$ROOT/var/cache/apt/archives" && mounts+=("$ROOT/var/cache/apt/archives")
mkdir -p "$ROOT/debs"
cp "${debs[@]}" "$ROOT/debs/"
echo "clean root made in $((SECONDS - start)) s"

start=$SECONDS
in_root apt-get update -qq >"$ROOT/apt.log" 2>&1 || { tail -20 "$ROOT/apt.log"; exit 1; }
# Recommends are left out: what the packages Depend on must be enough for the demo.
names=()
for d in "${debs[@]}"; do names+=("/debs/$(basename "$d")"); done
if ! in_root apt-get install -y -qq --no-install-recommends "${names[@]}" >>"$ROOT/apt.log" 2>&1; then
  tail -20 "$ROOT/apt.log"
  exit 1
fi
echo "installed $(in_root dpkg-query -W -f='${Package} ' gflex-core gflex-node gflex-client libgflex-dev)in $((SECONDS - start)) s"

# -- what the installed packages do -----------------------------------------------------------
start=$SECONDS
if in_root timeout -s KILL 600 gflex demo --json /tmp/demo.json >"$ROOT/demo.log" 2>&1; then
  python3 - "$ROOT/tmp/demo.json" <<'PY' || fail "the demo's result"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["state"] == "done" and j["test_accuracy"] >= 0.88, (j["state"], j["test_accuracy"])
print(f"ok: gflex demo from the packages: {j['state']}, test accuracy {j['test_accuracy']:.4f}")
PY
else
  fail "gflex demo in the clean root: $(tail -5 "$ROOT/demo.log")"
fi
echo "demo ran in $((SECONDS - start)) s"

for unit in core node; do
  f=$ROOT/usr/lib/systemd/system/gflex-$unit.service
  grep -q "^ExecStart=/usr/bin/gflex-$unit " "$f" 2>/dev/null &&
    echo "ok: gflex-$unit.service starts /usr/bin/gflex-$unit" ||
    fail "gflex-$unit.service: no ExecStart=/usr/bin/gflex-$unit"
done
for f in usr/include/gflex/gflex.hpp usr/lib/x86_64-linux-gnu/cmake/gflex/gflexConfig.cmake \
         usr/lib/x86_64-linux-gnu/pkgconfig/gflex.pc usr/share/gflex/core.env.example \
         usr/share/gflex/jobs/fashion-mlp.toml usr/share/gflex/jobs/lm.toml; do
  [ -e "$ROOT/$f" ] || fail "/$f is not installed"
done

# The core with its dashboard, from the packages: the page and Chart.js are served.
in_root gflex-core init --data-dir /var/lib/gflex-core >/dev/null || fail "gflex-core init"
chroot "$ROOT" /bin/sh -c 'gflex-core --listen 127.0.0.1:17401 --data-dir /var/lib/gflex-core \
  --http-listen 127.0.0.1:17481 >/tmp/core.log 2>&1 & echo $! >/tmp/core.pid'
for _ in $(seq 50); do grep -q "dashboard on" "$ROOT/tmp/core.log" && break; sleep 0.2; done
python3 - <<'PY' || fail "the packaged core's dashboard: $(tail -3 "$ROOT/tmp/core.log")"
import urllib.request
page = urllib.request.urlopen("http://127.0.0.1:17481/", timeout=10).read().decode()
chart = urllib.request.urlopen("http://127.0.0.1:17481/chart.js", timeout=10).read()
assert "GPUFlex core" in page and len(chart) > 100000, len(chart)
print(f"ok: the packaged core serves its dashboard and Chart.js ({len(chart)} bytes)")
PY
kill -TERM "$(cat "$ROOT/tmp/core.pid")" 2>/dev/null || true

if [ "$failures" -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
