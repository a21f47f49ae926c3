// The GPU interface of a build without the CUDA toolkit (KVTIER_WITH_CUDA=OFF, or AUTO where
// none was found): every GPU call answers "no CUDA device".
#include "daemon/gpu/gpu.h"

namespace kvtier {
namespace {

constexpr const char* kWhy =
    "no CUDA device: kvtierd was built without CUDA (rebuild with the CUDA toolkit installed, "
    "or -DKVTIER_WITH_CUDA=ON)";

}  // namespace

struct GpuImport {};

void GpuImportDeleter::operator()(GpuImport* import) const { delete import; }

GpuProbe ProbeGpus() {
  GpuProbe probe;
  probe.summary = kWhy;
  return probe;
}

Result<GpuImportPtr> ImportGpuRegion(int, std::span<const uint8_t>, uint64_t,
                                     std::span<const uint8_t>) {
  return Status(StatusCode::kUnavailable, kWhy);
}

Status RunGpuCopy(const GpuCopy&) { return Status(StatusCode::kUnavailable, kWhy); }

Result<bool> GpuEventDone(GpuImport*, uint32_t) {
  return Status(StatusCode::kUnavailable, kWhy);
}

Status PinHostMemory(void*, size_t) { return Status(StatusCode::kUnavailable, kWhy); }

void UnpinHostMemory(void*) {}

}  // namespace kvtier
