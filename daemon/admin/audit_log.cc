#include "daemon/admin/audit_log.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "daemon/owned_dir.h"
#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"
#include "ipc/base/unique_fd.h"

namespace kvtier {

namespace {

// Appends each record to the audit log with one write(2): O_APPEND keeps records whole, and
// nothing is buffered in the process, so a record survives the daemon's crash.
class FdSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit FdSink(UniqueFd fd) : fd_(std::move(fd)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t line;
    formatter_->format(msg, line);
    for (size_t done = 0; done < line.size();) {
      const ssize_t n = write(fd_.get(), line.data() + done, line.size() - done);
      if (n < 0 && errno == EINTR) continue;
      // The logger's error handler reports it on stderr, as spdlog's own file sink does.
      if (n <= 0) spdlog::throw_spdlog_ex("cannot write the audit log", errno);
      done += static_cast<size_t>(n);
    }
  }
  void flush_() override {}

 private:
  UniqueFd fd_;
};

// Opens (creating 0600) the audit log without following a symlink, and refuses a file that is
// not kvtierd's own: not regular, another owner, or a mode that lets others write it (records
// could be forged) or read it (it names tenants and operators). Group read (0640) is allowed,
// for a log collector's group.
Result<UniqueFd> OpenFile(const std::filesystem::path& path) {
  const std::string name = "the audit log " + path.string();
  // O_NONBLOCK: a FIFO without a reader fails (ENXIO) instead of blocking the start.
  UniqueFd fd(open(path.c_str(),
                   O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    if (errno == ELOOP) {
      return Status(StatusCode::kFailedPrecondition,
                    name + " is a symbolic link; kvtierd writes only a regular file there");
    }
    if (errno == ENXIO) {
      return Status(StatusCode::kFailedPrecondition, name + " is not a regular file");
    }
    return ErrnoStatus("cannot open " + name, errno);
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat(" + path.string() + ")", errno);
  if (!S_ISREG(st.st_mode)) {
    return Status(StatusCode::kFailedPrecondition, name + " is not a regular file");
  }
  if (st.st_uid != geteuid()) {
    return Status(StatusCode::kPermissionDenied,
                  name + " is owned by uid " + std::to_string(st.st_uid) +
                      ", not by kvtierd's uid " + std::to_string(geteuid()) +
                      "; chown it to kvtierd's user");
  }
  if ((st.st_mode & (S_IWGRP | S_IRWXO)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", st.st_mode & 07777);
    return Status(StatusCode::kPermissionDenied,
                  name + " has mode " + mode +
                      ", which lets others read it or group or others write it (they may have "
                      "forged records); check it, then chmod 0600 it");
  }
  if (fcntl(fd.get(), F_SETFL, O_APPEND) != 0) {
    return ErrnoStatus("fcntl(" + path.string() + ")", errno);
  }
  return fd;
}

// The length of the UTF-8 sequence at the start of `s` if it is valid (shortest form, not a
// surrogate, at most U+10FFFF) and not a C1 control (U+0080..U+009F); else 0.
size_t PrintableUtf8Length(std::string_view s) {
  const auto* byte = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = 0;
  uint32_t code = 0;
  if (byte[0] >= 0xc2 && byte[0] <= 0xdf) {
    n = 2;
    code = byte[0] & 0x1fu;
  } else if (byte[0] >= 0xe0 && byte[0] <= 0xef) {
    n = 3;
    code = byte[0] & 0x0fu;
  } else if (byte[0] >= 0xf0 && byte[0] <= 0xf4) {
    n = 4;
    code = byte[0] & 0x07u;
  } else {
    return 0;
  }
  if (s.size() < n) return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((byte[i] & 0xc0) != 0x80) return 0;
    code = (code << 6) | (byte[i] & 0x3fu);
  }
  constexpr uint32_t kShortest[] = {0, 0, 0xa0, 0x800, 0x10000};  // 0xa0: C1 controls too
  if (code < kShortest[n] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return 0;
  return n;
}

}  // namespace

Result<std::unique_ptr<AuditLog>> AuditLog::Open(const std::filesystem::path& path) {
  KVT_RETURN_IF_ERROR(PrepareOwnedDir(path.parent_path(), 0700, "admin.audit_log's directory"));
  KVT_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path));
  std::unique_ptr<AuditLog> log(new AuditLog());
  log->path_ = path;
  log->logger_ = std::make_shared<spdlog::logger>("audit", std::make_shared<FdSink>(std::move(fd)));
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
  for (size_t at = 0; at < text.size();) {
    // A record is one line of readable text: control bytes and bytes that are not UTF-8 from a
    // peer can neither forge another line nor garble a terminal.
    const auto c = static_cast<unsigned char>(text[at]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
      ++at;
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
      ++at;
    } else if (const size_t n = PrintableUtf8Length(text.substr(at)); n > 0) {
      out += text.substr(at, n);
      at += n;
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\x%02x", c);
      out += escaped;
      ++at;
    }
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
