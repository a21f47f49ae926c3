// The fault double behind kvtierd-faults (tests/support/fault_switch.h) over the real devices:
// a plan fails, holds and releases exactly what it says, and the control and report files
// carry what they should. (tests/integration/spill_faults_test.cc runs it inside the daemon.)
#include "tests/support/fault_switch.h"

#include <errno.h>
#include <poll.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "tests/daemon/spill_test_devices.h"
#include "tests/support/fault_plan.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

namespace fs = std::filesystem;
constexpr size_t kBlock = 64 * 1024;

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

IoRequest Request(IoOp op, int file, uint64_t offset, std::span<std::byte> buffer) {
  IoRequest r;
  r.op = op;
  r.file = file;
  r.offset = offset;
  r.buffer = buffer;
  return r;
}

bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

// Reaps until `request` comes back (blocking); returns its result.
int64_t ReapOne(BlockDevice& device, IoRequest& request) {
  IoRequest* out[4];
  for (;;) {
    const size_t n = device.Reap(out, /*wait=*/true);
    REQUIRE(n > 0);
    for (size_t i = 0; i < n; ++i) {
      if (out[i] == &request) return request.result;
    }
  }
}

// A switch on files in a temp dir, and plans written to it.
struct Switch {
  TempDir dir;
  fs::path control = dir.path() / "control";
  fs::path report = dir.path() / "control.report";
  std::optional<FaultSwitch> faults;
  uint64_t seq = 0;

  Switch() { faults.emplace(control, report); }
  void Set(FaultPlan plan) {
    plan.seq = ++seq;
    REQUIRE(WriteFaultPlan(control, plan));
    REQUIRE(WaitUntil([&] {
      const std::optional<FaultReport> r = ParseFaultReport(ReadFile(report));
      return r.has_value() && r->plan == plan.seq;
    }));
  }
  FaultReport Report() {
    const std::optional<FaultReport> r = ParseFaultReport(ReadFile(report));
    REQUIRE(r.has_value());
    return *r;
  }
};

TEST_CASE("a fault plan survives formatting and parsing and a bad control file is refused",
          "[daemon][spill][faults]") {
  const FaultPlan plan{.seq = 9,
                       .write_errno = ENOSPC,
                       .read_errno = EIO,
                       .create_errno = 77,
                       .delay_ms = 1500,
                       .jitter_ms = 20,
                       .stall = true};
  std::string error;
  const std::optional<FaultPlan> back = ParseFaultPlan(FormatFaultPlan(plan), &error);
  REQUIRE(back.has_value());
  CHECK(back->seq == 9);
  CHECK(back->write_errno == ENOSPC);
  CHECK(back->read_errno == EIO);
  CHECK(back->create_errno == 77);
  CHECK(back->delay_ms == 1500);
  CHECK(back->jitter_ms == 20);
  CHECK(back->stall);
  CHECK(ParseFaultPlan("", &error).has_value());  // no faults
  for (const char* bad : {"stall=yes\n", "write_errno=EWHAT\n", "delay=5\n", "seq\n",
                          "seq=1\nseq=2\n", "delay_ms=-1\n"}) {
    INFO(bad);
    CHECK_FALSE(ParseFaultPlan(bad, &error).has_value());
    CHECK_FALSE(error.empty());
  }
  FaultReport report;
  report.plan = 3;
  report.held = 2;
  report.control_error = "unknown key 'x'";
  const std::optional<FaultReport> parsed = ParseFaultReport(FormatFaultReport(report));
  REQUIRE(parsed.has_value());
  CHECK(parsed->plan == 3);
  CHECK(parsed->held == 2);
  CHECK(parsed->control_error == "unknown key 'x'");
  CHECK_FALSE(ParseFaultReport("").has_value());
}

TEST_CASE("SwitchedDevice fails every write or read its plan names and holds completions "
          "until released",
          "[daemon][spill][faults]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto inner = OpenTestDevice(kind, 8, 16);
  if (!inner) return;
  Switch s;
  std::unique_ptr<BlockDevice> device = s.faults->Wrap(std::move(inner), "alice");
  CHECK(std::string(device->name()).starts_with("fault-switched "));
  auto file = device->OpenFile((s.dir.path() / "data").string(),
                               OpenMode{.create = true, .preallocate_bytes = 2 * kBlock});
  REQUIRE(file.ok());
  AlignedBuffer old_data(kBlock);
  AlignedBuffer new_data(kBlock);
  AlignedBuffer back(kBlock);
  std::memset(old_data.span().data(), 0x11, kBlock);
  std::memset(new_data.span().data(), 0x22, kBlock);
  IoRequest setup = Request(IoOp::kWrite, *file, 0, old_data.span());
  REQUIRE(device->Submit(&setup).ok());
  REQUIRE(ReapOne(*device, setup) == static_cast<int64_t>(kBlock));

  SECTION("every write fails with the plan's errno and leaves the file as it was") {
    for (int err : {EIO, ENOSPC}) {
      s.Set({.write_errno = err});
      for (int i = 0; i < 3; ++i) {
        IoRequest write = Request(IoOp::kWrite, *file, 0, new_data.span());
        REQUIRE(device->Submit(&write).ok());
        CHECK(ReapOne(*device, write) == -err);
      }
    }
    s.Set({});
    IoRequest read = Request(IoOp::kRead, *file, 0, back.span());
    REQUIRE(device->Submit(&read).ok());
    REQUIRE(ReapOne(*device, read) == static_cast<int64_t>(kBlock));
    CHECK(std::memcmp(back.span().data(), old_data.span().data(), kBlock) == 0);
    CHECK(WaitUntil([&] { return s.Report().failed_writes == 6; }));
  }

  SECTION("every read fails while the plan says so, and reads work again after it") {
    s.Set({.read_errno = EIO});
    IoRequest failed = Request(IoOp::kRead, *file, 0, back.span());
    REQUIRE(device->Submit(&failed).ok());
    CHECK(ReapOne(*device, failed) == -EIO);
    s.Set({});
    IoRequest fine = Request(IoOp::kRead, *file, 0, back.span());
    REQUIRE(device->Submit(&fine).ok());
    CHECK(ReapOne(*device, fine) == static_cast<int64_t>(kBlock));
    CHECK(WaitUntil([&] { return s.Report().failed_reads == 1; }));
  }

  SECTION("a stall holds completions (in flight, event_fd quiet) until a plan without it") {
    s.Set({.stall = true});
    IoRequest write = Request(IoOp::kWrite, *file, kBlock, new_data.span());
    IoRequest failed = Request(IoOp::kRead, *file, 0, back.span());
    REQUIRE(device->Submit(&write).ok());
    REQUIRE(device->Flush().ok());
    // The write reaches the disk; its completion is held once the device has seen it.
    REQUIRE(WaitUntil([&] {
      IoRequest* out[4];
      CHECK(device->Reap(out, /*wait=*/false) == 0);
      return s.Report().held == 1;
    }));
    s.Set({.read_errno = EIO, .stall = true});
    REQUIRE(device->Submit(&failed).ok());
    IoRequest* out[4];
    CHECK(device->Reap(out, /*wait=*/false) == 0);
    CHECK(device->in_flight() == 2);
    CHECK_FALSE(Readable(device->event_fd()));
    CHECK(WaitUntil([&] {
      const FaultReport r = s.Report();
      return r.in_flight == 2 && r.held == 2 && r.completed == 1;  // 1: the setup write
    }));
    // A blocking Reap on the owner thread (here another one) returns once released.
    size_t reaped = 0;
    std::thread owner([&] {
      while (reaped < 2) reaped += device->Reap(std::span(out).subspan(reaped), /*wait=*/true);
    });
    s.Set({});
    owner.join();
    CHECK(write.result == static_cast<int64_t>(kBlock));
    CHECK(failed.result == -EIO);
    CHECK(device->in_flight() == 0);
  }

  SECTION("a released completion wakes event_fd from the switch's thread") {
    s.Set({.stall = true});
    IoRequest read = Request(IoOp::kRead, *file, 0, back.span());
    REQUIRE(device->Submit(&read).ok());
    REQUIRE(device->Flush().ok());
    REQUIRE(WaitUntil([&] {
      IoRequest* out[4];
      CHECK(device->Reap(out, /*wait=*/false) == 0);
      return s.Report().held == 1;
    }));
    CHECK_FALSE(Readable(device->event_fd()));
    s.Set({});
    CHECK(WaitUntil([&] { return Readable(device->event_fd()); }));
    IoRequest* out[4];
    REQUIRE(device->Reap(out, /*wait=*/false) == 1);
    CHECK(out[0] == &read);
    CHECK(read.result == static_cast<int64_t>(kBlock));
    CHECK(std::memcmp(back.span().data(), old_data.span().data(), kBlock) == 0);
  }

  SECTION("a delay holds a completion that is done until its time") {
    s.Set({.delay_ms = 600000});
    IoRequest read = Request(IoOp::kRead, *file, 0, back.span());
    REQUIRE(device->Submit(&read).ok());
    REQUIRE(device->Flush().ok());
    REQUIRE(WaitUntil([&] {
      IoRequest* out[4];
      CHECK(device->Reap(out, /*wait=*/false) == 0);
      return s.Report().held == 1;
    }));
    CHECK(device->in_flight() == 1);
    // (Ten minutes from now: the device goes with the completion still held.)
  }

  SECTION("new files fail with the plan's errno: ENOSPC as a full disk") {
    s.Set({.create_errno = ENOSPC});
    auto full = device->OpenFile((s.dir.path() / "new").string(),
                                 OpenMode{.create = true, .preallocate_bytes = kBlock});
    CHECK(full.status().code() == StatusCode::kResourceExhausted);
    CHECK_FALSE(fs::exists(s.dir.path() / "new"));
    // Opening an existing file is not creating one.
    REQUIRE(device->CloseFile(*file).ok());
    auto again = device->OpenFile((s.dir.path() / "data").string(), OpenMode{});
    CHECK(again.ok());
    CHECK(WaitUntil([&] { return s.Report().failed_creates == 1; }));
  }

  SECTION("a malformed control file is reported and the plan in force stays") {
    s.Set({.read_errno = EIO});
    REQUIRE(ReplaceFile(s.control, "seq=99\nstall=maybe\n"));
    REQUIRE(WaitUntil([&] { return !s.Report().control_error.empty(); }));
    CHECK(s.Report().plan == s.seq);
    IoRequest failed = Request(IoOp::kRead, *file, 0, back.span());
    REQUIRE(device->Submit(&failed).ok());
    CHECK(ReapOne(*device, failed) == -EIO);
  }
  device.reset();
  CHECK(s.Report().devices <= 1);
}

}  // namespace
}  // namespace kvtier::testing
