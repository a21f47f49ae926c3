// Fuzzes the config loader: ParseConfig (toml++ and every key's validation) and ParseSize.
//
// Input: the text of a config file. ParseSize also gets the whole input, and each line's
// quoted strings, as size strings.
//
// Checked besides "no crash": an error is kInvalidArgument and starts with the file name (the
// "FILE:LINE: key ..." form of config.h); a config that loads satisfies every bound config.h
// documents, and ParseSize agrees with a plain reading of its grammar and with FormatSize.
#include <sys/un.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <string_view>

#include "daemon/config/config.h"
#include "daemon/spill/spill_format.h"
#include "daemon/spill/spill_store.h"
#include "ipc/base/units.h"
#include "tests/fuzz/fuzz_check.h"

namespace kvtier::fuzz {
namespace {

constexpr std::string_view kSource = "/etc/kvtier/fuzz.toml";
constexpr size_t kMaxSocketPath = sizeof(sockaddr_un::sun_path) - 1;

// ParseSize's grammar read plainly: digits, optional spaces, an optional unit; the value must
// fit in 64 bits.
void CheckParseSize(std::string_view text) {
  const Result<uint64_t> parsed = ParseSize(text);
  size_t pos = 0;
  bool overflow = false;
  uint64_t value = 0;
  while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
    overflow = overflow || __builtin_mul_overflow(value, uint64_t{10}, &value) ||
               __builtin_add_overflow(value, static_cast<uint64_t>(text[pos] - '0'), &value);
    ++pos;
  }
  const size_t digits = pos;
  while (pos < text.size() && text[pos] == ' ')
    ++pos;
  const std::string_view unit = text.substr(pos);
  uint64_t scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  if (unit == "KiB") scale = kKiB;
  if (unit == "MiB") scale = kMiB;
  if (unit == "GiB") scale = kGiB;
  if (unit == "TiB") scale = kTiB;
  uint64_t bytes = 0;
  const bool valid = digits > 0 && scale != 0 && !overflow && text.back() != ' ' &&
                     !__builtin_mul_overflow(value, scale, &bytes);
  const std::string what = "ParseSize(\"" + std::string(text) + "\")";
  KVT_FUZZ_CHECK(parsed.ok() == valid,
                 what + (parsed.ok() ? " accepted" : " refused: " + parsed.status().message()));
  if (!parsed.ok()) {
    KVT_FUZZ_CHECK(parsed.status().code() == StatusCode::kInvalidArgument, what);
    return;
  }
  KVT_FUZZ_CHECK(*parsed == bytes, what + " = " + std::to_string(*parsed));
  // FormatSize "reads back through the config's sizes".
  const std::string formatted = FormatSize(*parsed);
  const Result<uint64_t> again = ParseSize(formatted);
  KVT_FUZZ_CHECK(again.ok() && *again == *parsed, what + " formats as " + formatted);
}

bool IsTenantName(std::string_view name) {
  if (name.empty() || name.size() > 31 || name == "." || name == "..") return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool SocketModeOk(mode_t mode) {
  return mode <= 0777 && (mode & 0600) == 0600;
}

// The bounds config.h documents for a config that loaded.
void CheckConfig(const Config& c) {
  const auto check = [](bool ok, const char* what) {
    KVT_FUZZ_CHECK(ok, what);
  };
  check(c.source == std::filesystem::path(kSource), "source");
  check(c.run_dir.is_absolute(), "run_dir absolute");
  check(c.socket_path.is_absolute() && c.socket_path.has_filename(), "socket absolute");
  check(c.socket_path != c.run_dir, "socket is not run_dir");
  check(c.socket_path.native().size() <= kMaxSocketPath, "socket path fits sun_path");
  check(SocketModeOk(c.socket_mode), "daemon.socket_mode");
  const std::set<std::string_view> levels = {"trace", "debug",    "info", "warn",
                                             "error", "critical", "off"};
  check(levels.contains(c.log_level), "log_level");
  check(c.max_sessions >= 1 && c.max_sessions <= 65536, "max_sessions");
  check(c.max_leases_per_session >= 1 && c.max_leases_per_session <= (1u << 24),
        "max_leases_per_session");
  check(c.poll_spin_us <= 10000, "poll_spin_us");
  // [pool]
  check(IsPowerOfTwo(c.slab_bytes) && c.slab_bytes >= 2 * kMiB && c.slab_bytes <= kGiB,
        "slab_bytes");
  check(c.max_block_bytes >= 4 * kKiB && c.max_block_bytes <= kGiB, "pool.max_block_bytes");
  // [spill]
  const SpillConfig& s = c.spill;
  check(SpillSizing::SegmentError(s.segment_bytes).empty(), "segment_bytes");
  check(s.segment_bytes % (2 * kMiB) == 0 && s.segment_bytes >= 2 * kMiB &&
            s.segment_bytes <= 64 * kGiB,
        "segment_bytes bounds");
  check(s.max_block_bytes >= 4 * kKiB && s.max_block_bytes <= 64 * kMiB, "spill.max_block_bytes");
  check(spill::kSegmentHeaderBytes + spill::RecordBytes(s.max_block_bytes) <= s.segment_bytes,
        "a largest record fits a segment");
  check(s.staging_buffers >= 1 && s.staging_buffers <= 256, "staging_buffers");
  check(s.queue_depth > s.staging_buffers && s.queue_depth <= 4096, "queue_depth");
  check(s.threads >= 1 && s.threads <= 64, "spill.threads");
  check(s.fallback_io_threads >= 1 && s.fallback_io_threads <= 64, "fallback_io_threads");
  check(s.demote_above >= 0.05 && s.demote_above <= 0.95, "demote_above");
  check(s.dir.empty() || s.dir.is_absolute(), "spill.dir absolute");
  check(s.key_file.empty() || (s.key_file.is_absolute() && s.key_file.has_filename()),
        "key_file absolute");
  check(s.key_file.empty() || s.key_credential.empty(), "one key source");
  check(!s.create_key || !s.key_file.empty(), "create_key needs key_file");
  check(s.dir.empty() || !s.key_file.empty() || !s.key_credential.empty(), "dir needs a key");
  check(s.dir.empty() || (s.keyring_file.is_absolute() && s.keyring_file.has_filename()),
        "an SSD tier has an absolute keyring path");
  check(s.dir.empty() || s.keyring_file.lexically_relative(s.dir).empty() ||
            *s.keyring_file.lexically_relative(s.dir).begin() == "..",
        "the keyring is not inside spill.dir");
  check(s.keyring_file.empty() || s.keyring_file != s.key_file, "the keyring is no key file");
  check(s.previous_key_file.empty() || s.previous_key_credential.empty(), "one previous key");
  check((s.previous_key_file.empty() && s.previous_key_credential.empty()) || !s.dir.empty(),
        "a previous key needs dir");
  check(s.key_credential.empty() ||
            (s.key_credential.size() <= 255 && s.key_credential != "." &&
             s.key_credential != ".." && s.key_credential.find('/') == std::string::npos &&
             s.key_credential.find('\0') == std::string::npos),
        "key_credential is one path component");
  // [admin]
  const AdminConfig& a = c.admin;
  check(a.socket.is_absolute() && a.socket.has_filename(), "admin.socket absolute");
  check(a.socket != c.socket_path && a.socket != c.run_dir, "admin.socket differs");
  check(a.socket.native().size() <= kMaxSocketPath, "admin.socket fits sun_path");
  check(SocketModeOk(a.socket_mode), "admin.socket_mode");
  check(a.audit_log.is_absolute() && a.audit_log.has_filename(), "audit_log absolute");
  check(a.metrics_listen.empty() == (a.metrics_port == 0), "metrics port iff listen");
  check(a.metrics_listen.empty() || !a.metrics_address.empty(), "metrics address");
  // [[tenant]]
  check(!c.tenants.empty(), "at least one tenant");
  std::set<std::string> names;
  std::set<uint32_t> uids;
  std::set<uint32_t> gids;
  uint64_t sessions = 0;
  bool default_found = c.default_tenant.empty();
  constexpr uint32_t kMaxTtl = 10u * 366 * 24 * 3600;
  for (const TenantConfig& t : c.tenants) {
    check(IsTenantName(t.name), "tenant name");
    check(names.insert(t.name).second, "tenant names unique");
    default_found = default_found || t.name == c.default_tenant;
    for (uint32_t uid : t.uids) {
      check(uid < std::numeric_limits<uint32_t>::max(), "uid is not -1");
      check(uids.insert(uid).second, "uids unique");
    }
    for (uint32_t gid : t.gids) {
      check(gid < std::numeric_limits<uint32_t>::max(), "gid is not -1");
      check(gids.insert(gid).second, "gids unique");
    }
    check(t.dram_bytes > 0 && t.dram_bytes % c.slab_bytes == 0, "dram_bytes");
    check(c.max_block_bytes <= t.dram_bytes, "a largest block fits every pool");
    if (t.ssd_bytes != 0) {
      check(!s.dir.empty(), "ssd_bytes needs spill.dir");
      check(t.ssd_bytes % s.segment_bytes == 0 && t.ssd_bytes / s.segment_bytes >= 2,
            "ssd_bytes is 2+ segments");
    }
    check(t.max_blocks >= 1 && t.max_blocks <= (uint64_t{1} << 31), "max_blocks");
    uint64_t most = 0;
    if (__builtin_add_overflow(t.dram_bytes, t.ssd_bytes, &most)) {
      most = std::numeric_limits<uint64_t>::max();
    }
    check(t.max_blocks <= most / (4 * kKiB), "max_blocks fits the pool and SSD");
    check(t.default_ttl_seconds <= kMaxTtl && t.max_ttl_seconds <= kMaxTtl, "ttl bounds");
    check(t.max_ttl_seconds == 0 || t.default_ttl_seconds <= t.max_ttl_seconds,
          "default ttl under the cap");
    check(t.max_sessions >= 1, "tenant max_sessions set");
    sessions += t.max_sessions;
  }
  check(sessions <= c.max_sessions, "tenant sessions add up to at most daemon.max_sessions");
  check(default_found, "default_tenant names a tenant");
}

}  // namespace
}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;
  using namespace kvtier::fuzz;
  // LoadConfig refuses files over 1 MiB; larger inputs test nothing new.
  if (size > (1u << 20)) return 0;
  const std::string_view text = Text(data, size);
  if (size <= 64) CheckParseSize(text);
  // Every quoted string on a line is a candidate size ("64MiB").
  for (size_t open = text.find('"'); open != std::string_view::npos;) {
    const size_t close = text.find('"', open + 1);
    if (close == std::string_view::npos) break;
    const std::string_view quoted = text.substr(open + 1, close - open - 1);
    if (quoted.size() <= 64 && quoted.find('\n') == std::string_view::npos) CheckParseSize(quoted);
    open = text.find('"', close + 1);
  }
  Result<Config> config = ParseConfig(text, std::string(kSource));
  if (!config.ok()) {
    KVT_FUZZ_CHECK(config.status().code() == StatusCode::kInvalidArgument,
                   config.status().ToString());
    KVT_FUZZ_CHECK(config.status().message().starts_with(std::string(kSource) + ":"),
                   "error without FILE:LINE: " + config.status().message());
    return 0;
  }
  CheckConfig(*config);
  return 0;
}
