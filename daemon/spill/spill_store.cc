#include "daemon/spill/spill_store.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "crypto/key_wrap.h"
#include "crypto/secure_random.h"
#include "daemon/spill/spill_record.h"
#include "daemon/spill/spill_store_internal.h"
#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"
#include "ipc/base/units.h"
#include "kvclient/copy.h"

namespace kvtier {
namespace {

using spill::kAlignBytes;
using spill::kRecordHeaderBytes;

constexpr size_t kMaxKeyBytes = sizeof(spill::RecordHeader::key);
constexpr size_t kMaxTenantBytes = sizeof(spill::SegmentHeader::tenant);

Status Invalid(std::string message) {
  return Status(StatusCode::kInvalidArgument, std::move(message));
}

Status ValidateOptions(const SpillOptions& o, const BlockDevice& device) {
  if (o.dir.empty()) return Invalid("spill: dir is empty");
  if (o.tenant.empty() || o.tenant.size() > kMaxTenantBytes ||
      o.tenant.find('\0') != std::string::npos) {
    return Invalid("spill: tenant name must be 1..32 bytes without NUL");
  }
  if (std::string why = SpillSizing::SegmentError(o.segment_bytes); !why.empty()) {
    return Invalid("spill: segment_bytes: " + why);
  }
  if (o.max_record_payload_bytes == 0 || o.max_record_payload_bytes > BlockDevice::kMaxIoBytes) {
    return Invalid("spill: max_record_payload_bytes must be 1 .. " +
                   std::to_string(BlockDevice::kMaxIoBytes));
  }
  if (std::string why = SpillSizing::RecordFitError(o.segment_bytes, o.max_record_payload_bytes);
      !why.empty()) {
    return Invalid("spill: a record of max_record_payload_bytes (" +
                   FormatSize(o.max_record_payload_bytes) + ") " + why);
  }
  if (o.quota_bytes < o.segment_bytes) {
    return Invalid("spill: quota_bytes must hold at least one segment");
  }
  if (o.staging_buffers == 0 || o.staging_buffers >= device.queue_depth()) {
    return Invalid("spill: staging_buffers must be 1 .. the device queue depth - 1 (" +
                   std::to_string(device.queue_depth()) + ")");
  }
  return Status::Ok();
}

bool ValidNameAndKey(std::string_view name_space, std::span<const uint8_t> key) {
  return !name_space.empty() && name_space.size() <= spill::kMaxNamespaceBytes && !key.empty() &&
         key.size() <= kMaxKeyBytes;
}

std::string Where(const SpillLocation& location) {
  return "segment " + std::to_string(location.segment_id) + " offset " +
         std::to_string(location.offset);
}

}  // namespace

std::string SpillSizing::SegmentError(uint64_t segment_bytes) {
  if (segment_bytes % kSegmentGranuleBytes == 0 && segment_bytes >= kSegmentGranuleBytes &&
      segment_bytes <= kMaxSegmentBytes) {
    return "";
  }
  return FormatSize(segment_bytes) + " is not a multiple of " + FormatSize(kSegmentGranuleBytes) +
         " between " + FormatSize(kSegmentGranuleBytes) + " and " + FormatSize(kMaxSegmentBytes);
}

std::string SpillSizing::RecordFitError(uint64_t segment_bytes, uint64_t max_payload_bytes) {
  if (spill::kSegmentHeaderBytes + spill::RecordBytes(max_payload_bytes) <= segment_bytes) {
    return "";
  }
  const uint64_t overhead = spill::kSegmentHeaderBytes + kRecordHeaderBytes;
  const uint64_t largest = segment_bytes > overhead ? segment_bytes - overhead : 0;
  return "does not fit in a segment of " +
         FormatSize(segment_bytes) + " after its " + FormatSize(spill::kSegmentHeaderBytes) +
         " header; the largest that fits is " + FormatSize(largest) +
         " (segment_bytes - 4KiB - the 256-byte record header)";
}

void SpillStore::FreeDeleter::operator()(std::byte* p) const { std::free(p); }

SpillStore::SpillStore(const SpillOptions& options, BlockDevice* device, SecretKey tenant_key)
    : options_(options), device_(device), tenant_key_(std::move(tenant_key)) {}

SpillStore::~SpillStore() {
  // The device holds pointers into slots_ and the staging memory until it hands them back.
  // Scrubs still pending are written first, so a clean stop leaves no released record behind.
  std::array<IoRequest*, 32> reaped{};
  SubmitOpenBatch();  // accepted writes are written
  // Completions nobody will collect now give their staging buffers to the scrubs.
  for (; done_count_ > 0; --done_count_) {
    free_slots_.push_back(done_[done_head_]);
    done_head_ = (done_head_ + 1) % done_.size();
  }
  // Scrubs the disk refused before get one more try: the last chance to keep a removed block
  // from coming back at the next start.
  RetryFailedScrubs();
  StartScrubs();
  while (in_flight_ > 0) {
    const size_t n = device_->Reap(reaped, /*wait=*/true);
    KVT_CHECK(n > 0);
    in_flight_ -= static_cast<uint32_t>(n);
    for (size_t i = 0; i < n; ++i) {
      auto* slot = static_cast<Slot*>(reaped[i]->user);
      if (slot != nullptr && slot->is_scrub) {
        slot->is_scrub = false;
        free_slots_.push_back(slot->index);
      }
    }
    StartScrubs();
  }
  // No I/O is left: every slot's plaintext goes, reads cut short included.
  for (Slot& slot : slots_) Wipe(slot);
  (void)Sync();
  for (auto& [id, segment] : segments_) (void)device_->CloseFile(segment->file);
}

Result<std::unique_ptr<SpillStore>> SpillStore::Open(const SpillOptions& options,
                                                     BlockDevice* device,
                                                     const SecretKey& tenant_key,
                                                     std::vector<RecoveredRecord>* recovered,
                                                     const SecretKey* legacy_key) {
  KVT_CHECK(device != nullptr);
  KVT_RETURN_IF_ERROR(ValidateOptions(options, *device));
  std::unique_ptr<SpillStore> store(
      new SpillStore(options, device, SecretKey::FromBytes(tenant_key.bytes())));
  KVT_RETURN_IF_ERROR(store->Start());
  KVT_RETURN_IF_ERROR(store->Recover(recovered, legacy_key));
  return store;
}

Status SpillStore::Start() {
  std::filesystem::path dir = options_.dir;
  if (!dir.has_filename()) dir = dir.parent_path();  // "a/b/" names "a/b"
  std::error_code ec;
  if (dir.has_parent_path()) std::filesystem::create_directories(dir.parent_path(), ec);
  // The tenant's own directory is private from its first moment: mkdir with 0700, not chmod.
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus("spill: mkdir " + dir.string(), errno);
  }
  // An existing one must really be a directory of ours, not a link to somewhere else (O_NOFOLLOW;
  // O_NONBLOCK: nothing planted there can block the open).
  const int fd =
      ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0 && (errno == ELOOP || errno == ENOTDIR)) {
    return Status(StatusCode::kFailedPrecondition,
                  "spill: " + dir.string() + " is not a directory (a symbolic link or another "
                  "file): remove it, kvtierd creates the tenant's spill directory itself");
  }
  if (fd < 0) return ErrnoStatus("spill: open directory " + dir.string(), errno);
  dir_fd_.reset(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return ErrnoStatus("spill: stat " + dir.string(), errno);
  if (st.st_uid != ::geteuid()) {
    return Status(StatusCode::kPermissionDenied,
                  "spill: " + dir.string() + " is owned by uid " + std::to_string(st.st_uid) +
                      ", not by kvtierd's uid " + std::to_string(::geteuid()) +
                      "; chown it to kvtierd's user");
  }
  // Ours, so made private again if someone opened it up (the segments are still authenticated).
  if ((st.st_mode & 077) != 0 && ::fchmod(fd, 0700) != 0) {
    return ErrnoStatus("spill: chmod 0700 " + dir.string(), errno);
  }

  slot_bytes_ = spill::RecordBytes(options_.max_record_payload_bytes);
  const size_t count = options_.staging_buffers;
  const size_t total = slot_bytes_ * count + kAlignBytes;  // + the header block
  void* memory = std::aligned_alloc(kAlignBytes, total);
  if (memory == nullptr) {
    return Status(StatusCode::kResourceExhausted,
                  "spill: cannot allocate " + std::to_string(total) + " bytes of staging");
  }
  std::memset(memory, 0, total);
  staging_.reset(static_cast<std::byte*>(memory));
  slots_ = std::vector<Slot>(count);
  free_slots_.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    slots_[i].index = static_cast<uint32_t>(i);
    slots_[i].buffer = std::span<std::byte>(staging_.get() + i * slot_bytes_, slot_bytes_);
    free_slots_.push_back(static_cast<uint32_t>(count - 1 - i));
  }
  done_.assign(count, 0);
  return Status::Ok();
}

std::span<std::byte> SpillStore::header_block() const {
  return {staging_.get() + slot_bytes_ * slots_.size(), kAlignBytes};
}

std::filesystem::path SpillStore::SegmentPath(uint32_t id) const {
  char name[32];
  std::snprintf(name, sizeof(name), "seg-%08x.kvs", id);
  return options_.dir / name;
}

Status SpillStore::SyncDir() {
  if (::fsync(dir_fd_.get()) != 0) {
    return ErrnoStatus("spill: fsync " + options_.dir.string(), errno);
  }
  return Status::Ok();
}

Status SpillStore::WaitFor(IoRequest* request) {
  request->user = nullptr;
  // Never "queue full": staging_buffers < queue_depth leaves this request a place (reads take
  // extra pieces only beyond it, see extra_pieces_).
  KVT_RETURN_IF_ERROR(device_->Submit(request));
  ++in_flight_;
  std::array<IoRequest*, 16> reaped{};
  bool done = false;
  while (!done) {
    const size_t n = device_->Reap(reaped, /*wait=*/true);
    KVT_CHECK(n > 0);
    for (size_t i = 0; i < n; ++i) {
      --in_flight_;
      if (reaped[i] == request) {
        done = true;
      } else {
        Reaped(reaped[i]);
      }
    }
  }
  return Status::Ok();
}

Status SpillStore::WriteHeaderBlock(const Segment& segment, bool erase_key) {
  spill::SegmentHeader header = segment.header;
  if (erase_key) std::memset(&header.wrapped_key, 0, sizeof(header.wrapped_key));
  const std::span<std::byte> block = header_block();
  std::memset(block.data(), 0, block.size());
  std::memcpy(block.data(), &header, sizeof(header));
  IoRequest request;
  request.op = IoOp::kWrite;
  request.file = segment.file;
  request.offset = 0;
  request.buffer = block;
  KVT_RETURN_IF_ERROR(WaitFor(&request));
  if (request.result < 0) {
    return ErrnoStatus("spill: write header of " + segment.path.string(),
                       static_cast<int>(-request.result));
  }
  if (!request.complete()) {
    return Status(StatusCode::kIoError, "spill: short header write to " + segment.path.string());
  }
  return device_->Sync(segment.file);
}

Result<std::unique_ptr<SpillStore::Segment>> SpillStore::CreateSegment(uint32_t id) {
  auto segment = std::make_unique<Segment>();
  segment->id = id;
  segment->path = SegmentPath(id);
  spill::SegmentHeader& header = segment->header;
  std::memcpy(header.magic, spill::kSegmentMagic, sizeof(header.magic));
  header.format_version = spill::kFormatVersion;
  header.header_bytes = static_cast<uint32_t>(spill::kSegmentHeaderBytes);
  header.segment_bytes = options_.segment_bytes;
  KVT_ASSIGN_OR_RETURN(header.generation, SecureRandomU64());
  header.segment_id = id;
  std::memcpy(header.tenant, options_.tenant.data(), options_.tenant.size());
  {
    KVT_ASSIGN_OR_RETURN(SecretKey data_key, SecretKey::Random());
    const auto aad = std::as_bytes(std::span(&header, 1)).first(spill::kSegmentAadBytes);
    KVT_ASSIGN_OR_RETURN(WrappedKey wrapped, WrapKey(tenant_key_, data_key, aad));
    static_assert(sizeof(wrapped) == sizeof(header.wrapped_key));
    std::memcpy(&header.wrapped_key, &wrapped, sizeof(wrapped));
    KVT_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(data_key));
    segment->gcm.emplace(std::move(gcm));
  }  // data_key is zeroed here; the key lives on only inside the AesGcm.

  // Preallocated, so a full disk shows up now (kResourceExhausted naming the file), not as a
  // failed record write later.
  KVT_ASSIGN_OR_RETURN(segment->file,
                       device_->OpenFile(segment->path.string(),
                                         OpenMode{.create = true,
                                                  .preallocate_bytes = options_.segment_bytes}));
  // The header is in the file, and synced, before any record is submitted behind it.
  Status status = WriteHeaderBlock(*segment, /*erase_key=*/false);
  if (status.ok()) status = SyncDir();
  if (!status.ok()) {
    (void)device_->CloseFile(segment->file);
    (void)device_->RemoveFile(segment->path.string());
    return status;
  }
  segment->tail = spill::kSegmentHeaderBytes;
  segment->created_here = true;
  return segment;
}

Result<SpillStore::Segment*> SpillStore::SegmentFor(uint64_t record_bytes) {
  if (open_ != nullptr && open_->tail + record_bytes <= open_->segment_bytes()) return open_;
  if (open_ != nullptr) {
    // Sealed even if no new segment can be made: then it is reclaimable.
    open_->sealed = true;
    open_ = nullptr;
    erase_pending_ = true;
  }
  // Dead sealed segments must not count against the quota.
  if (erase_pending_) EraseDeadSegments();
  const uint64_t after = (segments_.size() + 1) * options_.segment_bytes;
  if (after > options_.quota_bytes) {
    return Status(StatusCode::kResourceExhausted,
                  "spill quota of " + std::to_string(options_.quota_bytes) + " bytes for tenant " +
                      options_.tenant + " is full (" + std::to_string(segments_.size()) +
                      " segments of " + std::to_string(options_.segment_bytes) + " bytes)");
  }
  if (next_segment_id_ == UINT32_MAX) {
    return Status(StatusCode::kResourceExhausted, "spill: segment ids exhausted");
  }
  Result<std::unique_ptr<Segment>> created = CreateSegment(next_segment_id_);
  // A name taken by a file kvtierd did not create (planted in its directory) is never written
  // through, nor retried: this write fails naming it, and the next one takes the next name.
  if (created.ok() || created.status().code() == StatusCode::kAlreadyExists) ++next_segment_id_;
  if (!created.ok()) return created.status();
  std::unique_ptr<Segment> segment = std::move(*created);
  ++stats_.segments_created;
  open_ = segment.get();
  segments_.emplace(segment->id, std::move(segment));
  return open_;
}

bool SpillStore::BatchFits(uint64_t record_bytes) const {
  if (open_batch_ < 0 || open_ == nullptr) return false;
  const Slot& batch = slots_[static_cast<size_t>(open_batch_)];
  return batch.segment == open_ && open_->tail + record_bytes <= open_->segment_bytes() &&
         batch.used + record_bytes <= batch.buffer.size();
}

bool SpillStore::CanStartWrite(uint64_t payload_bytes) const {
  return !free_slots_.empty() || BatchFits(spill::RecordBytes(payload_bytes));
}

void SpillStore::SubmitOpenBatch() {
  if (open_batch_ < 0) return;
  Slot& slot = slots_[static_cast<size_t>(open_batch_)];
  open_batch_ = -1;
  slot.request.buffer = slot.buffer.first(slot.used);
  if (device_->Submit(&slot.request).ok()) {
    ++in_flight_;
    return;
  }
  // Not even queued (a broken ring): every record of the batch fails now.
  slot.request.result = -EIO;
  Complete(&slot);
}

Result<SpillLocation> SpillStore::StartWrite(std::string_view name_space,
                                             std::span<const uint8_t> key,
                                             std::span<const std::byte> plaintext,
                                             uint64_t cookie) {
  if (!ValidNameAndKey(name_space, key)) {
    return Invalid("spill: namespace must be 1..128 bytes and key 1..32 bytes");
  }
  if (plaintext.size() > options_.max_record_payload_bytes) {
    return Invalid("spill: payload of " + std::to_string(plaintext.size()) +
                   " bytes exceeds max_record_payload_bytes");
  }
  const uint64_t record_bytes = spill::RecordBytes(plaintext.size());
  // The record joins the batch being filled if it is the next one in that batch's segment and
  // fits its buffer; otherwise that batch goes to the device and a new one starts.
  if (!BatchFits(record_bytes)) SubmitOpenBatch();
  if (open_batch_ < 0 && free_slots_.empty()) {
    return Status(StatusCode::kResourceExhausted, "staging buffers busy");
  }
  KVT_ASSIGN_OR_RETURN(Segment* segment, SegmentFor(record_bytes));
  const uint64_t offset = segment->tail;
  bool new_batch = false;
  if (open_batch_ < 0) {
    Slot& fresh = slots_[free_slots_.back()];
    Wipe(fresh);
    free_slots_.pop_back();
    fresh.request = IoRequest{};
    fresh.request.op = IoOp::kWrite;
    fresh.request.file = segment->file;
    fresh.request.offset = offset;
    fresh.request.user = &fresh;
    fresh.batch.clear();
    fresh.used = 0;
    fresh.next_delivery = 0;
    fresh.is_write = true;
    fresh.is_scrub = false;
    fresh.segment = segment;
    fresh.out = {};
    ++segment->in_flight;  // until the batch completes: the segment is not erased under it
    open_batch_ = fresh.index;
    new_batch = true;
  }
  Slot& slot = slots_[static_cast<size_t>(open_batch_)];
  KVT_CHECK(slot.segment == segment && slot.request.offset + slot.used == offset);

  spill::RecordHeader header{};
  header.magic = spill::kRecordMagic;
  header.format_version = static_cast<uint16_t>(spill::kFormatVersion);
  header.header_bytes = static_cast<uint16_t>(kRecordHeaderBytes);
  header.record_bytes = record_bytes;
  header.payload_bytes = plaintext.size();
  header.offset = offset;
  header.sequence = next_sequence_;
  header.segment_generation = segment->header.generation;
  header.segment_id = segment->id;
  header.key_len = static_cast<uint8_t>(key.size());
  header.namespace_len = static_cast<uint8_t>(name_space.size());
  std::memcpy(header.key, key.data(), key.size());
  std::memcpy(header.name_space, name_space.data(), name_space.size());

  // Encrypted straight from the caller's bytes into the staging buffer: plaintext never
  // touches the staging memory.
  const std::span<std::byte> record = slot.buffer.subspan(slot.used, record_bytes);
  const auto aad = spill::RecordAad(segment->header, header);
  const auto nonce = spill::RecordNonceBytes(offset);
  std::array<std::byte, AesGcm::kTagBytes> tag{};
  if (Status sealed = segment->gcm->Seal(nonce, aad, plaintext,
                                         record.subspan(kRecordHeaderBytes, plaintext.size()),
                                         tag);
      !sealed.ok()) {
    if (new_batch) {  // give the empty batch's slot back
      open_batch_ = -1;
      --segment->in_flight;
      slot.segment = nullptr;
      free_slots_.push_back(slot.index);
    }
    return sealed;
  }
  std::memcpy(header.tag, tag.data(), tag.size());
  std::memcpy(record.data(), &header, sizeof(header));
  const size_t used = kRecordHeaderBytes + plaintext.size();
  std::memset(record.data() + used, 0, record.size() - used);

  // Accepted: the offset is spent for good (even if the write fails, its nonce may have been
  // used on disk), and the record is live until its completion says otherwise.
  slot.used += record_bytes;
  slot.batch.push_back(Slot::BatchRecord{cookie, offset, record_bytes, Status::Ok()});
  segment->tail += record_bytes;
  SpillRecordMeta meta{offset, plaintext.size(), next_sequence_, true, cookie};
  meta.writing = true;
  segment->records.push_back(meta);
  ++segment->live;
  ++stats_.live_records;
  ++stats_.writes_started;
  const SpillLocation location{segment->id, offset, plaintext.size(), next_sequence_};
  ++next_sequence_;
  return location;
}

Status SpillStore::StartRead(const SpillLocation& location, std::string_view name_space,
                             std::span<const uint8_t> key, std::span<std::byte> out,
                             uint64_t cookie) {
  if (!ValidNameAndKey(name_space, key)) {
    return Invalid("spill: namespace must be 1..128 bytes and key 1..32 bytes");
  }
  if (out.size() != location.payload_bytes) {
    return Invalid("spill: read buffer of " + std::to_string(out.size()) +
                   " bytes for a record of " + std::to_string(location.payload_bytes));
  }
  auto it = segments_.find(location.segment_id);
  SpillRecordMeta* meta = it == segments_.end() ? nullptr : it->second->Find(location.offset);
  if (meta == nullptr || !meta->live || meta->sequence != location.sequence ||
      meta->payload_bytes != location.payload_bytes) {
    return Status(StatusCode::kNotFound, "no live spill record at " + Where(location));
  }
  if (free_slots_.empty()) {
    return Status(StatusCode::kResourceExhausted, "staging buffers busy");
  }
  Segment* segment = it->second.get();
  Slot& slot = slots_[free_slots_.back()];
  Wipe(slot);
  // Pieces of at least kMinPieceBytes, as many extra ones as the device has room for (see
  // extra_pieces_).
  constexpr uint64_t kMinPieceBytes = 256 * kKiB;
  const uint64_t record_bytes = spill::RecordBytes(location.payload_bytes);
  const uint64_t kept = slots_.size() + 1 + extra_pieces_;
  const uint64_t spare = device_->queue_depth() > kept ? device_->queue_depth() - kept : 0;
  uint32_t pieces = static_cast<uint32_t>(std::clamp<uint64_t>(
      std::min(record_bytes / kMinPieceBytes, 1 + spare), 1, Slot::kMaxReadPieces));
  slot.opener.reset();
  if (pieces > 1) {
    // An OpenSSL that cannot copy a GCM context (before 3.0.11) reads in one piece.
    if (auto clone = segment->gcm->Clone(); clone.ok()) {
      slot.opener.emplace(std::move(*clone));
    } else {
      pieces = 1;
    }
  }
  const uint64_t piece_bytes = AlignUp((record_bytes + pieces - 1) / pieces, kAlignBytes);
  uint32_t submitted = 0;
  Status started;
  for (uint64_t at = 0; at < record_bytes; at += piece_bytes) {
    IoRequest& piece = slot.reads[submitted];
    piece = IoRequest{};
    piece.op = IoOp::kRead;
    piece.file = segment->file;
    piece.offset = location.offset + at;
    piece.buffer = slot.buffer.subspan(at, std::min(piece_bytes, record_bytes - at));
    piece.user = &slot;
    started = device_->Submit(&piece);
    if (!started.ok()) break;
    ++submitted;
  }
  if (submitted == 0) {
    slot.opener.reset();
    return started;
  }
  slot.pieces = submitted;
  slot.pieces_done = 0;
  slot.pieces_opened = 0;
  slot.pieces_out = submitted;
  extra_pieces_ += submitted - 1;
  slot.record_bytes = record_bytes;
  // A piece that could not start fails the read once the others are back.
  slot.read_status = started.ok() ? Status::Ok()
                                  : Status(StatusCode::kIoError, "spill read of " +
                                                                     Where(location) + ": " +
                                                                     started.message());
  free_slots_.pop_back();
  in_flight_ += submitted;
  ++segment->in_flight;
  ++stats_.reads_started;
  slot.is_write = false;
  slot.cookie = cookie;
  slot.segment = segment;
  slot.location = location;
  slot.out = out;
  slot.key_len = static_cast<uint8_t>(key.size());
  std::memcpy(slot.key, key.data(), key.size());
  slot.namespace_len = static_cast<uint8_t>(name_space.size());
  std::memcpy(slot.name_space, name_space.data(), name_space.size());
  return Status::Ok();
}

Status SpillStore::Flush() {
  SubmitOpenBatch();
  StartScrubs();
  return device_->Flush();
}

int SpillStore::event_fd() const { return device_->event_fd(); }

void SpillStore::Complete(Slot* slot) {
  KVT_CHECK(slot != nullptr && slot >= slots_.data() && slot < slots_.data() + slots_.size());
  Segment* segment = slot->segment;
  KVT_CHECK(segment != nullptr && segment->in_flight > 0);
  --segment->in_flight;
  if (slot->is_scrub) return CompleteScrub(slot);
  if (slot->is_write) {
    CompleteWrite(slot);
  } else {
    CompleteRead(slot);
  }
  // Erasing is blocking I/O, which may not nest inside WaitFor: Poll does it.
  if (segment->sealed && segment->live == 0 && segment->in_flight == 0) erase_pending_ = true;
  slot->segment = nullptr;
  slot->out = {};
  done_[(done_head_ + done_count_) % done_.size()] = slot->index;
  ++done_count_;
}

void SpillStore::CompleteWrite(Slot* slot) {
  const IoRequest& request = slot->request;
  Segment* segment = slot->segment;
  // A short batch still wrote the records that lie wholly in what it moved.
  const uint64_t moved = request.result > 0 ? static_cast<uint64_t>(request.result) : 0;
  for (Slot::BatchRecord& record : slot->batch) {
    SpillRecordMeta* meta = segment->Find(record.offset);
    const bool written = record.offset + record.record_bytes - request.offset <= moved;
    if (meta != nullptr) {
      meta->writing = false;
      if (written && !meta->live && meta->scrub_after_write) {
        pending_scrubs_.push_back({segment->id, record.offset});
      }
    }
    if (written) {
      record.status = Status::Ok();
      RetryFailedScrubs();  // the disk takes writes again
      continue;
    }
    ++stats_.writes_failed;
    const std::string what = "spill write to " + segment->path.string() + " at offset " +
                             std::to_string(record.offset);
    record.status = request.result < 0
                        ? ErrnoStatus(what, static_cast<int>(-request.result))
                        : Status(StatusCode::kIoError,
                                 what + ": short (" + std::to_string(request.result) + " of " +
                                     std::to_string(request.buffer.size()) + " bytes)");
    if (meta != nullptr && meta->live) {
      meta->live = false;
      --segment->live;
      --stats_.live_records;
    }
  }
}

void SpillStore::Reaped(IoRequest* request) {
  auto* slot = static_cast<Slot*>(request->user);
  if (!slot->is_write && !slot->is_scrub) {
    const auto piece = static_cast<uint32_t>(request - slot->reads.data());
    KVT_CHECK(piece < slot->pieces && slot->pieces_out > 0);
    slot->pieces_done |= 1u << piece;
    if (--slot->pieces_out > 0) --extra_pieces_;  // one of the read's extra pieces is back
    OpenArrivedPieces(*slot);
    if (slot->pieces_done != (1u << slot->pieces) - 1) return;  // more pieces to come
  }
  Complete(slot);
}

Status SpillStore::BeginRecord(Slot& slot) {
  const SpillLocation& location = slot.location;
  const Segment& segment = *slot.segment;
  spill::RecordHeader header;
  std::memcpy(&header, slot.buffer.data(), sizeof(header));
  const bool matches =
      spill::PlausibleRecord(header, segment.header, location.offset,
                             segment.segment_bytes()) &&
      header.payload_bytes == location.payload_bytes && header.sequence == location.sequence &&
      header.key_len == slot.key_len && std::memcmp(header.key, slot.key, slot.key_len) == 0 &&
      header.namespace_len == slot.namespace_len &&
      std::memcmp(header.name_space, slot.name_space, slot.namespace_len) == 0;
  if (!matches) {
    return Status(StatusCode::kDataLoss,
                  "spill record at " + Where(location) + " is not the record expected there");
  }
  const auto aad = spill::RecordAad(segment.header, header);
  const auto nonce = spill::RecordNonceBytes(location.offset);
  std::array<std::byte, AesGcm::kTagBytes> tag;
  std::memcpy(tag.data(), header.tag, tag.size());
  return slot.Opener().OpenBegin(nonce, aad, tag);
}

void SpillStore::OpenArrivedPieces(Slot& slot) {
  const uint64_t payload_end = kRecordHeaderBytes + slot.location.payload_bytes;
  while (slot.pieces_opened < slot.pieces && (slot.pieces_done >> slot.pieces_opened) & 1u) {
    const IoRequest& piece = slot.reads[slot.pieces_opened];
    ++slot.pieces_opened;
    if (!slot.read_status.ok()) continue;  // the read failed already: the rest just comes back
    if (piece.result < 0) {
      slot.read_status = ErrnoStatus("spill read of " + Where(slot.location),
                                     static_cast<int>(-piece.result));
      continue;
    }
    if (!piece.complete()) {
      slot.read_status = Status(StatusCode::kDataLoss,
                                "spill record at " + Where(slot.location) + " is truncated");
      continue;
    }
    const uint64_t begin = static_cast<uint64_t>(piece.buffer.data() - slot.buffer.data());
    if (begin == 0) {
      slot.read_status = BeginRecord(slot);
      if (!slot.read_status.ok()) continue;
    }
    // Decrypted in place, in this store's private staging buffer, not in `out`: `out` is a
    // slot of the tenant's shared pool, which the tenant's processes can read at any moment,
    // and these bytes are not authenticated until the last piece's tag check.
    const uint64_t from = std::max<uint64_t>(begin, kRecordHeaderBytes);
    const uint64_t to = std::min<uint64_t>(begin + piece.buffer.size(), payload_end);
    if (from < to) {
      const std::span<std::byte> part = slot.buffer.subspan(from, to - from);
      // Plaintext from here on, authentic or not: wiped with the buffer (WipeStaging, or the
      // destructor), whatever happens to the read.
      slot.plaintext_bytes = to - kRecordHeaderBytes;
      slot.read_status = slot.Opener().OpenPiece(part, part);
    }
  }
}

void SpillStore::CompleteRead(Slot* slot) {
  slot->status = FinishRead(*slot);
  slot->opener.reset();  // the read's copy of the key schedule goes with the read
  // Failures are integrity failures (kDataLoss) or I/O errors, as StartRead promises.
  if (!slot->status.ok() && slot->status.code() != StatusCode::kDataLoss &&
      slot->status.code() != StatusCode::kIoError) {
    slot->status = Status(StatusCode::kIoError, slot->status.message());
  }
  if (slot->status.ok()) return;
  // `out` is as the caller gave it: only authentic bytes are ever written there.
  if (slot->status.code() == StatusCode::kDataLoss) {
    ++stats_.integrity_failures;
  } else {
    ++stats_.reads_failed;
  }
}

Status SpillStore::FinishRead(Slot& slot) {
  const SpillLocation& location = slot.location;
  Status status = slot.read_status;
  if (status.ok()) {
    status = slot.Opener().OpenEnd();
    if (status.code() == StatusCode::kDataLoss) {
      status = Status(StatusCode::kDataLoss,
                      "spill record at " + Where(location) + " failed authentication");
    }
  }
  const std::span<std::byte> payload =
      slot.buffer.subspan(kRecordHeaderBytes, location.payload_bytes);
  if (!status.ok()) {
    // Whatever was decrypted is unauthenticated: it goes now, not with the later wipe.
    std::memset(payload.data(), 0, slot.plaintext_bytes);
    slot.plaintext_bytes = 0;
    return status;
  }
  // Only authentic bytes are copied to `out`; the plaintext in staging waits for WipeStaging.
  CopyToPool(slot.out.data(), payload.data(), payload.size());
  return Status::Ok();
}

void SpillStore::Wipe(Slot& slot) {
  if (slot.plaintext_bytes == 0) return;
  SecureZero(slot.buffer.data() + kRecordHeaderBytes, slot.plaintext_bytes);
  slot.plaintext_bytes = 0;
}

void SpillStore::WipeStaging() {
  // Not a read still in flight: its pieces decrypted so far are what it will copy out.
  for (Slot& slot : slots_) {
    if (slot.segment == nullptr) Wipe(slot);
  }
}

size_t SpillStore::Poll(std::span<SpillCompletion> out, bool wait) {
  SubmitOpenBatch();
  std::array<IoRequest*, 32> reaped{};
  const bool block = wait && done_count_ == 0 && in_flight_ > 0;
  const size_t n = device_->Reap(reaped, block);
  for (size_t i = 0; i < n; ++i) {
    --in_flight_;
    ++reaped_total_;
    Reaped(reaped[i]);
  }
  if (erase_pending_) EraseDeadSegments();
  size_t delivered = 0;
  while (delivered < out.size() && done_count_ > 0) {
    Slot& slot = slots_[done_[done_head_]];
    if (slot.is_write) {
      Slot::BatchRecord& record = slot.batch[slot.next_delivery++];
      out[delivered++] = SpillCompletion{record.cookie, std::move(record.status), true};
      if (slot.next_delivery < slot.batch.size()) continue;  // more records of this batch
      slot.batch.clear();
      slot.next_delivery = 0;
    } else {
      out[delivered++] = SpillCompletion{slot.cookie, std::move(slot.status), false};
      slot.status = Status::Ok();
    }
    done_head_ = (done_head_ + 1) % done_.size();
    --done_count_;
    free_slots_.push_back(slot.index);
  }
  if (!pending_scrubs_.empty()) {
    StartScrubs();
    (void)device_->Flush();
  }
  return delivered;
}

void SpillStore::Release(const SpillLocation& location) {
  auto it = segments_.find(location.segment_id);
  if (it == segments_.end()) return;
  Segment* segment = it->second.get();
  SpillRecordMeta* meta = segment->Find(location.offset);
  if (meta == nullptr || !meta->live || meta->sequence != location.sequence) return;
  meta->live = false;
  --segment->live;
  --stats_.live_records;
  if (segment->sealed && segment->live == 0 && segment->in_flight == 0) {
    (void)EraseSegment(it);  // crypto-erased: no record of it can come back
    return;
  }
  if (meta->writing) {
    meta->scrub_after_write = true;  // a scrub now could land before the record does
    return;
  }
  pending_scrubs_.push_back({segment->id, location.offset});
}

bool SpillStore::RetireEmptyOpenSegment() {
  if (open_ == nullptr || open_->live > 0 || open_->in_flight > 0) return false;
  if (open_batch_ >= 0 && slots_[static_cast<size_t>(open_batch_)].segment == open_) return false;
  auto it = segments_.find(open_->id);
  open_->sealed = true;
  open_ = nullptr;
  (void)EraseSegment(it);  // counted in stats_; its pending scrubs find it gone
  return true;
}

void SpillStore::RetryFailedScrubs() {
  for (const PendingScrub& scrub : failed_scrubs_) pending_scrubs_.push_back(scrub);
  failed_scrubs_.clear();
}

void SpillStore::ScrubFailed(PendingScrub scrub) {
  // The record stays readable on disk until a retry lands or its segment goes.
  ++stats_.scrub_failures;
  if (++scrub.failures < kScrubAttempts) failed_scrubs_.push_back(scrub);
}

void SpillStore::CompleteScrub(Slot* slot) {
  Segment* segment = slot->segment;
  if (slot->request.complete()) {
    ++stats_.scrubs;
  } else {
    ScrubFailed({segment->id, slot->request.offset, slot->scrub_failures});
  }
  if (segment->sealed && segment->live == 0 && segment->in_flight == 0) erase_pending_ = true;
  slot->segment = nullptr;
  slot->is_scrub = false;
  free_slots_.push_back(slot->index);  // never delivered: the caller did not start it
}

void SpillStore::StartScrubs() {
  while (!pending_scrubs_.empty() && !free_slots_.empty()) {
    const PendingScrub scrub = pending_scrubs_.front();
    pending_scrubs_.pop_front();
    auto it = segments_.find(scrub.segment_id);
    if (it == segments_.end()) continue;  // crypto-erased meanwhile: nothing left to scrub
    Segment* segment = it->second.get();
    Slot& slot = slots_[free_slots_.back()];
    Wipe(slot);
    const std::span<std::byte> block = slot.buffer.first(kAlignBytes);
    std::memset(block.data(), 0, block.size());
    slot.request = IoRequest{};
    slot.request.op = IoOp::kWrite;
    slot.request.file = segment->file;
    slot.request.offset = scrub.offset;
    slot.request.buffer = block;
    slot.request.user = &slot;
    if (!device_->Submit(&slot.request).ok()) {
      ScrubFailed(scrub);
      continue;
    }
    free_slots_.pop_back();
    ++in_flight_;
    ++segment->in_flight;
    slot.is_scrub = true;
    slot.scrub_failures = scrub.failures;
    slot.is_write = true;
    slot.segment = segment;
  }
}

std::optional<SpillLocation> SpillStore::Locate(uint32_t segment_id, uint64_t offset) const {
  auto it = segments_.find(segment_id);
  if (it == segments_.end()) return std::nullopt;
  const SpillRecordMeta* meta = it->second->Find(offset);
  if (meta == nullptr || !meta->live) return std::nullopt;
  return SpillLocation{segment_id, offset, meta->payload_bytes, meta->sequence};
}

Status SpillStore::EraseSegment(SegmentMap::iterator it) {
  Segment* segment = it->second.get();
  KVT_CHECK(segment->in_flight == 0);
  // Destroying the wrapped key makes every record unreadable even where the file's blocks
  // survive its removal; the file goes regardless of whether that write worked.
  Status status = WriteHeaderBlock(*segment, /*erase_key=*/true);
  if (!status.ok()) ++stats_.erase_failures;
  Status closed = device_->CloseFile(segment->file);
  Status removed = device_->RemoveFile(segment->path.string());
  if (status.ok()) status = closed;
  if (status.ok()) status = removed;
  ++stats_.segments_erased;
  stats_.live_records -= segment->live;
  if (open_ == segment) open_ = nullptr;
  segments_.erase(it);
  return status;
}

void SpillStore::EraseDeadSegments() {
  erase_pending_ = false;
  for (auto it = segments_.begin(); it != segments_.end();) {
    Segment* segment = it->second.get();
    auto next = std::next(it);
    if (segment->sealed && segment->live == 0 && segment->in_flight == 0) {
      (void)EraseSegment(it);  // counted in stats_
    }
    it = next;
  }
}

void SpillStore::SetUser(const SpillLocation& location, uint64_t user) {
  auto it = segments_.find(location.segment_id);
  if (it == segments_.end()) return;
  SpillRecordMeta* meta = it->second->Find(location.offset);
  if (meta != nullptr && meta->live && meta->sequence == location.sequence) meta->user = user;
}

Status SpillStore::ReclaimOldestSegment(std::vector<SpillLocation>* dropped,
                                        std::vector<uint64_t>* users) {
  bool any_sealed = false;
  for (auto it = segments_.begin(); it != segments_.end(); ++it) {
    Segment* segment = it->second.get();
    if (!segment->sealed) continue;
    any_sealed = true;
    if (segment->in_flight > 0) continue;
    for (const SpillRecordMeta& meta : segment->records) {
      if (!meta.live) continue;
      if (dropped != nullptr) {
        dropped->push_back(
            SpillLocation{segment->id, meta.offset, meta.payload_bytes, meta.sequence});
      }
      if (users != nullptr) users->push_back(meta.user);
    }
    return EraseSegment(it);
  }
  if (any_sealed) {
    return Status(StatusCode::kFailedPrecondition,
                  "every sealed spill segment has I/O in flight: poll, then retry");
  }
  return Status(StatusCode::kNotFound, "no sealed spill segment to reclaim");
}

Status SpillStore::CryptoEraseAll() {
  SubmitOpenBatch();
  if (in_flight_ > 0) {
    return Status(StatusCode::kFailedPrecondition, "spill I/O in flight: poll until idle");
  }
  Status first;
  while (!segments_.empty()) {
    Status status = EraseSegment(segments_.begin());
    if (first.ok()) first = std::move(status);
  }
  open_ = nullptr;
  return first;
}

Status SpillStore::Sync() {
  Status first;
  for (auto& [id, segment] : segments_) {
    if (!segment->created_here) continue;
    Status status = device_->Sync(segment->file);
    if (first.ok()) first = std::move(status);
  }
  return first;
}

}  // namespace kvtier
