#include "daemon/tier/spill_orders.h"

#include <cstring>

#include "ipc/base/check.h"

namespace kvtier {

SpillJob ToSpillJob(const SpillOrder& order, uint32_t store, std::byte* pool, uint64_t pool_bytes,
                    std::string_view name_space) {
  SpillJob job;
  job.store = store;
  job.tag = order.ref.tag();
  job.ref = order.ssd;
  job.bytes = order.size;
  switch (order.kind) {
    case SpillOrder::Kind::kDemote: job.kind = SpillJob::Kind::kWrite; break;
    case SpillOrder::Kind::kPromote: job.kind = SpillJob::Kind::kRead; break;
    case SpillOrder::Kind::kRelease: job.kind = SpillJob::Kind::kRelease; return job;
  }
  KVT_CHECK(order.offset + order.size <= pool_bytes && name_space.size() <= job.ns.size());
  job.data = pool + order.offset;
  job.ns_len = static_cast<uint8_t>(name_space.size());
  std::memcpy(job.ns.data(), name_space.data(), name_space.size());
  job.key_len = order.key.len;
  std::memcpy(job.key.data(), order.key.bytes.data(), order.key.len);
  return job;
}

}  // namespace kvtier
