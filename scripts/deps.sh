#!/usr/bin/env bash
# Installs the Debian 12 packages kvtier builds with, if any are missing. Sourced by the other
# scripts; safe to run again (it only calls apt-get when something is missing).
set -euo pipefail

KVT_PACKAGES=(cmake ninja-build g++ pkg-config libboost-dev liburing-dev libssl-dev
              libspdlog-dev libtomlplusplus-dev catch2 prometheus-cpp-dev python3 python3-venv
              clang libclang-rt-14-dev)

kvt_install_deps() {
  local missing=()
  for p in "${KVT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "kvtier: installing ${missing[*]}" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "kvtier: missing packages: ${missing[*]}; install them as root (apt-get install)" >&2
      exit 1
    fi
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
