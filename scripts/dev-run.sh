#!/usr/bin/env bash
# Builds kvtier and runs kvtierd in the foreground with configs/kvtierd.dev.toml: socket and
# state under .run/ in this checkout, logs on the terminal, no root needed (except to install
# missing packages). Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
kvt_install_deps
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target kvtierd kvtierctl kvclient_example kvtier-bench
echo "kvtier: starting kvtierd; try: build/libkvclient/kvclient_example .run/kvtierd.sock" >&2
exec build/daemon/kvtierd --config configs/kvtierd.dev.toml
