// Request traces in the Mooncake format, for cache-policy work (docs/design.md; the files in
// shared/traces): JSON lines, one request each,
//   {"timestamp": ms, "input_length": tokens, "output_length": tokens, "hash_ids": [...]}
// where hash_ids are the prompt's blocks, prefix-chained (two requests share id k at position i
// only if their first i+1 blocks are equal). timestamp and hash_ids are required; the lengths
// default to 0; other keys (any JSON value) are skipped, so traces with extra fields load.
// A malformed line is an error that names the line and what is wrong with it; nothing is
// guessed. Pure functions, no state: safe from any thread.
#pragma once

#include <cstdint>
#include <istream>
#include <string_view>
#include <vector>

#include "kvclient/status.h"

namespace kvtier::tier {

struct TraceRequest {
  uint64_t timestamp_ms = 0;
  uint64_t input_length = 0;
  uint64_t output_length = 0;
  std::vector<uint64_t> hash_ids;
};

// Parses one line (without its newline). The error says what is wrong, not where (the caller
// knows the line number).
[[nodiscard]] Status ParseTraceLine(std::string_view line, TraceRequest* out);

// Reads every request of a trace; blank lines are skipped. Errors: "line N: ...".
[[nodiscard]] Status ReadTrace(std::istream& in, std::vector<TraceRequest>* out);

}  // namespace kvtier::tier
