#include "libkvclient/cuda_pin.h"

namespace kvtier::client_cuda {

Status Pin(void*, size_t) {
  return Status(StatusCode::kUnavailable,
                "no CUDA device: libkvclient was built without CUDA (rebuild with the CUDA toolkit "
                "installed, or -DKVTIER_WITH_CUDA=ON)");
}

void Unpin(void*) {}

}  // namespace kvtier::client_cuda
