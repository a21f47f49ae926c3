#include "daemon/admin/admin_commands.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include "daemon/tier/spill_setup.h"
#include "ipc/base/check.h"
#include "ipc/base/clock.h"

namespace kvtier {
namespace {

constexpr char kCommands[] =
    "commands: status | stats [--tenant T] | tenants | evict --tenant T [--tier dram|ssd] | "
    "purge TENANT | reload | drain | upgrade | rotate-key | metrics";
// A drain waits this long for in-flight requests, then closes what is left.
constexpr uint64_t kDrainGraceUs = 30'000'000;
// An upgrade's new binary has this long to check the config.
constexpr uint64_t kUpgradeCheckUs = 20'000'000;
// What of the check's output an answer quotes.
constexpr size_t kMaxCheckOutput = 2048;

Status Usage(const std::string& what) {
  return Status(StatusCode::kInvalidArgument, what + "; " + kCommands);
}

std::string Ids(const std::vector<uint32_t>& ids) {
  std::string out;
  for (uint32_t id : ids)
    out += (out.empty() ? "" : ",") + std::to_string(id);
  return out.empty() ? "-" : out;
}

// The first setting that differs between `a` and `b` and that only a restart can change, or "".
std::string RestartOnlyChange(const Config& a, const Config& b) {
  const std::vector<std::pair<const char*, bool>> checks = {
      {"daemon.run_dir", a.run_dir != b.run_dir},
      {"daemon.socket", a.socket_path != b.socket_path},
      {"daemon.socket_mode", a.socket_mode != b.socket_mode},
      {"pool.slab_bytes", a.slab_bytes != b.slab_bytes},
      {"pool.max_block_bytes", a.max_block_bytes != b.max_block_bytes},
      {"pool.huge_pages", a.huge_pages != b.huge_pages},
      {"pool.lock_memory", a.lock_memory != b.lock_memory},
      {"pool.zero_freed", a.zero_freed != b.zero_freed},
      {"spill.dir", a.spill.dir != b.spill.dir},
      {"spill.segment_bytes", a.spill.segment_bytes != b.spill.segment_bytes},
      {"spill.max_block_bytes", a.spill.max_block_bytes != b.spill.max_block_bytes},
      {"spill.staging_buffers", a.spill.staging_buffers != b.spill.staging_buffers},
      {"spill.queue_depth", a.spill.queue_depth != b.spill.queue_depth},
      {"spill.threads", a.spill.threads != b.spill.threads},
      {"spill.fallback_io_threads", a.spill.fallback_io_threads != b.spill.fallback_io_threads},
      {"spill.backend", a.spill.backend != b.spill.backend},
      {"spill.key_file", a.spill.key_file != b.spill.key_file},
      {"spill.key_credential", a.spill.key_credential != b.spill.key_credential},
      {"spill.keyring_file", a.spill.keyring_file != b.spill.keyring_file},
      {"spill.previous_key_file", a.spill.previous_key_file != b.spill.previous_key_file},
      {"spill.previous_key_credential",
       a.spill.previous_key_credential != b.spill.previous_key_credential},
      {"spill.demote_above", a.spill.demote_above != b.spill.demote_above},
      {"admin.socket", a.admin.socket != b.admin.socket},
      {"admin.socket_mode", a.admin.socket_mode != b.admin.socket_mode},
      {"admin.group", a.admin.group != b.admin.group},
      {"admin.audit_log", a.admin.audit_log != b.admin.audit_log},
      {"admin.metrics_listen", a.admin.metrics_listen != b.admin.metrics_listen},
      {"the list of [[tenant]] names", a.tenants.size() != b.tenants.size()},
  };
  for (const auto& [name, changed] : checks) {
    if (changed) return name;
  }
  for (size_t i = 0; i < a.tenants.size(); ++i) {
    const TenantConfig& x = a.tenants[i];
    const TenantConfig& y = b.tenants[i];
    const std::string prefix = "tenant '" + x.name + "' ";
    if (x.name != y.name) return "the list of [[tenant]] names";
    if (x.dram_bytes != y.dram_bytes) return prefix + "dram_bytes";
    if ((x.ssd_bytes == 0) != (y.ssd_bytes == 0)) return prefix + "ssd_bytes (to or from 0)";
    // A derived max_blocks follows ssd_bytes; the index keeps the size it started with.
    if (x.max_blocks != y.max_blocks && !y.max_blocks_derived) return prefix + "max_blocks";
  }
  return "";
}

// What an evict or purge removed, per tier.
void AddRemoved(Report& r, const EvictReport& removed) {
  r.Field("dram_blocks", removed.dram_blocks);
  r.Field("dram_bytes", removed.dram_bytes);
  r.Field("ssd_blocks", removed.ssd_blocks);
  r.Field("ssd_bytes", removed.ssd_bytes);
}

}  // namespace

AdminCommands::AdminCommands(Config& config, TenantRegistry* tenants, TierCoordinator* tier,
                             AdminHost* host, AuditLog* audit, SpillKeys* keys)
    : config_(config), tenants_(tenants), tier_(tier), host_(host), audit_(audit), keys_(keys) {}

AdminCommands::~AdminCommands() {
  const Status stopping(StatusCode::kUnavailable, "kvtierd is stopping");
  for (PendingPurge& purge : purges_) purge.done(AdminReply{stopping, {}});
  if (drain_) drain_->done(AdminReply{stopping, {}});
  if (upgrade_) {
    kill(upgrade_->pid, SIGKILL);
    while (waitpid(upgrade_->pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    upgrade_->done(AdminReply{stopping, {}});
  }
}

void AdminCommands::Run(AdminRequest request, AdminDone done) {
  const std::vector<std::string>& args = request.args;
  const std::string command = args.empty() ? "" : args[0];
  const bool read_only =
      command == "status" || command == "stats" || command == "tenants" || command == "metrics";
  const bool no_args = command == "status" || command == "tenants" || command == "reload" ||
                       command == "drain" || command == "upgrade" || command == "metrics" ||
                       command == "rotate-key";
  if (no_args && args.size() != 1) {
    return done(AdminReply{Usage("'" + command + "' takes no arguments"), {}});
  }
  if (drain_ && !read_only) {
    return done(AdminReply{
        Status(StatusCode::kUnavailable, "kvtierd is draining; it takes no more commands"), {}});
  }
  if (upgrade_ && !read_only) {
    return done(AdminReply{Status(StatusCode::kUnavailable,
                                  "kvtierd is upgrading; it takes no more commands"),
                           {}});
  }
  Result<Report> report = Status(StatusCode::kInternal, "no report");
  if (command == "status") {
    report = ServerStatus();
  } else if (command == "stats") {
    report = Stats(args);
  } else if (command == "tenants") {
    report = Tenants();
  } else if (command == "evict") {
    report = Evict(args);
  } else if (command == "purge") {
    return Purge(std::move(request), std::move(done));
  } else if (command == "reload") {
    report = Reload("kvtierctl reload");
  } else if (command == "drain") {
    return Drain(std::move(request), std::move(done));
  } else if (command == "upgrade") {
    return Upgrade(std::move(request), std::move(done));
  } else if (command == "rotate-key") {
    report = RotateKey(request);
  } else if (command == "metrics") {
    return done(AdminReply{Status::Ok(), Metrics()});
  } else {
    report = Usage(command.empty() ? "no command" : "unknown command '" + command + "'");
  }
  if (!report.ok()) return done(AdminReply{report.status(), {}});
  done(AdminReply{Status::Ok(), request.json ? report->Json() : report->Text()});
}

Result<Tenant*> AdminCommands::TenantNamed(std::string_view name) {
  for (auto& tenant : tenants_->tenants()) {
    if (tenant->config.name == name) return tenant.get();
  }
  std::string known;
  for (auto& tenant : tenants_->tenants())
    known += (known.empty() ? "" : ", ") + tenant->config.name;
  return Status(StatusCode::kNotFound,
                "no tenant named '" + std::string(name) + "' (tenants: " + known + ")");
}

Result<Report> AdminCommands::ServerStatus() {
  const AdminHost::Snapshot host = host_->Snap();
  Report r;
  r.Field("version", std::string(KVT_VERSION));
  r.Field("pid", static_cast<uint64_t>(getpid()));
  r.Field("uptime_seconds", host.uptime_seconds);
  r.Field("config", config_.source.string());
  r.Field("socket", config_.socket_path.string());
  r.Field("admin_socket", config_.admin.socket.string());
  r.Field("audit_log", config_.admin.audit_log.string());
  r.Field("metrics_listen",
          config_.admin.metrics_listen.empty() ? std::string("off") : config_.admin.metrics_listen);
  r.Field("state", std::string(drain_ ? "draining" : upgrade_ ? "upgrading" : "serving"));
  r.Field("tenants", static_cast<uint64_t>(tenants_->tenants().size()));
  r.Field("sessions", host.sessions);
  r.Field("ssd_tier", tier_->has_ssd_tier());
  if (keys_ != nullptr) {
    r.Field("spill_keyring", keys_->keyring_path().string());
    r.Field("spill_key_id", keys_->key_id(8));  // names the master key in use; not secret
  }
  r.Field("gpu_devices", static_cast<uint64_t>(host.gpu_devices));
  r.Field("gpu", host.gpu);
  if (host.pinner) {
    r.Field("pools_pinned_bytes", host.pools_pinned_bytes);
    r.Field("pools_bytes", host.pools_bytes);
  }
  r.Field("pinning", host.pinning);
  r.Field("copies_in_flight", host.copies_in_flight);
  r.Field("purges_in_progress", static_cast<uint64_t>(purges_.size()));
  return r;
}

Result<Report> AdminCommands::Stats(const std::vector<std::string>& args) {
  Tenant* only = nullptr;
  if (args.size() == 3 && args[1] == "--tenant") {
    KVT_ASSIGN_OR_RETURN(only, TenantNamed(args[2]));
  } else if (args.size() != 1) {
    return Usage("stats takes no argument but --tenant T");
  }
  Report r;
  Report::Table& table = r.AddTable("tenants", {"tenant",
                                                "pool_bytes",
                                                "used_bytes",
                                                "slab_bytes_in_use",
                                                "committed_blocks",
                                                "reserved_blocks",
                                                "leased_blocks",
                                                "index_capacity",
                                                "index_bytes",
                                                "hits",
                                                "misses",
                                                "evictions",
                                                "expirations",
                                                "sessions",
                                                "ssd_quota_bytes",
                                                "ssd_blocks",
                                                "ssd_only_blocks",
                                                "ssd_payload_bytes",
                                                "ssd_segments",
                                                "dirty_bytes",
                                                "demotions",
                                                "promotions",
                                                "demote_failures",
                                                "promote_failures",
                                                "integrity_failures",
                                                "ssd_dropped",
                                                "ssd_declined",
                                                "demotions_in_flight",
                                                "promotions_in_flight",
                                                "ssd_scrub_failures",
                                                "ssd_erase_failures"});
  table.transpose_text = true;
  for (auto& tenant : tenants_->tenants()) {
    if (only != nullptr && tenant.get() != only) continue;
    const wire::StatsReply s = StatsOf(*tenant);
    const SpillStats spill = SpillStatsOf(*tenant);
    table.rows.push_back({tenant->config.name,
                          s.pool_bytes,
                          s.used_bytes,
                          s.slab_bytes_in_use,
                          s.committed_blocks,
                          s.reserved_blocks,
                          s.leased_blocks,
                          s.index_capacity,
                          s.index_bytes,
                          s.hits,
                          s.misses,
                          s.evictions,
                          s.expirations,
                          s.sessions,
                          s.ssd_quota_bytes,
                          s.ssd_blocks,
                          s.ssd_only_blocks,
                          s.ssd_payload_bytes,
                          s.ssd_segments,
                          s.dirty_bytes,
                          s.demotions,
                          s.promotions,
                          s.demote_failures,
                          s.promote_failures,
                          s.integrity_failures,
                          s.ssd_dropped,
                          tenant->pool->tier_counters().ssd_declined,
                          uint64_t{tenant->pool->demotions_in_flight()},
                          uint64_t{tenant->pool->promotions_in_flight()},
                          spill.scrub_failures,
                          spill.erase_failures});
  }
  return r;
}

Result<Report> AdminCommands::Tenants() {
  Report r;
  Report::Table& table = r.AddTable(
      "tenants", {"tenant", "uids", "gids", "dram_bytes", "ssd_bytes", "max_blocks",
                  "default_ttl_seconds", "max_ttl_seconds", "policy", "sessions", "blocks",
                  "state"});
  for (auto& tenant : tenants_->tenants()) {
    const TenantConfig& c = tenant->config;
    const wire::StatsReply s = StatsOf(*tenant);
    table.rows.push_back({c.name, Ids(c.uids), Ids(c.gids), c.dram_bytes, c.ssd_bytes, c.max_blocks,
                          uint64_t{c.default_ttl_seconds}, uint64_t{c.max_ttl_seconds},
                          std::string(TierPolicyName(c.policy)), uint64_t{tenant->sessions}, s.committed_blocks,
                          std::string(tenant->purging ? "purging" : "serving")});
  }
  return r;
}

Result<Report> AdminCommands::Evict(const std::vector<std::string>& args) {
  // evict --tenant T [--tier dram|ssd]
  std::string tenant_name;
  std::string tier = "all";
  for (size_t i = 1; i < args.size(); i += 2) {
    if (i + 1 >= args.size()) return Usage("'" + args[i] + "' needs a value");
    if (args[i] == "--tenant") {
      tenant_name = args[i + 1];
    } else if (args[i] == "--tier" && (args[i + 1] == "dram" || args[i + 1] == "ssd")) {
      tier = args[i + 1];
    } else {
      return Usage("evict takes --tenant T and optionally --tier dram|ssd, not '" + args[i] + " " +
                   args[i + 1] + "'");
    }
  }
  if (tenant_name.empty()) return Usage("evict needs --tenant T");
  KVT_ASSIGN_OR_RETURN(Tenant * tenant, TenantNamed(tenant_name));
  if (tenant->purging) {
    return Status(StatusCode::kFailedPrecondition, "tenant '" + tenant_name + "' is being purged");
  }
  const EvictTiers tiers = tier == "dram"  ? EvictTiers::kDram
                           : tier == "ssd" ? EvictTiers::kSsd
                                           : EvictTiers::kAll;
  const EvictReport removed = tenant->pool->Evict(tiers);
  Report r;
  r.Field("tenant", tenant_name);
  r.Field("tier", tier);
  AddRemoved(r, removed);
  r.Field("dropped_blocks", removed.dropped_blocks);
  r.Field("kept_pinned", removed.kept_pinned);
  spdlog::info("evict tenant '{}' tier {}: {} DRAM and {} SSD blocks removed, {} pinned kept",
               tenant_name, tier, removed.dram_blocks, removed.ssd_blocks, removed.kept_pinned);
  return r;
}

void AdminCommands::Purge(AdminRequest request, AdminDone done) {
  if (request.args.size() != 2) return done(AdminReply{Usage("purge takes one TENANT"), {}});
  auto tenant = TenantNamed(request.args[1]);
  if (!tenant.ok()) return done(AdminReply{tenant.status(), {}});
  if ((*tenant)->purging) {
    return done(AdminReply{Status(StatusCode::kFailedPrecondition,
                                  "a purge of tenant '" + request.args[1] + "' is under way"),
                           {}});
  }
  // From here on the tenant's peers are refused and its sessions are gone, so nothing new can
  // arrive; what is left is the I/O already in flight, which the pool and the worker finish.
  PendingPurge purge;
  purge.tenant = *tenant;
  purge.tenant->purging = true;
  purge.sessions_closed = host_->CloseTenantSessions(*purge.tenant);
  purge.copies_waited = purge.tenant->copies_in_flight > 0;
  purge.removed = purge.tenant->pool->Evict(EvictTiers::kAll, /*release_ssd_records=*/false);
  // The tenant key is replaced (a new random key, the next epoch, the keyring rewritten)
  // before the erase is even posted, so a copy of the spill directory taken before this purge
  // cannot be decrypted from here on, the master key included, and a crash before the erase
  // ends leaves the old segments undecryptable too (recovery discards them). The store gets
  // the new key with the erase job: no segment created after it is wrapped under the old one.
  std::shared_ptr<const SecretKey> new_key;
  if (keys_ != nullptr && keys_->Find(purge.tenant->config.name) != nullptr) {
    auto next = keys_->NextEpoch(purge.tenant->config.name);
    if (next.ok()) {
      purge.key_epoch = next->epoch;
      new_key = std::move(next->key);
    } else {
      purge.key_status =
          Status(next.status().code(),
                 "the tenant's data is gone and its segments crypto-erased, but its key was "
                 "not replaced, so copies of the spill directory taken before this purge are "
                 "not revoked (purge again to retry): " +
                     next.status().message());
      spdlog::error("purge of tenant '{}': {}", purge.tenant->config.name,
                    purge.key_status.message());
    }
  }
  purge.erase_posted = tier_->PostErase(*purge.tenant, std::move(new_key));
  spdlog::info("purge of tenant '{}' started: {} session(s) closed", purge.tenant->config.name,
               purge.sessions_closed);
  // Recorded now too: if kvtierd dies before the purge ends, the log still says who began it.
  Audit("purge_started", "tenant=" + purge.tenant->config.name +
                             " by_uid=" + std::to_string(request.peer.uid) +
                             " by_pid=" + std::to_string(request.peer.pid));
  purge.request = std::move(request);
  purge.done = std::move(done);
  purges_.push_back(std::move(purge));
  AdvancePurges();
}

void AdminCommands::Drain(AdminRequest request, AdminDone done) {
  spdlog::info("drain: no new sessions; finishing in-flight requests, then flushing and exiting");
  host_->StopAccepting();  // new clients learn at once that nobody serves here
  drain_ = PendingDrain{std::move(request), std::move(done), 0, 0, false, NowUs() + kDrainGraceUs};
}

void AdminCommands::OnErased(const Tenant& tenant, const Status& status, uint64_t segments) {
  for (PendingPurge& purge : purges_) {
    if (purge.tenant != &tenant || !purge.erase_posted || purge.erased) continue;
    purge.erased = true;
    purge.erase_status = status;
    purge.segments_erased = segments;
    return;
  }
}

bool AdminCommands::wiping() const {
  for (const PendingPurge& purge : purges_) {
    if (purge.emptied) return true;
  }
  return false;
}

bool AdminCommands::Advance() {
  AdvancePurges();
  if (upgrade_ && AdvanceUpgrade()) return true;
  return drain_ && AdvanceDrain();
}

void AdminCommands::Upgrade(AdminRequest request, AdminDone done) {
  auto refuse = [&](const std::string& why) {
    done(AdminReply{Status(StatusCode::kFailedPrecondition, "no upgrade: " + why), {}});
  };
  if (executable_.empty()) return refuse("this kvtierd does not know the path of its binary");
  if (!purges_.empty()) return refuse("a purge is under way; upgrade once it has finished");
  // The new binary checks the running config first: one that cannot start with it (a wrong
  // file, a missing library, a config it refuses) costs nothing; kvtierd keeps serving.
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    return refuse(std::string("pipe: ") + strerror(errno));
  }
  UniqueFd read_end(pipe_fds[0]);
  UniqueFd write_end(pipe_fds[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), STDERR_FILENO);
  // Nothing else of kvtierd's reaches the check (Asio opens its sockets without CLOEXEC).
  posix_spawn_file_actions_addclosefrom_np(&actions, STDERR_FILENO + 1);
  const std::string config_path = config_.source.string();
  std::vector<std::string> args = {executable_, "--check-config", config_path};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // kvtierd blocks the signals its signalfd serves and ignores SIGPIPE: the child starts with
  // neither.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  const int err = posix_spawn(&pid, executable_.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) return refuse(executable_ + " does not run: " + strerror(err));
  spdlog::info("upgrade: checking {} --check-config {}", executable_, config_path);
  upgrade_ = PendingUpgrade{std::move(request), std::move(done), pid, std::move(read_end), {},
                            NowUs() + kUpgradeCheckUs};
}

bool AdminCommands::AdvanceUpgrade() {
  PendingUpgrade& upgrade = *upgrade_;
  int status = 0;
  const pid_t reaped = waitpid(upgrade.pid, &status, WNOHANG);
  const int wait_errno = errno;
  // After waitpid: once the child is gone, all it wrote is in the pipe.
  char buffer[512];
  for (;;) {
    const ssize_t n = read(upgrade.output.get(), buffer, sizeof(buffer));
    if (n <= 0) break;
    const size_t room = kMaxCheckOutput - std::min(kMaxCheckOutput, upgrade.text.size());
    upgrade.text.append(buffer, std::min(room, static_cast<size_t>(n)));
  }
  if (reaped == 0) {
    if (NowUs() < upgrade.deadline_us) return false;
    kill(upgrade.pid, SIGKILL);
    while (waitpid(upgrade.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    RefuseUpgrade(Status(StatusCode::kTimedOut,
                         executable_ + " --check-config did not finish within " +
                             std::to_string(kUpgradeCheckUs / 1'000'000) +
                             " s; kvtierd keeps running"));
    return false;
  }
  while (!upgrade.text.empty() && (upgrade.text.back() == '\n' || upgrade.text.back() == ' ')) {
    upgrade.text.pop_back();
  }
  if (reaped < 0) {
    kill(upgrade.pid, SIGKILL);
    while (waitpid(upgrade.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  if (reaped < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const std::string how =
        reaped < 0                ? std::string("could not be waited for: ") + strerror(wait_errno)
        : WIFSIGNALED(status)     ? "was killed by signal " + std::to_string(WTERMSIG(status))
        : WEXITSTATUS(status) == 127 ? std::string("did not start (exit status 127)")
                                  : "exited with status " + std::to_string(WEXITSTATUS(status));
    RefuseUpgrade(Status(StatusCode::kFailedPrecondition,
                         "the new binary refused to start, kvtierd keeps running: " +
                             executable_ + " --check-config " + how +
                             (upgrade.text.empty() ? "" : ": " + upgrade.text)));
    return false;
  }
  upgrade_ready_ = true;
  spdlog::info("upgrade: {} accepts the config; stopping, then re-executing it", executable_);
  Audit("upgrade", "binary=" + AuditLog::Quote(executable_) +
                       " by_uid=" + std::to_string(upgrade.request.peer.uid) +
                       " by_pid=" + std::to_string(upgrade.request.peer.pid) + " result=ok");
  Report r;
  r.Field("binary", executable_);
  r.Field("check", upgrade.text);
  r.Field("dram_tier", std::string(config_.keep_dram_on_restart
                                       ? "kept"
                                       : "not kept (daemon.keep_dram_on_restart = false)"));
  r.Field("sessions", std::string("closed; clients connect again"));
  upgrade.done(AdminReply{Status::Ok(), upgrade.request.json ? r.Json() : r.Text()});
  upgrade_.reset();
  return true;
}

void AdminCommands::RefuseUpgrade(const Status& why) {
  spdlog::error("upgrade: {}", why.message());
  Audit("upgrade", "binary=" + AuditLog::Quote(executable_) +
                       " by_uid=" + std::to_string(upgrade_->request.peer.uid) +
                       " by_pid=" + std::to_string(upgrade_->request.peer.pid) +
                       " result=refused reason=" + AuditLog::Quote(why.message()));
  upgrade_->done(AdminReply{why, {}});
  upgrade_.reset();
}

void AdminCommands::AdvancePurges() {
  std::erase_if(purges_, [&](PendingPurge& purge) {
    Tenant& tenant = *purge.tenant;
    if (!purge.emptied) {
      if ((purge.erase_posted && !purge.erased) || !tenant.pool->idle() ||
          tenant.copies_in_flight > 0) {
        return false;
      }
      if (purge.copies_waited) {
        // Blocks its closed sessions' copies held were kept; they go now.
        const EvictReport more = tenant.pool->Evict(EvictTiers::kAll, false);
        purge.removed.dram_blocks += more.dram_blocks;
        purge.removed.dram_bytes += more.dram_bytes;
        purge.removed.ssd_blocks += more.ssd_blocks;
        purge.removed.ssd_bytes += more.ssd_bytes;
        purge.removed.dropped_blocks += more.dropped_blocks;
        purge.removed.kept_pinned = more.kept_pinned;
      }
      // The wipe below zeroes these slots with the rest of the pool.
      tenant.pool->FreeQueuedSlotsUnzeroed();
      purge.emptied = true;
    }
    // No block, lease or I/O touches the pool now: wipe all of it, including slots that were
    // freed without zeroing (pool.zero_freed off) and bytes clients wrote and never committed,
    // a chunk per loop round so that other tenants are served meanwhile.
    const uint64_t chunk = std::min(kWipeBytesPerRound, tenant.memory.size() - purge.wiped_bytes);
    explicit_bzero(tenant.memory.data() + purge.wiped_bytes, chunk);
    purge.wiped_bytes += chunk;
    if (purge.wiped_bytes < tenant.memory.size()) return false;
    FinishPurge(purge);
    return true;
  });
}

void AdminCommands::FinishPurge(PendingPurge& purge) {
  Tenant& tenant = *purge.tenant;
  tenant.purging = false;
  const EvictReport& removed = purge.removed;
  Status status = purge.erase_status;
  if (status.ok() && !tenant.pool->empty()) {
    status = Status(StatusCode::kInternal, "the pool still holds blocks after the purge");
  }
  if (status.ok()) status = purge.key_status;
  const std::string key_epoch =
      purge.key_epoch ? std::to_string(*purge.key_epoch) : std::string("-");
  Audit("purge",
        "tenant=" + tenant.config.name + " by_uid=" + std::to_string(purge.request.peer.uid) +
            " by_pid=" + std::to_string(purge.request.peer.pid) +
            " sessions_closed=" + std::to_string(purge.sessions_closed) +
            " dram_blocks=" + std::to_string(removed.dram_blocks) +
            " dram_bytes=" + std::to_string(removed.dram_bytes) + " ssd_blocks=" +
            std::to_string(removed.ssd_blocks) + " ssd_bytes=" + std::to_string(removed.ssd_bytes) +
            " segments_erased=" + std::to_string(purge.segments_erased) +
            " key_epoch=" + key_epoch +
            " result=" + (status.ok() ? std::string("ok") : AuditLog::Quote(status.ToString())));
  spdlog::info("purge of tenant '{}' done: {} DRAM and {} SSD blocks, {} segments erased, "
               "tenant key epoch {}",
               tenant.config.name, removed.dram_blocks, removed.ssd_blocks, purge.segments_erased,
               key_epoch);
  if (!status.ok()) return purge.done(AdminReply{status, {}});
  Report r;
  r.Field("tenant", tenant.config.name);
  r.Field("sessions_closed", purge.sessions_closed);
  r.Field("copies_waited", purge.copies_waited);
  AddRemoved(r, removed);
  r.Field("segments_erased", purge.segments_erased);
  // The tenant key's epoch from now on; "-" for a tenant that never had an SSD tier.
  if (purge.key_epoch) {
    r.Field("key_epoch", *purge.key_epoch);
  } else {
    r.Field("key_epoch", std::string("-"));
  }
  r.Field("pool_bytes_zeroed", static_cast<uint64_t>(tenant.memory.size()));
  purge.done(AdminReply{Status::Ok(), purge.request.json ? r.Json() : r.Text()});
}

bool AdminCommands::AdvanceDrain() {
  PendingDrain& drain = *drain_;
  if (!drain.sessions_done) {
    // Sessions between requests close now; one with a request still waiting for the SSD tier
    // or a reply the socket has not taken yet closes once that is done, or at the deadline.
    if (!host_->CloseSessionsForDrain(NowUs() > drain.deadline_us, &drain.sessions_closed)) {
      return false;
    }
    drain.sessions_done = true;
    drain.demotions_before = tier_->StartFlush();
  }
  if (!tier_->Flushed() || !purges_.empty()) return false;
  const uint64_t flushed = tier_->FlushedSince(drain.demotions_before);
  uint64_t left_blocks = 0;
  uint64_t left_bytes = 0;
  for (auto& tenant : tenants_->tenants()) {
    // Blocks DRAM alone holds (a tenant without SSD tier, a block too large for it, a write
    // that failed): they are lost when kvtierd exits.
    uint64_t blocks = 0;
    left_bytes += tenant->pool->UnspilledBytes(&blocks);
    left_blocks += blocks;
  }
  Report r;
  r.Field("sessions_closed", drain.sessions_closed);
  r.Field("flushed_blocks", flushed);
  r.Field("not_flushed_blocks", left_blocks);
  r.Field("not_flushed_bytes", left_bytes);
  if (left_blocks > 0) {
    spdlog::warn("drain: {} blocks ({} bytes) are in DRAM only and are lost on exit", left_blocks,
                 left_bytes);
  }
  spdlog::info("drained: {} session(s) closed, {} blocks written to SSD; exiting",
               drain.sessions_closed, flushed);
  drain.done(AdminReply{Status::Ok(), drain.request.json ? r.Json() : r.Text()});
  drain_.reset();
  return true;
}

Result<Report> AdminCommands::Reload(const char* origin) {
  auto next = LoadConfig(config_.source);
  Status refused;
  if (!next.ok()) {
    refused = Status(next.status().code(),
                     "config not reloaded, the running one stays: " + next.status().message());
  } else if (std::string what = RestartOnlyChange(config_, *next); !what.empty()) {
    refused = Status(StatusCode::kFailedPrecondition,
                     "config not reloaded, the running one stays: " + what +
                         " changed, which takes a restart of kvtierd");
  } else if (Status files = CheckFileBudget(*next); !files.ok()) {
    refused =
        Status(files.code(), "config not reloaded, the running one stays: " + files.message());
  } else {
    for (size_t i = 0; i < next->tenants.size() && refused.ok(); ++i) {
      const Tenant& tenant = *tenants_->tenants()[i];
      if (next->tenants[i].ssd_bytes > tenant.ssd_bytes_at_start) {
        refused =
            Status(StatusCode::kFailedPrecondition,
                   "config not reloaded, the running one stays: tenant '" + tenant.config.name +
                       "' ssd_bytes may be lowered live, but raising "
                       "it above the " +
                       std::to_string(tenant.ssd_bytes_at_start) +
                       " bytes kvtierd started with takes a restart");
      }
    }
  }
  if (!refused.ok()) {
    spdlog::error("{}: {}", origin, refused.message());
    Audit("reload", "origin=" + AuditLog::Quote(origin) +
                        " result=refused reason=" + AuditLog::Quote(refused.message()));
    return refused;
  }
  Report r;
  r.Field("config", next->source.string());
  Report::Table& changes = r.AddTable("changes", {"setting", "old", "new"});
  auto note = [&](std::string setting, std::string old_value, std::string new_value) {
    if (old_value != new_value) {
      changes.rows.push_back({std::move(setting), std::move(old_value), std::move(new_value)});
    }
  };
  note("daemon.log_level", config_.log_level, next->log_level);
  note("daemon.max_sessions", std::to_string(config_.max_sessions),
       std::to_string(next->max_sessions));
  note("daemon.max_leases_per_session", std::to_string(config_.max_leases_per_session),
       std::to_string(next->max_leases_per_session));
  note("daemon.poll_spin_us", std::to_string(config_.poll_spin_us),
       std::to_string(next->poll_spin_us));
  note("daemon.default_tenant", config_.default_tenant, next->default_tenant);
  for (size_t i = 0; i < next->tenants.size(); ++i) {
    const TenantConfig& a = config_.tenants[i];
    const TenantConfig& b = next->tenants[i];
    const std::string prefix = "tenant." + a.name + ".";
    note(prefix + "uids", Ids(a.uids), Ids(b.uids));
    note(prefix + "gids", Ids(a.gids), Ids(b.gids));
    note(prefix + "default_ttl_seconds", std::to_string(a.default_ttl_seconds),
         std::to_string(b.default_ttl_seconds));
    note(prefix + "max_ttl_seconds", std::to_string(a.max_ttl_seconds),
         std::to_string(b.max_ttl_seconds));
    note(prefix + "ssd_bytes", std::to_string(a.ssd_bytes), std::to_string(b.ssd_bytes));
    note(prefix + "max_sessions", std::to_string(a.max_sessions), std::to_string(b.max_sessions));
    note(prefix + "policy", TierPolicyName(a.policy), TierPolicyName(b.policy));
    Tenant& tenant = *tenants_->tenants()[i];
    // A lower quota reclaims the tenant's oldest segments at once (their blocks become
    // misses, reported back as dropped records).
    if (a.ssd_bytes != b.ssd_bytes) tier_->PostQuota(tenant, b.ssd_bytes);
  }
  std::vector<Tenant*> new_policy;
  for (size_t i = 0; i < next->tenants.size(); ++i) {
    if (config_.tenants[i].policy != next->tenants[i].policy) {
      new_policy.push_back(tenants_->tenants()[i].get());
    }
  }
  spdlog::set_level(spdlog::level::from_str(next->log_level));
  tenants_->Remap(*next);
  for (size_t i = 0; i < next->tenants.size(); ++i) {
    next->tenants[i].max_blocks = config_.tenants[i].max_blocks;  // the index keeps its size
  }
  config_ = std::move(*next);  // what a restart would need is unchanged, checked above
  for (Tenant* tenant : new_policy) tier_->ApplyPolicy(*tenant);
  spdlog::info("{}: config reloaded, {} setting(s) changed", origin, changes.rows.size());
  Audit("reload", "origin=" + AuditLog::Quote(origin) +
                      " result=ok changes=" + std::to_string(changes.rows.size()));
  return r;
}

Result<Report> AdminCommands::RotateKey(const AdminRequest& request) {
  const std::string who = "by_uid=" + std::to_string(request.peer.uid) +
                          " by_pid=" + std::to_string(request.peer.pid);
  if (keys_ == nullptr) {
    return Status(StatusCode::kFailedPrecondition,
                  "no SSD tier (spill.dir is not set): there is no master key to rotate");
  }
  auto rotation = keys_->Rotate();
  if (!rotation.ok()) {
    spdlog::error("rotate-key: {}", rotation.status().message());
    Audit("rotate_key", who + " result=refused reason=" +
                            AuditLog::Quote(rotation.status().message()));
    return rotation.status();
  }
  Report r;
  r.Field("source", rotation->source);
  r.Field("keyring", keys_->keyring_path().string());
  r.Field("rotated", rotation->rotated);
  if (!rotation->rotated) {
    spdlog::info("rotate-key: the key at {} is the one in use (id {}); nothing written",
                 rotation->source, rotation->new_key_id.substr(0, 8));
    Audit("rotate_key", who + " result=unchanged key_id=" + rotation->new_key_id.substr(0, 8));
    r.Field("key_id", rotation->new_key_id.substr(0, 8));
    r.Field("result", "the key at " + rotation->source +
                          " is the one in use: nothing to rotate, nothing written (replace the "
                          "key first)");
    return r;
  }
  // Key ids, never key bytes: 8 hex digits name a key among an operator's few.
  spdlog::info("rotate-key: the keyring {} is re-sealed under the master key from {} (id {}, "
               "was {}); no segment was rewritten (they are wrapped under tenant keys)",
               keys_->keyring_path().string(), rotation->source,
               rotation->new_key_id.substr(0, 8), rotation->old_key_id.substr(0, 8));
  Audit("rotate_key", who + " result=ok key_id=" + rotation->new_key_id.substr(0, 8) +
                          " old_key_id=" + rotation->old_key_id.substr(0, 8));
  r.Field("key_id", rotation->new_key_id.substr(0, 8));
  r.Field("old_key_id", rotation->old_key_id.substr(0, 8));
  r.Field("segments_rewritten", uint64_t{0});
  r.Field("result", std::string("the keyring is sealed under the new key; the old key is no "
                                "longer needed"));
  return r;
}

std::string AdminCommands::Metrics() {
  const AdminHost::Snapshot host = host_->Snap();
  MetricsSnapshot snapshot;
  for (auto& tenant : tenants_->tenants()) {
    TenantMetrics t;
    t.name = tenant->config.name;
    t.stats = StatsOf(*tenant);
    t.ssd_hits = tenant->pool->ssd_hits();
    t.dram_hits = t.stats.hits - t.ssd_hits;
    t.demotions_in_flight = tenant->pool->demotions_in_flight();
    t.promotions_in_flight = tenant->pool->promotions_in_flight();
    const SpillStats spill = SpillStatsOf(*tenant);
    t.scrub_failures = spill.scrub_failures;
    t.erase_failures = spill.erase_failures;
    snapshot.tenants.push_back(std::move(t));
  }
  if (host.latency != nullptr) snapshot.latency = *host.latency;
  snapshot.sessions = host.sessions;
  snapshot.uptime_seconds = host.uptime_seconds;
  snapshot.spill_queue_depth = tier_->has_ssd_tier() ? config_.spill.queue_depth : 0;
  return RenderMetrics(snapshot);
}

}  // namespace kvtier
