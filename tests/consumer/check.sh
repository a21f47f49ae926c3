#!/usr/bin/env bash
# Installs a kvtier build into a temporary prefix (cmake --install), builds programs against the
# installed libkvclient both ways users do (find_package(kvclient), and pkg-config kvclient),
# and runs each against the installed kvtierd: each stores and reads back blocks.
#   tests/consumer/check.sh BUILD_DIR
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
build="$(cd "${1:?usage: tests/consumer/check.sh BUILD_DIR}" && pwd)"
work=$(mktemp -d /tmp/kvtier-consumer-XXXXXX)
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "consumer check: $*" >&2; exit 1; }

prefix="$work/prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name 'libkvclient.so' | head -1)")
[ -d "$libdir" ] || fail "cmake --install put no libkvclient.so under $prefix"
[ -f "$libdir/pkgconfig/kvclient.pc" ] || fail "no kvclient.pc in $libdir/pkgconfig"
[ -f "$libdir/cmake/kvclient/kvclientConfig.cmake" ] || fail "no CMake package in $libdir/cmake"

# find_package(kvclient), shared and static.
cmake -S "$src/tests/consumer" -B "$work/cmake" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
  -DKVCLIENT_EXAMPLES="$src/libkvclient/examples" >/dev/null
cmake --build "$work/cmake" >/dev/null

# pkg-config, shared.
export PKG_CONFIG_PATH="$libdir/pkgconfig"
[ "$(pkg-config --modversion kvclient)" = "$(cat "$build/kvtier-version")" ] ||
  fail "pkg-config says version $(pkg-config --modversion kvclient), the build $(cat "$build/kvtier-version")"
# shellcheck disable=SC2046  # pkg-config's output is a list of flags
cc -o "$work/pc_c" "$src/libkvclient/examples/example_c.c" $(pkg-config --cflags --libs kvclient)
# shellcheck disable=SC2046
c++ -std=c++20 -o "$work/pc_cxx" "$src/libkvclient/examples/example.cc" \
  $(pkg-config --cflags --libs kvclient)

# The installed daemon, on a private socket.
cat > "$work/kvtierd.toml" <<TOML
config_version = 1
[daemon]
run_dir = "run"
default_tenant = "consumer"
[pool]
slab_bytes = "2MiB"
max_block_bytes = "2MiB"
[admin]
audit_log = "run/audit.log"
[[tenant]]
name = "consumer"
dram_bytes = "64MiB"
TOML
# Each program against a fresh installed kvtierd (the examples store fixed keys).
start_daemon() {
  rm -rf "$work/run" && mkdir -p "$work/run"
  "$prefix/bin/kvtierd" --config "$work/kvtierd.toml" 2>"$work/kvtierd.log" &
  daemon_pid=$!
  for _ in $(seq 1 300); do
    [ -S "$work/run/kvtierd.sock" ] && return 0
    kill -0 "$daemon_pid" 2>/dev/null || fail "kvtierd exited: $(cat "$work/kvtierd.log")"
    sleep 0.1
  done
  fail "kvtierd made no socket in 30 s: $(cat "$work/kvtierd.log")"
}
stop_daemon() {
  kill "$daemon_pid" && wait "$daemon_pid" || fail "kvtierd did not exit cleanly: $(cat "$work/kvtierd.log")"
  daemon_pid=""
}
for program in "$work/cmake/consumer_cxx" "$work/cmake/consumer_cxx_static" \
               "$work/cmake/consumer_c" "$work/pc_c" "$work/pc_cxx"; do
  start_daemon
  out=$(LD_LIBRARY_PATH="$libdir" "$program" "$work/run/kvtierd.sock" 2>&1) ||
    fail "$(basename "$program") failed: $out"
  stop_daemon
  echo "$(basename "$program"): ok"
done
# The shared ones loaded the installed library, under its SONAME.
LD_LIBRARY_PATH="$libdir" ldd "$work/pc_c" | grep -q "libkvclient.so.1 => $libdir/" ||
  fail "pc_c does not load $libdir/libkvclient.so.1"
echo "consumer check: passed"
