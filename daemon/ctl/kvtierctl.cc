// kvtierctl: the operators' CLI. It speaks the admin socket's line protocol (admin_server.h,
// docs/protocol.md "Admin socket"): one request line out, "OK" or "ERROR ..." and the body
// back. The daemon renders the tables (or the JSON), so the CLI stays a thin pipe and scripts
// can use `socat` the same way.
#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

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

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) return Fail("socket path too long");
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Fail(std::string("socket: ") + std::strerror(errno));
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ECONNREFUSED) {
      return Fail("kvtierd is not running: nothing listens at " + socket_path);
    }
    if (err == EACCES) {
      return Fail("permission denied on " + socket_path +
                  ": the admin socket admits kvtierd's user, root and the admin group "
                  "(admin.group) only");
    }
    return Fail("connect(" + socket_path + "): " + std::strerror(err));
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
  if (eol == std::string::npos)
    return Fail("kvtierd closed the connection without a reply (it may be stopping; see its log)");
  const std::string status = reply.substr(0, eol);
  if (status.starts_with("ERROR ")) return Fail(status.substr(6));
  if (status != "OK") return Fail("unexpected reply from kvtierd: " + status);
  std::fwrite(reply.data() + eol + 1, 1, reply.size() - eol - 1, stdout);
  return 0;
}
