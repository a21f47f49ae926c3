#include "ipc/socket/seqpacket.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "ipc/wire/protocol.h"
#include "tests/support/test_support.h"

namespace kvtier {
namespace {

using Catch::Matchers::Contains;
using Bytes = std::vector<std::byte>;

Bytes Pattern(size_t n, uint8_t seed) {
  Bytes out(n);
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
  return out;
}

struct Pair {
  UniqueFd a;
  UniqueFd b;
};

Pair SocketPair() {
  int fds[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) == 0);
  return Pair{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// A listener, a client from ConnectSeqpacket and the daemon's end from accept.
struct Connection {
  testing::TempDir dir;
  std::string path;
  UniqueFd listener;
  UniqueFd client;
  UniqueFd server;
};

std::unique_ptr<Connection> Connect() {
  auto c = std::make_unique<Connection>();
  c->path = (c->dir.path() / "kvtierd.sock").string();
  auto listener = ListenSeqpacket(c->path, 0600, 8);
  REQUIRE(listener.ok());
  c->listener = std::move(*listener);
  auto client = ConnectSeqpacket(c->path);
  REQUIRE(client.ok());
  c->client = std::move(*client);
  c->server = UniqueFd(accept4(c->listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(c->server.valid());
  return c;
}

// Restores the process umask when a test is done with it.
class ScopedUmask {
 public:
  explicit ScopedUmask(mode_t mask) : old_(umask(mask)) {}
  ~ScopedUmask() { umask(old_); }

 private:
  mode_t old_;
};

TEST_CASE("ListenSeqpacket creates a socket with exactly the requested mode", "[ipc][socket]") {
  testing::TempDir dir;
  const std::string path = (dir.path() / "kvtierd.sock").string();
  // With a umask of 022 a plain bind would leave 0755 and drop group/other write bits.
  const ScopedUmask mask(022);
  const mode_t mode = GENERATE(mode_t{0600}, mode_t{0660}, mode_t{0666}, mode_t{0700});
  auto listener = ListenSeqpacket(path, mode, 4);
  REQUIRE(listener.ok());
  struct stat st {};
  REQUIRE(lstat(path.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 07777) == mode);
  CHECK(st.st_uid == geteuid());

  SECTION("and the listener is non-blocking and close-on-exec") {
    CHECK((fcntl(listener->get(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK((fcntl(listener->get(), F_GETFD) & FD_CLOEXEC) != 0);
    CHECK(accept(listener->get(), nullptr, nullptr) == -1);
    CHECK(errno == EAGAIN);
  }
}

TEST_CASE("ListenUnix gives the socket the requested group and mode", "[ipc][socket]") {
  if (geteuid() != 0) {
    testing::Unavailable("root", "only root can give a file another group", /*whole_test=*/true);
    return;
  }
  testing::TempDir dir;
  const std::string path = (dir.path() / "kvtierd-admin.sock").string();
  auto listener = ListenUnix(path, SOCK_STREAM, 0660, 41003, 4);
  REQUIRE(listener.ok());
  struct stat st {};
  REQUIRE(lstat(path.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 07777) == 0660);
  CHECK(st.st_gid == 41003);
}

TEST_CASE("ListenSeqpacket refuses to replace a file that is not a socket", "[ipc][socket]") {
  testing::TempDir dir;
  const std::string path = (dir.path() / "kvtierd.sock").string();
  SECTION("a regular file") {
    std::ofstream(path) << "precious";
    auto listener = ListenSeqpacket(path, 0600, 4);
    REQUIRE_FALSE(listener.ok());
    CHECK(listener.status().code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(listener.status().message(), Contains("not a socket"));
    std::ifstream in(path);
    std::string content;
    in >> content;
    CHECK(content == "precious");
  }
  SECTION("a directory") {
    REQUIRE(mkdir(path.c_str(), 0700) == 0);
    auto listener = ListenSeqpacket(path, 0600, 4);
    REQUIRE_FALSE(listener.ok());
    CHECK(listener.status().code() == StatusCode::kFailedPrecondition);
    struct stat st {};
    REQUIRE(lstat(path.c_str(), &st) == 0);
    CHECK(S_ISDIR(st.st_mode));
  }
}

TEST_CASE("ListenSeqpacket leaves a symlink at its path alone, even to a stale socket",
          "[ipc][socket]") {
  testing::TempDir dir;
  const std::string real = (dir.path() / "real.sock").string();
  const std::string path = (dir.path() / "kvtierd.sock").string();
  REQUIRE(ListenSeqpacket(real, 0600, 4).ok());  // closed at once: a stale socket file
  REQUIRE(symlink(real.c_str(), path.c_str()) == 0);
  auto listener = ListenSeqpacket(path, 0666, 4);
  REQUIRE_FALSE(listener.ok());
  CHECK(listener.status().code() == StatusCode::kFailedPrecondition);
  struct stat st {};
  REQUIRE(lstat(path.c_str(), &st) == 0);
  CHECK(S_ISLNK(st.st_mode));
  REQUIRE(lstat(real.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
}

TEST_CASE("ListenSeqpacket refuses a directory where another user could replace the socket",
          "[ipc][socket]") {
  testing::TempDir dir;
  const std::filesystem::path open_dir = dir.path() / "open";
  REQUIRE(mkdir(open_dir.c_str(), 0700) == 0);
  std::string path = (open_dir / "kvtierd.sock").string();
  std::string problem;
  SECTION("writable by group") {
    REQUIRE(chmod(open_dir.c_str(), 0770) == 0);
    problem = "is writable by group or others (mode 0770)";
  }
  SECTION("sticky but writable by all, as /tmp") {
    REQUIRE(chmod(open_dir.c_str(), 01777) == 0);
    problem = "is writable by group or others (mode 1777)";
  }
  SECTION("an ancestor writable by all and not sticky") {
    REQUIRE(chmod(open_dir.c_str(), 0777) == 0);
    REQUIRE(mkdir((open_dir / "mine").c_str(), 0700) == 0);
    path = (open_dir / "mine" / "kvtierd.sock").string();
    problem = "ancestor directory " + open_dir.string() + " is writable by group or others";
  }
  if (geteuid() == 0) {
    SECTION("owned by another user") {
      REQUIRE(chown(open_dir.c_str(), 41003, 41003) == 0);
      problem = "is owned by uid 41003";
    }
  }
  auto listener = ListenSeqpacket(path, 0600, 4);
  REQUIRE_FALSE(listener.ok());
  CHECK(listener.status().code() == StatusCode::kPermissionDenied);
  CHECK_THAT(listener.status().message(), Contains(path) && Contains(problem));
  CHECK_FALSE(std::filesystem::exists(path));
  CHECK(EnsureNoListener(path).code() == StatusCode::kPermissionDenied);
}

TEST_CASE("ListenSeqpacket replaces a stale socket but not a live listener", "[ipc][socket]") {
  testing::TempDir dir;
  const std::string path = (dir.path() / "kvtierd.sock").string();
  auto first = ListenSeqpacket(path, 0600, 4);
  REQUIRE(first.ok());

  SECTION("a live listener is kAlreadyExists and keeps serving") {
    auto second = ListenSeqpacket(path, 0600, 4);
    REQUIRE_FALSE(second.ok());
    CHECK(second.status().code() == StatusCode::kAlreadyExists);
    CHECK_THAT(second.status().message(), Contains("already serving"));
    // The path still leads to the first listener.
    auto client = ConnectSeqpacket(path);
    REQUIRE(client.ok());
    UniqueFd accepted(accept4(first->get(), nullptr, nullptr, SOCK_CLOEXEC));
    CHECK(accepted.valid());
  }
  SECTION("a socket file whose listener is gone is replaced") {
    first->reset();  // the file stays behind, as after a crash
    auto second = ListenSeqpacket(path, 0640, 4);
    REQUIRE(second.ok());
    auto client = ConnectSeqpacket(path);
    REQUIRE(client.ok());
    UniqueFd accepted(accept4(second->get(), nullptr, nullptr, SOCK_CLOEXEC));
    CHECK(accepted.valid());
  }
}

TEST_CASE("EnsureNoListener tells a stale socket from a live listener", "[ipc][socket]") {
  testing::TempDir dir;
  const std::string path = (dir.path() / "kvtierd.sock").string();
  SECTION("nothing at the path") {
    CHECK(EnsureNoListener(path).ok());
  }
  SECTION("a live listener, then its stale socket file") {
    auto listener = ListenSeqpacket(path, 0600, 4);
    REQUIRE(listener.ok());
    const Status live = EnsureNoListener(path);
    CHECK(live.code() == StatusCode::kAlreadyExists);
    CHECK_THAT(live.message(), Contains(path));
    listener->reset();
    CHECK(EnsureNoListener(path).ok());
  }
  SECTION("a file that is not a socket") {
    std::ofstream(path) << "x";
    CHECK(EnsureNoListener(path).code() == StatusCode::kFailedPrecondition);
    CHECK(std::filesystem::exists(path));
  }
}

TEST_CASE("ConnectSeqpacket says kvtierd is not running when nothing listens", "[ipc][socket]") {
  testing::TempDir dir;
  const std::string path = (dir.path() / "kvtierd.sock").string();
  SECTION("no file at the path") {}
  SECTION("a stale socket file") {
    auto listener = ListenSeqpacket(path, 0600, 4);
    REQUIRE(listener.ok());
  }
  auto client = ConnectSeqpacket(path);
  REQUIRE_FALSE(client.ok());
  CHECK(client.status().code() == StatusCode::kUnavailable);
  CHECK_THAT(client.status().message(), Contains("kvtierd is not running") && Contains(path));
  // Not to be confused with an empty non-blocking socket.
  CHECK_FALSE(IsWouldBlock(client.status()));
}

TEST_CASE("Socket paths that do not fit sun_path are kInvalidArgument", "[ipc][socket]") {
  const std::string path = GENERATE(std::string(), "/tmp/" + std::string(200, 'x'));
  auto listener = ListenSeqpacket(path, 0600, 4);
  REQUIRE_FALSE(listener.ok());
  CHECK(listener.status().code() == StatusCode::kInvalidArgument);
  auto client = ConnectSeqpacket(path);
  REQUIRE_FALSE(client.ok());
  CHECK(client.status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("SendFrame and RecvFrame carry one frame and one passed fd", "[ipc][socket]") {
  auto c = Connect();
  const Bytes frame = Pattern(1000, 7);
  Bytes buffer(wire::kMaxFrameBytes);

  SECTION("a memfd arrives as a new fd for the same file") {
    UniqueFd memfd(memfd_create("kvtier-test", MFD_CLOEXEC));
    REQUIRE(memfd.valid());
    REQUIRE(ftruncate(memfd.get(), 8192) == 0);
    REQUIRE(SendFrame(c->server.get(), frame, memfd.get()).ok());
    auto got = RecvFrame(c->client.get(), buffer);
    REQUIRE(got.ok());
    CHECK(got->bytes == frame.size());
    CHECK_FALSE(got->eof);
    CHECK_FALSE(got->truncated);
    CHECK(std::memcmp(buffer.data(), frame.data(), frame.size()) == 0);
    REQUIRE(got->passed_fd.valid());
    CHECK(got->passed_fd.get() != memfd.get());
    struct stat sent {
    }, received{};
    REQUIRE(fstat(memfd.get(), &sent) == 0);
    REQUIRE(fstat(got->passed_fd.get(), &received) == 0);
    CHECK(received.st_ino == sent.st_ino);
    CHECK(received.st_dev == sent.st_dev);
    CHECK(received.st_size == 8192);
    // Shared memory really is shared: a write through one fd reads back through the other.
    const char text[] = "kv";
    REQUIRE(pwrite(memfd.get(), text, 2, 100) == 2);
    char back[2] = {};
    REQUIRE(pread(got->passed_fd.get(), back, 2, 100) == 2);
    CHECK(std::memcmp(back, text, 2) == 0);
  }
  SECTION("without an fd nothing is passed") {
    REQUIRE(SendFrame(c->client.get(), frame).ok());
    auto got = RecvFrame(c->server.get(), buffer);
    REQUIRE(got.ok());
    CHECK(got->bytes == frame.size());
    CHECK_FALSE(got->passed_fd.valid());
    CHECK(std::memcmp(buffer.data(), frame.data(), frame.size()) == 0);
  }
  SECTION("frames keep their boundaries") {
    const Bytes second = Pattern(3, 9);
    REQUIRE(SendFrame(c->client.get(), frame).ok());
    REQUIRE(SendFrame(c->client.get(), second).ok());
    auto one = RecvFrame(c->server.get(), buffer);
    REQUIRE(one.ok());
    CHECK(one->bytes == frame.size());
    auto two = RecvFrame(c->server.get(), buffer);
    REQUIRE(two.ok());
    CHECK(two->bytes == 3);
    CHECK(std::memcmp(buffer.data(), second.data(), 3) == 0);
  }
}

TEST_CASE("A kMaxFrameBytes frame fits both ways once buffers are sized", "[ipc][socket]") {
  auto c = Connect();
  REQUIRE(SizeSocketBuffers(c->server.get()).ok());
  const Bytes frame = Pattern(wire::kMaxFrameBytes, 3);
  Bytes buffer(wire::kMaxFrameBytes);
  for (int direction = 0; direction < 2; ++direction) {
    const int from = direction == 0 ? c->client.get() : c->server.get();
    const int to = direction == 0 ? c->server.get() : c->client.get();
    INFO("direction " << direction);
    REQUIRE(SendFrame(from, frame).ok());
    auto got = RecvFrame(to, buffer);
    REQUIRE(got.ok());
    CHECK(got->bytes == frame.size());
    CHECK_FALSE(got->truncated);
    CHECK(buffer == frame);
  }
}

TEST_CASE("RecvFrame reports a frame larger than its buffer as truncated", "[ipc][socket]") {
  Pair p = SocketPair();
  const Bytes big = Pattern(1000, 1);
  const Bytes next = Pattern(10, 2);
  REQUIRE(SendFrame(p.a.get(), big).ok());
  REQUIRE(SendFrame(p.a.get(), next).ok());
  Bytes small(100);
  auto got = RecvFrame(p.b.get(), small);
  REQUIRE(got.ok());
  CHECK(got->truncated);
  CHECK(std::memcmp(small.data(), big.data(), small.size()) == 0);
  // The rest of the big frame is gone; the next receive gets the next frame whole.
  auto second = RecvFrame(p.b.get(), small);
  REQUIRE(second.ok());
  CHECK_FALSE(second->truncated);
  CHECK(second->bytes == next.size());
  CHECK(std::memcmp(small.data(), next.data(), next.size()) == 0);
}

size_t OpenFds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd"))
    ++n;
  return n;
}

TEST_CASE("RecvFrame keeps one passed fd, closes the rest, and flags fds it had no room for",
          "[ipc][socket]") {
  Pair p = SocketPair();
  UniqueFd memfd(memfd_create("kvtier-test", MFD_CLOEXEC));
  REQUIRE(memfd.valid());
  const int sent_fds = GENERATE(2, 4, 8);
  // SendFrame passes one fd; a hostile peer can pass many in one message.
  std::vector<int> fds(static_cast<size_t>(sent_fds), memfd.get());
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  const char byte = 'x';
  iovec iov{const_cast<char*>(&byte), 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  REQUIRE(sendmsg(p.a.get(), &msg, MSG_NOSIGNAL) == 1);

  const size_t open_before = OpenFds();
  Bytes buffer(16);
  {
    auto got = RecvFrame(p.b.get(), buffer);
    REQUIRE(got.ok());
    CHECK(got->bytes == 1);
    CHECK_FALSE(got->truncated);
    CHECK(got->fds_truncated == (sent_fds > 4));  // RecvFrame has room for four
    REQUIRE(got->passed_fd.valid());
    struct stat sent {
    }, received{};
    REQUIRE(fstat(memfd.get(), &sent) == 0);
    REQUIRE(fstat(got->passed_fd.get(), &received) == 0);
    CHECK(received.st_ino == sent.st_ino);
    CHECK(OpenFds() == open_before + 1);  // the kept one; the extras were closed
  }
  CHECK(OpenFds() == open_before);
}

TEST_CASE("RecvFrame reports a closed peer as eof", "[ipc][socket]") {
  Pair p = SocketPair();
  p.a.reset();
  Bytes buffer(64);
  auto got = RecvFrame(p.b.get(), buffer);
  REQUIRE(got.ok());
  CHECK(got->eof);
  CHECK(got->bytes == 0);
}

TEST_CASE("RecvFrame on an empty non-blocking socket is IsWouldBlock", "[ipc][socket]") {
  Pair p = SocketPair();
  Bytes buffer(64);
  SECTION("MSG_DONTWAIT") {
    auto got = RecvFrame(p.b.get(), buffer, MSG_DONTWAIT);
    REQUIRE_FALSE(got.ok());
    CHECK(IsWouldBlock(got.status()));
  }
  SECTION("an O_NONBLOCK socket") {
    REQUIRE(fcntl(p.b.get(), F_SETFL, fcntl(p.b.get(), F_GETFL) | O_NONBLOCK) == 0);
    auto got = RecvFrame(p.b.get(), buffer);
    REQUIRE_FALSE(got.ok());
    CHECK(IsWouldBlock(got.status()));
  }
  SECTION("once a frame is there it is received") {
    REQUIRE(SendFrame(p.a.get(), Pattern(5, 0)).ok());
    auto got = RecvFrame(p.b.get(), buffer, MSG_DONTWAIT);
    REQUIRE(got.ok());
    CHECK(got->bytes == 5);
  }
}

TEST_CASE("SendFrame reports a dead peer as kUnavailable without SIGPIPE", "[ipc][socket]") {
  Pair p = SocketPair();
  p.b.reset();
  const Status status = SendFrame(p.a.get(), Pattern(16, 0));
  CHECK(status.code() == StatusCode::kUnavailable);
}

TEST_CASE("SendFrame on a full non-blocking socket is kResourceExhausted", "[ipc][socket]") {
  Pair p = SocketPair();
  REQUIRE(fcntl(p.a.get(), F_SETFL, fcntl(p.a.get(), F_GETFL) | O_NONBLOCK) == 0);
  const Bytes frame = Pattern(4096, 0);
  Status status;
  int sent = 0;
  // Bounded: the default buffers hold a few hundred such frames.
  while (sent < 100000 && (status = SendFrame(p.a.get(), frame)).ok())
    ++sent;
  CHECK(sent > 0);
  CHECK(status.code() == StatusCode::kResourceExhausted);
}

TEST_CASE("GetPeerCredentials names this process at the other end", "[ipc][socket]") {
  auto c = Connect();
  for (int fd : {c->server.get(), c->client.get()}) {
    auto cred = GetPeerCredentials(fd);
    REQUIRE(cred.ok());
    CHECK(cred->pid == getpid());
    CHECK(cred->uid == getuid());
    CHECK(cred->gid == getgid());
  }
  auto not_a_socket = GetPeerCredentials(-1);
  CHECK_FALSE(not_a_socket.ok());
}

}  // namespace
}  // namespace kvtier
