// kvtierctl: operator CLI. In this version it speaks the client protocol (the admin socket
// comes later) and shows the calling tenant's pool:
//   kvtierctl [--socket PATH] [--json] stats
#include <cstdio>
#include <string>
#include <vector>

#include "kvclient/client.h"

namespace {

constexpr char kUsage[] =
    "usage: kvtierctl [--socket PATH] [--json] stats\n"
    "  stats   the pool of the tenant this user maps to\n"
    "  --socket PATH   control socket (default $KVTIER_SOCKET or /run/kvtier/kvtierd.sock)\n";

}  // namespace

int main(int argc, char** argv) {
  std::string socket_path = "/run/kvtier/kvtierd.sock";
  if (const char* env = std::getenv("KVTIER_SOCKET")) socket_path = env;
  bool json = false;
  std::string command;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--socket" && i + 1 < argc) {
      socket_path = argv[++i];
    } else if (arg == "--json") {
      json = true;
    } else if (command.empty() && arg[0] != '-') {
      command = arg;
    } else {
      std::fputs(kUsage, stderr);
      return 2;
    }
  }
  if (command != "stats") {
    std::fputs(kUsage, stderr);
    return 2;
  }
  auto client = kvtier::Client::Connect({.socket_path = socket_path, .name_space = "kvtierctl"});
  if (!client.ok()) {
    std::fprintf(stderr, "kvtierctl: %s\n", client.status().ToString().c_str());
    return 1;
  }
  auto stats = (*client)->Stats();
  if (!stats.ok()) {
    std::fprintf(stderr, "kvtierctl: %s\n", stats.status().ToString().c_str());
    return 1;
  }
  const kvtier::PoolStats& s = *stats;
  const std::string& tenant = (*client)->tenant();
  const std::vector<std::pair<const char*, uint64_t>> rows = {
      {"pool_bytes", s.pool_bytes},         {"used_bytes", s.used_bytes},
      {"slab_bytes_in_use", s.slab_bytes_in_use}, {"committed_blocks", s.committed_blocks},
      {"reserved_blocks", s.reserved_blocks}, {"leased_blocks", s.leased_blocks},
      {"index_capacity", s.index_capacity}, {"index_bytes", s.index_bytes},
      {"hits", s.hits},                     {"misses", s.misses},
      {"evictions", s.evictions},           {"sessions", s.sessions},
      {"ssd_quota_bytes", s.ssd_quota_bytes}, {"ssd_blocks", s.ssd_blocks},
      {"ssd_only_blocks", s.ssd_only_blocks}, {"ssd_payload_bytes", s.ssd_payload_bytes},
      {"dirty_bytes", s.dirty_bytes},       {"demotions", s.demotions},
      {"promotions", s.promotions},         {"demote_failures", s.demote_failures},
      {"promote_failures", s.promote_failures}, {"integrity_failures", s.integrity_failures},
      {"ssd_dropped", s.ssd_dropped},       {"ssd_segments", s.ssd_segments},
      {"expirations", s.expirations}};
  if (json) {
    std::printf("{\"tenant\": \"%s\"", tenant.c_str());
    for (const auto& [name, value] : rows) std::printf(", \"%s\": %llu", name,
                                                      static_cast<unsigned long long>(value));
    std::printf("}\n");
  } else {
    std::printf("%-20s %s\n", "tenant", tenant.c_str());
    for (const auto& [name, value] : rows) {
      std::printf("%-20s %llu\n", name, static_cast<unsigned long long>(value));
    }
  }
  return 0;
}
