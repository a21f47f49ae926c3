#!/usr/bin/env bash
# Builds kvtier's .deb: a Release build with the prefix /usr in build-deb/, then cpack. Prints
# the package's path on its last line. Install it with: apt install ./kvtier_VERSION_ARCH.deb
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
KVT_PACKAGES+=(dpkg-dev)  # dpkg-shlibdeps computes the package's library dependencies
kvt_install_deps
# -O2, the level the test suite runs at (GCC 12's -O3 also warns falsely inside std::string).
cmake -S . -B build-deb -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DCMAKE_C_FLAGS_RELEASE="-O2 -DNDEBUG" -DCMAKE_INSTALL_PREFIX=/usr \
  -DKVT_CONFIG_DIR=/etc/kvtier -DKVT_WERROR=ON -DKVT_BUILD_TESTS=OFF -DKVT_BUILD_BENCH=OFF >/dev/null
cmake --build build-deb -j "$(nproc)"
(cd build-deb && cpack -G DEB >/dev/null)
ls "$PWD"/build-deb/kvtier_*.deb | tail -1
