#include "daemon/admin/audit_log.h"

#include <time.h>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include "daemon/owned_dir.h"
#include "ipc/base/check.h"

namespace kvtier {

Result<std::unique_ptr<AuditLog>> AuditLog::Open(const std::filesystem::path& path) {
  KVT_RETURN_IF_ERROR(PrepareOwnedDir(path.parent_path(), 0700, "admin.audit_log's directory"));
  std::unique_ptr<AuditLog> log(new AuditLog());
  log->path_ = path;
  try {
    // kvtierd runs under umask 077: the file is created 0600.
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path.string());
    log->logger_ = std::make_shared<spdlog::logger>("audit", std::move(sink));
  } catch (const spdlog::spdlog_ex& e) {
    return Status(StatusCode::kIoError,
                  "cannot open the audit log " + path.string() + ": " + e.what());
  }
  log->logger_->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %v", spdlog::pattern_time_type::utc);
  log->logger_->set_level(spdlog::level::info);
  log->logger_->flush_on(spdlog::level::info);
  return log;
}

AuditLog::~AuditLog() {
  if (logger_ != nullptr) logger_->flush();
}

std::string AuditLog::Quote(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    // A record is one line: control characters from a peer cannot forge another.
    if (c == '"' || c == '\\') out += '\\';
    out += static_cast<unsigned char>(c) < 0x20 ? '?' : c;
  }
  out += '"';
  return out;
}

void AuditLog::Record(std::string_view event, std::string_view fields) {
  const uint64_t suppressed = refusals_suppressed_.exchange(0);
  if (suppressed > 0) {
    logger_->info("event=admin_refused_summary count={} (not recorded one by one)", suppressed);
  }
  logger_->info("event={} {}", event, fields);
}

void AuditLog::RecordRefusal(pid_t pid, uid_t uid, gid_t gid, std::string_view why) {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const auto second = static_cast<uint64_t>(ts.tv_sec);
  if (refusal_second_.exchange(second) != second) refusals_this_second_ = 0;
  if (refusals_this_second_.fetch_add(1) >= kRefusalsPerSecond) {
    ++refusals_suppressed_;
    return;
  }
  Record("admin_refused", "pid=" + std::to_string(pid) + " uid=" + std::to_string(uid) +
                              " gid=" + std::to_string(gid) + " reason=" + Quote(why));
}

}  // namespace kvtier
