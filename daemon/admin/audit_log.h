// AuditLog: the record of what was done to the daemon and its tenants' data, kept apart from
// the operational log in its own file (admin.audit_log, mode 0600, written by an spdlog logger):
// admin commands and who ran them, purges with what they removed, refused admin connections,
// and blocks that failed authentication on the SSD tier. Each record is one line
//   2026-11-26T20:30:01.123Z event=admin uid=0 pid=4242 command="purge a" result=ok
// and is flushed at once: an audit record must survive the daemon's crash.
// Records carry names and counts, never key bytes or block contents.
// Thread-safe (the admin thread and the event loop both write).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "kvclient/status.h"

namespace spdlog {
class logger;
}

namespace kvtier {

class AuditLog {
 public:
  // Opens (appends to) `path`, creating its directory owner-only and the file 0600 if missing.
  // Refused (kFailedPrecondition, kPermissionDenied) with what to change: a symlink or anything
  // but a regular file at `path`, a file not owned by kvtierd's euid, or one whose mode lets
  // others read it or group or others write it (0640 at most).
  static Result<std::unique_ptr<AuditLog>> Open(const std::filesystem::path& path);
  ~AuditLog();

  // `fields`: "key=value ..." after the event name; values with spaces must be quoted by the
  // caller (Quote).
  void Record(std::string_view event, std::string_view fields);
  // Refused admin connections, at most kRefusalsPerSecond recorded per second; the rest are
  // counted and summarized in the next record, so a connect flood cannot fill the disk.
  void RecordRefusal(pid_t pid, uid_t uid, gid_t gid, std::string_view why);
  // `text` in double quotes, with `"` and `\` escaped by a backslash, and every control byte
  // (DEL and C1 controls included) and every byte that is not part of valid UTF-8 as \xNN;
  // other valid UTF-8 is kept as is.
  static std::string Quote(std::string_view text);
  const std::filesystem::path& path() const { return path_; }

 private:
  static constexpr uint32_t kRefusalsPerSecond = 10;
  AuditLog() = default;

  std::filesystem::path path_;
  std::shared_ptr<spdlog::logger> logger_;
  std::atomic<uint64_t> refusal_second_{0};
  std::atomic<uint32_t> refusals_this_second_{0};
  std::atomic<uint64_t> refusals_suppressed_{0};
};

}  // namespace kvtier
