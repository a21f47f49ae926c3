// PrepareOwnedDir: a directory kvtierd keeps its files in (the run directory, the spill
// directory). Thread-safety: a free function; call it at start-up.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string_view>

#include "kvclient/status.h"

namespace kvtier {

// Creates `dir` (and its parents) with exactly `mode` if it is missing, then requires it to be
// a directory owned by kvtierd's effective uid and writable by nobody else: otherwise another
// user could replace what kvtierd keeps there. Errors name `key` (the config key, e.g.
// "run_dir") and the directory, and say what to change.
Status PrepareOwnedDir(const std::filesystem::path& dir, mode_t mode, std::string_view key);

}  // namespace kvtier
