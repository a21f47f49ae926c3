// Writes the seed inputs of the frame and spill fuzzers that are easier built with the real
// structs than by hand: `kvt_fuzz_seeds DIR` writes DIR/frame/*.bin and DIR/spill/*.bin (the
// committed tests/fuzz/corpus/ came from this; the admin and config seeds are plain text).
// Deterministic: the same bytes on every run.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/spill/spill_format.h"
#include "ipc/wire/frame_codec.h"
#include "ipc/wire/protocol.h"

namespace kvtier::fuzz {
namespace {

using Bytes = std::vector<std::byte>;
using wire::Op;

void Write(const std::filesystem::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

// Frames appended back to back, as one session sends them.
class Stream {
 public:
  // Starts a frame; finish it with End.
  wire::FrameWriter& Begin(Op op) {
    writer_.Begin(op, next_id_++);
    return writer_;
  }
  void End() {
    const auto frame = writer_.Finish();
    bytes_.insert(bytes_.end(), frame.begin(), frame.end());
  }
  void Hello(std::string_view name_space, uint32_t flags = wire::kHelloWantsLimits) {
    auto& w = Begin(Op::kHello);
    const wire::HelloRequest hello{flags, static_cast<uint32_t>(name_space.size())};
    w.Append(&hello, sizeof(hello));
    w.Append(name_space.data(), name_space.size());
    End();
  }
  void Keys(Op op, uint8_t first, uint8_t count) {
    auto& w = Begin(op);
    for (uint8_t i = 0; i < count; ++i)
      w.AppendItem(Key(static_cast<uint8_t>(first + i)));
    End();
  }
  void Reserve(uint8_t first, uint8_t count, uint64_t size) {
    auto& w = Begin(Op::kReserve);
    for (uint8_t i = 0; i < count; ++i) {
      wire::ReserveItem item{};
      item.key = Key(static_cast<uint8_t>(first + i));
      item.size = size;
      w.AppendItem(item);
    }
    End();
  }
  const Bytes& bytes() const { return bytes_; }

  static wire::WireKey Key(uint8_t n) {
    wire::WireKey key{};
    key.len = 8;
    key.bytes[0] = n;
    for (uint8_t i = 1; i < key.len; ++i)
      key.bytes[i] = static_cast<uint8_t>(0x40 + i);
    return key;
  }

 private:
  Bytes buffer_ = Bytes(wire::kMaxFrameBytes);
  wire::FrameWriter writer_{buffer_};
  uint64_t next_id_ = 2;  // even: the fuzzer lets copies of even request ids succeed
  Bytes bytes_;
};

void FrameSeeds(const std::filesystem::path& dir) {
  {
    Stream s;
    s.Hello("llama-3.1-8b/bf16/tp1/blk16", 0);
    Write(dir / "hello.bin", s.bytes());
  }
  {  // the store-and-load cycle of README.md
    Stream s;
    s.Hello("model/a");
    s.Reserve(1, 3, 4096);
    s.Keys(Op::kCommit, 1, 3);
    s.Keys(Op::kMatchPrefix, 1, 4);
    s.Keys(Op::kAcquire, 1, 2);
    auto& w = s.Begin(Op::kRelease);
    const uint64_t lease = uint64_t{1} << 32;  // the first lease of a session
    w.AppendItem(lease);
    s.End();
    s.Begin(Op::kStats);
    s.End();
    Write(dir / "store_load.bin", s.bytes());
  }
  {  // hints, estimates, prefetch, abort and remove
    Stream s;
    s.Hello("model/b");
    s.Reserve(1, 2, 65536);
    s.Keys(Op::kAbort, 2, 1);
    s.Keys(Op::kCommit, 1, 1);
    s.Keys(Op::kMatchPrefixEstimate, 1, 2);
    s.Keys(Op::kPrefetch, 1, 2);
    s.Keys(Op::kReuseSoon, 1, 1);
    s.Keys(Op::kDoneWith, 1, 1);
    s.Keys(Op::kRemove, 1, 2);
    Write(dir / "hints.bin", s.bytes());
  }
  {  // a full pool: 4 slabs of 2 MiB, so a fifth size class and a 130th 64 KiB block are refused
    Stream s;
    s.Hello("model/f");
    s.Reserve(1, 4, 4096);
    s.Reserve(10, 1, 8192);
    s.Reserve(20, 1, 16384);
    s.Reserve(30, 1, 32768);
    s.Reserve(40, 1, 6000);
    s.Reserve(100, 130, 65536);
    Write(dir / "pool_full.bin", s.bytes());
  }
  {  // a full lease table: one block leased kMaxLeases + 1 times in one acquire
    Stream s;
    s.Hello("model/g");
    s.Reserve(1, 1, 4096);
    s.Keys(Op::kCommit, 1, 1);
    auto& w = s.Begin(Op::kAcquire);
    for (int i = 0; i < 65; ++i) w.AppendItem(Stream::Key(1));
    s.End();
    Write(dir / "leases_full.bin", s.bytes());
  }
  {  // a host region, an offload of two blocks in two layers, an onload back, deregister
    Stream s;
    s.Hello("model/c");
    auto& reg = s.Begin(Op::kRegisterRegion);
    wire::RegionSpec spec{};
    spec.kind = static_cast<uint32_t>(wire::RegionKind::kHost);
    spec.bytes = 64 * 1024;
    reg.Append(&spec, sizeof(spec));
    s.End();
    wire::TransferSpec transfer{};
    transfer.region_id = 1;
    transfer.layers = 2;
    transfer.progress_region = 1;
    transfer.progress_offset = 60 * 1024;
    transfer.wait_event = wire::kNoEvent;
    transfer.signal_event = wire::kNoEvent;
    auto& off = s.Begin(Op::kOffload);
    off.Append(&transfer, sizeof(transfer));
    for (uint8_t i = 0; i < 2; ++i) {
      wire::OffloadItem item{};
      item.key = Stream::Key(i);
      item.offset = uint64_t{i} * 8192;
      item.size = 8192;
      off.AppendItem(item);
    }
    s.End();
    auto& on = s.Begin(Op::kOnload);
    on.Append(&transfer, sizeof(transfer));
    for (uint8_t i = 0; i < 2; ++i) {
      wire::OnloadItem item{};
      item.key = Stream::Key(i);
      item.offset = 16384 + uint64_t{i} * 8192;
      on.AppendItem(item);
    }
    s.End();
    auto& dereg = s.Begin(Op::kDeregisterRegion);
    const wire::RegionId id{1, 0};
    dereg.Append(&id, sizeof(id));
    s.End();
    Write(dir / "regions.bin", s.bytes());
  }
  {  // a CUDA region (refused without a device) and a request before hello
    Stream s;
    s.Keys(Op::kMatchPrefix, 1, 1);
    Write(dir / "before_hello.bin", s.bytes());
    Stream t;
    t.Hello("model/d");
    auto& reg = t.Begin(Op::kRegisterRegion);
    wire::RegionSpec spec{};
    spec.kind = static_cast<uint32_t>(wire::RegionKind::kCuda);
    spec.bytes = 1 << 20;
    spec.events = 2;
    reg.Append(&spec, sizeof(spec));
    const Bytes handles(2 * wire::kCudaIpcHandleBytes, std::byte{0x11});
    reg.Append(handles.data(), handles.size());
    t.End();
    Write(dir / "cuda_region.bin", t.bytes());
  }
  {  // a hello of a future protocol version
    Stream s;
    s.Hello("model/e");
    Bytes frame = s.bytes();
    const uint16_t version = 2;
    std::memcpy(frame.data() + offsetof(wire::FrameHeader, version), &version, sizeof(version));
    Write(dir / "version2.bin", frame);
  }
}

// Spill seeds in the spill fuzzer's compact layout: flags, the SegmentHeader, then the file
// from offset 4096. Flags 3: the fuzzer seals the key and the records itself.
class Segment {
 public:
  Segment() {
    std::memcpy(header_.magic, spill::kSegmentMagic, sizeof(header_.magic));
    header_.format_version = spill::kFormatVersion;
    header_.header_bytes = spill::kSegmentHeaderBytes;
    header_.segment_bytes = 2ull << 20;
    header_.generation = 0x0123456789abcdefull;
    header_.segment_id = 1;
    std::memcpy(header_.tenant, "fuzz", 4);
    for (size_t i = 0; i < sizeof(header_.wrapped_key.nonce); ++i) {
      header_.wrapped_key.nonce[i] = static_cast<uint8_t>(i + 1);
    }
  }
  // A record of `payload` bytes at the next 4096-aligned offset.
  void Record(std::string_view name_space, uint8_t key, uint64_t sequence, size_t payload) {
    const uint64_t offset = spill::kSegmentHeaderBytes + records_.size();
    spill::RecordHeader r{};
    r.magic = spill::kRecordMagic;
    r.format_version = spill::kFormatVersion;
    r.header_bytes = spill::kRecordHeaderBytes;
    r.payload_bytes = payload;
    r.record_bytes = spill::RecordBytes(payload);
    r.offset = offset;
    r.sequence = sequence;
    r.segment_generation = header_.generation;
    r.segment_id = header_.segment_id;
    r.key_len = 4;
    for (uint8_t i = 0; i < r.key_len; ++i)
      r.key[i] = static_cast<uint8_t>(key + i);
    r.namespace_len = static_cast<uint8_t>(name_space.size());
    std::memcpy(r.name_space, name_space.data(), name_space.size());
    Bytes record(r.record_bytes);
    std::memcpy(record.data(), &r, sizeof(r));
    for (size_t i = 0; i < payload; ++i) {
      record[sizeof(r) + i] = static_cast<std::byte>(i * 7 + key);
    }
    records_.insert(records_.end(), record.begin(), record.end());
  }
  Bytes Input(uint8_t flags) const {
    Bytes out(1, std::byte{flags});
    const auto* h = reinterpret_cast<const std::byte*>(&header_);
    out.insert(out.end(), h, h + sizeof(header_));
    out.insert(out.end(), records_.begin(), records_.end());
    return out;
  }
  spill::SegmentHeader& header() { return header_; }

 private:
  spill::SegmentHeader header_{};
  Bytes records_;
};

void SpillSeeds(const std::filesystem::path& dir) {
  Segment empty;
  Write(dir / "header_only.bin", empty.Input(3));
  Segment one;
  one.Record("model/a", 1, 1, 100);
  Write(dir / "one_record.bin", one.Input(3));
  Write(dir / "one_record_unsealed.bin", one.Input(0));
  Segment newer;  // two copies of one key: the second, newer, wins; another key between
  newer.Record("model/a", 1, 5, 300);
  newer.Record("model/b", 9, 6, 5000);
  newer.Record("model/a", 1, 7, 10);
  Write(dir / "newest_wins.bin", newer.Input(3));
  Segment foreign;  // another tenant's segment
  std::memcpy(foreign.header().tenant, "other", 5);
  foreign.Record("model/a", 1, 1, 100);
  Write(dir / "foreign_tenant.bin", foreign.Input(3));
}

}  // namespace
}  // namespace kvtier::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path root = argv[1];
  std::filesystem::create_directories(root / "frame");
  std::filesystem::create_directories(root / "spill");
  kvtier::fuzz::FrameSeeds(root / "frame");
  kvtier::fuzz::SpillSeeds(root / "spill");
  return 0;
}
