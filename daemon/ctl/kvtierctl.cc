// kvtierctl: the operators' CLI. It speaks the admin socket's line protocol (admin_server.h,
// docs/protocol.md "Admin socket"): one request line out, "OK" or "ERROR ..." and the body
// back. The daemon renders the tables (or the JSON), so the CLI stays a thin pipe and scripts
// can use `socat` the same way.
#include <errno.h>
#include <sys/socket.h>
#include <time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr char kUsage[] =
    "usage: kvtierctl [--admin-socket PATH] [--json] COMMAND [ARG ...]\n"
    "commands:\n"
    "  status                              the daemon: version, uptime, sockets, sessions\n"
    "  stats [--tenant T]                  counters of every tenant (or of T)\n"
    "  tenants                             the configured tenants and their limits\n"
    "  evict --tenant T [--tier dram|ssd]  drop T's unpinned blocks from a tier (both if none)\n"
    "  purge TENANT                        delete every block of TENANT in every tier, zero its\n"
    "                                      pool, crypto-erase its segments, close its sessions\n"
    "  reload                              re-read the config file (as SIGHUP does)\n"
    "  drain                               refuse new sessions, finish requests, flush, exit\n"
    "  upgrade                             re-execute kvtierd's binary (a newly installed one)\n"
    "                                      keeping the DRAM tier; waits until it serves again\n"
    "  rotate-key                          re-read the SSD tier's master key (key file) and\n"
    "                                      re-seal the keyring under it; no segment rewritten\n"
    "  metrics                             Prometheus text exposition\n"
    "options:\n"
    "  --version            kvtierctl's version (`status` gives the daemon's)\n"
    "  --admin-socket PATH  default $KVTIER_ADMIN_SOCKET or /run/kvtier/kvtierd-admin.sock\n"
    "  --json               one JSON object instead of tables\n";

int Fail(const std::string& message) {
  std::fprintf(stderr, "kvtierctl: %s\n", message.c_str());
  return 1;
}

// Each argument is one word of the request line.
bool IsWord(const std::string& arg) {
  if (arg.empty()) return false;
  for (char c : arg) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return false;
  }
  return true;
}

// One request line out, the reply back. Returns 0 with the body in `*body`, or 1 with the
// error in `*error`; `*refused` says nothing was listening (or it stopped before answering).
int Exchange(const std::string& socket_path, const std::string& request, std::string* body,
             std::string* error, bool* refused) {
  *refused = false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    *error = "socket path too long";
    return 1;
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::string("socket: ") + std::strerror(errno);
    return 1;
  }
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    close(fd);
    if (err == ENOENT || err == ECONNREFUSED) {
      *refused = true;
      *error = "kvtierd is not running: nothing listens at " + socket_path;
    } else if (err == EACCES) {
      *error = "permission denied on " + socket_path +
               ": the admin socket admits kvtierd's user, root and the admin group "
               "(admin.group) only";
    } else {
      *error = "connect(" + socket_path + "): " + std::strerror(err);
    }
    return 1;
  }
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    // A refused peer may find the socket closed before its request is out; the reply says why.
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string reply;
  char buffer[65536];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    reply.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  const size_t eol = reply.find('\n');
  if (eol == std::string::npos) {
    *refused = true;
    *error = "kvtierd closed the connection without a reply (it may be stopping; see its log)";
    return 1;
  }
  const std::string status = reply.substr(0, eol);
  if (status.starts_with("ERROR ")) {
    *refused = status.find("kvtierd is stopping") != std::string::npos;
    *error = status.substr(6);
    return 1;
  }
  if (status != "OK") {
    *error = "unexpected reply from kvtierd: " + status;
    return 1;
  }
  *body = reply.substr(eol + 1);
  return 0;
}

// The "pid" field of a JSON status report, or 0.
uint64_t PidIn(const std::string& json) {
  const size_t at = json.find("\"pid\": ");
  if (at == std::string::npos) return 0;
  return std::strtoull(json.c_str() + at + 7, nullptr, 10);
}

double MonotonicSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket_path = "/run/kvtier/kvtierd-admin.sock";
  if (const char* env = std::getenv("KVTIER_ADMIN_SOCKET")) socket_path = env;
  bool json = false;
  std::vector<std::string> command;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (command.empty() && arg == "--admin-socket" && i + 1 < argc) {
      socket_path = argv[++i];
    } else if (command.empty() && arg == "--json") {
      json = true;
    } else if (command.empty() && arg == "--version") {
      std::printf("kvtierctl %s\n", KVT_VERSION);
      return 0;
    } else if (command.empty() && (arg == "--help" || arg == "-h")) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (!command.empty() || (!arg.empty() && arg[0] != '-')) {
      if (!IsWord(arg)) return Fail("argument '" + arg + "' may not contain spaces");
      command.push_back(arg);
    } else {
      std::fputs(kUsage, stderr);
      return 2;
    }
  }
  if (command.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  std::string request = std::string("KVTIER-ADMIN 1 ") + (json ? "json" : "text");
  for (const std::string& word : command)
    request += " " + word;
  request += "\n";

  std::string body;
  std::string error;
  bool refused = false;
  const bool upgrade = command[0] == "upgrade";
  const std::string json_status = "KVTIER-ADMIN 1 json status\n";
  uint64_t old_pid = 0;
  if (upgrade) {
    // Which process answers now: the upgraded one must be the same (execv keeps the pid).
    if (Exchange(socket_path, json_status, &body, &error, &refused) != 0) return Fail(error);
    old_pid = PidIn(body);
  }
  if (Exchange(socket_path, request, &body, &error, &refused) != 0) return Fail(error);
  if (!upgrade) {
    std::fwrite(body.data(), 1, body.size(), stdout);
    return 0;
  }
  const std::string upgrade_reply = body;
  if (!json) std::fwrite(body.data(), 1, body.size(), stdout);
  std::fflush(stdout);
  // The reply came before the old process stopped: wait until the new one answers `status`
  // (the old one no longer does), so that a script can go on when kvtierctl returns.
  const double deadline = MonotonicSeconds() + 300;
  while (MonotonicSeconds() < deadline) {
    usleep(100 * 1000);
    if (Exchange(socket_path, json_status, &body, &error, &refused) != 0) {
      if (!refused) return Fail("after the upgrade: " + error);
      continue;
    }
    const uint64_t pid = PidIn(body);
    if (pid != old_pid) {
      return Fail("kvtierd came back as another process (pid " + std::to_string(old_pid) +
                  " -> " + std::to_string(pid) + "): the upgraded binary did not start and "
                  "the service manager started kvtierd again, without the DRAM tier; see its log");
    }
    if (json) {
      // One JSON object: the upgrade's answer and the new process's status.
      auto trim = [](std::string t) {
        while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
        return t;
      };
      std::printf("{\"upgrade\": %s, \"status\": %s}\n", trim(upgrade_reply).c_str(),
                  trim(body).c_str());
      return 0;
    }
    const std::string text_status = "KVTIER-ADMIN 1 text status\n";
    if (Exchange(socket_path, text_status, &body, &error, &refused) != 0) {
      return Fail("after the upgrade: " + error);
    }
    std::printf("kvtierd serves again (pid %llu, the same process):\n",
                static_cast<unsigned long long>(pid));
    std::fwrite(body.data(), 1, body.size(), stdout);
    return 0;
  }
  return Fail("kvtierd did not answer within 300 s of the upgrade (see its log): " + error);
}
