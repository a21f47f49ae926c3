// Page-locking of the client's pool mapping for CUDA. CMake builds cuda_pin.cc (with the CUDA
// toolkit; the static CUDA runtime loads the driver at run time) or no_cuda_pin.cc.
#pragma once

#include <cstddef>

#include "kvclient/status.h"

namespace kvtier::client_cuda {

// cudaHostRegister(data, bytes, cudaHostRegisterPortable); kUnavailable without CUDA or a device.
Status Pin(void* data, size_t bytes);
void Unpin(void* data);

}  // namespace kvtier::client_cuda
