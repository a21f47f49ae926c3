#include "daemon/config/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <toml++/toml.h>

#include "daemon/spill/spill_store.h"
#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"
#include "ipc/base/unique_fd.h"
#include "ipc/base/units.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMinSlabBytes = 2 * kMiB;
constexpr uint64_t kMaxSlabBytes = kGiB;
constexpr uint64_t kMinBlockBytes = 4 * kKiB;
// Block sizes travel as 64 bits but the index keeps 32; 1 GiB is far above any KV block.
constexpr uint64_t kMaxBlockBytes = 1 * kGiB;
constexpr uint64_t kBytesPerDefaultBlock = 16 * kKiB;
// Spilled blocks are assumed larger on average: the default index adds one entry per 64 KiB.
constexpr uint64_t kSsdBytesPerDefaultBlock = 64 * kKiB;
constexpr uint64_t kMaxBlocks = uint64_t{1} << 31;
// Ten years: far beyond any cache lifetime, and well inside the index's 32-bit seconds.
constexpr int64_t kMaxTtlSeconds = int64_t{10} * 366 * 24 * 3600;
constexpr uint64_t kHostHeadroomBytes = kGiB;
// [spill]. Segment and record sizes follow SpillSizing (spill_store.h).
constexpr uint64_t kMaxSpillBlockBytes = 64 * kMiB;
// One segment is being written while the oldest is reclaimed.
constexpr uint64_t kMinSpillSegments = 2;
// Per staging buffer, beyond max_block_bytes: the record header and 4 KiB alignment (at most
// 4 KiB + 256 bytes, see spill::RecordBytes), rounded up.
constexpr uint64_t kStagingOverheadBytes = 8 * kKiB;
constexpr int64_t kMaxStagingBuffers = 256;
constexpr int64_t kMaxQueueDepth = 4096;
constexpr int64_t kMaxSpillThreads = 64;
constexpr double kMinDemoteAbove = 0.05;
constexpr double kMaxDemoteAbove = 0.95;
// systemd credential names are file names in $CREDENTIALS_DIRECTORY.
constexpr size_t kMaxCredentialNameBytes = 255;
// spill.keyring_file when the master key is a credential: in the unit's StateDirectory.
constexpr char kDefaultCredentialKeyring[] = "/var/lib/kvtier/keyring";
// uid_t/gid_t -1 means "no change" to chown() and is never a real id.
constexpr int64_t kMaxId = int64_t{std::numeric_limits<uint32_t>::max()} - 1;
// A config is a page of text; anything far larger is the wrong file.
constexpr size_t kMaxConfigFileBytes = 1 * kMiB;

constexpr std::string_view kSizeHint = "expected an integer or a size string such as \"64MiB\"";

std::string_view TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::none:
      return "nothing";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
  }
  return "an unknown type";
}

uint32_t LineOf(const toml::node& node) {
  return node.source().begin.line;
}

std::string Join(std::string_view prefix, std::string_view name) {
  if (prefix.empty()) return std::string(name);
  return std::string(prefix) + "." + std::string(name);
}

std::string Indexed(std::string_view name, size_t index) {
  return std::string(name) + "[" + std::to_string(index) + "]";
}

// 0 when the kernel does not say.
uint64_t PhysicalMemoryBytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_bytes = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_bytes <= 0) return 0;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_bytes);
}

bool IsTenantName(std::string_view name) {
  // The name is also a directory under spill.dir: "." and ".." would leave it.
  if (name.empty() || name.size() > 31 || name == "." || name == "..") return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// "off" | "try" | "require" -> 0 | 1 | 2, the order of HugePages and LockMemory.
int ModeIndex(std::string_view text) {
  if (text == "off") return 0;
  if (text == "try") return 1;
  if (text == "require") return 2;
  return -1;
}

// "0.75"; %g drops the trailing zeros std::to_string would print.
std::string FormatFraction(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
  return text;
}

// A systemd credential name: one path component.
bool IsCredentialName(std::string_view name) {
  return !name.empty() && name.size() <= kMaxCredentialNameBytes && name != "." &&
         name != ".." && name.find('/') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  uint64_t sum = 0;
  return __builtin_add_overflow(a, b, &sum) ? std::numeric_limits<uint64_t>::max() : sum;
}

uint64_t SaturatingMul(uint64_t a, uint64_t b) {
  uint64_t product = 0;
  return __builtin_mul_overflow(a, b, &product) ? std::numeric_limits<uint64_t>::max() : product;
}

// Drops a trailing separator ("/run/kvtier/" -> "/run/kvtier") so paths compare and join
// predictably; the root stays "/".
fs::path Normalized(const fs::path& path) {
  fs::path normal = path.lexically_normal();
  if (!normal.has_filename() && normal.has_relative_path()) normal = normal.parent_path();
  return normal;
}

// Parses one document. Each Read* leaves its output untouched when the key is absent, so the
// defaults in Config stand; lines_ remembers where each present key was, for cross-checks.
class ConfigParser {
 public:
  ConfigParser(std::string file, fs::path base_dir)
      : file_(std::move(file)), base_dir_(std::move(base_dir)) {}

  Result<Config> Parse(const toml::table& root);

 private:
  Status Error(uint32_t line, std::string_view key, std::string_view problem) const {
    std::string message = file_ + ":" + std::to_string(line) + ": key '" + std::string(key) + "': ";
    message += problem;
    return Status(StatusCode::kInvalidArgument, std::move(message));
  }
  uint32_t LineOr(const std::string& key, uint32_t fallback) const {
    auto it = lines_.find(key);
    return it == lines_.end() ? fallback : it->second;
  }

  Status CheckVersion(const toml::table& root) const;
  Status CheckKeys(const toml::table& table,
                   std::string_view prefix,
                   std::initializer_list<std::string_view> allowed) const;
  // nullptr (and OK) when the key is absent.
  Result<const toml::table*> SubTable(const toml::table& parent, std::string_view name);

  Status ParseDaemon(const toml::table& daemon, Config* config);
  Status ParsePaths(const toml::table& daemon, Config* config);
  Status ReadSocketMode(const toml::table& table,
                        std::string_view prefix,
                        std::string_view name,
                        mode_t* out);
  Status ParseAdmin(const toml::table& admin, Config* config);
  Status ParseMetricsListen(const toml::table& admin, AdminConfig* out);
  Status ParsePool(const toml::table& pool, Config* config);
  Status ParseSpill(const toml::table& spill, Config* config);
  Status ParseSpillSizes(const toml::table& spill, SpillConfig* out);
  Status ParseSpillKeySource(const toml::table& spill, SpillConfig* out);
  Status ParseSpillKeyring(const toml::table& spill, SpillConfig* out);
  // Reads an optional path and resolves it against the config file's directory; "" stays "".
  Status ReadPath(const toml::table& table,
                  std::string_view prefix,
                  std::string_view name,
                  bool must_name_file,
                  fs::path* out);
  Status ParseTenants(const toml::table& root, Config* config);
  Status ParseTenant(const toml::table& table,
                     const std::string& prefix,
                     const Config& config,
                     TenantConfig* tenant);
  Status ParseTenantSsd(const toml::table& table,
                        const std::string& prefix,
                        const Config& config,
                        TenantConfig* tenant);
  Status CheckUniqueTenants(const Config& config) const;
  Status CheckUniqueIds(const Config& config, std::string_view field) const;
  Status CheckBlockSize(const Config& config) const;
  Status CheckDefaultTenant(const Config& config) const;
  Status CheckHostMemory(const Config& config) const;

  const toml::node* Find(const toml::table& table, std::string_view prefix, std::string_view name);
  Status ReadString(const toml::table& table,
                    std::string_view prefix,
                    std::string_view name,
                    std::string* out);
  Status ReadInteger(const toml::table& table,
                     std::string_view prefix,
                     std::string_view name,
                     int64_t min,
                     int64_t max,
                     int64_t* out);
  template <typename T>
  Status ReadUnsigned(const toml::table& table,
                      std::string_view prefix,
                      std::string_view name,
                      int64_t min,
                      int64_t max,
                      T* out) {
    int64_t value = 0;
    if (table.get(name) == nullptr) return Status::Ok();
    KVT_RETURN_IF_ERROR(ReadInteger(table, prefix, name, min, max, &value));
    *out = static_cast<T>(value);
    return Status::Ok();
  }
  Status ReadSize(const toml::table& table,
                  std::string_view prefix,
                  std::string_view name,
                  uint64_t* out);
  Status ReadMode(const toml::table& table,
                  std::string_view prefix,
                  std::string_view name,
                  int* out);
  Status ReadBool(const toml::table& table,
                  std::string_view prefix,
                  std::string_view name,
                  bool* out);
  // A number in [min, max]; integers are taken too, so "1" reports the range, not the type.
  Status ReadFraction(const toml::table& table,
                      std::string_view prefix,
                      std::string_view name,
                      double min,
                      double max,
                      double* out);
  Status ReadIds(const toml::table& table,
                 std::string_view prefix,
                 std::string_view name,
                 std::vector<uint32_t>* out);

  std::string file_;
  fs::path base_dir_;
  uint32_t root_line_ = 1;
  std::map<std::string, uint32_t> lines_;  // dotted key -> line, for keys and tables present
};

Result<Config> ConfigParser::Parse(const toml::table& root) {
  if (LineOf(root) != 0) root_line_ = LineOf(root);
  // The version decides how everything else reads, so it is checked before any other key.
  KVT_RETURN_IF_ERROR(CheckVersion(root));
  KVT_RETURN_IF_ERROR(
      CheckKeys(root, "", {"config_version", "daemon", "pool", "spill", "admin", "tenant"}));
  Config config;
  config.run_dir = "/run/kvtier";
  config.socket_path = config.run_dir / "kvtierd.sock";
  const toml::table absent;  // stands in for an omitted [daemon], [pool] or [spill]: defaults
  KVT_ASSIGN_OR_RETURN(const toml::table* daemon, SubTable(root, "daemon"));
  KVT_RETURN_IF_ERROR(ParseDaemon(daemon != nullptr ? *daemon : absent, &config));
  KVT_ASSIGN_OR_RETURN(const toml::table* pool, SubTable(root, "pool"));
  KVT_RETURN_IF_ERROR(ParsePool(pool != nullptr ? *pool : absent, &config));
  KVT_ASSIGN_OR_RETURN(const toml::table* spill, SubTable(root, "spill"));
  KVT_RETURN_IF_ERROR(ParseSpill(spill != nullptr ? *spill : absent, &config));
  KVT_ASSIGN_OR_RETURN(const toml::table* admin, SubTable(root, "admin"));
  KVT_RETURN_IF_ERROR(ParseAdmin(admin != nullptr ? *admin : absent, &config));
  KVT_RETURN_IF_ERROR(ParseTenants(root, &config));
  KVT_RETURN_IF_ERROR(CheckUniqueTenants(config));
  KVT_RETURN_IF_ERROR(CheckUniqueIds(config, "uids"));
  KVT_RETURN_IF_ERROR(CheckUniqueIds(config, "gids"));
  KVT_RETURN_IF_ERROR(CheckBlockSize(config));
  KVT_RETURN_IF_ERROR(CheckDefaultTenant(config));
  KVT_RETURN_IF_ERROR(CheckHostMemory(config));
  return config;
}

Status ConfigParser::CheckVersion(const toml::table& root) const {
  const toml::node* node = root.get("config_version");
  if (node == nullptr) {
    return Error(root_line_, "config_version",
                 "missing; put config_version = " + std::to_string(Config::kVersion) +
                     " at the top of the file");
  }
  const auto* version = node->as_integer();
  if (version == nullptr) {
    return Error(LineOf(*node), "config_version",
                 "expected an integer, got " + std::string(TypeName(node->type())));
  }
  if (version->get() != Config::kVersion) {
    return Error(LineOf(*node), "config_version",
                 "version " + std::to_string(version->get()) + " is not supported; this kvtierd " +
                     "reads version " + std::to_string(Config::kVersion));
  }
  return Status::Ok();
}

Status ConfigParser::CheckKeys(const toml::table& table,
                               std::string_view prefix,
                               std::initializer_list<std::string_view> allowed) const {
  // toml::table iterates in key order; report the first unknown key in file order instead.
  const toml::key* first = nullptr;
  for (const auto& [key, value] : table) {
    bool known = false;
    for (std::string_view name : allowed)
      known = known || key.str() == name;
    if (known) continue;
    if (first == nullptr || LineOf(value) < first->source().begin.line) first = &key;
  }
  if (first == nullptr) return Status::Ok();
  std::string expected;
  for (std::string_view name : allowed) {
    if (!expected.empty()) expected += ", ";
    expected += name;
  }
  const toml::node* value = table.get(first->str());
  return Error(LineOf(*value), Join(prefix, first->str()),
               "unknown key (expected one of: " + expected + ")");
}

Result<const toml::table*> ConfigParser::SubTable(const toml::table& parent,
                                                  std::string_view name) {
  const toml::node* node = parent.get(name);
  if (node == nullptr) return static_cast<const toml::table*>(nullptr);
  if (!node->is_table()) {
    return Error(LineOf(*node), name,
                 "expected a table ([" + std::string(name) + "]), got " +
                     std::string(TypeName(node->type())));
  }
  lines_[std::string(name)] = LineOf(*node);
  return node->as_table();
}

const toml::node* ConfigParser::Find(const toml::table& table,
                                     std::string_view prefix,
                                     std::string_view name) {
  const toml::node* node = table.get(name);
  if (node != nullptr) lines_[Join(prefix, name)] = LineOf(*node);
  return node;
}

Status ConfigParser::ReadString(const toml::table& table,
                                std::string_view prefix,
                                std::string_view name,
                                std::string* out) {
  const toml::node* node = Find(table, prefix, name);
  if (node == nullptr) return Status::Ok();
  const auto* value = node->as_string();
  if (value == nullptr) {
    return Error(LineOf(*node), Join(prefix, name),
                 "expected a string, got " + std::string(TypeName(node->type())));
  }
  *out = value->get();
  return Status::Ok();
}

Status ConfigParser::ReadInteger(const toml::table& table,
                                 std::string_view prefix,
                                 std::string_view name,
                                 int64_t min,
                                 int64_t max,
                                 int64_t* out) {
  const toml::node* node = Find(table, prefix, name);
  if (node == nullptr) return Status::Ok();
  const auto* value = node->as_integer();
  if (value == nullptr) {
    return Error(LineOf(*node), Join(prefix, name),
                 "expected an integer, got " + std::string(TypeName(node->type())));
  }
  if (value->get() < min || value->get() > max) {
    return Error(LineOf(*node), Join(prefix, name),
                 std::to_string(value->get()) + " is out of range (" + std::to_string(min) +
                     " .. " + std::to_string(max) + ")");
  }
  *out = value->get();
  return Status::Ok();
}

Status ConfigParser::ReadSize(const toml::table& table,
                              std::string_view prefix,
                              std::string_view name,
                              uint64_t* out) {
  const toml::node* node = Find(table, prefix, name);
  if (node == nullptr) return Status::Ok();
  if (const auto* integer = node->as_integer()) {
    if (integer->get() < 0) {
      return Error(LineOf(*node), Join(prefix, name),
                   std::to_string(integer->get()) + " is negative; sizes are 0 or more bytes");
    }
    *out = static_cast<uint64_t>(integer->get());
    return Status::Ok();
  }
  if (const auto* text = node->as_string()) {
    Result<uint64_t> bytes = ParseSize(text->get());
    if (!bytes.ok()) return Error(LineOf(*node), Join(prefix, name), bytes.status().message());
    *out = *bytes;
    return Status::Ok();
  }
  return Error(LineOf(*node), Join(prefix, name),
               std::string(kSizeHint) + ", got " + std::string(TypeName(node->type())));
}

Status ConfigParser::ReadMode(const toml::table& table,
                              std::string_view prefix,
                              std::string_view name,
                              int* out) {
  std::string text;
  if (table.get(name) == nullptr) return Status::Ok();
  KVT_RETURN_IF_ERROR(ReadString(table, prefix, name, &text));
  const int mode = ModeIndex(text);
  if (mode < 0) {
    return Error(LineOf(*table.get(name)), Join(prefix, name),
                 "\"" + text + "\" is not one of \"off\", \"try\", \"require\"");
  }
  *out = mode;
  return Status::Ok();
}

Status ConfigParser::ReadBool(const toml::table& table,
                              std::string_view prefix,
                              std::string_view name,
                              bool* out) {
  const toml::node* node = Find(table, prefix, name);
  if (node == nullptr) return Status::Ok();
  const auto* value = node->as_boolean();
  if (value == nullptr) {
    return Error(LineOf(*node), Join(prefix, name),
                 "expected true or false, got " + std::string(TypeName(node->type())));
  }
  *out = value->get();
  return Status::Ok();
}

Status ConfigParser::ReadFraction(const toml::table& table,
                                  std::string_view prefix,
                                  std::string_view name,
                                  double min,
                                  double max,
                                  double* out) {
  const toml::node* node = Find(table, prefix, name);
  if (node == nullptr) return Status::Ok();
  double value = 0;
  if (const auto* floating = node->as_floating_point()) {
    value = floating->get();
  } else if (const auto* integer = node->as_integer()) {
    value = static_cast<double>(integer->get());
  } else {
    return Error(LineOf(*node), Join(prefix, name),
                 "expected a number such as " + FormatFraction(*out) + ", got " +
                     std::string(TypeName(node->type())));
  }
  // Written so that nan fails too.
  if (!(value >= min && value <= max)) {
    return Error(LineOf(*node), Join(prefix, name),
                 FormatFraction(value) + " is out of range (" + FormatFraction(min) + " .. " +
                     FormatFraction(max) + ")");
  }
  *out = value;
  return Status::Ok();
}

Status ConfigParser::ReadPath(const toml::table& table,
                              std::string_view prefix,
                              std::string_view name,
                              bool must_name_file,
                              fs::path* out) {
  std::string text;
  if (table.get(name) == nullptr) return Status::Ok();
  KVT_RETURN_IF_ERROR(ReadString(table, prefix, name, &text));
  const std::string key = Join(prefix, name);
  const uint32_t line = LineOr(key, root_line_);
  if (text.empty()) {
    out->clear();
    return Status::Ok();
  }
  if (text.find('\0') != std::string::npos) return Error(line, key, "the path has a NUL byte");
  const fs::path path =
      Normalized(fs::path(text).is_absolute() ? fs::path(text) : base_dir_ / text);
  if (must_name_file) {
    const fs::path last = fs::path(text).filename();
    if (text.back() == '/' || last == "." || last == ".." || path == path.root_path()) {
      return Error(line, key, "\"" + text + "\" names a directory, not a file");
    }
  }
  *out = path;
  return Status::Ok();
}

Status ConfigParser::ReadIds(const toml::table& table,
                             std::string_view prefix,
                             std::string_view name,
                             std::vector<uint32_t>* out) {
  const toml::node* node = Find(table, prefix, name);
  if (node == nullptr) return Status::Ok();
  const toml::array* array = node->as_array();
  if (array == nullptr) {
    return Error(LineOf(*node), Join(prefix, name),
                 "expected an array of integers, got " + std::string(TypeName(node->type())));
  }
  out->clear();
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = *array->get(i);
    const std::string key = Join(prefix, Indexed(name, i));
    const auto* id = element.as_integer();
    if (id == nullptr) {
      return Error(LineOf(element), key,
                   "expected an integer, got " + std::string(TypeName(element.type())));
    }
    if (id->get() < 0 || id->get() > kMaxId) {
      return Error(
          LineOf(element), key,
          std::to_string(id->get()) + " is out of range (0 .. " + std::to_string(kMaxId) + ")");
    }
    lines_[key] = LineOf(element);
    out->push_back(static_cast<uint32_t>(id->get()));
  }
  return Status::Ok();
}

Status ConfigParser::ParseDaemon(const toml::table& daemon, Config* config) {
  KVT_RETURN_IF_ERROR(CheckKeys(daemon, "daemon",
                                {"run_dir", "socket", "socket_mode", "log_level", "max_sessions",
                                 "max_leases_per_session", "poll_spin_us", "default_tenant",
                                 "keep_dram_on_restart"}));
  KVT_RETURN_IF_ERROR(ParsePaths(daemon, config));
  KVT_RETURN_IF_ERROR(ReadSocketMode(daemon, "daemon", "socket_mode", &config->socket_mode));
  KVT_RETURN_IF_ERROR(ReadString(daemon, "daemon", "log_level", &config->log_level));
  static constexpr std::string_view kLevels[] = {"trace", "debug",    "info", "warn",
                                                 "error", "critical", "off"};
  bool known_level = false;
  for (std::string_view level : kLevels)
    known_level = known_level || config->log_level == level;
  if (!known_level) {
    return Error(LineOr("daemon.log_level", root_line_), "daemon.log_level",
                 "\"" + config->log_level +
                     "\" is not one of trace, debug, info, warn, error, critical, off");
  }
  KVT_RETURN_IF_ERROR(
      ReadUnsigned(daemon, "daemon", "max_sessions", 1, 65536, &config->max_sessions));
  KVT_RETURN_IF_ERROR(ReadUnsigned(daemon, "daemon", "max_leases_per_session", 1, int64_t{1} << 24,
                                   &config->max_leases_per_session));
  KVT_RETURN_IF_ERROR(
      ReadUnsigned(daemon, "daemon", "poll_spin_us", 0, 10000, &config->poll_spin_us));
  KVT_RETURN_IF_ERROR(
      ReadBool(daemon, "daemon", "keep_dram_on_restart", &config->keep_dram_on_restart));
  return ReadString(daemon, "daemon", "default_tenant", &config->default_tenant);
}

Status ConfigParser::ParsePaths(const toml::table& daemon, Config* config) {
  std::string run_dir = config->run_dir.string();
  KVT_RETURN_IF_ERROR(ReadString(daemon, "daemon", "run_dir", &run_dir));
  const uint32_t run_dir_line = LineOr("daemon.run_dir", root_line_);
  if (run_dir.empty() || run_dir.find('\0') != std::string::npos) {
    return Error(run_dir_line, "daemon.run_dir", "expected a non-empty path without NUL bytes");
  }
  config->run_dir =
      Normalized(fs::path(run_dir).is_absolute() ? fs::path(run_dir) : base_dir_ / run_dir);

  std::string socket = "kvtierd.sock";
  KVT_RETURN_IF_ERROR(ReadString(daemon, "daemon", "socket", &socket));
  const uint32_t socket_line = LineOr("daemon.socket", run_dir_line);
  if (socket.empty() || socket.find('\0') != std::string::npos) {
    return Error(socket_line, "daemon.socket", "expected a non-empty path without NUL bytes");
  }
  config->socket_path =
      Normalized(fs::path(socket).is_absolute() ? fs::path(socket) : config->run_dir / socket);
  if (!config->socket_path.has_filename() || config->socket_path == config->run_dir) {
    return Error(socket_line, "daemon.socket",
                 "\"" + socket + "\" names a directory, not a socket file");
  }
  // bind() takes the path in a fixed sockaddr_un buffer, terminating NUL included; say so now
  // rather than fail at start with a bare ENAMETOOLONG.
  constexpr size_t kMaxSocketPath = sizeof(sockaddr_un::sun_path) - 1;
  if (config->socket_path.native().size() > kMaxSocketPath) {
    return Error(socket_line, "daemon.socket",
                 "the socket path " + config->socket_path.string() + " is " +
                     std::to_string(config->socket_path.native().size()) +
                     " bytes; Unix sockets allow at most " + std::to_string(kMaxSocketPath));
  }
  return Status::Ok();
}

Status ConfigParser::ReadSocketMode(const toml::table& table,
                                    std::string_view prefix,
                                    std::string_view name,
                                    mode_t* out) {
  const toml::node* node = Find(table, prefix, name);
  const std::string key = Join(prefix, name);
  if (node == nullptr) return Status::Ok();
  const auto* text = node->as_string();
  if (text == nullptr) {
    return Error(LineOf(*node), key,
                 "expected a string of octal digits such as \"0660\", got " +
                     std::string(TypeName(node->type())));
  }
  const std::string& digits = text->get();
  mode_t mode = 0;
  bool octal = !digits.empty() && digits.size() <= 4;
  for (char c : digits) {
    octal = octal && c >= '0' && c <= '7';
    if (octal) mode = static_cast<mode_t>(mode * 8 + static_cast<mode_t>(c - '0'));
  }
  if (!octal) {
    return Error(LineOf(*node), key,
                 "\"" + digits + "\" is not an octal mode such as \"0660\"");
  }
  if (mode > 0777) {
    return Error(LineOf(*node), key,
                 "\"" + digits + "\" sets bits above 0777 (setuid, setgid or sticky)");
  }
  if ((mode & 0600) != 0600) {
    return Error(LineOf(*node), key,
                 "\"" + digits + "\" must give the owner read and write (0600)");
  }
  *out = mode;
  return Status::Ok();
}

Status ConfigParser::ParseAdmin(const toml::table& admin, Config* config) {
  KVT_RETURN_IF_ERROR(CheckKeys(admin, "admin",
                                {"socket", "socket_mode", "group", "audit_log", "metrics_listen"}));
  AdminConfig& out = config->admin;
  out.socket = config->run_dir / "kvtierd-admin.sock";
  out.audit_log = "/var/log/kvtier/audit.log";
  std::string socket;
  KVT_RETURN_IF_ERROR(ReadString(admin, "admin", "socket", &socket));
  const bool given = admin.get("socket") != nullptr;
  if (socket.find('\0') != std::string::npos || (given && socket.empty())) {
    return Error(LineOr("admin.socket", root_line_), "admin.socket",
                 "expected a non-empty path without NUL bytes");
  }
  // Like daemon.socket: relative to run_dir.
  if (!socket.empty()) {
    out.socket = Normalized(fs::path(socket).is_absolute() ? fs::path(socket)
                                                           : config->run_dir / socket);
  }
  if (!out.socket.has_filename() || out.socket == config->run_dir) {
    return Error(LineOr("admin.socket", root_line_), "admin.socket",
                 "\"" + socket + "\" names a directory, not a socket file");
  }
  if (out.socket == config->socket_path) {
    return Error(LineOr("admin.socket", root_line_), "admin.socket",
                 "is the same path as daemon.socket; the two sockets must differ");
  }
  if (out.socket.native().size() > sizeof(sockaddr_un::sun_path) - 1) {
    return Error(LineOr("admin.socket", root_line_), "admin.socket",
                 "the socket path " + out.socket.string() + " is too long for a Unix socket");
  }
  KVT_RETURN_IF_ERROR(ReadString(admin, "admin", "group", &out.group));
  if (!out.group.empty()) {
    // Resolved now so a typo fails at start (and at reload), not at the first kvtierctl call.
    const group* g = getgrnam(out.group.c_str());
    if (g == nullptr) {
      return Error(LineOr("admin.group", root_line_), "admin.group",
                   "no group named \"" + out.group + "\" on this host");
    }
    out.group_id = g->gr_gid;
    out.socket_mode = 0660;
  }
  KVT_RETURN_IF_ERROR(ReadSocketMode(admin, "admin", "socket_mode", &out.socket_mode));
  fs::path audit;
  KVT_RETURN_IF_ERROR(ReadPath(admin, "admin", "audit_log", /*must_name_file=*/true, &audit));
  if (!audit.empty()) out.audit_log = audit;
  return ParseMetricsListen(admin, &out);
}

Status ConfigParser::ParseMetricsListen(const toml::table& admin, AdminConfig* out) {
  KVT_RETURN_IF_ERROR(ReadString(admin, "admin", "metrics_listen", &out->metrics_listen));
  const std::string& text = out->metrics_listen;
  if (text.empty()) return Status::Ok();
  const uint32_t line = LineOr("admin.metrics_listen", root_line_);
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return Error(line, "admin.metrics_listen",
                 "\"" + text + "\" is not ADDRESS:PORT (e.g. \"127.0.0.1:9464\")");
  }
  std::string address = text.substr(0, colon);
  if (address.size() >= 2 && address.front() == '[' && address.back() == ']') {
    address = address.substr(1, address.size() - 2);
  }
  // Metrics name tenants and their traffic: they stay on this host.
  in_addr v4{};
  in6_addr v6{};
  const bool loopback =
      (inet_pton(AF_INET, address.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127) ||
      (inet_pton(AF_INET6, address.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6));
  if (!loopback) {
    return Error(line, "admin.metrics_listen",
                 "\"" + address + "\" is not a loopback address (127.0.0.0/8 or ::1); metrics " +
                     "are served on this host only");
  }
  const std::string port = text.substr(colon + 1);
  uint32_t value = 0;
  bool digits = !port.empty() && port.size() <= 5;
  for (char c : port) {
    digits = digits && c >= '0' && c <= '9';
    if (digits) value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (!digits || value == 0 || value > 65535) {
    return Error(line, "admin.metrics_listen", "\"" + port + "\" is not a port (1 .. 65535)");
  }
  out->metrics_address = address;
  out->metrics_port = static_cast<uint16_t>(value);
  return Status::Ok();
}

Status ConfigParser::ParsePool(const toml::table& pool, Config* config) {
  KVT_RETURN_IF_ERROR(
      CheckKeys(pool, "pool",
                {"slab_bytes", "max_block_bytes", "huge_pages", "lock_memory", "zero_freed"}));
  KVT_RETURN_IF_ERROR(ReadSize(pool, "pool", "slab_bytes", &config->slab_bytes));
  if (!IsPowerOfTwo(config->slab_bytes) || config->slab_bytes < kMinSlabBytes ||
      config->slab_bytes > kMaxSlabBytes) {
    return Error(LineOr("pool.slab_bytes", root_line_), "pool.slab_bytes",
                 FormatSize(config->slab_bytes) + " is not a power of two between " +
                     FormatSize(kMinSlabBytes) + " and " + FormatSize(kMaxSlabBytes));
  }
  KVT_RETURN_IF_ERROR(ReadSize(pool, "pool", "max_block_bytes", &config->max_block_bytes));
  if (config->max_block_bytes < kMinBlockBytes || config->max_block_bytes > kMaxBlockBytes) {
    return Error(LineOr("pool.max_block_bytes", root_line_), "pool.max_block_bytes",
                 FormatSize(config->max_block_bytes) + " is outside " +
                     FormatSize(kMinBlockBytes) + " .. " + FormatSize(kMaxBlockBytes));
  }
  int huge_pages = static_cast<int>(config->huge_pages);
  KVT_RETURN_IF_ERROR(ReadMode(pool, "pool", "huge_pages", &huge_pages));
  config->huge_pages = static_cast<HugePages>(huge_pages);
  int lock_memory = static_cast<int>(config->lock_memory);
  KVT_RETURN_IF_ERROR(ReadMode(pool, "pool", "lock_memory", &lock_memory));
  config->lock_memory = static_cast<LockMemory>(lock_memory);
  KVT_RETURN_IF_ERROR(ReadBool(pool, "pool", "zero_freed", &config->zero_freed));
  return Status::Ok();
}

Status ConfigParser::ParseSpill(const toml::table& spill, Config* config) {
  KVT_RETURN_IF_ERROR(CheckKeys(spill, "spill",
                                {"dir", "segment_bytes", "max_block_bytes", "staging_buffers",
                                 "queue_depth", "threads", "fallback_io_threads", "backend",
                                 "key_file", "key_credential", "create_key", "keyring_file",
                                 "previous_key_file", "previous_key_credential",
                                 "demote_above"}));
  SpillConfig& out = config->spill;
  KVT_RETURN_IF_ERROR(ReadPath(spill, "spill", "dir", /*must_name_file=*/false, &out.dir));
  KVT_RETURN_IF_ERROR(ParseSpillSizes(spill, &out));
  KVT_RETURN_IF_ERROR(ReadUnsigned(spill, "spill", "staging_buffers", 1, kMaxStagingBuffers,
                                   &out.staging_buffers));
  // 2: the smallest depth above the smallest staging_buffers; the pair is checked below.
  KVT_RETURN_IF_ERROR(
      ReadUnsigned(spill, "spill", "queue_depth", 2, kMaxQueueDepth, &out.queue_depth));
  if (out.queue_depth <= out.staging_buffers) {
    // Point at whichever of the two keys the file actually spells out.
    const bool at_depth = lines_.contains("spill.queue_depth");
    const std::string key = at_depth ? "spill.queue_depth" : "spill.staging_buffers";
    return Error(LineOr(key, root_line_), key,
                 "spill.queue_depth (" + std::to_string(out.queue_depth) +
                     ") must be more than spill.staging_buffers (" +
                     std::to_string(out.staging_buffers) +
                     "): one io_uring entry stays free for segment header writes");
  }
  KVT_RETURN_IF_ERROR(ReadUnsigned(spill, "spill", "threads", 1, kMaxSpillThreads, &out.threads));
  KVT_RETURN_IF_ERROR(ReadUnsigned(spill, "spill", "fallback_io_threads", 1, kMaxSpillThreads,
                                   &out.fallback_io_threads));
  if (spill.get("backend") != nullptr) {
    std::string backend;
    KVT_RETURN_IF_ERROR(ReadString(spill, "spill", "backend", &backend));
    if (backend == "auto") {
      out.backend = SpillBackend::kAuto;
    } else if (backend == "io_uring") {
      out.backend = SpillBackend::kIoUring;
    } else if (backend == "threads") {
      out.backend = SpillBackend::kThreads;
    } else {
      return Error(LineOr("spill.backend", root_line_), "spill.backend",
                   "\"" + backend + "\" is not one of \"auto\", \"io_uring\", \"threads\"");
    }
  }
  KVT_RETURN_IF_ERROR(ParseSpillKeySource(spill, &out));
  return ReadFraction(spill, "spill", "demote_above", kMinDemoteAbove, kMaxDemoteAbove,
                      &out.demote_above);
}

Status ConfigParser::ParseSpillSizes(const toml::table& spill, SpillConfig* out) {
  KVT_RETURN_IF_ERROR(ReadSize(spill, "spill", "segment_bytes", &out->segment_bytes));
  if (std::string why = SpillSizing::SegmentError(out->segment_bytes); !why.empty()) {
    return Error(LineOr("spill.segment_bytes", root_line_), "spill.segment_bytes", why);
  }
  KVT_RETURN_IF_ERROR(ReadSize(spill, "spill", "max_block_bytes", &out->max_block_bytes));
  if (out->max_block_bytes < kMinBlockBytes || out->max_block_bytes > kMaxSpillBlockBytes) {
    return Error(LineOr("spill.max_block_bytes", root_line_), "spill.max_block_bytes",
                 FormatSize(out->max_block_bytes) + " is outside " + FormatSize(kMinBlockBytes) +
                     " .. " + FormatSize(kMaxSpillBlockBytes));
  }
  std::string why = SpillSizing::RecordFitError(out->segment_bytes, out->max_block_bytes);
  if (why.empty()) return Status::Ok();
  why = "a record of spill.max_block_bytes (" + FormatSize(out->max_block_bytes) + ") " + why;
  if (lines_.contains("spill.max_block_bytes")) {
    return Error(LineOr("spill.max_block_bytes", root_line_), "spill.max_block_bytes", why);
  }
  return Error(LineOr("spill.segment_bytes", root_line_), "spill.segment_bytes", why);
}

Status ConfigParser::ParseSpillKeySource(const toml::table& spill, SpillConfig* out) {
  KVT_RETURN_IF_ERROR(
      ReadPath(spill, "spill", "key_file", /*must_name_file=*/true, &out->key_file));
  KVT_RETURN_IF_ERROR(ReadString(spill, "spill", "key_credential", &out->key_credential));
  // "" is the default (no credential), as for dir and key_file.
  if (!out->key_credential.empty() && !IsCredentialName(out->key_credential)) {
    return Error(LineOr("spill.key_credential", root_line_), "spill.key_credential",
                 "\"" + out->key_credential + "\" is not a credential name (one path " +
                     "component: no '/', not \".\" or \"..\", at most " +
                     std::to_string(kMaxCredentialNameBytes) + " bytes)");
  }
  KVT_RETURN_IF_ERROR(ReadBool(spill, "spill", "create_key", &out->create_key));
  if (!out->key_file.empty() && !out->key_credential.empty()) {
    return Error(LineOr("spill.key_credential", root_line_), "spill.key_credential",
                 "set only one of spill.key_file (line " +
                     std::to_string(LineOr("spill.key_file", 0)) +
                     ") and spill.key_credential as the master key's source");
  }
  if (out->create_key && out->key_file.empty()) {
    return Error(LineOr("spill.create_key", root_line_), "spill.create_key",
                 "true needs spill.key_file: only a key file is created (never a credential)");
  }
  if (!out->dir.empty() && out->key_file.empty() && out->key_credential.empty()) {
    return Error(LineOr("spill.dir", root_line_), "spill.dir",
                 "spill.dir is set but no key source: set spill.key_file or "
                 "spill.key_credential");
  }
  return ParseSpillKeyring(spill, out);
}

Status ConfigParser::ParseSpillKeyring(const toml::table& spill, SpillConfig* out) {
  KVT_RETURN_IF_ERROR(
      ReadPath(spill, "spill", "keyring_file", /*must_name_file=*/true, &out->keyring_file));
  KVT_RETURN_IF_ERROR(ReadPath(spill, "spill", "previous_key_file", /*must_name_file=*/true,
                               &out->previous_key_file));
  KVT_RETURN_IF_ERROR(
      ReadString(spill, "spill", "previous_key_credential", &out->previous_key_credential));
  const uint32_t previous_credential_line = LineOr("spill.previous_key_credential", root_line_);
  if (!out->previous_key_credential.empty() && !IsCredentialName(out->previous_key_credential)) {
    return Error(previous_credential_line, "spill.previous_key_credential",
                 "\"" + out->previous_key_credential + "\" is not a credential name (one " +
                     "path component: no '/', not \".\" or \"..\", at most " +
                     std::to_string(kMaxCredentialNameBytes) + " bytes)");
  }
  if (!out->previous_key_file.empty() && !out->previous_key_credential.empty()) {
    return Error(previous_credential_line, "spill.previous_key_credential",
                 "set only one of spill.previous_key_file (line " +
                     std::to_string(LineOr("spill.previous_key_file", 0)) +
                     ") and spill.previous_key_credential as the previous master key's source");
  }
  const bool previous = !out->previous_key_file.empty() || !out->previous_key_credential.empty();
  const std::string previous_key =
      out->previous_key_file.empty() ? "spill.previous_key_credential" : "spill.previous_key_file";
  if (previous && out->dir.empty()) {
    return Error(LineOr(previous_key, root_line_), previous_key,
                 "a previous master key needs the SSD tier (spill.dir)");
  }
  if ((!out->previous_key_file.empty() && out->previous_key_file == out->key_file) ||
      (!out->previous_key_credential.empty() &&
       out->previous_key_credential == out->key_credential)) {
    return Error(LineOr(previous_key, root_line_), previous_key,
                 "the previous master key's source must differ from the current one (the key "
                 "in use is read from spill.key_file or spill.key_credential)");
  }
  if (out->dir.empty()) return Status::Ok();
  const bool explicit_keyring = !out->keyring_file.empty();
  const std::string keyring_key = explicit_keyring       ? "spill.keyring_file"
                                  : !out->key_file.empty() ? "spill.key_file"
                                                           : "spill.key_credential";
  const uint32_t keyring_line = LineOr(keyring_key, root_line_);
  if (!explicit_keyring) {
    // Next to the key file ("spill.key" -> "spill.keyring"); with a credential, the unit's
    // StateDirectory (systemd/kvtierd.service), which a spill.dir there does not contain.
    out->keyring_file = !out->key_file.empty()
                            ? fs::path(out->key_file).replace_extension(".keyring")
                            : fs::path(kDefaultCredentialKeyring);
  }
  const std::string keyring = out->keyring_file.string();
  const std::string defaulted =
      explicit_keyring ? "" : " (spill.keyring_file's default for this key source)";
  if (out->keyring_file == out->key_file || out->keyring_file == out->previous_key_file) {
    return Error(keyring_line, keyring_key,
                 "the keyring " + keyring + defaulted +
                     " would be a master key file: set spill.keyring_file to another path");
  }
  const fs::path inside = out->keyring_file.lexically_relative(out->dir);
  if (!inside.empty() && *inside.begin() != "..") {
    return Error(keyring_line, keyring_key,
                 "the keyring " + keyring + defaulted + " is inside spill.dir (" +
                     out->dir.string() +
                     "): a copy of the spill directory must not hold the keys that decrypt "
                     "it; put the keyring elsewhere (under systemd: \"" +
                     std::string(kDefaultCredentialKeyring) + "\" with spill.dir below it)");
  }
  return Status::Ok();
}

Status ConfigParser::ParseTenants(const toml::table& root, Config* config) {
  const toml::node* node = root.get("tenant");
  if (node == nullptr) {
    return Error(root_line_, "tenant", "at least one [[tenant]] table is required");
  }
  const toml::array* array = node->as_array();
  if (array == nullptr) {
    return Error(
        LineOf(*node), "tenant",
        "expected an array of tables ([[tenant]]), got " + std::string(TypeName(node->type())));
  }
  if (array->empty()) {
    return Error(LineOf(*node), "tenant", "at least one [[tenant]] table is required");
  }
  lines_["tenant"] = LineOf(*node);
  config->tenants.reserve(array->size());
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = *array->get(i);
    const std::string prefix = Indexed("tenant", i);
    const toml::table* table = element.as_table();
    if (table == nullptr) {
      return Error(LineOf(element), prefix,
                   "expected a table, got " + std::string(TypeName(element.type())));
    }
    lines_[prefix] = LineOf(element);
    TenantConfig tenant;
    KVT_RETURN_IF_ERROR(ParseTenant(*table, prefix, *config, &tenant));
    config->tenants.push_back(std::move(tenant));
  }
  // Each tenant's share of the sessions. The shares add up to at most daemon.max_sessions, so
  // that no tenant can hold the slots another one is promised: tenants without max_sessions
  // split equally what the others' settings leave.
  uint64_t promised = 0;
  size_t unset = 0;
  for (const TenantConfig& tenant : config->tenants) {
    promised += tenant.max_sessions;
    unset += tenant.max_sessions == 0 ? 1 : 0;
  }
  if (promised + unset > config->max_sessions) {
    return Error(lines_["tenant"], "tenant",
                 "the tenants' max_sessions add up to " + std::to_string(promised) +
                     (unset > 0 ? " plus at least 1 for each of the " + std::to_string(unset) +
                                      " tenants without one"
                                : std::string()) +
                     ", more than daemon.max_sessions (" + std::to_string(config->max_sessions) +
                     "): one tenant could then hold sessions another is promised");
  }
  if (unset > 0) {
    const auto share = static_cast<uint32_t>((config->max_sessions - promised) / unset);
    for (TenantConfig& tenant : config->tenants) {
      if (tenant.max_sessions == 0) tenant.max_sessions = share;
    }
  }
  return Status::Ok();
}

Status ConfigParser::ParseTenant(const toml::table& table,
                                 const std::string& prefix,
                                 const Config& config,
                                 TenantConfig* tenant) {
  KVT_RETURN_IF_ERROR(
      CheckKeys(table, prefix,
                {"name", "uids", "gids", "dram_bytes", "ssd_bytes", "max_blocks",
                 "default_ttl_seconds", "max_ttl_seconds", "max_sessions", "policy"}));
  const uint32_t table_line = lines_[prefix];
  if (table.get("name") == nullptr) return Error(table_line, prefix + ".name", "missing");
  KVT_RETURN_IF_ERROR(ReadString(table, prefix, "name", &tenant->name));
  if (!IsTenantName(tenant->name)) {
    return Error(lines_[prefix + ".name"], prefix + ".name",
                 "\"" + tenant->name +
                     "\" is not 1 to 31 of the characters A-Z a-z 0-9 _ . - (and not . or ..)");
  }
  std::vector<uint32_t> ids;
  KVT_RETURN_IF_ERROR(ReadIds(table, prefix, "uids", &ids));
  tenant->uids.assign(ids.begin(), ids.end());
  ids.clear();
  KVT_RETURN_IF_ERROR(ReadIds(table, prefix, "gids", &ids));
  tenant->gids.assign(ids.begin(), ids.end());

  const std::string dram_key = prefix + ".dram_bytes";
  if (table.get("dram_bytes") == nullptr) return Error(table_line, dram_key, "missing");
  KVT_RETURN_IF_ERROR(ReadSize(table, prefix, "dram_bytes", &tenant->dram_bytes));
  const uint32_t dram_line = lines_[dram_key];
  if (tenant->dram_bytes == 0) return Error(dram_line, dram_key, "must be more than 0");
  // slab_bytes is a power of two of at least 2 MiB, so this also keeps pools 2 MiB aligned,
  // which huge pages need.
  if (tenant->dram_bytes % config.slab_bytes != 0) {
    return Error(dram_line, dram_key,
                 FormatSize(tenant->dram_bytes) + " is not a multiple of pool.slab_bytes (" +
                     FormatSize(config.slab_bytes) + ")");
  }
  KVT_RETURN_IF_ERROR(ParseTenantSsd(table, prefix, config, tenant));
  KVT_RETURN_IF_ERROR(ReadUnsigned(table, prefix, "max_blocks", 0, static_cast<int64_t>(kMaxBlocks),
                                   &tenant->max_blocks));
  KVT_RETURN_IF_ERROR(ReadUnsigned(table, prefix, "max_sessions", 0, 65536, &tenant->max_sessions));
  if (table.get("policy") != nullptr) {
    std::string policy;
    KVT_RETURN_IF_ERROR(ReadString(table, prefix, "policy", &policy));
    const std::optional<TierPolicy> parsed = ParseTierPolicy(policy);
    if (!parsed) {
      return Error(lines_[prefix + ".policy"], prefix + ".policy",
                   "\"" + policy + "\" is not a tier policy (reuse, lru)");
    }
    tenant->policy = *parsed;
  }
  tenant->max_blocks_derived = tenant->max_blocks == 0;
  if (tenant->max_blocks == 0) {
    tenant->max_blocks = std::min(tenant->dram_bytes / kBytesPerDefaultBlock +
                                      tenant->ssd_bytes / kSsdBytesPerDefaultBlock,
                                  kMaxBlocks);
  }
  // Expiry: 0 means none (default) or no cap (max). A default above the cap would never hold.
  KVT_RETURN_IF_ERROR(ReadUnsigned(table, prefix, "default_ttl_seconds", 0, kMaxTtlSeconds,
                                   &tenant->default_ttl_seconds));
  KVT_RETURN_IF_ERROR(ReadUnsigned(table, prefix, "max_ttl_seconds", 0, kMaxTtlSeconds,
                                   &tenant->max_ttl_seconds));
  if (tenant->max_ttl_seconds != 0 && tenant->default_ttl_seconds > tenant->max_ttl_seconds) {
    return Error(LineOr(prefix + ".default_ttl_seconds", table_line),
                 prefix + ".default_ttl_seconds",
                 std::to_string(tenant->default_ttl_seconds) + " is more than max_ttl_seconds (" +
                     std::to_string(tenant->max_ttl_seconds) + ")");
  }
  // A block takes at least one 4 KiB slot in the pool or on SSD, so more index entries than
  // that could never be used; they would only cost memory (96 bytes each).
  const uint64_t most_blocks = SaturatingAdd(tenant->dram_bytes, tenant->ssd_bytes) / (4 * kKiB);
  if (tenant->max_blocks > most_blocks) {
    return Error(LineOr(prefix + ".max_blocks", dram_line), prefix + ".max_blocks",
                 std::to_string(tenant->max_blocks) +
                     " is more than (dram_bytes + ssd_bytes) / 4KiB (" +
                     std::to_string(most_blocks) +
                     "), the most blocks the pool and SSD quota can hold");
  }
  return Status::Ok();
}

Status ConfigParser::ParseTenantSsd(const toml::table& table,
                                    const std::string& prefix,
                                    const Config& config,
                                    TenantConfig* tenant) {
  KVT_RETURN_IF_ERROR(ReadSize(table, prefix, "ssd_bytes", &tenant->ssd_bytes));
  if (tenant->ssd_bytes == 0) return Status::Ok();
  const std::string key = prefix + ".ssd_bytes";
  const uint32_t line = LineOr(key, root_line_);
  const uint64_t segment_bytes = config.spill.segment_bytes;
  if (config.spill.dir.empty()) {
    return Error(line, key,
                 FormatSize(tenant->ssd_bytes) + " needs the SSD tier, but spill.dir is not set; " +
                     "set it in [spill] or make ssd_bytes 0");
  }
  if (tenant->ssd_bytes % segment_bytes != 0) {
    return Error(line, key,
                 FormatSize(tenant->ssd_bytes) + " is not a multiple of spill.segment_bytes (" +
                     FormatSize(segment_bytes) + ")");
  }
  if (tenant->ssd_bytes / segment_bytes < kMinSpillSegments) {
    return Error(line, key,
                 FormatSize(tenant->ssd_bytes) + " is less than " +
                     std::to_string(kMinSpillSegments) + " segments of spill.segment_bytes (" +
                     FormatSize(segment_bytes) +
                     "): one is being written while the oldest is reclaimed");
  }
  return Status::Ok();
}

Status ConfigParser::CheckUniqueTenants(const Config& config) const {
  std::map<std::string_view, size_t> seen;
  for (size_t i = 0; i < config.tenants.size(); ++i) {
    auto [it, inserted] = seen.emplace(config.tenants[i].name, i);
    if (inserted) continue;
    const std::string key = Indexed("tenant", i) + ".name";
    return Error(LineOr(key, root_line_), key,
                 "tenant \"" + config.tenants[i].name + "\" is already defined at line " +
                     std::to_string(LineOr(Indexed("tenant", it->second) + ".name", 0)));
  }
  return Status::Ok();
}

// A peer must map to exactly one tenant, so an id may appear once in the whole file.
Status ConfigParser::CheckUniqueIds(const Config& config, std::string_view field) const {
  const std::string_view what = field == "uids" ? "uid" : "gid";
  struct FirstListing {
    size_t tenant_index;
    std::string key;
  };
  std::map<uint32_t, FirstListing> seen;
  for (size_t i = 0; i < config.tenants.size(); ++i) {
    const TenantConfig& tenant = config.tenants[i];
    const size_t count = field == "uids" ? tenant.uids.size() : tenant.gids.size();
    for (size_t j = 0; j < count; ++j) {
      const uint32_t id = field == "uids" ? tenant.uids[j] : tenant.gids[j];
      const std::string key = Indexed("tenant", i) + "." + Indexed(field, j);
      auto [it, inserted] = seen.emplace(id, FirstListing{i, key});
      if (inserted) continue;
      return Error(LineOr(key, root_line_), key,
                   std::string(what) + " " + std::to_string(id) +
                       " is already listed for tenant \"" +
                       config.tenants[it->second.tenant_index].name + "\" at line " +
                       std::to_string(LineOr(it->second.key, 0)));
    }
  }
  return Status::Ok();
}

Status ConfigParser::CheckBlockSize(const Config& config) const {
  size_t smallest = 0;
  for (size_t i = 1; i < config.tenants.size(); ++i) {
    if (config.tenants[i].dram_bytes < config.tenants[smallest].dram_bytes) smallest = i;
  }
  const TenantConfig& tenant = config.tenants[smallest];
  if (config.max_block_bytes <= tenant.dram_bytes) return Status::Ok();
  // Point at whichever of the two keys the file actually spells out.
  if (lines_.contains("pool.max_block_bytes")) {
    return Error(LineOr("pool.max_block_bytes", root_line_), "pool.max_block_bytes",
                 FormatSize(config.max_block_bytes) + " is more than the smallest tenant pool (" +
                     "tenant \"" + tenant.name + "\", dram_bytes " + FormatSize(tenant.dram_bytes) +
                     ")");
  }
  const std::string key = Indexed("tenant", smallest) + ".dram_bytes";
  return Error(LineOr(key, root_line_), key,
               FormatSize(tenant.dram_bytes) + " is less than pool.max_block_bytes (" +
                   FormatSize(config.max_block_bytes) + " by default); a pool must hold one " +
                   "block of the largest size");
}

Status ConfigParser::CheckDefaultTenant(const Config& config) const {
  if (config.default_tenant.empty()) return Status::Ok();
  for (const TenantConfig& tenant : config.tenants) {
    if (tenant.name == config.default_tenant) return Status::Ok();
  }
  return Error(LineOr("daemon.default_tenant", root_line_), "daemon.default_tenant",
               "no [[tenant]] is named \"" + config.default_tenant + "\"");
}

Status ConfigParser::CheckHostMemory(const Config& config) const {
  const uint64_t physical_bytes = PhysicalMemoryBytes();
  if (physical_bytes == 0) return Status::Ok();
  const uint64_t limit_bytes =
      physical_bytes > kHostHeadroomBytes ? physical_bytes - kHostHeadroomBytes : 0;
  // Pools plus their indexes (about 112 bytes per block of capacity), plus the spill staging
  // buffers of each tenant with an SSD quota.
  constexpr uint64_t kIndexBytesPerBlock = 112;
  const uint64_t staging_per_tenant =
      SaturatingMul(config.spill.staging_buffers,
                    SaturatingAdd(config.spill.max_block_bytes, kStagingOverheadBytes));
  uint64_t pool_bytes = 0;
  uint64_t staging_bytes = 0;
  for (const TenantConfig& tenant : config.tenants) {
    pool_bytes = SaturatingAdd(pool_bytes, tenant.dram_bytes);
    pool_bytes = SaturatingAdd(pool_bytes, SaturatingMul(tenant.max_blocks, kIndexBytesPerBlock));
    if (tenant.ssd_bytes > 0) staging_bytes = SaturatingAdd(staging_bytes, staging_per_tenant);
  }
  const uint64_t sum_bytes = SaturatingAdd(pool_bytes, staging_bytes);
  if (sum_bytes <= limit_bytes) return Status::Ok();
  std::string what = "the tenants' dram_bytes and indexes add up to " + FormatSize(pool_bytes);
  if (staging_bytes > 0) {
    what += ", and with " + FormatSize(staging_bytes) +
            " of spill staging buffers (spill.staging_buffers x (spill.max_block_bytes + 8KiB) " +
            "per tenant with ssd_bytes) to " + FormatSize(sum_bytes);
  }
  return Error(LineOr("tenant", root_line_), "tenant",
               what + ", more than the " + FormatSize(limit_bytes) +
                   " this host allows (physical memory " + FormatSize(physical_bytes) + " minus " +
                   FormatSize(kHostHeadroomBytes) + " headroom)");
}

}  // namespace

Result<uint64_t> ParseSize(std::string_view text) {
  auto invalid = [text](std::string_view why) {
    // Appended piecewise: g++ 12 -O2 warns falsely (-Wrestrict) on "\"" + std::string(...).
    std::string message(1, '"');
    message.append(text).append("\" is not a size: ").append(why);
    return Status(StatusCode::kInvalidArgument, std::move(message));
  };
  if (text.empty()) return invalid("it is empty");
  if (text.front() == ' ' || text.back() == ' ')
    return invalid("it has leading or trailing spaces");
  if (text.front() == '-') return invalid("sizes cannot be negative");
  size_t pos = 0;
  uint64_t value = 0;
  for (; pos < text.size() && text[pos] >= '0' && text[pos] <= '9'; ++pos) {
    if (__builtin_mul_overflow(value, uint64_t{10}, &value) ||
        __builtin_add_overflow(value, static_cast<uint64_t>(text[pos] - '0'), &value)) {
      return invalid("it is more than 2^64 - 1 bytes");
    }
  }
  if (pos == 0) return invalid("expected digits and a unit, such as \"64MiB\"");
  if (pos < text.size() && (text[pos] == '.' || text[pos] == ',')) {
    return invalid("fractions are not allowed; use a smaller unit");
  }
  while (pos < text.size() && text[pos] == ' ')
    ++pos;
  static constexpr std::pair<std::string_view, uint64_t> kUnits[] = {
      {"", 1}, {"B", 1}, {"KiB", kKiB}, {"MiB", kMiB}, {"GiB", kGiB}, {"TiB", kTiB}};
  const std::string_view unit = text.substr(pos);
  for (const auto& [name, scale] : kUnits) {
    if (unit != name) continue;
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(value, scale, &bytes)) {
      return invalid("it is more than 2^64 - 1 bytes");
    }
    return bytes;
  }
  return invalid("unknown unit \"" + std::string(unit) + "\"; use B, KiB, MiB, GiB or TiB");
}

Result<Config> ParseConfig(std::string_view text, const std::filesystem::path& source_name) {
  const std::string file = source_name.empty() ? std::string("<config>") : source_name.string();
  toml::table root;
  try {
    root = toml::parse(text, std::string_view{file});
  } catch (const toml::parse_error& error) {
    const toml::source_position& begin = error.source().begin;
    return Status(StatusCode::kInvalidArgument,
                  file + ":" + std::to_string(begin.line) + ":" + std::to_string(begin.column) +
                      ": TOML syntax error: " + std::string(error.description()));
  }
  std::error_code ec;
  fs::path source = source_name.empty() ? fs::path() : fs::absolute(source_name, ec);
  if (ec) {
    return Status(StatusCode::kInvalidArgument,
                  file + ": cannot make the path absolute: " + ec.message());
  }
  fs::path base_dir = source.empty() ? fs::current_path(ec) : Normalized(source).parent_path();
  if (ec) {
    return Status(StatusCode::kInvalidArgument,
                  file + ": cannot read the current directory: " + ec.message());
  }
  ConfigParser parser(file, std::move(base_dir));
  Result<Config> config = parser.Parse(root);
  if (config.ok()) config->source = source.empty() ? source : Normalized(source);
  return config;
}

Result<Config> LoadConfig(const std::filesystem::path& path) {
  // Reading errors are also kInvalidArgument: the path is the daemon's argument.
  auto failed = [&path](std::string_view what, int err) {
    return Status(StatusCode::kInvalidArgument,
                  ErrnoStatus(path.string() + ": " + std::string(what), err).message());
  };
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return failed("cannot open the config file", errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return failed("cannot stat the config file", errno);
  if (!S_ISREG(st.st_mode)) {
    return Status(StatusCode::kInvalidArgument, path.string() + ": not a regular file");
  }
  std::string text;
  char buf[16 * 1024];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return failed("cannot read the config file", errno);
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxConfigFileBytes) {
      return Status(StatusCode::kInvalidArgument, path.string() + ": more than " +
                                                      FormatSize(kMaxConfigFileBytes) +
                                                      "; not a kvtierd config");
    }
  }
  return ParseConfig(text, path);
}

}  // namespace kvtier
