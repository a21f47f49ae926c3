// RunKvtierd: kvtierd's whole program (arguments, start-up, serving until SIGTERM/SIGINT, a clean
// stop) as a function. kvtierd's main calls it without hooks; a test's daemon built in tests/
// calls it with hooks that reach into what only a test may change (the spill tier's devices).
// Thread-safety: call once per process, from main, before any other thread exists (it blocks
// the signals it serves before starting its threads).
#pragma once

#include "daemon/tier/spill_setup.h"

namespace kvtier {

struct DaemonHooks {
  // Wraps each tenant's spill device before its store opens (OpenSpillTier). Unset in kvtierd.
  WrapSpillDevice wrap_spill_device;
};

// argv as main's: --config FILE, --check-config FILE or --version. Returns main's exit status:
// 0 after a clean stop (or a valid config, or the version), 1 when start-up or serving failed,
// 2 for usage or an invalid config.
int RunKvtierd(int argc, char** argv, const DaemonHooks& hooks = {});

}  // namespace kvtier
