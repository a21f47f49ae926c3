#include "tests/support/test_support.h"

#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <catch2/catch.hpp>

namespace kvtier::testing {

TempDir::TempDir() {
  std::string templ = (std::filesystem::temp_directory_path() / "kvtier-test-XXXXXX").string();
  if (mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::unique_ptr<DaemonProcess> DaemonProcess::Start(const DaemonOptions& o) {
  return Start(o, {});
}

std::unique_ptr<DaemonProcess> DaemonProcess::Start(const DaemonOptions& o,
                                                    std::vector<StoredFd> passed) {
  std::unique_ptr<DaemonProcess> d(new DaemonProcess());
  const auto dir = d->dir_.path();
  d->socket_path_ = (dir / "run" / "kvtierd.sock").string();
  {
    std::ofstream cfg(dir / "kvtierd.toml");
    cfg << "config_version = 1\n[daemon]\nrun_dir = \"run\"\nsocket_mode = \"" << o.socket_mode
        << "\"\nlog_level = \"info\"\n"
        << (o.default_tenant ? "default_tenant = \"test\"\n" : "")
        << "max_sessions = " << o.max_sessions << "\n"
        << "max_leases_per_session = " << o.max_leases_per_session << "\n"
        << "poll_spin_us = " << o.poll_spin_us << "\n"
        << o.extra_toml << "\n[pool]\nslab_bytes = " << o.slab_bytes
        << "\nmax_block_bytes = " << o.max_block_bytes
        << "\nhuge_pages = \"try\"\nlock_memory = \"try\"\nzero_freed = "
        << (o.zero_freed ? "true" : "false") << "\n"
        << "[[tenant]]\nname = \"test\"\ndram_bytes = " << o.dram_bytes
        << "\nmax_blocks = " << o.max_blocks
        << "\ndefault_ttl_seconds = " << o.default_ttl_seconds
        << "\nmax_ttl_seconds = " << o.max_ttl_seconds << "\nuids = [";
    for (size_t i = 0; i < o.tenant_uids.size(); ++i) cfg << (i ? ", " : "") << o.tenant_uids[i];
    cfg << "]\n";
    if (!o.spill_dir.empty()) {
      cfg << "ssd_bytes = " << o.ssd_bytes << "\n[spill]\ndir = \"" << o.spill_dir.string()
          << "\"\nkey_file = \"" << (o.spill_dir.parent_path() / "kvtier-test.key").string()
          << "\"\ncreate_key = true\nsegment_bytes = " << o.segment_bytes << "\n"
          << o.spill_toml << "\n";
    }
    cfg << "[admin]\naudit_log = \"run/audit.log\"\n" << o.admin_toml << "\n";
    for (const DaemonOptions::Tenant& t : o.more_tenants) {
      cfg << "[[tenant]]\nname = \"" << t.name << "\"\ndram_bytes = " << t.dram_bytes
          << "\nuids = [";
      for (size_t i = 0; i < t.uids.size(); ++i) cfg << (i ? ", " : "") << t.uids[i];
      cfg << "]\n";
    }
  }
  // Readiness comes as sd_notify's READY=1 on a datagram socket of our own.
  const std::string notify_path = (dir / "notify.sock").string();
  int notify = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", notify_path.c_str());
  if (bind(notify, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    d->status_taken_ = true;  // nothing started
    close(notify);
    throw std::runtime_error("bind(notify socket) failed");
  }
  const std::string log_path = (dir / "kvtierd.log").string();
  const std::string cfg_path = (dir / "kvtierd.toml").string();
  d->pid_ = fork();
  if (d->pid_ == 0) {
    setenv("NOTIFY_SOCKET", notify_path.c_str(), 1);
    if (!passed.empty()) {
      // As systemd does: the passed fds at 3, 4, ... (moved out of the way first, so that
      // dup2 never overwrites one still to be moved), named in LISTEN_FDNAMES.
      std::vector<int> high;
      for (const StoredFd& p : passed) high.push_back(fcntl(p.fd, F_DUPFD, 1000));
      std::string names;
      for (size_t i = 0; i < high.size(); ++i) {
        dup2(high[i], 3 + static_cast<int>(i));  // dup2 clears FD_CLOEXEC on the new fd
        names += (i > 0 ? ":" : "") + passed[i].name;
      }
      for (int fd : high) close(fd);
      setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
      setenv("LISTEN_FDS", std::to_string(passed.size()).c_str(), 1);
      setenv("LISTEN_FDNAMES", names.c_str(), 1);
    }
    if (o.watchdog_usec > 0) {
      setenv("WATCHDOG_USEC", std::to_string(o.watchdog_usec).c_str(), 1);
      setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
    }
    for (const auto& [name, value] : o.environment) setenv(name.c_str(), value.c_str(), 1);
    FILE* log = std::fopen(log_path.c_str(), "w");
    if (log != nullptr) dup2(fileno(log), STDERR_FILENO);
    const char* binary = o.binary.empty() ? KVTIERD_PATH : o.binary.c_str();
    execl(binary, "kvtierd", "--config", cfg_path.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // As systemd: what it passed stays in its store (a crash of this process would pass it
  // again) until the process removes it (FDSTOREREMOVE=1).
  d->stored_fds_ = std::move(passed);
  // Wait for READY=1, or for the child to die (then report its log).
  d->notify_fd_ = notify;
  for (;;) {
    pollfd p{notify, POLLIN, 0};
    if (poll(&p, 1, 200) == 1) {
      const std::vector<std::string>& got = d->Notifications();
      if (std::any_of(got.begin(), got.end(), [](const std::string& m) {
            return m.find("READY=1") != std::string::npos;
          })) {
        break;
      }
    }
    if (!d->Alive()) {
      d->status_taken_ = true;  // the exception carries the log
      throw std::runtime_error("kvtierd exited during start-up:\n" + d->Log());
    }
  }
  return d;
}

const std::vector<std::string>& DaemonProcess::Notifications() {
  char buf[4096];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
  for (;;) {
    iovec iov{buf, sizeof(buf)};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t n = recvmsg(notify_fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n <= 0) break;
    std::string text(buf, static_cast<size_t>(n));
    std::vector<int> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        fds.push_back(fd);
      }
    }
    // As systemd: fds come with FDSTORE=1 and an FDNAME= ("stored" otherwise); FDSTOREREMOVE=1
    // drops every stored fd of that name.
    const size_t name_at = text.find("FDNAME=");
    const std::string name =
        name_at == std::string::npos ? "stored" : text.substr(name_at + 7, text.find('\n', name_at) - name_at - 7);
    if (text.find("FDSTOREREMOVE=1") != std::string::npos) {
      std::erase_if(stored_fds_, [&](const StoredFd& s) {
        if (s.name != name) return false;
        close(s.fd);
        return true;
      });
    }
    for (int fd : fds) {
      if (text.find("FDSTORE=1") != std::string::npos) {
        stored_fds_.push_back(StoredFd{name, fd});
      } else {
        close(fd);
      }
    }
    notifications_.push_back(std::move(text));
  }
  return notifications_;
}

std::vector<StoredFd> DaemonProcess::TakeStoredFds() {
  Notifications();
  return std::exchange(stored_fds_, {});
}

DaemonProcess::~DaemonProcess() {
  if (status_taken_) {
    CloseNotify();
    return;
  }
  const int status = Stop();
  if (status != 0) {
    std::string log = Log();
    if (log.size() > 8192) log = "..." + log.substr(log.size() - 8192);
    FAIL_CHECK("kvtierd (pid " << pid_ << ") exited with status " << status
                               << " at the end of the test; its log:\n" << log);
  }
  CloseNotify();
}

void DaemonProcess::CloseNotify() {
  if (notify_fd_ >= 0) close(notify_fd_);
  notify_fd_ = -1;
  for (StoredFd& s : stored_fds_) close(s.fd);
  stored_fds_.clear();
}

bool DaemonProcess::Alive() {
  if (reaped_) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    reaped_ = true;
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    return false;
  }
  return true;
}

int DaemonProcess::Stop() {
  status_taken_ = true;
  if (reaped_) return exit_status_;
  if (pid_ <= 0) return -1;  // never started: kill(-1) would signal every process we may
  kill(pid_, SIGTERM);
  // Reads its notifications meanwhile, as systemd does: the fds of a clean stop come last, and
  // a full queue would hold its exit up. A daemon that has not exited after 120 s (a liveness
  // bound, as systemd's TimeoutStopSec) is killed, and the status says so.
  int status = 0;
  pid_t reaped = 0;
  for (int waited_ms = 0; (reaped = waitpid(pid_, &status, WNOHANG)) == 0; waited_ms += 10) {
    if (waited_ms == 120000) kill(pid_, SIGKILL);
    pollfd p{notify_fd_, POLLIN, 0};
    if (notify_fd_ >= 0 && poll(&p, 1, 10) == 1) Notifications();
    if (notify_fd_ < 0) usleep(10000);
  }
  if (reaped != pid_) {
    reaped_ = true;
    exit_status_ = -1000;  // waitpid failed: nothing says it exited cleanly
    return exit_status_;
  }
  if (notify_fd_ >= 0) Notifications();
  reaped_ = true;
  exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  return exit_status_;
}

std::string DaemonProcess::Log() const {
  std::ifstream in(dir_.path() / "kvtierd.log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ScopedMount::ScopedMount(const char* type, const char* options) : dir_(tmp_.path() / "mnt") {
  std::filesystem::create_directory(dir_);
  if (::mount(type, dir_.c_str(), type, 0, options) != 0) {
    why_ = std::string("mount -t ") + type + ": " + std::strerror(errno);
  } else {
    mounted_ = true;
  }
}

ScopedMount::~ScopedMount() {
  if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
}

pid_t SpawnChild(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (...) {
      code = 98;
    }
    std::fflush(nullptr);
    _exit(code);
  }
  return pid;
}

int WaitChild(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void Unavailable(std::string_view what, std::string_view why, bool whole_test) {
  const char* env = std::getenv("KVTIER_TEST_REQUIRE");
  const std::string required = "," + std::string(env == nullptr ? "" : env) + ",";
  if (required == ",all," || required.find("," + std::string(what) + ",") != std::string::npos) {
    FAIL(what << " is required here (KVTIER_TEST_REQUIRE=" << env << ") but unavailable: "
              << why);
  }
  WARN("SKIPPED (no " << what << "): " << why);
  if (whole_test) std::printf("\nkvtier-test-skipped: no %.*s\n", static_cast<int>(what.size()),
                              what.data());
}

int RunInChild(const std::function<int()>& body) { return WaitChild(SpawnChild(body)); }

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int RunCtl(const DaemonProcess& daemon, const std::vector<std::string>& args, std::string* out,
           std::string* err) {
  TempDir files;
  const auto out_path = files.path() / "stdout";
  const auto err_path = files.path() / "stderr";
  std::vector<std::string> argv = {"kvtierctl"};
  bool names_socket = false;
  for (const std::string& a : args) names_socket = names_socket || a == "--admin-socket";
  if (!names_socket) argv.insert(argv.end(), {"--admin-socket", daemon.admin_socket_path()});
  argv.insert(argv.end(), args.begin(), args.end());
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> raw;
    for (std::string& a : argv) raw.push_back(a.data());
    raw.push_back(nullptr);
    FILE* o = std::fopen(out_path.c_str(), "w");
    FILE* e = std::fopen(err_path.c_str(), "w");
    if (o == nullptr || e == nullptr) _exit(126);
    dup2(fileno(o), STDOUT_FILENO);
    dup2(fileno(e), STDERR_FILENO);
    execv(KVTIERCTL_PATH, raw.data());
    _exit(127);
  }
  const int code = WaitChild(pid);
  if (out != nullptr) *out = ReadFile(out_path);
  if (err != nullptr) *err = ReadFile(err_path);
  return code;
}

}  // namespace kvtier::testing

namespace kvtier::testing {

bool WaitUntil(const std::function<bool()>& condition, int max_wait_ms) {
  for (int waited = 0; waited <= max_wait_ms; waited += 10) {
    if (condition()) return true;
    usleep(10000);
  }
  return false;
}

}  // namespace kvtier::testing
