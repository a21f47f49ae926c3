#include "libkvclient/cuda_pin.h"

#include <cuda_runtime_api.h>

#include <string>

namespace kvtier::client_cuda {

Status Pin(void* data, size_t bytes) {
  int devices = 0;
  if (cudaError_t err = cudaGetDeviceCount(&devices); err != cudaSuccess || devices == 0) {
    return Status(StatusCode::kUnavailable,
                  std::string("no CUDA device: ") +
                      (err != cudaSuccess ? cudaGetErrorString(err) : "the driver reports none"));
  }
  if (cudaError_t err = cudaHostRegister(data, bytes, cudaHostRegisterPortable);
      err != cudaSuccess) {
    return Status(StatusCode::kInternal,
                  std::string("cudaHostRegister of the pool mapping: ") + cudaGetErrorString(err));
  }
  return Status::Ok();
}

void Unpin(void* data) { cudaHostUnregister(data); }

}  // namespace kvtier::client_cuda
