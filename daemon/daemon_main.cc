// RunKvtierd: the whole of kvtierd (argument handling, start-up, serving, a clean stop) as a
// function, so that kvtierd's main is one call and a test's daemon can be the same program with
// hooks (DaemonHooks) that kvtierd never sets.
#include "daemon/daemon_main.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "daemon/admin/admin_server.h"
#include "daemon/admin/audit_log.h"
#include "daemon/config/config.h"
#include "daemon/owned_dir.h"
#include "daemon/sd_notify.h"
#include "daemon/server/server.h"
#include "daemon/tier/spill_setup.h"
#include "daemon/tier/warm_restart.h"
#include "daemon/tenant/tenant_registry.h"
#include "ipc/base/errno_status.h"
#include "ipc/socket/seqpacket.h"
#include "ipc/wire/protocol.h"

namespace kvtier {
namespace {

constexpr char kUsage[] =
    "usage: kvtierd --config FILE        run the daemon in the foreground\n"
    "       kvtierd --check-config FILE  validate FILE and exit (0: valid, 2: invalid)\n"
    "       kvtierd --version\n";

// Every session is a file descriptor, and so are spill segments, listeners and eventfds: the
// soft RLIMIT_NOFILE (often 1024) is raised to the hard limit, and a max_sessions that would
// still not fit, with room for the rest, is refused now rather than met by accept failing.
// (With an SSD tier, OpenSpillTier checks segments + sessions the same way.)
Status RaiseFileLimit(uint32_t max_sessions) {
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) != 0) return Status::Ok();
  if (files.rlim_cur < files.rlim_max) {
    rlimit raised = files;
    raised.rlim_cur = files.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) files = raised;
  }
  constexpr rlim_t kOtherFiles = 64;
  if (files.rlim_cur != RLIM_INFINITY && rlim_t{max_sessions} + kOtherFiles > files.rlim_cur) {
    return Status(StatusCode::kResourceExhausted,
                  "daemon.max_sessions = " + std::to_string(max_sessions) + " needs " +
                      std::to_string(rlim_t{max_sessions} + kOtherFiles) +
                      " open files, but RLIMIT_NOFILE is " + std::to_string(files.rlim_cur) +
                      " (hard limit " + std::to_string(files.rlim_max) +
                      "): raise LimitNOFILE= (systemd) or ulimit -n, or lower max_sessions");
  }
  return Status::Ok();
}

// The watchdog's timeout while an upgrade stops this process and starts the new one: the
// unit's TimeoutStartSec= (10 min), which bounds a start anyway.
constexpr uint64_t kUpgradeWatchdogUs = 600'000'000;

int Serve(const std::string& config_path, const DaemonHooks& hooks) {
  // What the service manager passed (the DRAM tier a previous process handed over), taken at
  // once so that nothing started later inherits it.
  std::vector<ListenFd> passed = SdListenFds();
  // The binary `kvtierctl upgrade` re-executes: this one's path, read now, while it still names
  // this file (once a package replaced it, /proc/self/exe says "(deleted)").
  std::string executable;
  {
    char path[PATH_MAX];
    const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
    if (n > 0) executable.assign(path, static_cast<size_t>(n));
  }
  Result<Config> config = LoadConfig(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "kvtierd: %s\n", config.status().message().c_str());
    return 2;
  }
  // Logs go to stderr (the terminal, or the journal under systemd); stdout stays free.
  spdlog::set_default_logger(spdlog::stderr_color_mt("kvtierd"));
  spdlog::set_level(spdlog::level::from_str(config->log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ kvtierd: %v");
  // Signals go to the server's signalfd; block them before any thread exists.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // The run directory holds the control socket: 0755, because other uids must reach the
  // socket; the socket's own mode decides who may connect.
  if (Status s = PrepareOwnedDir(config->run_dir, 0755, "run_dir"); !s.ok()) {
    spdlog::critical("{}", s.message());
    return 1;
  }
  // From here on everything kvtierd creates (socket, later spill files and keys) starts
  // owner-only and is opened up explicitly where the config says so.
  umask(077);
  spdlog::info("kvtierd {} starting with {}", KVT_VERSION, config->source.string());
  if (const char* cold = std::getenv("KVTIER_UPGRADE_COLD"); cold != nullptr) {
    spdlog::warn("the upgrade could not hand the DRAM tier over ({}): it starts empty", cold);
    unsetenv("KVTIER_UPGRADE_COLD");
  }
  // Fail fast, before spending seconds pre-faulting pools, if another instance serves here or
  // a socket's directory would let another user replace the socket.
  if (Status s = EnsureNoListener(config->socket_path.string()); !s.ok()) {
    spdlog::critical("{}", s.message());
    return 1;
  }
  if (Status s = EnsureNoListener(config->admin.socket.string(), SOCK_STREAM); !s.ok()) {
    spdlog::critical("admin socket: {}", s.message());
    return 1;
  }
  if (Status s = RaiseFileLimit(config->max_sessions); !s.ok()) {
    spdlog::critical("{}", s.message());
    return 1;
  }
  std::vector<std::string> kept_log;
  KeptState kept;
  if (config->keep_dram_on_restart) {
    kept = TakeKeptState(std::move(passed), *config, &kept_log);
  } else {
    ReleaseKeptState(std::move(passed), &kept_log);
  }
  for (const std::string& line : kept_log) spdlog::warn("{}", line);
  std::vector<std::string> warnings;
  auto tenants = TenantRegistry::Create(*config, &warnings, &kept.pools);
  if (!tenants.ok()) {
    spdlog::critical("{}", tenants.status().ToString());
    return 1;
  }
  for (const std::string& w : warnings) spdlog::warn("{}", w);
  for (const auto& t : (*tenants)->tenants()) {
    spdlog::info("tenant '{}': pool {} MiB, index for {} blocks{}{}", t->config.name,
                 t->config.dram_bytes >> 20, t->config.max_blocks,
                 t->memory.huge_pages() ? ", huge pages" : "", t->memory.locked() ? ", locked" : "");
  }
  std::vector<std::string> spill_log;
  // The keys outlive the server, whose purges and rotate-key use them.
  std::unique_ptr<SpillKeys> spill_keys;
  auto workers =
      OpenSpillTier(*config, **tenants, &spill_log, hooks.wrap_spill_device, &spill_keys);
  for (const std::string& line : spill_log) {
    if (line.starts_with("warning: ")) {
      spdlog::warn("{}", line.substr(9));
    } else if (line.starts_with("error: ")) {
      spdlog::error("{}", line.substr(7));
    } else {
      spdlog::info("{}", line);
    }
  }
  if (!workers.ok()) {
    spdlog::critical("{}", workers.status().ToString());
    return 1;
  }
  // After the SSD tier's recovery, which the kept blocks are reconciled with.
  std::vector<std::string> adopt_log;
  AdoptKeptBlocks(**tenants, kept, &adopt_log);
  for (const std::string& line : adopt_log) spdlog::info("{}", line);
  std::vector<SpillWorker*> worker_ptrs;
  for (auto& w : *workers) worker_ptrs.push_back(w.get());
  auto audit = AuditLog::Open(config->admin.audit_log);
  if (!audit.ok()) {
    spdlog::critical("{}", audit.status().ToString());
    return 1;
  }
  (*audit)->Record("start", "pid=" + std::to_string(getpid()) + " config=" +
                                AuditLog::Quote(config->source.string()));
  AdminInbox inbox;
  auto server =
      Server::Open(*config, tenants->get(), worker_ptrs, &inbox, audit->get(), spill_keys.get());
  if (!server.ok()) {
    spdlog::critical("{}", server.status().ToString());
    return 1;
  }
  spdlog::info("GPU: {}", (*server)->gpu().summary);
  if (!executable.empty()) (*server)->set_executable(executable);
  auto admin = AdminServer::Open(config->admin, audit->get(), &inbox);
  if (!admin.ok()) {
    spdlog::critical("admin socket {}: {}", config->admin.socket.string(),
                     admin.status().ToString());
    return 1;
  }
  spdlog::info("serving on {} (mode {:o}); admin socket {} (mode {:o}){}; Ctrl-C or SIGTERM "
               "stops, SIGHUP reloads",
               config->socket_path.string(), config->socket_mode, config->admin.socket.string(),
               config->admin.socket_mode,
               config->admin.metrics_listen.empty()
                   ? std::string()
                   : "; metrics on http://" + config->admin.metrics_listen + "/metrics");
  // After an upgrade's exec the watchdog was stretched for the stop and this start (below):
  // READY=1 sets it back to the unit's WatchdogSec= ($WATCHDOG_USEC, unchanged by the exec).
  const bool watched = SdWatchdogIntervalUs() > 0;
  SdNotify(std::string("READY=1\nSTATUS=serving") +
           (watched ? std::string("\nWATCHDOG_USEC=") + std::getenv("WATCHDOG_USEC") : ""));
  const Status run = (*server)->Run();
  const bool upgrade = run.ok() && (*server)->upgrade_ready();
  if (upgrade) {
    // The same process (pid) comes back: to systemd this is a reload until its READY=1.
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    // Nothing pings the watchdog from here until the new process serves (the stop, then its
    // start: recovery of the SSD tier can take minutes): stretch it to the unit's start
    // timeout; the new process's READY=1 sets it back.
    SdNotify("RELOADING=1\nMONOTONIC_USEC=" +
             std::to_string(static_cast<uint64_t>(now.tv_sec) * 1'000'000u +
                            static_cast<uint64_t>(now.tv_nsec) / 1000u) +
             (watched ? "\nWATCHDOG_USEC=" + std::to_string(kUpgradeWatchdogUs) : "") +
             "\nSTATUS=upgrading: re-executing " + executable);
  } else {
    SdNotify("STOPPING=1");
  }
  // The server answers commands still waiting, the inbox refuses new ones, and the admin
  // thread writes those answers before it stops.
  server->reset();
  inbox.Close();
  admin->reset();
  // Workers finish their in-flight I/O and sync the spill files; pools outlive them.
  workers->clear();
  if (upgrade) {
    (*audit)->Record("stop", "pid=" + std::to_string(getpid()) + " result=upgrade binary=" +
                                 AuditLog::Quote(executable));
    spdlog::info("stopped for the upgrade; re-executing {}{}", executable,
                 config->keep_dram_on_restart ? " with the DRAM tier" : "");
    spdlog::default_logger()->flush();
    std::string cold_reason;
    const Status exec = ExecWithKeptState(**tenants, *config, config->keep_dram_on_restart,
                                          {executable, "--config", config_path}, &cold_reason);
    // Only on failure; fds 3 on are no longer what they were: exit without touching them (the
    // service manager's Restart= starts kvtierd again, cold).
    spdlog::critical("upgrade failed, exiting: {}", exec.ToString());
    spdlog::default_logger()->flush();
    _exit(1);
  }
  if (run.ok() && config->keep_dram_on_restart && std::getenv("NOTIFY_SOCKET") != nullptr) {
    auto handed = HandOverKeptState(**tenants, *config);
    if (handed.ok()) {
      spdlog::info("{}", *handed);
    } else {
      spdlog::warn("the DRAM tier is not kept for the next start: {}", handed.status().message());
    }
  }
  if (!run.ok()) {
    spdlog::critical("{}", run.ToString());
    return 1;
  }
  (*audit)->Record("stop", "pid=" + std::to_string(getpid()) + " result=ok");
  spdlog::info("stopped cleanly");
  return 0;
}

}  // namespace

int RunKvtierd(int argc, char** argv, const DaemonHooks& hooks) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 1 && args[0] == "--version") {
    std::printf("kvtierd %s (protocol version %u)\n", KVT_VERSION,
                unsigned{wire::kProtocolVersion});
    return 0;
  }
  if (args.size() == 2 && args[0] == "--check-config") {
    auto config = LoadConfig(args[1]);
    if (!config.ok()) {
      std::fprintf(stderr, "kvtierd: %s\n", config.status().message().c_str());
      return 2;
    }
    std::printf("%s: valid (%zu tenant(s), socket %s)\n", config->source.c_str(),
                config->tenants.size(), config->socket_path.c_str());
    return 0;
  }
  if (args.size() == 2 && args[0] == "--config") return Serve(args[1], hooks);
  std::fputs(kUsage, stderr);
  return 2;
}

}  // namespace kvtier
