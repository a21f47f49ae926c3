#include "daemon/tier/spill_setup.h"

#include <errno.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <filesystem>
#include <system_error>
#include <utility>

#include "daemon/owned_dir.h"
#include "daemon/spill/io_probe.h"
#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"

namespace kvtier {

Status CheckFileBudget(const Config& config) {
  uint64_t segments = 0;
  if (!config.spill.dir.empty()) {
    for (const TenantConfig& t : config.tenants) segments += t.ssd_bytes / config.spill.segment_bytes;
  }
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 &&
      segments + config.max_sessions + 256 > files.rlim_cur) {
    return Status(StatusCode::kFailedPrecondition,
                  "the tenants' ssd_bytes make " + std::to_string(segments) +
                      " spill segment files, which with max_sessions (" +
                      std::to_string(config.max_sessions) + ") exceed the open-file limit of " +
                      std::to_string(files.rlim_cur) +
                      ": raise spill.segment_bytes or LimitNOFILE (ulimit -n)");
  }
  return Status::Ok();
}

Result<std::vector<std::unique_ptr<SpillWorker>>> OpenSpillTier(
    const Config& config, TenantRegistry& tenants, std::vector<std::string>* log,
    const WrapSpillDevice& wrap, std::unique_ptr<SpillKeys>* keys_out) {
  std::vector<std::unique_ptr<SpillWorker>> workers;
  const SpillConfig& spill = config.spill;
  if (spill.dir.empty()) return workers;
  KVT_RETURN_IF_ERROR(CheckFileBudget(config));
  // Spill files are ciphertext, but their removal or replacement by another user would still
  // be denial of service: the directory is ours and closed to everybody else.
  KVT_RETURN_IF_ERROR(PrepareOwnedDir(spill.dir, 0700, "spill.dir"));
  // Quotas are promises the disk may not keep: say so when they add up to more than it has
  // (segments already written count as space the tier holds).
  uint64_t quotas = 0;
  for (const TenantConfig& t : config.tenants) quotas += t.ssd_bytes;
  uint64_t held = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(spill.dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) held += it->file_size(ec);
  }
  struct statvfs fs {};
  if (statvfs(spill.dir.c_str(), &fs) == 0) {
    const uint64_t available = uint64_t{fs.f_bavail} * fs.f_frsize + held;
    if (quotas > available) {
      log->push_back("warning: the tenants' ssd_bytes add up to " + std::to_string(quotas >> 20) +
                     " MiB but " + spill.dir.string() + " has " +
                     std::to_string(available >> 20) +
                     " MiB for the SSD tier: when the disk fills, a tenant reclaims its own "
                     "oldest segments early (lower ssd_bytes or free space)");
    }
  }
  std::vector<std::string> ssd_tenants;
  for (const TenantConfig& t : config.tenants) {
    if (t.ssd_bytes > 0) ssd_tenants.push_back(t.name);
  }
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<SpillKeys> keys, SpillKeys::Open(spill, ssd_tenants, log));
  for (uint32_t i = 0; i < spill.threads; ++i) workers.push_back(std::make_unique<SpillWorker>());

  size_t next_worker = 0;
  for (auto& tenant_ptr : tenants.tenants()) {
    Tenant& tenant = *tenant_ptr;
    if (tenant.config.ssd_bytes == 0) continue;
    const std::string& name = tenant.config.name;
    auto tenant_error = [&](const Status& s) {
      return Status(s.code(), "tenant '" + name + "' SSD tier: " + s.message());
    };
    const KeyringEntry* key_entry = keys->Find(name);
    KVT_CHECK(key_entry != nullptr);  // SpillKeys::Open gives every SSD tenant a key

    DeviceOptions device_options;
    device_options.queue_depth = spill.queue_depth;
    device_options.threads = spill.fallback_io_threads;
    // Every segment stays open; recovery may briefly find a few more than the quota holds.
    device_options.max_files =
        static_cast<uint32_t>(tenant.config.ssd_bytes / spill.segment_bytes) + 64;
    device_options.force_thread_pool = spill.backend == SpillBackend::kThreads;
    std::string why_fallback;
    auto device = OpenBestDevice(device_options, &why_fallback);
    if (!device.ok()) return tenant_error(device.status());
    if (!why_fallback.empty()) {
      if (spill.backend == SpillBackend::kIoUring) {
        return tenant_error(Status(StatusCode::kUnavailable,
                                   "spill.backend = \"io_uring\" but " + why_fallback));
      }
      log->push_back("tenant '" + name + "' SSD tier: " + why_fallback);
    }
    if (wrap) {
      *device = wrap(std::move(*device), name);
      KVT_CHECK(*device != nullptr);
    }

    SpillOptions options;
    options.dir = spill.dir / name;
    options.tenant = name;
    options.segment_bytes = spill.segment_bytes;
    options.quota_bytes = tenant.config.ssd_bytes;
    options.max_record_payload_bytes = spill.max_block_bytes;
    options.staging_buffers = spill.staging_buffers;
    std::vector<RecoveredRecord> recovered;
    auto store = SpillStore::Open(options, device->get(), key_entry->key, &recovered,
                                  key_entry->legacy ? &*key_entry->legacy : nullptr);
    if (!store.ok()) return tenant_error(store.status());
    const uint64_t key_epoch = key_entry->epoch;
    const bool legacy_key = key_entry->legacy.has_value();
    // The epoch-0 key is kept only while a segment needs it.
    if (legacy_key && (*store)->recovery_stats().segments_legacy_key == 0) keys->DropLegacy(name);

    // What an earlier run left on SSD is served again, as SSD-only blocks.
    uint64_t restored = 0;
    uint64_t restored_bytes = 0;
    for (const RecoveredRecord& record : recovered) {
      auto ns_id = tenants.NamespaceId(tenant, record.name_space);
      const SsdRef ref{record.location.segment_id,
                       static_cast<uint32_t>(record.location.offset / spill::kAlignBytes)};
      if (!ns_id.ok() || record.key.empty() || record.key.size() > 32) {
        (*store)->Release(record.location);
        continue;
      }
      BlockKey key;
      key.ns_id = *ns_id;
      key.len = static_cast<uint8_t>(record.key.size());
      std::copy(record.key.begin(), record.key.end(), key.bytes.begin());
      // Records keep no expiry: a recovered block gets the tenant's default from now on.
      auto block = tenant.pool->InsertRecovered(key, record.location.payload_bytes, ref,
                                                EffectiveTtl(tenant.config, 0));
      if (!block) continue;  // the pool queued its release
      (*store)->SetUser(record.location, block->tag());
      ++restored;
      restored_bytes += record.location.payload_bytes;
    }
    const RecoveryStats& rs = (*store)->recovery_stats();
    for (const std::string& warning : rs.warnings) {
      log->push_back("warning: tenant '" + name + "' SSD tier: " + warning);
    }
    SpillWorker& worker = *workers[next_worker++ % workers.size()];
    log->push_back("tenant '" + name + "' SSD tier: " + options.dir.string() + ", quota " +
                   std::to_string(options.quota_bytes >> 20) + " MiB, " +
                   std::string((*device)->name()) + "; recovered " + std::to_string(restored) +
                   " blocks (" + std::to_string(restored_bytes >> 20) + " MiB) from " +
                   std::to_string(rs.segments_scanned) + " segments; rejected " +
                   std::to_string(rs.records_rejected) + " torn or tampered records, discarded " +
                   std::to_string(rs.segments_discarded) + " segments (" +
                   std::to_string(rs.segments_key_rejected) +
                   " not unwrappable with the tenant's keys); tenant key epoch " +
                   std::to_string(key_epoch) +
                   (legacy_key ? ", " + std::to_string(rs.segments_legacy_key) +
                                     " segments read with the epoch-0 (derived) key"
                               : std::string()));
    if (rs.segments_key_rejected > 0) {
      log->push_back("warning: tenant '" + name + "' SSD tier: " +
                     std::to_string(rs.segments_key_rejected) +
                     " segment(s) were wrapped under a tenant key the keyring does not hold (a "
                     "key a purge retired, or a lost or replaced keyring): discarded");
    }
    tenant.spill_store = worker.AddStore(std::move(*device), std::move(*store));
    tenant.spill = &worker;
  }
  if (Status s = keys->SaveIfChanged(); !s.ok()) {
    // Only epoch-0 keys no segment needs were to go: the keyring on disk still works.
    log->push_back("warning: " + s.message());
  }
  for (auto& worker : workers) KVT_RETURN_IF_ERROR(worker->Start());
  if (keys_out != nullptr) *keys_out = std::move(keys);
  return workers;
}

}  // namespace kvtier
