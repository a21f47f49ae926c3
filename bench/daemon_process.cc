#include "bench/daemon_process.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "bench/bench_util.h"
#include "ipc/socket/seqpacket.h"

namespace kvtier::bench {
namespace {

constexpr uint64_t kStartTimeoutNs = 120ull * 1000000000u;  // an 8 GiB pool pre-faults first

std::string ConfigText(const DaemonOptions& o,
                       const std::string& run_dir,
                       const std::string& key_file) {
  std::ostringstream s;
  s << "# Written by kvtier-bench.\n"
    << "config_version = 1\n\n"
    << "[daemon]\n"
    << "run_dir = \"" << run_dir << "\"\n"
    << "socket = \"kvtierd.sock\"\n"
    << "socket_mode = \"" << (o.more_tenants.empty() ? "0600" : "0666") << "\"\n"
    << "log_level = \"warn\"\n"
    << "poll_spin_us = " << o.poll_spin_us << "\n"
    << "default_tenant = \"bench\"\n\n"
    << "[pool]\n"
    << "slab_bytes = " << o.slab_bytes << "\n"
    << "max_block_bytes = " << o.max_block_bytes << "\n"
    << "huge_pages = \"try\"\n"
    << "lock_memory = \"try\"\n\n"
    << "[[tenant]]\n"
    << "name = \"bench\"\n"
    << "uids = []\n"
    << "gids = []\n"
    << "dram_bytes = " << o.dram_bytes << "\n"
    << "max_blocks = " << o.max_blocks << "\n";
  if (o.spill) {
    const DaemonSpillOptions& sp = *o.spill;
    s << "ssd_bytes = " << sp.ssd_bytes << "\n\n"
      << "[spill]\n"
      << "dir = \"" << sp.dir << "\"\n"
      << "key_file = \"" << key_file << "\"\n"
      << "create_key = true\n"
      << "segment_bytes = " << sp.segment_bytes << "\n"
      << "threads = " << sp.threads << "\n"
      << "staging_buffers = " << sp.staging_buffers << "\n"
      << "queue_depth = " << sp.queue_depth << "\n"
      << "demote_above = " << sp.demote_above << "\n";
  }
  for (const DaemonTenant& t : o.more_tenants) {
    s << "\n[[tenant]]\n"
      << "name = \"" << t.name << "\"\n"
      << "uids = [" << t.uid << "]\n"
      << "dram_bytes = " << t.dram_bytes << "\n";
  }
  return s.str();
}

}  // namespace

std::unique_ptr<DaemonProcess> DaemonProcess::Start(const DaemonOptions& options) {
  if (access(options.binary.c_str(), X_OK) != 0) {
    Fail("kvtierd binary '" + options.binary + "' is not executable (use --kvtierd PATH)");
  }
  std::unique_ptr<DaemonProcess> d(new DaemonProcess());
  std::string templ = (std::filesystem::temp_directory_path() / "kvtier-bench.XXXXXX").string();
  if (mkdtemp(templ.data()) == nullptr) Fail("mkdtemp: " + std::string(strerror(errno)));
  d->dir_ = templ;
  AddDirToRemoveOnFailure(d->dir_);
  // Other tenants' uids must reach the socket inside it (kvtierd makes run/ 0755).
  if (!options.more_tenants.empty()) chmod(d->dir_.c_str(), 0755);
  const std::string run_dir = d->dir_ + "/run";
  const std::string config_path = d->dir_ + "/kvtierd.toml";
  d->socket_path_ = run_dir + "/kvtierd.sock";
  d->log_path_ = d->dir_ + "/kvtierd.log";
  {
    std::ofstream config(config_path);
    config << ConfigText(options, run_dir, d->dir_ + "/spill.key");
    if (!config) Fail("cannot write " + config_path);
  }

  const uint64_t start_ns = NowNs();
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) Fail("fork: " + std::string(strerror(errno)));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
    if (options.cpu >= 0) PinToCpu(options.cpu);
    const int log = open(d->log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log >= 0) {
      dup2(log, STDOUT_FILENO);
      dup2(log, STDERR_FILENO);
    }
    execl(options.binary.c_str(), options.binary.c_str(), "--config", config_path.c_str(),
          static_cast<char*>(nullptr));
    std::fprintf(stderr, "exec %s: %s\n", options.binary.c_str(), strerror(errno));
    _exit(127);
  }
  d->pid_ = pid;
  SetChildToStopOnFailure(pid);

  // Ready when the socket accepts a connection: the daemon listens only once its pools are
  // made. (A full Client::Connect would also map, and pre-fault, the whole pool.)
  for (;;) {
    int wstatus = 0;
    if (waitpid(pid, &wstatus, WNOHANG) == pid) {
      d->pid_ = 0;
      SetChildToStopOnFailure(0);
      Fail("kvtierd exited during start-up (status " + std::to_string(wstatus) + "); its log:\n" +
           d->LogTail());
    }
    if (access(d->socket_path_.c_str(), F_OK) == 0) {
      auto probe = ConnectSeqpacket(d->socket_path_);
      if (probe.ok()) break;
      if (probe.status().code() != StatusCode::kUnavailable) {
        Fail("probing kvtierd: " + probe.status().ToString() + "; its log:\n" + d->LogTail());
      }
    }
    if (NowNs() - start_ns > kStartTimeoutNs) {
      Fail("kvtierd did not accept a client within 120 s; its log:\n" + d->LogTail());
    }
    usleep(5000);
  }
  d->startup_seconds_ = Seconds(NowNs() - start_ns);
  return d;
}

std::string DaemonProcess::LogTail() const {
  std::ifstream in(log_path_);
  std::stringstream s;
  s << in.rdbuf();
  std::string text = s.str();
  if (text.size() > 4000) text = text.substr(text.size() - 4000);
  return text;
}

bool DaemonProcess::Stop() {
  if (pid_ <= 0) return true;
  kill(pid_, SIGTERM);
  int wstatus = 0;
  bool exited = false;
  for (int i = 0; i < 3000; ++i) {  // 30 s
    const pid_t r = waitpid(pid_, &wstatus, WNOHANG);
    if (r == pid_) {
      exited = true;
      break;
    }
    usleep(10000);
  }
  if (!exited) {
    std::fprintf(stderr, "kvtier-bench: kvtierd ignored SIGTERM for 30 s; killing it\n");
    kill(pid_, SIGKILL);
    waitpid(pid_, &wstatus, 0);
  }
  pid_ = 0;
  SetChildToStopOnFailure(0);
  const bool clean = exited && WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
  if (!clean) {
    std::fprintf(stderr, "kvtier-bench: kvtierd did not stop cleanly (status %d); its log:\n%s\n",
                 wstatus, LogTail().c_str());
  }
  return clean;
}

DaemonProcess::~DaemonProcess() {
  Stop();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
  ForgetDirToRemoveOnFailure(dir_);
}

}  // namespace kvtier::bench
