#include "daemon/config/config.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <catch2/catch.hpp>

#include "daemon/tenant/tenant_registry.h"
#include "ipc/base/units.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

constexpr uint64_t kTiB = 1024 * kGiB;
// Messages are checked against this name; ParseConfig never touches the file.
constexpr std::string_view kFile = "/etc/kvtier/kvtierd.toml";

// A valid tenant, appended to snippets that test something else.
constexpr std::string_view kTenant =
    "[[tenant]]\n"
    "name = \"a\"\n"
    "dram_bytes = \"64MiB\"\n";

// A [spill] table that enables the SSD tier, in lines 2 to 4 after "config_version = 1".
constexpr std::string_view kSpill =
    "[spill]\n"
    "dir = \"/var/lib/kvtier/spill\"\n"
    "key_file = \"/etc/kvtier/spill.key\"\n";

Result<Config> Parse(std::string_view text) {
  return ParseConfig(text, kFile);
}

// The message of the kInvalidArgument that `text` must produce.
std::string ErrorOf(std::string_view text) {
  Result<Config> config = Parse(text);
  INFO(text);
  REQUIRE_FALSE(config.ok());
  CHECK(config.status().code() == StatusCode::kInvalidArgument);
  return config.status().message();
}

// "/etc/kvtier/kvtierd.toml:LINE: key 'KEY': ", the fixed head of every key error.
std::string At(int line, std::string_view key) {
  return std::string(kFile) + ":" + std::to_string(line) + ": key '" + std::string(key) + "': ";
}

uint64_t PhysicalMemoryBytes() {
  return static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
         static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

struct ErrorCase {
  std::string text;
  std::string head;     // the message starts with this: file, line and key
  std::string problem;  // ... and contains this
};

void CheckError(const ErrorCase& c) {
  const std::string message = ErrorOf(c.text);
  CHECK_THAT(message, StartsWith(c.head));
  CHECK_THAT(message, Contains(c.problem));
}

TEST_CASE("The shipped developer config loads and points into the checkout", "[daemon][config]") {
  const fs::path root = fs::path(KVT_SOURCE_DIR).lexically_normal();
  Result<Config> config = LoadConfig(root / "configs" / "kvtierd.dev.toml");
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  CHECK(config->source == root / "configs" / "kvtierd.dev.toml");
  CHECK(config->run_dir == root / ".run");
  CHECK(config->socket_path == root / ".run" / "kvtierd.sock");
  CHECK(config->socket_mode == 0600);
  CHECK(config->log_level == "info");
  CHECK(config->slab_bytes == 4 * kMiB);
  CHECK(config->max_block_bytes == 64 * kMiB);
  CHECK(config->huge_pages == HugePages::kTry);
  CHECK(config->lock_memory == LockMemory::kTry);
  CHECK(config->default_tenant == "dev");
  CHECK(config->spill.dir == root / ".run" / "spill");
  CHECK(config->spill.key_file == root / ".run" / "spill.key");
  CHECK(config->spill.key_credential.empty());
  CHECK(config->spill.keyring_file == root / ".run" / "spill.keyring");
  CHECK(config->spill.create_key);
  CHECK(config->spill.segment_bytes == 64 * kMiB);
  REQUIRE(config->tenants.size() == 1);
  CHECK(config->tenants[0].name == "dev");
  CHECK(config->tenants[0].dram_bytes == kGiB);
  CHECK(config->tenants[0].ssd_bytes == 2 * kGiB);
  CHECK(config->tenants[0].max_blocks == kGiB / (16 * kKiB) + 2 * kGiB / (64 * kKiB));
  CHECK(config->tenants[0].uids.empty());
  CHECK(config->tenants[0].gids.empty());
  CHECK(config->tenants[0].policy == TierPolicy::kReuse);
}

TEST_CASE("A tenant's tier policy is reuse or lru, and any other name is an error naming it",
          "[daemon][config]") {
  auto config = Parse("config_version = 1\n" + std::string(kTenant) + "policy = \"lru\"\n");
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  CHECK(config->tenants[0].policy == TierPolicy::kLru);
  CheckError({"config_version = 1\n" + std::string(kTenant) + "policy = \"lfu\"\n",
              At(5, "tenant[0].policy"), "\"lfu\" is not a tier policy (reuse, lru)"});
  CheckError({"config_version = 1\n" + std::string(kTenant) + "policy = 1\n",
              At(5, "tenant[0].policy"), "expected a string"});
}

TEST_CASE("The shipped production config loads with every value at its default",
          "[daemon][config]") {
  const fs::path file = fs::path(KVT_SOURCE_DIR).lexically_normal() / "configs" / "kvtierd.toml";
  Result<Config> config = LoadConfig(file);
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  const Config defaults;
  CHECK(config->source == file);
  CHECK(config->run_dir == "/run/kvtier");
  CHECK(config->socket_path == "/run/kvtier/kvtierd.sock");
  CHECK(config->socket_mode == defaults.socket_mode);
  CHECK(config->log_level == defaults.log_level);
  CHECK(config->max_sessions == defaults.max_sessions);
  CHECK(config->max_leases_per_session == defaults.max_leases_per_session);
  CHECK(config->poll_spin_us == defaults.poll_spin_us);
  CHECK(config->slab_bytes == defaults.slab_bytes);
  CHECK(config->max_block_bytes == defaults.max_block_bytes);
  CHECK(config->huge_pages == defaults.huge_pages);
  CHECK(config->lock_memory == defaults.lock_memory);
  CHECK(config->default_tenant.empty());
  CHECK(config->spill.dir.empty());
  CHECK(config->spill.segment_bytes == defaults.spill.segment_bytes);
  CHECK(config->spill.max_block_bytes == defaults.spill.max_block_bytes);
  CHECK(config->spill.staging_buffers == defaults.spill.staging_buffers);
  CHECK(config->spill.queue_depth == defaults.spill.queue_depth);
  CHECK(config->spill.threads == defaults.spill.threads);
  CHECK(config->spill.fallback_io_threads == defaults.spill.fallback_io_threads);
  CHECK(config->spill.backend == defaults.spill.backend);
  CHECK(config->spill.key_file.empty());
  CHECK(config->spill.key_credential.empty());
  CHECK(config->spill.create_key == defaults.spill.create_key);
  CHECK(config->spill.demote_above == defaults.spill.demote_above);
  REQUIRE(config->tenants.size() == 1);
  CHECK(config->tenants[0].ssd_bytes == 0);
  CHECK(config->tenants[0].max_blocks == config->tenants[0].dram_bytes / (16 * kKiB));
}

TEST_CASE("Omitted keys take their documented defaults", "[daemon][config]") {
  Result<Config> config = Parse("config_version = 1\n" + std::string(kTenant));
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  CHECK(config->source == fs::path(kFile));
  CHECK(config->run_dir == "/run/kvtier");
  CHECK(config->socket_path == "/run/kvtier/kvtierd.sock");
  CHECK(config->socket_mode == 0660);
  CHECK(config->log_level == "info");
  CHECK(config->max_sessions == 1024);
  CHECK(config->max_leases_per_session == 65536);
  CHECK(config->poll_spin_us == 50);
  CHECK(config->slab_bytes == 4 * kMiB);
  CHECK(config->max_block_bytes == 64 * kMiB);
  CHECK(config->huge_pages == HugePages::kTry);
  CHECK(config->lock_memory == LockMemory::kTry);
  CHECK(config->default_tenant.empty());
  CHECK(config->spill.dir.empty());
  CHECK(config->spill.segment_bytes == 256 * kMiB);
  CHECK(config->spill.max_block_bytes == 4 * kMiB);
  CHECK(config->spill.staging_buffers == 8);
  CHECK(config->spill.queue_depth == 16);
  CHECK(config->spill.threads == 1);
  CHECK(config->spill.fallback_io_threads == 4);
  CHECK(config->spill.backend == SpillBackend::kAuto);
  CHECK(config->spill.key_file.empty());
  CHECK(config->spill.key_credential.empty());
  CHECK_FALSE(config->spill.create_key);
  CHECK(config->spill.demote_above == 0.75);
  REQUIRE(config->tenants.size() == 1);
  CHECK(config->tenants[0].name == "a");
  CHECK(config->tenants[0].dram_bytes == 64 * kMiB);
  CHECK(config->tenants[0].ssd_bytes == 0);
  CHECK(config->tenants[0].max_blocks == 4096);
  CHECK(config->tenants[0].uids.empty());
  CHECK(config->tenants[0].gids.empty());
}

TEST_CASE("Every key set to a non-default value is read back", "[daemon][config]") {
  Result<Config> config = Parse(R"(config_version = 1
[daemon]
run_dir = "/var/lib/kvtier"
socket = "/tmp/kvt.sock"
socket_mode = "0640"
log_level = "debug"
max_sessions = 16
max_leases_per_session = 16777216
poll_spin_us = 0
default_tenant = "b"
[pool]
slab_bytes = 2097152
max_block_bytes = "4KiB"
huge_pages = "require"
lock_memory = "off"
[[tenant]]
name = "a.1-x_Y"
uids = [1000, 1001]
gids = [0]
dram_bytes = "2GiB"
max_blocks = 524288
[[tenant]]
name = "b"
uids = [4294967294]
dram_bytes = 6291456
max_blocks = 1
)");
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  CHECK(config->run_dir == "/var/lib/kvtier");
  CHECK(config->socket_path == "/tmp/kvt.sock");
  CHECK(config->socket_mode == 0640);
  CHECK(config->log_level == "debug");
  CHECK(config->max_sessions == 16);
  CHECK(config->max_leases_per_session == 16777216);
  CHECK(config->poll_spin_us == 0);
  CHECK(config->default_tenant == "b");
  CHECK(config->slab_bytes == 2 * kMiB);
  CHECK(config->max_block_bytes == 4 * kKiB);
  CHECK(config->huge_pages == HugePages::kRequire);
  CHECK(config->lock_memory == LockMemory::kOff);
  REQUIRE(config->tenants.size() == 2);
  CHECK(config->tenants[0].name == "a.1-x_Y");
  CHECK(config->tenants[0].uids == std::vector<uid_t>{1000, 1001});
  CHECK(config->tenants[0].gids == std::vector<gid_t>{0});
  CHECK(config->tenants[0].dram_bytes == 2 * kGiB);
  CHECK(config->tenants[0].max_blocks == 2 * kGiB / (4 * kKiB));
  CHECK(config->tenants[1].uids == std::vector<uid_t>{4294967294u});
  CHECK(config->tenants[1].gids.empty());
  CHECK(config->tenants[1].dram_bytes == 6 * kMiB);
  CHECK(config->tenants[1].max_blocks == 1);
}

TEST_CASE("Relative paths resolve against the config file's directory", "[daemon][config]") {
  auto parse = [](std::string_view daemon, const fs::path& source) {
    return ParseConfig(
        "config_version = 1\n[daemon]\n" + std::string(daemon) + "\n" + std::string(kTenant),
        source);
  };
  SECTION("a relative run_dir goes beside the file, normalized") {
    Result<Config> config = parse("run_dir = \"../.run\"", "/srv/kvtier/configs/kvtierd.toml");
    REQUIRE(config.ok());
    CHECK(config->run_dir == "/srv/kvtier/.run");
    CHECK(config->socket_path == "/srv/kvtier/.run/kvtierd.sock");
  }
  SECTION("a plain relative name is a subdirectory of the file's directory") {
    Result<Config> config = parse("run_dir = \"state/\"", "/srv/kvtier/configs/kvtierd.toml");
    REQUIRE(config.ok());
    CHECK(config->run_dir == "/srv/kvtier/configs/state");
  }
  SECTION("an absolute run_dir is kept, without a trailing slash") {
    Result<Config> config = parse("run_dir = \"/var/lib//kvtier/\"", kFile);
    REQUIRE(config.ok());
    CHECK(config->run_dir == "/var/lib/kvtier");
  }
  SECTION("a relative source name resolves against the working directory") {
    Result<Config> config = parse("run_dir = \"run\"", "configs/x.toml");
    REQUIRE(config.ok());
    CHECK(config->source == fs::current_path() / "configs" / "x.toml");
    CHECK(config->run_dir == fs::current_path() / "configs" / "run");
  }
  SECTION("a relative socket is inside run_dir, an absolute one is kept") {
    Result<Config> relative = parse("run_dir = \"/r\"\nsocket = \"sub/../s.sock\"", kFile);
    REQUIRE(relative.ok());
    CHECK(relative->socket_path == "/r/s.sock");
    Result<Config> absolute = parse("run_dir = \"/r\"\nsocket = \"/tmp/k.sock\"", kFile);
    REQUIRE(absolute.ok());
    CHECK(absolute->socket_path == "/tmp/k.sock");
  }
}

TEST_CASE("LoadConfig reads a file and resolves run_dir beside it", "[daemon][config]") {
  std::string dir_template = (fs::temp_directory_path() / "kvt-config-XXXXXX").string();
  REQUIRE(::mkdtemp(dir_template.data()) != nullptr);
  const fs::path dir = dir_template;
  {
    std::ofstream out(dir / "k.toml");
    out << "config_version = 1\n[daemon]\nrun_dir = \"run\"\n" << kTenant;
  }
  Result<Config> config = LoadConfig(dir / "k.toml");
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  CHECK(config->run_dir == dir / "run");

  Result<Config> missing = LoadConfig(dir / "missing.toml");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(missing.status().message(), Contains((dir / "missing.toml").string()));

  Result<Config> directory = LoadConfig(dir);
  REQUIRE_FALSE(directory.ok());
  CHECK(directory.status().code() == StatusCode::kInvalidArgument);
  fs::remove_all(dir);
}

TEST_CASE("Unknown keys are errors naming the key and its line", "[daemon][config]") {
  CheckError(GENERATE(values<ErrorCase>({
      {"config_version = 1\n\nbogus = 3\n" + std::string(kTenant), At(3, "bogus"), "unknown key"},
      {"config_version = 1\n[daemon]\nlog_level = \"info\"\nsockt = \"x\"\n" + std::string(kTenant),
       At(4, "daemon.sockt"), "expected one of: run_dir, socket"},
      {"config_version = 1\n[pool]\nslab = 1\n" + std::string(kTenant), At(3, "pool.slab"),
       "unknown key"},
      {"config_version = 1\n" + std::string(kTenant) + "dram = \"1GiB\"\n", At(5, "tenant[0].dram"),
       "unknown key"},
      // Of several unknown keys, the first in the file is named, not the first alphabetically.
      {"config_version = 1\n[daemon]\nzz = 1\naa = 2\n" + std::string(kTenant), At(3, "daemon.zz"),
       "unknown key"},
      // A misspelled table is an unknown top-level key, at its header's line.
      {"config_version = 1\n" + std::string(kTenant) + "[deamon]\nrun_dir = \"/x\"\n",
       At(5, "deamon"), "unknown key"},
  })));
}

TEST_CASE("Values of the wrong type are errors naming the expected type", "[daemon][config]") {
  CheckError(GENERATE(values<ErrorCase>({
      {"config_version = 1\n[pool]\nslab_bytes = true\n" + std::string(kTenant),
       At(3, "pool.slab_bytes"),
       "expected an integer or a size string such as \"64MiB\", got a boolean"},
      {"config_version = 1\n[pool]\n\nmax_block_bytes = 1.5\n" + std::string(kTenant),
       At(4, "pool.max_block_bytes"), "got a floating-point number"},
      {"config_version = 1\n[daemon]\nmax_sessions = \"8\"\n" + std::string(kTenant),
       At(3, "daemon.max_sessions"), "expected an integer, got a string"},
      {"config_version = 1\n[daemon]\nrun_dir = 5\n" + std::string(kTenant),
       At(3, "daemon.run_dir"), "expected a string, got an integer"},
      {"config_version = 1\ndaemon = 5\n" + std::string(kTenant), At(2, "daemon"),
       "expected a table"},
      {"config_version = 1\n[tenant]\nname = \"a\"\n", At(2, "tenant"),
       "expected an array of tables"},
      {"config_version = 1\n" + std::string(kTenant) + "uids = 1000\n", At(5, "tenant[0].uids"),
       "expected an array of integers, got an integer"},
      {"config_version = 1\n" + std::string(kTenant) + "gids = [1, \"wheel\"]\n",
       At(5, "tenant[0].gids[1]"), "expected an integer, got a string"},
      {"config_version = 1\n[pool]\nhuge_pages = true\n" + std::string(kTenant),
       At(3, "pool.huge_pages"), "expected a string, got a boolean"},
  })));
}

TEST_CASE("Values out of range are errors naming the key and its line", "[daemon][config]") {
  CheckError(GENERATE(values<ErrorCase>({
      {"config_version = 1\n[daemon]\nmax_sessions = 0\n" + std::string(kTenant),
       At(3, "daemon.max_sessions"), "0 is out of range (1 .. 65536)"},
      {"config_version = 1\n[daemon]\nmax_leases_per_session = 16777217\n" + std::string(kTenant),
       At(3, "daemon.max_leases_per_session"), "out of range"},
      {"config_version = 1\n[daemon]\npoll_spin_us = 10001\n" + std::string(kTenant),
       At(3, "daemon.poll_spin_us"), "out of range (0 .. 10000)"},
      {"config_version = 1\n[daemon]\nlog_level = \"verbose\"\n" + std::string(kTenant),
       At(3, "daemon.log_level"), "\"verbose\" is not one of"},
      {"config_version = 1\n[pool]\nlock_memory = \"yes\"\n" + std::string(kTenant),
       At(3, "pool.lock_memory"), "\"yes\" is not one of \"off\", \"try\", \"require\""},
      {"config_version = 1\n[pool]\nmax_block_bytes = \"2KiB\"\n" + std::string(kTenant),
       At(3, "pool.max_block_bytes"), "2KiB is outside 4KiB .. 1GiB"},
      {"config_version = 1\n[pool]\nmax_block_bytes = \"2GiB\"\n" + std::string(kTenant),
       At(3, "pool.max_block_bytes"), "2GiB is outside 4KiB .. 1GiB"},
      {"config_version = 1\n" + std::string(kTenant) + "max_blocks = 2147483649\n",
       At(5, "tenant[0].max_blocks"), "out of range"},
      {"config_version = 1\n" + std::string(kTenant) + "max_blocks = 16385\n",
       At(5, "tenant[0].max_blocks"), "more than (dram_bytes + ssd_bytes) / 4KiB (16384)"},
      {"config_version = 1\n" + std::string(kTenant) + "uids = [-1]\n", At(5, "tenant[0].uids[0]"),
       "-1 is out of range"},
      {"config_version = 1\n[daemon]\nrun_dir = \"\"\n" + std::string(kTenant),
       At(3, "daemon.run_dir"), "non-empty"},
      {"config_version = 1\n[daemon]\nrun_dir = \"/r\"\nsocket = \".\"\n" + std::string(kTenant),
       At(4, "daemon.socket"), "names a directory"},
      {"config_version = 1\n[daemon]\nrun_dir = \"/" + std::string(120, 'd') + "\"\n" +
           std::string(kTenant),
       At(3, "daemon.socket"), "Unix sockets allow at most 107"},
  })));
}

TEST_CASE("Bad size strings are errors quoting the text", "[daemon][config]") {
  CheckError(GENERATE(values<ErrorCase>({
      {"config_version = 1\n[pool]\nslab_bytes = \"4MB\"\n" + std::string(kTenant),
       At(3, "pool.slab_bytes"), "\"4MB\" is not a size: unknown unit \"MB\""},
      {"config_version = 1\n[pool]\nslab_bytes = \"1.5GiB\"\n" + std::string(kTenant),
       At(3, "pool.slab_bytes"), "fractions are not allowed"},
      {"config_version = 1\n[pool]\nslab_bytes = -4194304\n" + std::string(kTenant),
       At(3, "pool.slab_bytes"), "is negative"},
      {"config_version = 1\n[pool]\nslab_bytes = \"\"\n" + std::string(kTenant),
       At(3, "pool.slab_bytes"), "it is empty"},
      {"config_version = 1\n[[tenant]]\nname = \"a\"\ndram_bytes = \"99999999999TiB\"\n",
       At(4, "tenant[0].dram_bytes"), "more than 2^64 - 1 bytes"},
  })));
}

TEST_CASE("Pool and tenant sizes must fit together", "[daemon][config]") {
  CheckError(GENERATE(values<ErrorCase>({
      {"config_version = 1\n[pool]\nslab_bytes = \"3MiB\"\n" + std::string(kTenant),
       At(3, "pool.slab_bytes"), "3MiB is not a power of two between 2MiB and 1GiB"},
      {"config_version = 1\n[pool]\nslab_bytes = \"1MiB\"\n" + std::string(kTenant),
       At(3, "pool.slab_bytes"), "not a power of two between"},
      {"config_version = 1\n[pool]\nslab_bytes = \"2GiB\"\n" + std::string(kTenant),
       At(3, "pool.slab_bytes"), "not a power of two between"},
      {"config_version = 1\n[[tenant]]\nname = \"a\"\n\ndram_bytes = \"3MiB\"\n",
       At(5, "tenant[0].dram_bytes"), "3MiB is not a multiple of pool.slab_bytes (4MiB)"},
      {"config_version = 1\n[[tenant]]\nname = \"a\"\ndram_bytes = 0\n",
       At(4, "tenant[0].dram_bytes"), "must be more than 0"},
      {"config_version = 1\n[[tenant]]\nname = \"a\"\n", At(2, "tenant[0].dram_bytes"), "missing"},
      {"config_version = 1\n[[tenant]]\ndram_bytes = \"4MiB\"\n", At(2, "tenant[0].name"),
       "missing"},
      // max_block_bytes set: the error is at that key.
      {"config_version = 1\n[pool]\nmax_block_bytes = \"64MiB\"\n" + std::string(kTenant) +
           "[[tenant]]\nname = \"b\"\ndram_bytes = \"32MiB\"\n",
       At(3, "pool.max_block_bytes"), "(tenant \"b\", dram_bytes 32MiB)"},
      // max_block_bytes left at its default: the error is at the small tenant's dram_bytes.
      {"config_version = 1\n" + std::string(kTenant) +
           "[[tenant]]\nname = \"b\"\ndram_bytes = \"32MiB\"\n",
       At(7, "tenant[1].dram_bytes"), "32MiB is less than pool.max_block_bytes (64MiB"},
  })));
}

TEST_CASE("The tenants' pools must fit in physical memory less 1 GiB", "[daemon][config]") {
  const uint64_t physical = PhysicalMemoryBytes();
  REQUIRE(physical > 2 * kGiB);
  const uint64_t limit = physical - kGiB;
  SECTION("two pools that each fit but together do not are refused, at the first [[tenant]]") {
    const uint64_t half = AlignUp(limit / 2 + 1, 4 * kMiB);
    const std::string text =
        "config_version = 1\n\n[[tenant]]\nname = \"a\"\ndram_bytes = " + std::to_string(half) +
        "\n[[tenant]]\nname = \"b\"\ndram_bytes = " + std::to_string(half) + "\n";
    const std::string message = ErrorOf(text);
    CHECK_THAT(message, StartsWith(At(3, "tenant")));
    CHECK_THAT(message, Contains("dram_bytes and indexes add up to"));
    CHECK_THAT(message, Contains("minus 1GiB headroom"));
  }
  SECTION("a pool that fits with its index, rounded down to slabs, is accepted") {
    // The default index costs 112 bytes per 16 KiB of pool.
    const uint64_t most = limit / (16 * kKiB + 112) * (16 * kKiB) / (4 * kMiB) * (4 * kMiB);
    Result<Config> config =
        Parse("config_version = 1\n[[tenant]]\nname = \"a\"\ndram_bytes = " + std::to_string(most) +
              "\n");
    INFO(config.status().ToString());
    REQUIRE(config.ok());
    CHECK(config->tenants[0].dram_bytes == most);
  }
  SECTION("sums past 2^64 are refused, not wrapped") {
    // 2^63 + 2^63 wraps to 0, which would pass any limit.
    const std::string half = "\"" + std::to_string((uint64_t{1} << 63) / kTiB) + "TiB\"";
    const std::string message = ErrorOf(
        "config_version = 1\n[pool]\nslab_bytes = \"1GiB\"\n[[tenant]]\nname = \"a\"\n"
        "dram_bytes = " +
        half + "\n[[tenant]]\nname = \"b\"\ndram_bytes = " + half + "\n");
    CHECK_THAT(message, StartsWith(At(4, "tenant")));
  }
}

TEST_CASE("A full [spill] table and tenant SSD quotas are read back", "[daemon][config]") {
  Result<Config> config = Parse(R"(config_version = 1
[spill]
dir = "/srv/spill/"
segment_bytes = "2MiB"
max_block_bytes = 2092800
staging_buffers = 256
queue_depth = 4096
threads = 64
fallback_io_threads = 64
backend = "threads"
key_credential = "kvtier-master.key"
create_key = false
demote_above = 0.05
[[tenant]]
name = "a"
dram_bytes = "64MiB"
ssd_bytes = "4MiB"
[[tenant]]
name = "b"
dram_bytes = "64MiB"
ssd_bytes = "1GiB"
max_blocks = 278528
[[tenant]]
name = "c"
dram_bytes = "64MiB"
ssd_bytes = 0
)");
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  const SpillConfig& spill = config->spill;
  CHECK(spill.dir == "/srv/spill");
  CHECK(spill.segment_bytes == 2 * kMiB);
  // The largest block whose record fits in a 2 MiB segment after the 4 KiB header.
  CHECK(spill.max_block_bytes == 2 * kMiB - 4 * kKiB - 256);
  CHECK(spill.staging_buffers == 256);
  CHECK(spill.queue_depth == 4096);
  CHECK(spill.threads == 64);
  CHECK(spill.fallback_io_threads == 64);
  CHECK(spill.backend == SpillBackend::kThreads);
  CHECK(spill.key_file.empty());
  CHECK(spill.key_credential == "kvtier-master.key");
  CHECK_FALSE(spill.create_key);
  CHECK(spill.demote_above == 0.05);
  REQUIRE(config->tenants.size() == 3);
  CHECK(config->tenants[0].ssd_bytes == 4 * kMiB);
  // The default index adds one entry per 64 KiB of SSD quota.
  CHECK(config->tenants[0].max_blocks == 64 * kMiB / (16 * kKiB) + 4 * kMiB / (64 * kKiB));
  CHECK(config->tenants[1].ssd_bytes == kGiB);
  // (dram_bytes + ssd_bytes) / 4 KiB, the most the pool and SSD quota can hold.
  CHECK(config->tenants[1].max_blocks == (64 * kMiB + kGiB) / (4 * kKiB));
  CHECK(config->tenants[2].ssd_bytes == 0);
  CHECK(config->tenants[2].max_blocks == 4096);
}

TEST_CASE("spill.backend is auto, io_uring or threads", "[daemon][config]") {
  const auto [text, backend] = GENERATE(table<std::string, SpillBackend>({
      {"auto", SpillBackend::kAuto},
      {"io_uring", SpillBackend::kIoUring},
      {"threads", SpillBackend::kThreads},
  }));
  Result<Config> config = Parse("config_version = 1\n[spill]\nbackend = \"" + text + "\"\n" +
                                std::string(kTenant));
  INFO(text << ": " << config.status().ToString());
  REQUIRE(config.ok());
  CHECK(config->spill.backend == backend);
}

TEST_CASE("Relative spill paths resolve against the config file's directory", "[daemon][config]") {
  auto parse = [](std::string_view spill, const fs::path& source) {
    return ParseConfig(
        "config_version = 1\n[spill]\n" + std::string(spill) + "\n" + std::string(kTenant),
        source);
  };
  SECTION("relative dir and key_file go beside the file, normalized") {
    Result<Config> config = parse("dir = \"../.run/spill/\"\nkey_file = \"../.run/./spill.key\"",
                                  "/srv/kvtier/configs/kvtierd.toml");
    INFO(config.status().ToString());
    REQUIRE(config.ok());
    CHECK(config->spill.dir == "/srv/kvtier/.run/spill");
    CHECK(config->spill.key_file == "/srv/kvtier/.run/spill.key");
  }
  SECTION("plain relative names are inside the file's directory") {
    Result<Config> config =
        parse("dir = \"spill\"\nkey_file = \"keys/master\"", "/srv/kvtier/configs/kvtierd.toml");
    INFO(config.status().ToString());
    REQUIRE(config.ok());
    CHECK(config->spill.dir == "/srv/kvtier/configs/spill");
    CHECK(config->spill.key_file == "/srv/kvtier/configs/keys/master");
  }
  SECTION("absolute paths are kept, without a trailing slash or doubled separators") {
    Result<Config> config =
        parse("dir = \"/var/lib//kvtier/spill/\"\nkey_file = \"/etc/kvtier//spill.key\"", kFile);
    INFO(config.status().ToString());
    REQUIRE(config.ok());
    CHECK(config->spill.dir == "/var/lib/kvtier/spill");
    CHECK(config->spill.key_file == "/etc/kvtier/spill.key");
  }
  SECTION("empty strings are the defaults: no SSD tier, no key file, no credential") {
    Result<Config> config = parse("dir = \"\"\nkey_file = \"\"\nkey_credential = \"\"", kFile);
    INFO(config.status().ToString());
    REQUIRE(config.ok());
    CHECK(config->spill.dir.empty());
    CHECK(config->spill.key_file.empty());
    CHECK(config->spill.key_credential.empty());
  }
  SECTION("a relative source name resolves against the working directory") {
    Result<Config> config = parse("dir = \"spill\"\nkey_file = \"k\"", "configs/x.toml");
    INFO(config.status().ToString());
    REQUIRE(config.ok());
    CHECK(config->spill.dir == fs::current_path() / "configs" / "spill");
    CHECK(config->spill.key_file == fs::current_path() / "configs" / "k");
  }
}

TEST_CASE("[spill] values out of range are errors naming the key and its line",
          "[daemon][config]") {
  const std::string tenant(kTenant);
  CheckError(GENERATE_COPY(values<ErrorCase>({
      {"config_version = 1\nspill = 5\n" + tenant, At(2, "spill"), "expected a table"},
      {"config_version = 1\n[spill]\n\nssd_bytes = 1\n" + tenant, At(4, "spill.ssd_bytes"),
       "unknown key (expected one of: dir, segment_bytes, max_block_bytes"},
      {"config_version = 1\n[spill]\ndir = 5\n" + tenant, At(3, "spill.dir"),
       "expected a string, got an integer"},
      {"config_version = 1\n[spill]\nsegment_bytes = \"3MiB\"\n" + tenant,
       At(3, "spill.segment_bytes"), "3MiB is not a multiple of 2MiB between 2MiB and 64GiB"},
      {"config_version = 1\n[spill]\nsegment_bytes = 0\n" + tenant, At(3, "spill.segment_bytes"),
       "0B is not a multiple of 2MiB"},
      {"config_version = 1\n[spill]\nsegment_bytes = \"66GiB\"\n" + tenant,
       At(3, "spill.segment_bytes"), "66GiB is not a multiple of 2MiB between 2MiB and 64GiB"},
      {"config_version = 1\n[spill]\nsegment_bytes = \"64MB\"\n" + tenant,
       At(3, "spill.segment_bytes"), "\"64MB\" is not a size"},
      {"config_version = 1\n[spill]\nmax_block_bytes = \"2KiB\"\n" + tenant,
       At(3, "spill.max_block_bytes"), "2KiB is outside 4KiB .. 64MiB"},
      {"config_version = 1\n[spill]\nmax_block_bytes = \"65MiB\"\n" + tenant,
       At(3, "spill.max_block_bytes"), "65MiB is outside 4KiB .. 64MiB"},
      // A record needs the 4 KiB segment header and its own 256-byte header besides the block.
      {"config_version = 1\n[spill]\nsegment_bytes = \"4MiB\"\nmax_block_bytes = \"4MiB\"\n" +
           tenant,
       At(4, "spill.max_block_bytes"),
       "a record of spill.max_block_bytes (4MiB) does not fit in a segment of 4MiB after its "
       "4KiB header; the largest that fits is 4189952B"},
      {"config_version = 1\n[spill]\nsegment_bytes = \"2MiB\"\nmax_block_bytes = 2092801\n" +
           tenant,
       At(4, "spill.max_block_bytes"), "the largest that fits is 2092800B"},
      // max_block_bytes left at its default (4 MiB): the error is at segment_bytes.
      {"config_version = 1\n[spill]\nsegment_bytes = \"2MiB\"\n" + tenant,
       At(3, "spill.segment_bytes"), "a record of spill.max_block_bytes (4MiB) does not fit"},
      {"config_version = 1\n[spill]\nstaging_buffers = 0\n" + tenant,
       At(3, "spill.staging_buffers"), "0 is out of range (1 .. 256)"},
      {"config_version = 1\n[spill]\nstaging_buffers = 257\n" + tenant,
       At(3, "spill.staging_buffers"), "257 is out of range (1 .. 256)"},
      {"config_version = 1\n[spill]\nqueue_depth = 4097\n" + tenant, At(3, "spill.queue_depth"),
       "4097 is out of range (2 .. 4096)"},
      // queue_depth left at its default (16): the error is at staging_buffers.
      {"config_version = 1\n[spill]\nstaging_buffers = 16\n" + tenant,
       At(3, "spill.staging_buffers"),
       "spill.queue_depth (16) must be more than spill.staging_buffers (16)"},
      {"config_version = 1\n[spill]\nstaging_buffers = 8\nqueue_depth = 8\n" + tenant,
       At(4, "spill.queue_depth"), "spill.queue_depth (8) must be more than"},
      {"config_version = 1\n[spill]\nqueue_depth = 8\n" + tenant, At(3, "spill.queue_depth"),
       "must be more than spill.staging_buffers (8)"},
      {"config_version = 1\n[spill]\nthreads = 0\n" + tenant, At(3, "spill.threads"),
       "0 is out of range (1 .. 64)"},
      {"config_version = 1\n[spill]\nthreads = 65\n" + tenant, At(3, "spill.threads"),
       "65 is out of range (1 .. 64)"},
      {"config_version = 1\n[spill]\nfallback_io_threads = 0\n" + tenant,
       At(3, "spill.fallback_io_threads"), "0 is out of range (1 .. 64)"},
      {"config_version = 1\n[spill]\nfallback_io_threads = 65\n" + tenant,
       At(3, "spill.fallback_io_threads"), "out of range"},
      {"config_version = 1\n[spill]\nbackend = \"uring\"\n" + tenant, At(3, "spill.backend"),
       "\"uring\" is not one of \"auto\", \"io_uring\", \"threads\""},
      {"config_version = 1\n[spill]\nbackend = \"\"\n" + tenant, At(3, "spill.backend"),
       "\"\" is not one of"},
      {"config_version = 1\n[spill]\nbackend = 1\n" + tenant, At(3, "spill.backend"),
       "expected a string, got an integer"},
      {"config_version = 1\n[spill]\ndemote_above = 0.96\n" + tenant,
       At(3, "spill.demote_above"), "0.96 is out of range (0.05 .. 0.95)"},
      {"config_version = 1\n[spill]\ndemote_above = 0.01\n" + tenant,
       At(3, "spill.demote_above"), "0.01 is out of range (0.05 .. 0.95)"},
      {"config_version = 1\n[spill]\ndemote_above = 1\n" + tenant, At(3, "spill.demote_above"),
       "1 is out of range (0.05 .. 0.95)"},
      {"config_version = 1\n[spill]\ndemote_above = nan\n" + tenant,
       At(3, "spill.demote_above"), "nan is out of range"},
      {"config_version = 1\n[spill]\ndemote_above = \"0.5\"\n" + tenant,
       At(3, "spill.demote_above"), "expected a number such as 0.75, got a string"},
      {"config_version = 1\n[spill]\ncreate_key = \"yes\"\n" + tenant, At(3, "spill.create_key"),
       "expected true or false, got a string"},
  })));
}

TEST_CASE("The SSD tier needs exactly one master key source", "[daemon][config]") {
  const std::string tenant(kTenant);
  CheckError(GENERATE_COPY(values<ErrorCase>({
      {"config_version = 1\n[spill]\n\ndir = \"/s\"\n" + tenant, At(4, "spill.dir"),
       "spill.dir is set but no key source: set spill.key_file or spill.key_credential"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"\"\nkey_credential = \"\"\n" +
           tenant,
       At(3, "spill.dir"), "no key source"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k\"\nkey_credential = \"k\"\n" +
           tenant,
       At(5, "spill.key_credential"),
       "set only one of spill.key_file (line 4) and spill.key_credential"},
      // Judged even while dir is empty: the file would mean something else once dir is set.
      {"config_version = 1\n[spill]\nkey_file = \"/k\"\nkey_credential = \"k\"\n" + tenant,
       At(4, "spill.key_credential"), "set only one of"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_credential = \"a/b\"\n" + tenant,
       At(4, "spill.key_credential"), "\"a/b\" is not a credential name (one path component"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_credential = \".\"\n" + tenant,
       At(4, "spill.key_credential"), "is not a credential name"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_credential = \"..\"\n" + tenant,
       At(4, "spill.key_credential"), "is not a credential name"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_credential = \"" + std::string(256, 'c') +
           "\"\n" + tenant,
       At(4, "spill.key_credential"), "at most 255 bytes"},
      {"config_version = 1\n[spill]\nkey_credential = 7\n" + tenant,
       At(3, "spill.key_credential"), "expected a string, got an integer"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_credential = \"k\"\ncreate_key = true\n" +
           tenant,
       At(5, "spill.create_key"), "true needs spill.key_file"},
      {"config_version = 1\n[spill]\ncreate_key = true\n" + tenant, At(3, "spill.create_key"),
       "true needs spill.key_file"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"keys/\"\n" + tenant,
       At(4, "spill.key_file"), "\"keys/\" names a directory, not a file"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/etc/..\"\n" + tenant,
       At(4, "spill.key_file"), "names a directory"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \".\"\n" + tenant,
       At(4, "spill.key_file"), "names a directory"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = false\n" + tenant,
       At(4, "spill.key_file"), "expected a string, got a boolean"},
  })));
  SECTION("a key file, or a credential, alone is accepted; create_key goes with a key file") {
    Result<Config> file = Parse(
        "config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k\"\ncreate_key = true\n" +
        tenant);
    INFO(file.status().ToString());
    REQUIRE(file.ok());
    CHECK(file->spill.key_file == "/k");
    CHECK(file->spill.create_key);
    Result<Config> credential =
        Parse("config_version = 1\n[spill]\ndir = \"/s\"\nkey_credential = \"kvtier.key\"\n" +
              tenant);
    INFO(credential.status().ToString());
    REQUIRE(credential.ok());
    CHECK(credential->spill.key_credential == "kvtier.key");
  }
}

TEST_CASE("The keyring defaults beside the key file and never lies inside spill.dir",
          "[daemon][config]") {
  const std::string tenant(kTenant);
  SECTION("defaults: next to the key file, or the unit's StateDirectory with a credential") {
    Result<Config> file = Parse("config_version = 1\n" + std::string(kSpill) + tenant);
    INFO(file.status().ToString());
    REQUIRE(file.ok());
    CHECK(file->spill.keyring_file == "/etc/kvtier/spill.keyring");
    CHECK(file->spill.previous_key_file.empty());
    CHECK(file->spill.previous_key_credential.empty());
    Result<Config> credential = Parse(
        "config_version = 1\n[spill]\ndir = \"/var/lib/kvtier/spill\"\nkey_credential = \"k\"\n" +
        tenant);
    INFO(credential.status().ToString());
    REQUIRE(credential.ok());
    CHECK(credential->spill.keyring_file == "/var/lib/kvtier/keyring");
    // No SSD tier: no keyring either.
    Result<Config> none = Parse("config_version = 1\n" + tenant);
    REQUIRE(none.ok());
    CHECK(none->spill.keyring_file.empty());
  }
  SECTION("explicit paths resolve like key_file, and a previous key is read back") {
    Result<Config> config = ParseConfig(
        "config_version = 1\n[spill]\ndir = \"spill\"\nkey_file = \"new.key\"\n"
        "keyring_file = \"keys/ring\"\nprevious_key_file = \"old.key\"\n" +
            tenant,
        "/srv/kvtier/kvtierd.toml");
    INFO(config.status().ToString());
    REQUIRE(config.ok());
    CHECK(config->spill.keyring_file == "/srv/kvtier/keys/ring");
    CHECK(config->spill.previous_key_file == "/srv/kvtier/old.key");
    Result<Config> credential = Parse(
        "config_version = 1\n[spill]\ndir = \"/s\"\nkey_credential = \"new\"\n"
        "previous_key_credential = \"old\"\nkeyring_file = \"/var/lib/kvtier/keyring\"\n" +
        tenant);
    INFO(credential.status().ToString());
    REQUIRE(credential.ok());
    CHECK(credential->spill.previous_key_credential == "old");
  }
  CheckError(GENERATE_COPY(values<ErrorCase>({
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k\"\nkeyring_file = "
       "\"/s/keyring\"\n" +
           tenant,
       At(5, "spill.keyring_file"), "is inside spill.dir (/s)"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k\"\nkeyring_file = "
       "\"/s/t/../../s/x\"\n" +
           tenant,
       At(5, "spill.keyring_file"), "is inside spill.dir"},
      // The default counts too: a key file inside the spill directory puts the keyring there.
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/s/k.key\"\n" + tenant,
       At(4, "spill.key_file"), "spill.keyring_file's default for this key source"},
      {"config_version = 1\n[spill]\ndir = \"/var/lib/kvtier\"\nkey_credential = \"k\"\n" +
           tenant,
       At(4, "spill.key_credential"), "is inside spill.dir (/var/lib/kvtier)"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k.keyring\"\n" + tenant,
       At(4, "spill.key_file"), "would be a master key file"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k\"\nkeyring_file = \"/k\"\n" +
           tenant,
       At(5, "spill.keyring_file"), "would be a master key file"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k\"\nkeyring_file = "
       "\"/r/\"\n" +
           tenant,
       At(5, "spill.keyring_file"), "names a directory"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k\"\nprevious_key_file = "
       "\"/k\"\n" +
           tenant,
       At(5, "spill.previous_key_file"), "must differ from the current one"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_credential = \"k\"\n"
       "previous_key_credential = \"k\"\n" +
           tenant,
       At(5, "spill.previous_key_credential"), "must differ"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k\"\nprevious_key_file = "
       "\"/o\"\nprevious_key_credential = \"o\"\n" +
           tenant,
       At(6, "spill.previous_key_credential"),
       "set only one of spill.previous_key_file (line 5) and spill.previous_key_credential"},
      {"config_version = 1\n[spill]\nprevious_key_file = \"/o\"\n" + tenant,
       At(3, "spill.previous_key_file"), "needs the SSD tier"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k\"\n"
       "previous_key_credential = \"a/b\"\n" +
           tenant,
       At(5, "spill.previous_key_credential"), "is not a credential name"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k\"\nkeyring_file = 3\n" +
           tenant,
       At(5, "spill.keyring_file"), "expected a string, got an integer"},
  })));
}

TEST_CASE("Tenant SSD quotas need spill.dir and whole segments", "[daemon][config]") {
  const std::string spill(kSpill);
  CheckError(GENERATE_COPY(values<ErrorCase>({
      {"config_version = 1\n" + std::string(kTenant) + "ssd_bytes = \"1GiB\"\n",
       At(5, "tenant[0].ssd_bytes"),
       "1GiB needs the SSD tier, but spill.dir is not set; set it in [spill] or make ssd_bytes 0"},
      {"config_version = 1\n[spill]\ndir = \"\"\n" + std::string(kTenant) +
           "ssd_bytes = \"1GiB\"\n",
       At(7, "tenant[0].ssd_bytes"), "spill.dir is not set"},
      {"config_version = 1\n" + spill + std::string(kTenant) + "ssd_bytes = \"300MiB\"\n",
       At(8, "tenant[0].ssd_bytes"), "300MiB is not a multiple of spill.segment_bytes (256MiB)"},
      {"config_version = 1\n" + spill + std::string(kTenant) + "ssd_bytes = \"256MiB\"\n",
       At(8, "tenant[0].ssd_bytes"),
       "256MiB is less than 2 segments of spill.segment_bytes (256MiB): one is being written "
       "while the oldest is reclaimed"},
      {"config_version = 1\n[spill]\ndir = \"/s\"\nkey_file = \"/k\"\nsegment_bytes = \"2MiB\"\n"
       "max_block_bytes = \"1MiB\"\n" +
           std::string(kTenant) + "ssd_bytes = \"3MiB\"\n",
       At(10, "tenant[0].ssd_bytes"), "3MiB is not a multiple of spill.segment_bytes (2MiB)"},
      {"config_version = 1\n" + spill + std::string(kTenant) + "ssd_bytes = -1\n",
       At(8, "tenant[0].ssd_bytes"), "is negative"},
      {"config_version = 1\n" + spill + std::string(kTenant) + "ssd_bytes = true\n",
       At(8, "tenant[0].ssd_bytes"), "expected an integer or a size string"},
      // The second tenant is judged on its own.
      {"config_version = 1\n" + spill + std::string(kTenant) + "ssd_bytes = \"512MiB\"\n" +
           "[[tenant]]\nname = \"b\"\ndram_bytes = \"64MiB\"\nssd_bytes = \"768MiB\"\n" +
           "[[tenant]]\nname = \"c\"\ndram_bytes = \"64MiB\"\nssd_bytes = \"100MiB\"\n",
       At(16, "tenant[2].ssd_bytes"), "100MiB is not a multiple of spill.segment_bytes"},
      {"config_version = 1\n" + spill + std::string(kTenant) +
           "ssd_bytes = \"512MiB\"\nmax_blocks = 147457\n",
       At(9, "tenant[0].max_blocks"),
       "147457 is more than (dram_bytes + ssd_bytes) / 4KiB (147456), the most blocks the pool "
       "and SSD quota can hold"},
  })));
  SECTION("two segments are enough, and the default index grows with the quota") {
    Result<Config> config =
        Parse("config_version = 1\n" + spill + std::string(kTenant) + "ssd_bytes = \"512MiB\"\n");
    INFO(config.status().ToString());
    REQUIRE(config.ok());
    CHECK(config->tenants[0].ssd_bytes == 512 * kMiB);
    CHECK(config->tenants[0].max_blocks == 4096 + 8192);
  }
  SECTION("spill.dir without any tenant quota is accepted (the tier stays idle)") {
    Result<Config> config = Parse("config_version = 1\n" + spill + std::string(kTenant));
    INFO(config.status().ToString());
    REQUIRE(config.ok());
    CHECK(config->spill.dir == "/var/lib/kvtier/spill");
    CHECK(config->tenants[0].ssd_bytes == 0);
  }
}

TEST_CASE("Spill staging buffers count against physical memory", "[daemon][config]") {
  const uint64_t physical = PhysicalMemoryBytes();
  REQUIRE(physical > 2 * kGiB);
  const uint64_t limit = physical - kGiB;
  // A pool that just fits with a one-entry index (100 bytes), less than 4 MiB to spare: any
  // tenant with ssd_bytes then needs 8 x (4 MiB + 8 KiB) of staging buffers more.
  const uint64_t dram = (limit - 100) / (4 * kMiB) * (4 * kMiB);
  const std::string head = "config_version = 1\n" + std::string(kSpill) +
                           "[[tenant]]\nname = \"a\"\ndram_bytes = " + std::to_string(dram) +
                           "\nmax_blocks = 1\n";
  SECTION("without ssd_bytes the pool fits") {
    Result<Config> config = Parse(head);
    INFO(config.status().ToString());
    REQUIRE(config.ok());
  }
  SECTION("with ssd_bytes its staging buffers do not, and the message says so") {
    const std::string message = ErrorOf(head + "ssd_bytes = \"512MiB\"\n");
    CHECK_THAT(message, StartsWith(At(5, "tenant")));
    CHECK_THAT(message, Contains("the tenants' dram_bytes and indexes add up to"));
    CHECK_THAT(message, Contains("and with 32832KiB of spill staging buffers"));
    CHECK_THAT(message, Contains("minus 1GiB headroom"));
  }
}

TEST_CASE("Tenant names and ids must be unique and well formed", "[daemon][config]") {
  CheckError(GENERATE(values<ErrorCase>({
      {"config_version = 1\n" + std::string(kTenant) + std::string(kTenant),
       At(6, "tenant[1].name"), "tenant \"a\" is already defined at line 3"},
      {"config_version = 1\n[[tenant]]\nname = \"a b\"\ndram_bytes = \"4MiB\"\n",
       At(3, "tenant[0].name"), "is not 1 to 31 of the characters"},
      {"config_version = 1\n[[tenant]]\nname = \"..\"\ndram_bytes = \"4MiB\"\n",
       At(3, "tenant[0].name"), "is not 1 to 31 of the characters"},
      {"config_version = 1\n[[tenant]]\nname = \"" + std::string(32, 'n') +
           "\"\ndram_bytes = \"4MiB\"\n",
       At(3, "tenant[0].name"), "is not 1 to 31"},
      {"config_version = 1\n[[tenant]]\nname = \"a\"\nuids = [1000]\ndram_bytes = \"64MiB\"\n"
       "[[tenant]]\nname = \"b\"\nuids = [7,\n  1000]\ndram_bytes = \"64MiB\"\n",
       At(9, "tenant[1].uids[1]"), "uid 1000 is already listed for tenant \"a\" at line 4"},
      {"config_version = 1\n[[tenant]]\nname = \"a\"\ngids = [5, 5]\ndram_bytes = \"64MiB\"\n",
       At(4, "tenant[0].gids[1]"), "gid 5 is already listed for tenant \"a\""},
      {"config_version = 1\n[daemon]\ndefault_tenant = \"b\"\n" + std::string(kTenant),
       At(3, "daemon.default_tenant"), "no [[tenant]] is named \"b\""},
      {"config_version = 1\n", At(1, "tenant"), "at least one [[tenant]] table is required"},
      {"config_version = 1\ntenant = []\n", At(2, "tenant"), "at least one [[tenant]]"},
  })));
}

TEST_CASE("One number may be a uid of one tenant and a gid of another", "[daemon][config]") {
  Result<Config> config = Parse(
      "config_version = 1\n[[tenant]]\nname = \"a\"\nuids = [5]\ndram_bytes = \"64MiB\"\n"
      "[[tenant]]\nname = \"b\"\ngids = [5]\ndram_bytes = \"64MiB\"\n");
  INFO(config.status().ToString());
  CHECK(config.ok());
}

TEST_CASE("config_version is required and must be 1", "[daemon][config]") {
  CheckError(GENERATE(values<ErrorCase>({
      {"# no version\n" + std::string(kTenant), At(1, "config_version"), "missing"},
      {"\nconfig_version = 2\n" + std::string(kTenant), At(2, "config_version"),
       "version 2 is not supported"},
      {"config_version = \"1\"\n" + std::string(kTenant), At(1, "config_version"),
       "expected an integer, got a string"},
      // The version is judged first: a future file's new keys are not reported as unknown.
      {"config_version = 2\nnew_key = 1\n", At(1, "config_version"), "not supported"},
  })));
}

TEST_CASE("A TOML syntax error reports its line and column", "[daemon][config]") {
  const std::string message = ErrorOf("config_version = 1\n[daemon]\nlog_level = \n");
  CHECK_THAT(message, StartsWith(std::string(kFile) + ":3:13: TOML syntax error: "));
  const std::string redefined = ErrorOf("config_version = 1\n[pool]\n[daemon]\n\n[pool]\n");
  CHECK_THAT(redefined, StartsWith(std::string(kFile) + ":5:"));
}

TEST_CASE("socket_mode must be an octal string that lets the owner read and write",
          "[daemon][config]") {
  CheckError(GENERATE(values<ErrorCase>({
      {"config_version = 1\n[daemon]\nsocket_mode = 660\n" + std::string(kTenant),
       At(3, "daemon.socket_mode"), "expected a string of octal digits such as \"0660\""},
      {"config_version = 1\n[daemon]\nsocket_mode = \"0668\"\n" + std::string(kTenant),
       At(3, "daemon.socket_mode"), "\"0668\" is not an octal mode"},
      {"config_version = 1\n[daemon]\nsocket_mode = \"\"\n" + std::string(kTenant),
       At(3, "daemon.socket_mode"), "is not an octal mode"},
      {"config_version = 1\n[daemon]\nsocket_mode = \"00660\"\n" + std::string(kTenant),
       At(3, "daemon.socket_mode"), "is not an octal mode"},
      {"config_version = 1\n[daemon]\nsocket_mode = \"1660\"\n" + std::string(kTenant),
       At(3, "daemon.socket_mode"), "sets bits above 0777"},
      {"config_version = 1\n[daemon]\nsocket_mode = \"0460\"\n" + std::string(kTenant),
       At(3, "daemon.socket_mode"), "must give the owner read and write"},
  })));
  SECTION("three digits without the leading zero are accepted") {
    Result<Config> config =
        Parse("config_version = 1\n[daemon]\nsocket_mode = \"600\"\n" + std::string(kTenant));
    REQUIRE(config.ok());
    CHECK(config->socket_mode == 0600);
  }
}

TEST_CASE("ParseSize accepts integers with binary units", "[daemon][config]") {
  const auto [text, bytes] = GENERATE(table<std::string, uint64_t>({
      {"0", 0},
      {"4096", 4096},
      {"4096B", 4096},
      {"512KiB", 512 * kKiB},
      {"64MiB", 64 * kMiB},
      {"64 MiB", 64 * kMiB},
      {"1GiB", kGiB},
      {"2TiB", 2 * kTiB},
      {"007MiB", 7 * kMiB},
      {"18446744073709551615", std::numeric_limits<uint64_t>::max()},
      {"16777215TiB", 16777215 * kTiB},
  }));
  Result<uint64_t> parsed = ParseSize(text);
  INFO(text << ": " << parsed.status().ToString());
  REQUIRE(parsed.ok());
  CHECK(*parsed == bytes);
}

TEST_CASE("ParseSize rejects what is not a whole, known-unit size", "[daemon][config]") {
  const auto [text, why] = GENERATE(table<std::string, std::string>({
      {"", "empty"},
      {"-1", "negative"},
      {"-64MiB", "negative"},
      {"1.5GiB", "fractions"},
      {"1,5GiB", "fractions"},
      {"64MB", "unknown unit \"MB\""},
      {"64mib", "unknown unit"},
      {"64KiBB", "unknown unit"},
      {"0x10", "unknown unit"},
      {"MiB", "expected digits"},
      {"+5", "expected digits"},
      {" 64MiB", "spaces"},
      {"64MiB ", "spaces"},
      {"18446744073709551616", "more than 2^64 - 1"},
      {"16777216TiB", "more than 2^64 - 1"},
  }));
  Result<uint64_t> parsed = ParseSize(text);
  INFO(text);
  REQUIRE_FALSE(parsed.ok());
  CHECK(parsed.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(parsed.status().message(), StartsWith("\"" + text + "\" is not a size: "));
  CHECK_THAT(parsed.status().message(), Contains(why));
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

TEST_CASE("Tenant TTLs are read, and a default above the cap is an error naming both",
          "[daemon][config][expiry]") {
  auto config = Parse(
      "config_version = 1\n[[tenant]]\nname = \"a\"\ndram_bytes = \"64MiB\"\n"
      "default_ttl_seconds = 60\nmax_ttl_seconds = 3600\n");
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  CHECK(config->tenants[0].default_ttl_seconds == 60);
  CHECK(config->tenants[0].max_ttl_seconds == 3600);
  CHECK(EffectiveTtl(config->tenants[0], 0) == 60);
  CHECK(EffectiveTtl(config->tenants[0], 10) == 10);
  CHECK(EffectiveTtl(config->tenants[0], 7200) == 3600);  // lowered to the cap
  TenantConfig uncapped;
  CHECK(EffectiveTtl(uncapped, 0) == 0);                   // never expires
  TenantConfig capped;
  capped.max_ttl_seconds = 30;
  CHECK(EffectiveTtl(capped, 0) == 30);                    // the cap applies to "no TTL" too
  CheckError({"config_version = 1\n[[tenant]]\nname = \"a\"\ndram_bytes = \"4MiB\"\n"
              "default_ttl_seconds = 61\nmax_ttl_seconds = 60\n",
              At(5, "tenant[0].default_ttl_seconds"), "is more than max_ttl_seconds (60)"});
  CheckError({"config_version = 1\n[[tenant]]\nname = \"a\"\ndram_bytes = \"4MiB\"\n"
              "max_ttl_seconds = -1\n",
              At(5, "tenant[0].max_ttl_seconds"), ""});
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

TEST_CASE("Tenants' session shares add up to at most daemon.max_sessions: unset ones split what "
          "the set ones leave, and an overcommitment is an error",
          "[daemon][config]") {
  const std::string three =
      "config_version = 1\n[daemon]\nmax_sessions = 100\n"
      "[[tenant]]\nname = \"a\"\ndram_bytes = \"64MiB\"\nuids = [1]\n"
      "[[tenant]]\nname = \"b\"\ndram_bytes = \"64MiB\"\nuids = [2]\n"
      "[[tenant]]\nname = \"c\"\ndram_bytes = \"64MiB\"\nuids = [3]\n";
  auto equal = Parse(three);
  INFO(equal.status().ToString());
  REQUIRE(equal.ok());
  for (const TenantConfig& t : equal->tenants) CHECK(t.max_sessions == 33);
  auto set = Parse(three + "max_sessions = 60\n");  // tenant c asks for 60
  INFO(set.status().ToString());
  REQUIRE(set.ok());
  CHECK(set->tenants[0].max_sessions == 20);
  CHECK(set->tenants[1].max_sessions == 20);
  CHECK(set->tenants[2].max_sessions == 60);
  CheckError({three + "max_sessions = 99\n", At(4, "tenant"),
              "the tenants' max_sessions add up to 99 plus at least 1 for each of the 2 tenants "
              "without one, more than daemon.max_sessions (100)"});
}

}  // namespace
}  // namespace kvtier
