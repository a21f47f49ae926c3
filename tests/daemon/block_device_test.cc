#include "daemon/spill/block_device.h"

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "tests/support/faulty_device.h"
#include "daemon/spill/io_probe.h"
#include "daemon/spill/thread_pool_device.h"
#include "daemon/spill/uring_device.h"
#include "ipc/base/units.h"
#include "tests/daemon/spill_test_devices.h"
#include "tests/support/test_support.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;

using testing::Kind;
using testing::KindName;

std::unique_ptr<BlockDevice> MakeDevice(Kind kind, uint32_t queue_depth = 8,
                                        uint32_t max_files = 16) {
  return testing::OpenTestDevice(kind, queue_depth, max_files);
}

class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size)
      : data_(static_cast<std::byte*>(std::aligned_alloc(BlockDevice::kAlignment, size))),
        size_(size) {
    REQUIRE(data_ != nullptr);
    std::memset(data_.get(), 0, size_);
  }
  std::span<std::byte> span() { return {data_.get(), size_}; }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> data_;
  size_t size_;
};

// A pattern that differs per seed and per 8-byte word, so a misplaced block is caught.
void Fill(std::span<std::byte> bytes, uint64_t seed) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < bytes.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(&bytes[i], &x, std::min<size_t>(8, bytes.size() - i));
  }
}

// Index of the first byte that differs, or -1.
int64_t FirstMismatch(std::span<const std::byte> a, std::span<const std::byte> b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

IoRequest Request(IoOp op, int file, uint64_t offset, std::span<std::byte> buffer) {
  IoRequest request;
  request.op = op;
  request.file = file;
  request.offset = offset;
  request.buffer = buffer;
  return request;
}

// Reaps until nothing is in flight, so a failed REQUIRE does not free requests the device still
// holds. Declare it after the requests and buffers: it must be destroyed before them.
class DrainOnExit {
 public:
  explicit DrainOnExit(BlockDevice& device) : device_(device) {}
  ~DrainOnExit() {
    std::array<IoRequest*, 16> out{};
    for (int round = 0; round < 1000 && device_.in_flight() > 0; ++round) {
      (void)device_.Reap(out, /*wait=*/true);
    }
  }

 private:
  BlockDevice& device_;
};

// Submits every request (reaping when the queue is full) and reaps until all have completed.
void RunAll(BlockDevice& device, std::span<IoRequest> requests) {
  DrainOnExit drain(device);
  size_t submitted = 0;
  size_t completed = 0;
  std::array<IoRequest*, 16> out{};
  while (completed < requests.size()) {
    while (submitted < requests.size()) {
      Status status = device.Submit(&requests[submitted]);
      if (status.code() == StatusCode::kResourceExhausted) break;
      REQUIRE(status.ok());
      ++submitted;
    }
    REQUIRE(device.Flush().ok());
    const size_t reaped = device.Reap(out, /*wait=*/true);
    REQUIRE(reaped > 0);
    completed += reaped;
  }
  CHECK(device.in_flight() == 0);
}

int64_t RunOne(BlockDevice& device, IoRequest& request) {
  RunAll(device, std::span<IoRequest>(&request, 1));
  return request.result;
}

bool Readable(int fd, int timeout_ms);

// Nothing in flight: the fd is quiet, after at most one late signal that an empty Reap clears
// (block_device.h: io_uring signals the eventfd just after the last completion is visible).
bool QuietAfterLastReap(BlockDevice& device) {
  std::array<IoRequest*, 1> out{};
  if (Readable(device.event_fd(), 0) && device.Reap(out, /*wait=*/false) != 0) return false;
  return !Readable(device.event_fd(), 0);
}

bool Readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN) != 0;
}

// An eventfd's counter, read without consuming it (Linux shows it in fdinfo, in hex).
uint64_t EventCount(int fd) {
  std::ifstream in("/proc/self/fdinfo/" + std::to_string(fd));
  std::string word;
  while (in >> word) {
    if (word == "eventfd-count:" && in >> word) return std::stoull(word, nullptr, 16);
  }
  return 0;
}

int OpenOrFail(BlockDevice& device, const fs::path& path, OpenMode mode = {true, 0},
               std::string* warning = nullptr) {
  auto file = device.OpenFile(path.string(), mode, warning);
  INFO(file.status().ToString());
  REQUIRE(file.ok());
  return *file;
}

TEST_CASE("A block device reads back every byte it wrote, at 4 KiB and 2 MiB, at any aligned "
          "offset", "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const int file = OpenOrFail(*device, dir.path() / "data");
  INFO("O_DIRECT: " << device->direct_io(file));

  const uint64_t size = GENERATE(4 * kKiB, 2 * kMiB);
  INFO("size " << size);
  AlignedBuffer written(size);
  AlignedBuffer read(size);

  SECTION("one request at a time") {
    for (uint64_t offset : {uint64_t{0}, 4 * kKiB, 6 * kMiB + 12 * kKiB, 256 * kMiB}) {
      INFO("offset " << offset);
      Fill(written.span(), offset + size);
      IoRequest write = Request(IoOp::kWrite, file, offset, written.span());
      CHECK(RunOne(*device, write) == static_cast<int64_t>(size));
      IoRequest read_back = Request(IoOp::kRead, file, offset, read.span());
      CHECK(RunOne(*device, read_back) == static_cast<int64_t>(size));
      CHECK(read_back.complete());
      CHECK(FirstMismatch(written.span(), read.span()) == -1);
    }
  }

  SECTION("twelve requests in flight through a queue of eight") {
    constexpr size_t kCount = 12;
    std::vector<AlignedBuffer> sources;
    std::vector<AlignedBuffer> sinks;
    std::vector<IoRequest> writes;
    std::vector<IoRequest> reads;
    for (size_t i = 0; i < kCount; ++i) {
      sources.emplace_back(size);
      sinks.emplace_back(size);
      Fill(sources.back().span(), 1000 + i);
    }
    for (size_t i = 0; i < kCount; ++i) {
      // Interleaved offsets, so requests land out of order.
      const uint64_t offset = ((i * 5) % kCount) * size;
      writes.push_back(Request(IoOp::kWrite, file, offset, sources[i].span()));
      reads.push_back(Request(IoOp::kRead, file, offset, sinks[i].span()));
    }
    RunAll(*device, writes);
    RunAll(*device, reads);
    for (size_t i = 0; i < kCount; ++i) {
      INFO("request " << i);
      CHECK(writes[i].complete());
      CHECK(reads[i].complete());
      CHECK(FirstMismatch(sources[i].span(), sinks[i].span()) == -1);
    }
  }
  CHECK(device->Sync(file).ok());
  CHECK(device->CloseFile(file).ok());
}

TEST_CASE("A block device refuses submissions beyond its queue depth until completions are "
          "reaped", "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind, /*queue_depth=*/4);
  if (!device) return;
  testing::TempDir dir;
  const int file = OpenOrFail(*device, dir.path() / "data");
  std::vector<AlignedBuffer> buffers;
  std::vector<IoRequest> requests;
  for (size_t i = 0; i < 5; ++i) buffers.emplace_back(4 * kKiB);
  for (size_t i = 0; i < 5; ++i) {
    requests.push_back(Request(IoOp::kWrite, file, i * 4 * kKiB, buffers[i].span()));
  }

  DrainOnExit drain(*device);
  std::array<IoRequest*, 8> out{};
  CHECK(device->Reap(out, /*wait=*/true) == 0);  // nothing in flight: returns, never blocks
  for (size_t i = 0; i < 4; ++i) REQUIRE(device->Submit(&requests[i]).ok());
  CHECK(device->in_flight() == 4);
  Status full = device->Submit(&requests[4]);
  CHECK(full.code() == StatusCode::kResourceExhausted);
  CHECK(full.message() == "queue full");
  CHECK(device->in_flight() == 4);

  REQUIRE(device->Flush().ok());
  size_t reaped = device->Reap(out, /*wait=*/true);
  REQUIRE(reaped >= 1);
  CHECK(device->in_flight() == 4 - reaped);
  CHECK(device->Submit(&requests[4]).ok());
  while (device->in_flight() > 0) reaped += device->Reap(out, /*wait=*/true);
  CHECK(reaped == 5);
  for (const IoRequest& request : requests) CHECK(request.complete());
  CHECK(QuietAfterLastReap(*device));  // no stale signal after waiting Reaps
  CHECK(device->CloseFile(file).ok());
}

TEST_CASE("A block device's event fd is readable while completions wait and quiet after the "
          "last is reaped", "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  std::vector<AlignedBuffer> buffers;
  std::vector<IoRequest> requests;
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const int file = OpenOrFail(*device, dir.path() / "data");
  for (size_t i = 0; i < 4; ++i) buffers.emplace_back(64 * kKiB);
  DrainOnExit drain(*device);
  CHECK_FALSE(Readable(device->event_fd(), 0));
  std::array<IoRequest*, 1> out{};
  size_t reaped = 0;

  SECTION("writes reaped one at a time, waiting on the fd as an epoll loop would") {
    for (size_t i = 0; i < 4; ++i) {
      requests.push_back(Request(IoOp::kWrite, file, i * 64 * kKiB, buffers[i].span()));
    }
    for (IoRequest& request : requests) REQUIRE(device->Submit(&request).ok());
    REQUIRE(device->Flush().ok());
    for (int round = 0; round < 100 && device->in_flight() > 0; ++round) {
      REQUIRE(Readable(device->event_fd(), 10000));
      reaped += device->Reap(out, /*wait=*/false);
    }
  }

  SECTION("completions left behind by a Reap with too small an `out` keep it readable") {
    // Reads at the end of an empty file have nothing to wait for: io_uring completes them
    // inside io_uring_enter, and the thread pool's eventfd counts one per completion.
    for (size_t i = 0; i < 4; ++i) {
      requests.push_back(Request(IoOp::kRead, file, i * 64 * kKiB, buffers[i].span()));
    }
    for (IoRequest& request : requests) REQUIRE(device->Submit(&request).ok());
    REQUIRE(device->Flush().ok());
    const uint64_t signals = kind == Kind::kUring ? 1 : 4;  // io_uring signals once per batch
    REQUIRE(testing::WaitUntil([&] { return EventCount(device->event_fd()) >= signals; }));
    for (int round = 0; round < 4; ++round) {
      REQUIRE(Readable(device->event_fd(), 10000));
      reaped += device->Reap(out, /*wait=*/false);
    }
    for (const IoRequest& request : requests) CHECK(request.result == 0);
  }
  CHECK(reaped == 4);
  CHECK(device->in_flight() == 0);
  CHECK(QuietAfterLastReap(*device));
  CHECK(device->CloseFile(file).ok());
}

TEST_CASE("A read past the end of a file is a short result, not an error", "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const int file = OpenOrFail(*device, dir.path() / "data");
  AlignedBuffer data(8 * kKiB);
  Fill(data.span(), 7);
  IoRequest write = Request(IoOp::kWrite, file, 0, data.span());
  REQUIRE(RunOne(*device, write) == 8 * 1024);

  AlignedBuffer big(16 * kKiB);
  IoRequest read = Request(IoOp::kRead, file, 0, big.span());
  CHECK(RunOne(*device, read) == 8 * 1024);
  CHECK_FALSE(read.complete());
  CHECK(FirstMismatch(data.span(), big.span().first(8 * kKiB)) == -1);
  IoRequest beyond = Request(IoOp::kRead, file, kMiB, big.span());
  CHECK(RunOne(*device, beyond) == 0);
  CHECK(device->CloseFile(file).ok());
}

TEST_CASE("A block device rejects malformed requests and guards files that are in use",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind, /*queue_depth=*/8, /*max_files=*/2);
  if (!device) return;
  testing::TempDir dir;
  const fs::path path = dir.path() / "data";
  const int file = OpenOrFail(*device, path);
  AlignedBuffer buffer(16 * kKiB);
  const std::span<std::byte> span = buffer.span();

  SECTION("misaligned, empty or unknown requests are invalid arguments") {
    IoRequest bad[] = {
        Request(IoOp::kWrite, file, 512, span.first(4 * kKiB)),
        Request(IoOp::kWrite, file, 0, span.first(4 * kKiB + 512)),
        Request(IoOp::kRead, file, 0, span.subspan(512, 4 * kKiB)),
        Request(IoOp::kRead, file, 0, span.first(0)),
        Request(IoOp::kRead, file + 1, 0, span.first(4 * kKiB)),
        Request(IoOp::kRead, -1, 0, span.first(4 * kKiB)),
    };
    for (IoRequest& request : bad) {
      CHECK(device->Submit(&request).code() == StatusCode::kInvalidArgument);
    }
    CHECK(device->in_flight() == 0);
  }

  SECTION("a file with I/O in flight cannot be closed, an open file cannot be removed") {
    IoRequest write = Request(IoOp::kWrite, file, 0, span);
    DrainOnExit drain(*device);
    REQUIRE(device->Submit(&write).ok());
    CHECK(device->CloseFile(file).code() == StatusCode::kFailedPrecondition);
    CHECK(device->RemoveFile(path.string()).code() == StatusCode::kFailedPrecondition);
    std::array<IoRequest*, 1> out{};
    REQUIRE(device->Reap(out, /*wait=*/true) == 1);
    CHECK(out[0] == &write);
    CHECK(write.complete());
    CHECK(device->CloseFile(file).ok());
    CHECK(device->CloseFile(file).code() == StatusCode::kInvalidArgument);
    CHECK(device->RemoveFile(path.string()).ok());
    CHECK_FALSE(fs::exists(path));
    CHECK(device->RemoveFile(path.string()).code() == StatusCode::kNotFound);
  }

  SECTION("opening needs create for a new file, and the file table is bounded") {
    CHECK(device->OpenFile((dir.path() / "missing").string(), OpenMode{}).status().code() ==
          StatusCode::kNotFound);
    const int second = OpenOrFail(*device, dir.path() / "second");
    auto third = device->OpenFile((dir.path() / "third").string(), OpenMode{true, 0});
    CHECK(third.status().code() == StatusCode::kResourceExhausted);
    CHECK(device->CloseFile(second).ok());
  }
}

TEST_CASE("Preallocation reserves space, and a full filesystem answers ENOSPC without a crash",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;

  SECTION("preallocated space is allocated and usable") {
    testing::TempDir dir;
    const fs::path path = dir.path() / "segment";
    const int file = OpenOrFail(*device, path, OpenMode{true, 8 * kMiB});
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(static_cast<uint64_t>(st.st_size) == 8 * kMiB);
    CHECK(static_cast<uint64_t>(st.st_blocks) * 512 >= 8 * kMiB);
    AlignedBuffer data(2 * kMiB);
    AlignedBuffer back(2 * kMiB);
    Fill(data.span(), 3);
    IoRequest write = Request(IoOp::kWrite, file, 6 * kMiB, data.span());
    CHECK(RunOne(*device, write) == static_cast<int64_t>(2 * kMiB));
    IoRequest read = Request(IoOp::kRead, file, 6 * kMiB, back.span());
    CHECK(RunOne(*device, read) == static_cast<int64_t>(2 * kMiB));
    CHECK(FirstMismatch(data.span(), back.span()) == -1);
    CHECK(device->CloseFile(file).ok());
  }

  SECTION("a 16 MiB tmpfs refuses a 32 MiB preallocation and writes beyond its size") {
    testing::ScopedMount mount("tmpfs", "size=16m");
    if (!mount.ok()) {
      testing::Unavailable("tmpfs", mount.why(), /*whole_test=*/false);
      return;
    }
    const fs::path big = mount.dir() / "too-big";
    auto refused = device->OpenFile(big.string(), OpenMode{true, 32 * kMiB});
    CHECK(refused.status().code() == StatusCode::kResourceExhausted);
    CHECK_THAT(refused.status().message(), Catch::Contains(big.string()));
    CHECK_FALSE(fs::exists(big));  // created by the attempt, removed again

    const int file = OpenOrFail(*device, mount.dir() / "log");
    AlignedBuffer data(2 * kMiB);
    Fill(data.span(), 9);
    std::vector<IoRequest> writes;
    for (uint64_t i = 0; i < 12; ++i) {
      writes.push_back(Request(IoOp::kWrite, file, i * 2 * kMiB, data.span()));
    }
    RunAll(*device, writes);
    size_t complete = 0;
    size_t out_of_space = 0;
    for (const IoRequest& write : writes) {
      INFO("result " << write.result);
      CHECK((write.complete() || write.result == -ENOSPC ||
             (write.result >= 0 && static_cast<uint64_t>(write.result) < 2 * kMiB)));
      if (write.complete()) ++complete;
      if (!write.complete()) ++out_of_space;
    }
    CHECK(complete >= 4);      // the first 8 MiB fit
    CHECK(out_of_space >= 4);  // the last 8 MiB cannot
    CHECK(device->CloseFile(file).ok());
  }
}

TEST_CASE("A filesystem that rejects O_DIRECT gets buffered I/O that still works",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  // tmpfs rejects O_DIRECT before Linux 6.6; ramfs always does.
  for (const char* type : {"tmpfs", "ramfs"}) {
    INFO(type);
    testing::ScopedMount mount(type, type == std::string("tmpfs") ? "size=16m" : nullptr);
    if (!mount.ok()) continue;
    std::string warning;
    const int file = OpenOrFail(*device, mount.dir() / "log", OpenMode{true, 4 * kMiB}, &warning);
    if (device->direct_io(file)) {
      CHECK(warning.empty());
      CHECK(device->CloseFile(file).ok());
      continue;
    }
    CHECK_THAT(warning, Catch::Contains("O_DIRECT") && Catch::Contains("buffered"));
    AlignedBuffer data(2 * kMiB);
    AlignedBuffer back(2 * kMiB);
    Fill(data.span(), 11);
    IoRequest write = Request(IoOp::kWrite, file, 2 * kMiB, data.span());
    CHECK(RunOne(*device, write) == static_cast<int64_t>(2 * kMiB));
    REQUIRE(device->Sync(file).ok());
    IoRequest read = Request(IoOp::kRead, file, 2 * kMiB, back.span());
    CHECK(RunOne(*device, read) == static_cast<int64_t>(2 * kMiB));
    CHECK(FirstMismatch(data.span(), back.span()) == -1);
    CHECK(device->CloseFile(file).ok());
    return;
  }
  testing::Unavailable("odirect-refusing-fs", "no mountable filesystem here rejects O_DIRECT; the "
                       "buffered fallback was not exercised", /*whole_test=*/false);
}

TEST_CASE("FaultyDevice fails, shortens and corrupts exactly the I/O it is told to",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto inner = MakeDevice(kind);
  if (!inner) return;
  FaultyDevice device(std::move(inner));
  testing::TempDir dir;
  const int file = OpenOrFail(device, dir.path() / "data");
  constexpr uint64_t kBlock = 64 * kKiB;
  AlignedBuffer old_data(3 * kBlock);
  AlignedBuffer new_data(3 * kBlock);
  AlignedBuffer back(3 * kBlock);
  Fill(old_data.span(), 1);
  Fill(new_data.span(), 2);
  IoRequest setup = Request(IoOp::kWrite, file, 0, old_data.span());
  REQUIRE(RunOne(device, setup) == static_cast<int64_t>(3 * kBlock));

  SECTION("the nth write fails with its errno as the result and leaves the file untouched") {
    for (int err : {EIO, ENOSPC}) {
      INFO("errno " << err);
      device.FailNthWrite(2, err);
      std::vector<IoRequest> writes;
      for (uint64_t i = 0; i < 3; ++i) {
        writes.push_back(Request(IoOp::kWrite, file, i * kBlock,
                                 new_data.span().subspan(i * kBlock, kBlock)));
      }
      RunAll(device, writes);
      CHECK(writes[0].complete());
      CHECK(writes[1].result == -err);
      CHECK(writes[2].complete());
      IoRequest read = Request(IoOp::kRead, file, kBlock, back.span().first(kBlock));
      REQUIRE(RunOne(device, read) == static_cast<int64_t>(kBlock));
      CHECK(FirstMismatch(back.span().first(kBlock),
                          old_data.span().subspan(kBlock, kBlock)) == -1);
    }
    CHECK(device.faults_fired() == 2);
  }

  SECTION("the nth read fails, the next one does not") {
    device.FailNthRead(1, EIO);
    IoRequest failed = Request(IoOp::kRead, file, 0, back.span());
    CHECK(RunOne(device, failed) == -EIO);
    IoRequest fine = Request(IoOp::kRead, file, 0, back.span());
    CHECK(RunOne(device, fine) == static_cast<int64_t>(3 * kBlock));
    CHECK(FirstMismatch(back.span(), old_data.span()) == -1);
  }

  SECTION("the nth I/O is short, reported as a result, with the caller's buffer span restored") {
    device.ShortenNthIo(1);
    IoRequest write = Request(IoOp::kWrite, file, 0, new_data.span().first(2 * kBlock));
    CHECK(RunOne(device, write) == static_cast<int64_t>(kBlock));
    CHECK_FALSE(write.complete());
    CHECK(write.buffer.size() == 2 * kBlock);
    IoRequest read = Request(IoOp::kRead, file, 0, back.span());
    REQUIRE(RunOne(device, read) == static_cast<int64_t>(3 * kBlock));
    CHECK(FirstMismatch(back.span().first(kBlock), new_data.span().first(kBlock)) == -1);
    CHECK(FirstMismatch(back.span().subspan(kBlock), old_data.span().subspan(kBlock)) == -1);

    device.ShortenNthIo(1, 0);
    IoRequest empty = Request(IoOp::kRead, file, 0, back.span());
    CHECK(RunOne(device, empty) == 0);
    CHECK(device.faults_fired() == 2);
  }

  SECTION("the nth read's buffer has exactly one byte flipped") {
    device.FlipByteOfNthRead(2, 1000);
    IoRequest first = Request(IoOp::kRead, file, 0, back.span());
    REQUIRE(RunOne(device, first) == static_cast<int64_t>(3 * kBlock));
    CHECK(FirstMismatch(back.span(), old_data.span()) == -1);
    IoRequest second = Request(IoOp::kRead, file, 0, back.span());
    REQUIRE(RunOne(device, second) == static_cast<int64_t>(3 * kBlock));
    CHECK(FirstMismatch(back.span(), old_data.span()) == 1000);
    CHECK(FirstMismatch(back.span().subspan(1001), old_data.span().subspan(1001)) == -1);
    CHECK((back.span()[1000] ^ old_data.span()[1000]) == std::byte{0xff});
  }

  SECTION("an injected failure wakes the event fd, which is quiet once it is reaped") {
    CHECK_FALSE(Readable(device.event_fd(), 0));
    device.FailNthWrite(1, EIO);
    IoRequest write = Request(IoOp::kWrite, file, 0, new_data.span());
    DrainOnExit drain(device);
    REQUIRE(device.Submit(&write).ok());
    CHECK(device.in_flight() == 1);
    CHECK(Readable(device.event_fd(), 0));
    std::array<IoRequest*, 4> out{};
    CHECK(device.Reap(out, /*wait=*/false) == 1);
    CHECK(out[0] == &write);
    CHECK(write.result == -EIO);
    CHECK(device.in_flight() == 0);
    CHECK_FALSE(Readable(device.event_fd(), 0));
  }
  CHECK(device.CloseFile(file).ok());
}

TEST_CASE("The probe picks the thread pool when forced and says why", "[daemon][spill]") {
  DeviceOptions options;
  options.threads = 3;
  options.force_thread_pool = true;
  std::string why;
  auto device = OpenBestDevice(options, &why);
  REQUIRE(device.ok());
  CHECK_THAT(std::string((*device)->name()), Catch::Contains("thread pool"));
  CHECK_THAT(why, Catch::Contains("force_thread_pool") &&
                      Catch::Contains("using 3 pread/pwrite threads"));

  options.force_thread_pool = false;
  auto best = OpenBestDevice(options, &why);
  REQUIRE(best.ok());
  if ((*best)->name() == "io_uring") {
    CHECK(why.empty());
  } else {
    CHECK_THAT(why, Catch::Contains("io_uring unavailable"));
    testing::Unavailable("io_uring", why, /*whole_test=*/false);
  }
}

// Installs a seccomp filter that fails io_uring_setup with `err`, as container runtimes do.
bool BlockIoUringSetup(int err) {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (static_cast<uint32_t>(err) & 0xffff)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(std::size(filter)), filter};
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) == 0;
}

TEST_CASE("Under a seccomp profile that blocks io_uring the probe falls back and names the errno",
          "[daemon][spill]") {
  const int err = GENERATE(EPERM, ENOSYS);
  INFO("errno " << err);
  const int code = testing::RunInChild([err] {
    if (!BlockIoUringSetup(err)) return 10;
    DeviceOptions options;
    options.threads = 2;
    std::string why;
    auto device = OpenBestDevice(options, &why);
    if (!device.ok()) return 11;
    if ((*device)->name().find("thread pool") == std::string_view::npos) return 12;
    const std::string errno_text = "(errno " + std::to_string(err) + ")";
    if (why.find("io_uring unavailable (container seccomp profile?)") == std::string::npos) {
      return 13;
    }
    if (why.find(errno_text) == std::string::npos) return 14;
    if (why.find("using 2 pread/pwrite threads") == std::string::npos) return 15;
    // The fallback does I/O.
    testing::TempDir dir;
    auto file = (*device)->OpenFile((dir.path() / "data").string(), OpenMode{true, 0});
    if (!file.ok()) return 16;
    AlignedBuffer data(4 * kKiB);
    IoRequest write = Request(IoOp::kWrite, *file, 0, data.span());
    if (!(*device)->Submit(&write).ok()) return 17;
    std::array<IoRequest*, 1> out{};
    if ((*device)->Reap(out, /*wait=*/true) != 1 || !write.complete()) return 18;
    return 0;
  });
  CHECK(code == 0);
}

}  // namespace
}  // namespace kvtier
