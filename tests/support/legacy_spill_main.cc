// kvt-legacy-spill: writes a tenant's spill segments as kvtier wrote them before the keyring,
// for the migration test (tests/integration/key_rotation_test.cc): the same SpillStore, with
// the tenant key derived from the master key (DeriveTenantKey) instead of taken from a keyring.
// Test-only: built in tests/, never installed.
//
//   kvt-legacy-spill SPILL_DIR KEY_FILE TENANT NAMESPACE OWNER COUNT SIZE SEGMENT_BYTES
//
// Writes COUNT blocks of SIZE bytes into SPILL_DIR/TENANT/, keyed "k<OWNER>/<i>" with the bytes
// tests/integration/test_blocks.h's FillBlock gives that key (the test verifies them with
// VerifyBlock), and exits 0 once every write has completed and the files are synced.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "crypto/master_key.h"
#include "daemon/spill/spill_store.h"
#include "daemon/spill/thread_pool_device.h"

namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "kvt-legacy-spill: %s\n", what.c_str());
  return 1;
}

// test_blocks.h: KeySeed and FillBlock, over the key's bytes (kept identical on purpose: the
// test reads these blocks back through kvtierd and checks them with VerifyBlock).
void FillBlock(const std::string& key, std::vector<std::byte>& out) {
  uint64_t x = 1469598103934665603ull ^ out.size();
  for (char c : key) x = (x ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out.data() + i, &x, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<std::byte>(x >> (8 * (i % 8)));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvtier;
  if (argc != 9) {
    return Fail("usage: kvt-legacy-spill SPILL_DIR KEY_FILE TENANT NAMESPACE OWNER COUNT SIZE "
                "SEGMENT_BYTES");
  }
  const std::string dir = argv[1];
  const std::string tenant = argv[3];
  const std::string name_space = argv[4];
  const std::string owner = argv[5];
  const uint64_t count = std::strtoull(argv[6], nullptr, 10);
  const uint64_t size = std::strtoull(argv[7], nullptr, 10);
  auto master = LoadMasterKey(argv[2]);
  if (!master.ok()) return Fail(master.status().ToString());
  auto tenant_key = DeriveTenantKey(*master, tenant);
  if (!tenant_key.ok()) return Fail(tenant_key.status().ToString());

  DeviceOptions device_options;
  device_options.queue_depth = 16;
  device_options.threads = 2;
  device_options.max_files = 256;
  auto device = ThreadPoolDevice::Open(device_options);
  if (!device.ok()) return Fail(device.status().ToString());
  SpillOptions options;
  options.dir = std::string(dir) + "/" + tenant;
  options.tenant = tenant;
  options.segment_bytes = std::strtoull(argv[8], nullptr, 10);
  options.quota_bytes = uint64_t{1} << 40;
  options.max_record_payload_bytes = size;
  options.staging_buffers = 4;
  auto store = SpillStore::Open(options, device->get(), *tenant_key, nullptr);
  if (!store.ok()) return Fail(store.status().ToString());

  std::vector<std::byte> block(size);
  uint64_t done = 0;
  SpillCompletion completions[8];
  auto reap = [&](bool wait) -> int {
    const size_t n = (*store)->Poll(completions, wait);
    if (n == 0 && (*store)->in_flight() == 0) return Fail("no write in flight to wait for");
    for (size_t i = 0; i < n; ++i) {
      if (!completions[i].status.ok()) return Fail(completions[i].status.ToString());
      ++done;
    }
    return 0;
  };
  for (uint64_t i = 0; i < count; ++i) {
    const std::string key = "k" + owner + "/" + std::to_string(i);
    FillBlock(key, block);
    for (;;) {
      auto location = (*store)->StartWrite(
          name_space, std::span(reinterpret_cast<const uint8_t*>(key.data()), key.size()), block,
          i);
      if (location.ok()) break;
      if (location.status().code() != StatusCode::kResourceExhausted) {
        return Fail(location.status().ToString());
      }
      if (reap(/*wait=*/true) != 0) return 1;  // staging buffers busy
    }
  }
  if (Status s = (*store)->Flush(); !s.ok()) return Fail(s.ToString());
  while (done < count) {
    if (reap(/*wait=*/true) != 0) return 1;
  }
  if (Status s = (*store)->Sync(); !s.ok()) return Fail(s.ToString());
  store->reset();
  std::printf("wrote %llu blocks\n", static_cast<unsigned long long>(done));
  return 0;
}
