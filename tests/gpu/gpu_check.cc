// kvt_gpu_check: the GPU checks of kvtier, run by tests/gpu/run.sh against a real kvtierd on a
// machine with an NVIDIA GPU. Prints one table and exits 0 if every check passes and every
// figure meets its target, 1 otherwise, 77 when there is no CUDA device (nothing was checked).
//
// Correctness, across processes through CUDA IPC (every byte compared):
//   1. This process (the "engine") writes random blocks into its GPU memory on its own stream,
//      300 ms late on purpose, records an IPC event, and at once offloads them with wait_event:
//      only if kvtierd's stream waits for the event are the blocks stored the bytes written
//      (else they are the zeros from before).
//   2. A second process onloads them into its own poisoned GPU memory, in another order and in
//      4 layers, with signal_event: it waits on each layer's event on its stream and compares
//      that layer's blocks, and checks the poison between blocks.
//   3. The blocks, demoted to SSD (512 MiB of filler pushes them out) and evicted from DRAM,
//      are onloaded once more: they come back through the pinned pool.
//   4. A stuck engine event holds up no other copy: an offload waits on an event whose stream
//      is blocked by a host function; meanwhile another session's offload and onload complete;
//      once released, the waiting offload stores the right bytes. One never released fails
//      with timed_out after kvtierd's 10 s limit, and the daemon goes on.
// Speed (GB/s, median of 5, in this run):
//   offload/onload of 2 MiB blocks beside cudaMemcpyAsync between the same pinned pool slots and
//   device memory (target >= 0.9x), and of 64 KiB blocks beside the 2 MiB figures (>= 0.7x).
#include <cuda_runtime_api.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kvclient/client.h"

namespace {

using kvtier::Client;
using kvtier::Key;
using kvtier::OnloadInfo;
using kvtier::Status;
using kvtier::StatusCode;

constexpr uint64_t kKiB = 1 << 10;
constexpr uint64_t kMiB = 1 << 20;
constexpr size_t kCheckBlocks = 96;
constexpr uint32_t kLayers = 4;
constexpr unsigned char kPoison = 0xa5;

struct Args {
  std::string socket;
  std::string ctl;  // "kvtierctl --admin-socket PATH"
};

#define CUDA_OK(call)                                                                    \
  do {                                                                                   \
    const cudaError_t err_ = (call);                                                     \
    if (err_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                 \
                   cudaGetErrorString(err_));                                            \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

void Must(const Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

std::unique_ptr<Client> Connect(const Args& args) {
  auto c = Client::Connect({.socket_path = args.socket, .name_space = "gpu-check"});
  Must(c.status(), "connect to kvtierd");
  return std::move(*c);
}

Key BlockKey(const char* set, uint64_t i) { return Key::From(std::string(set) + std::to_string(i)); }

// The check blocks: sizes 1 byte .. 2 MiB, and their bytes, from a fixed seed (both processes
// make the same ones).
struct Blocks {
  std::vector<Key> keys;
  std::vector<uint64_t> sizes;
  std::vector<std::vector<unsigned char>> bytes;
};

Blocks CheckBlocks() {
  std::mt19937_64 rng(2026);
  Blocks b;
  for (size_t i = 0; i < kCheckBlocks; ++i) {
    b.keys.push_back(BlockKey("check/", i));
    const uint64_t size = i == 0 ? 1 : 1 + rng() % (2 * kMiB);
    b.sizes.push_back(size);
    std::vector<unsigned char> data(size);
    for (auto& x : data) x = static_cast<unsigned char>(rng());
    b.bytes.push_back(std::move(data));
  }
  return b;
}

// Offsets packing `sizes` with gaps, in the order `order`; returns the bytes needed.
uint64_t Pack(const std::vector<uint64_t>& sizes, const std::vector<size_t>& order,
              std::vector<uint64_t>* offsets) {
  offsets->assign(sizes.size(), 0);
  uint64_t at = 0;
  for (size_t i : order) {
    (*offsets)[i] = at + 64;
    at += 64 + sizes[i] + 4 * kKiB;
  }
  return at;
}

struct IpcEvents {
  std::vector<cudaEvent_t> events;
  std::vector<std::byte> handles;
};

IpcEvents MakeEvents(size_t n) {
  IpcEvents e;
  for (size_t i = 0; i < n; ++i) {
    cudaEvent_t ev;
    CUDA_OK(cudaEventCreateWithFlags(&ev, cudaEventInterprocess | cudaEventDisableTiming));
    cudaIpcEventHandle_t h;
    CUDA_OK(cudaIpcGetEventHandle(&h, ev));
    const auto* p = reinterpret_cast<const std::byte*>(&h);
    e.handles.insert(e.handles.end(), p, p + sizeof(h));
    e.events.push_back(ev);
  }
  return e;
}

std::vector<std::byte> MemHandle(void* dev) {
  cudaIpcMemHandle_t h;
  CUDA_OK(cudaIpcGetMemHandle(&h, dev));
  const auto* p = reinterpret_cast<const std::byte*>(&h);
  return std::vector<std::byte>(p, p + sizeof(h));
}

// Compares blocks [first, last) at `offsets` in `host` (a copy of the device region) and the
// poison of every byte no block covers; returns the wrong bytes.
uint64_t Compare(const Blocks& b, const std::vector<uint64_t>& offsets, size_t first, size_t last,
                 const std::vector<unsigned char>& host) {
  uint64_t wrong = 0;
  for (size_t i = first; i < last; ++i) {
    for (uint64_t k = 0; k < b.sizes[i]; ++k) wrong += host[offsets[i] + k] != b.bytes[i][k];
  }
  return wrong;
}

uint64_t PoisonDamage(const Blocks& b, const std::vector<uint64_t>& offsets,
                      const std::vector<unsigned char>& host) {
  std::vector<bool> covered(host.size(), false);
  for (size_t i = 0; i < b.keys.size(); ++i) {
    std::fill_n(covered.begin() + static_cast<std::ptrdiff_t>(offsets[i]), b.sizes[i], true);
  }
  uint64_t damaged = 0;
  for (size_t k = 0; k < host.size(); ++k) damaged += !covered[k] && host[k] != kPoison;
  return damaged;
}

// Process 2: onloads the check blocks into its own poisoned GPU memory, layer by layer.
int OnloadInOtherProcess(const Args& args) {
  const Blocks b = CheckBlocks();
  std::vector<size_t> order(b.keys.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = order.size() - 1 - i;  // reversed
  std::vector<uint64_t> offsets;
  const uint64_t bytes = Pack(b.sizes, order, &offsets);
  CUDA_OK(cudaSetDevice(0));
  void* dev = nullptr;
  CUDA_OK(cudaMalloc(&dev, bytes));
  CUDA_OK(cudaMemset(dev, kPoison, bytes));
  CUDA_OK(cudaDeviceSynchronize());
  IpcEvents events = MakeEvents(kLayers);
  auto client = Connect(args);
  auto region = client->RegisterCudaRegion(0, MemHandle(dev), bytes, events.handles);
  Must(region.status(), "register the second process's CUDA region");
  std::vector<OnloadInfo> infos(b.keys.size());
  Must(client->Onload(b.keys, *region, offsets, infos, {.layers = kLayers, .signal_event = 0}),
       "onload with layer events");
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<unsigned char> host(bytes);
  const size_t per_layer = b.keys.size() / kLayers;
  uint64_t wrong = 0;
  for (uint32_t layer = 0; layer < kLayers; ++layer) {
    // The engine's stream waits for this layer's copies, then reads the layer.
    CUDA_OK(cudaStreamWaitEvent(stream, events.events[layer], 0));
    for (size_t i = layer * per_layer; i < (layer + 1) * per_layer; ++i) {
      CUDA_OK(cudaMemcpyAsync(host.data() + offsets[i], static_cast<char*>(dev) + offsets[i],
                              b.sizes[i], cudaMemcpyDeviceToHost, stream));
    }
    CUDA_OK(cudaStreamSynchronize(stream));
    wrong += Compare(b, offsets, layer * per_layer, (layer + 1) * per_layer, host);
  }
  CUDA_OK(cudaMemcpy(host.data(), dev, bytes, cudaMemcpyDeviceToHost));
  const uint64_t damaged = PoisonDamage(b, offsets, host);
  size_t ok = 0;
  for (const OnloadInfo& info : infos) ok += info.code == StatusCode::kOk;
  std::printf("| cross-process onload, %u layers, layer events | %zu/%zu blocks, %llu wrong "
              "bytes, %llu poison bytes overwritten | %s |\n",
              kLayers, ok, b.keys.size(), static_cast<unsigned long long>(wrong),
              static_cast<unsigned long long>(damaged),
              ok == b.keys.size() && wrong == 0 && damaged == 0 ? "PASS" : "FAIL");
  return ok == b.keys.size() && wrong == 0 && damaged == 0 ? 0 : 1;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Figure {
  const char* name;
  double gbps;
  const char* against;
  double limit;
  double target;
};

}  // namespace

int main(int argc, char** argv) {
  Args args;
  bool second_process = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--socket") args.socket = argv[i + 1];
    if (flag == "--ctl") args.ctl = argv[i + 1];
    if (flag == "--second-process") second_process = true;
  }
  if (args.socket.empty() || args.ctl.empty()) {
    std::fprintf(stderr, "usage: kvt_gpu_check --socket PATH --ctl 'kvtierctl --admin-socket P'\n");
    return 2;
  }
  int count = 0;
  if (cudaError_t err = cudaGetDeviceCount(&count); err != cudaSuccess || count == 0) {
    std::printf("no GPU: %s; nothing was checked\n",
                err != cudaSuccess ? cudaGetErrorString(err) : "the driver reports no device");
    return 77;
  }
  if (second_process) return OnloadInOtherProcess(args);
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device 0: %s\n\n| check | result | verdict |\n|---|---|---|\n", prop.name);
  CUDA_OK(cudaSetDevice(0));
  bool all_ok = true;

  // 1. Write on the engine's stream, record, offload ordered after the event.
  const Blocks b = CheckBlocks();
  std::vector<size_t> order(b.keys.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::vector<uint64_t> offsets;
  const uint64_t bytes = Pack(b.sizes, order, &offsets);
  void* dev = nullptr;
  CUDA_OK(cudaMalloc(&dev, bytes));
  IpcEvents written = MakeEvents(1);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<unsigned char> staging(bytes, 0);
  for (size_t i = 0; i < b.keys.size(); ++i) {
    std::memcpy(staging.data() + offsets[i], b.bytes[i].data(), b.sizes[i]);
  }
  CUDA_OK(cudaHostRegister(staging.data(), bytes, cudaHostRegisterDefault));
  CUDA_OK(cudaMemset(dev, 0, bytes));
  CUDA_OK(cudaDeviceSynchronize());
  auto client = Connect(args);
  Must(client->PinPoolForCuda(), "pin the client's pool mapping");
  auto region = client->RegisterCudaRegion(0, MemHandle(dev), bytes, written.handles);
  Must(region.status(), "register the engine's CUDA region");
  // The engine's write lands 300 ms late (a host function sleeps first on its stream), and the
  // offload is sent at once: only a daemon that waits for the event stores the new bytes.
  CUDA_OK(cudaLaunchHostFunc(stream, [](void*) { usleep(300000); }, nullptr));
  CUDA_OK(cudaMemcpyAsync(dev, staging.data(), bytes, cudaMemcpyHostToDevice, stream));
  CUDA_OK(cudaEventRecord(written.events[0], stream));
  std::vector<StatusCode> codes(b.keys.size());
  Must(client->Offload(b.keys, *region, offsets, b.sizes, codes, {.wait_event = 0}),
       "offload after the write event");
  {
    auto leases = client->Acquire(b.keys);
    Must(leases.status(), "acquire the offloaded blocks");
    uint64_t wrong = 0;
    for (size_t i = 0; i < b.keys.size(); ++i) {
      const auto got = leases->data(i);
      wrong += got.size() != b.sizes[i] ||
               std::memcmp(got.data(), b.bytes[i].data(), b.sizes[i]) != 0;
    }
    std::printf("| offload ordered after the engine's IPC event | %zu blocks, %llu differ | %s |\n",
                b.keys.size(), static_cast<unsigned long long>(wrong), wrong == 0 ? "PASS" : "FAIL");
    all_ok &= wrong == 0;
  }

  // 4. A stuck engine event (numbered as in the header; run here, while `dev` holds the blocks).
  {
    static std::atomic<int> gate{0};  // the engine's stream is blocked until this is 1
    IpcEvents stuck = MakeEvents(1);
    cudaStream_t blocked;
    CUDA_OK(cudaStreamCreateWithFlags(&blocked, cudaStreamNonBlocking));
    CUDA_OK(cudaLaunchHostFunc(blocked, [](void*) {
      while (gate.load() == 0) usleep(1000);
    }, nullptr));
    CUDA_OK(cudaEventRecord(stuck.events[0], blocked));
    auto waiter = Connect(args);
    auto stuck_region = waiter->RegisterCudaRegion(0, MemHandle(dev), bytes, stuck.handles);
    Must(stuck_region.status(), "register the region with the stuck event");
    std::vector<kvtier::Key> keys;
    for (size_t i = 0; i < b.keys.size(); ++i) keys.push_back(BlockKey("stuck", i));
    std::atomic<bool> waiter_done{false};
    kvtier::Status waiter_status;
    std::thread t([&] {
      std::vector<StatusCode> c(keys.size());
      waiter_status = waiter->Offload(keys, *stuck_region, offsets, b.sizes, c, {.wait_event = 0});
      waiter_done = true;
    });
    usleep(100000);  // the stuck offload reaches kvtierd first
    // Meanwhile another session's copies, with no event, complete.
    std::vector<kvtier::Key> other;
    for (size_t i = 0; i < b.keys.size(); ++i) other.push_back(BlockKey("beside", i));
    std::vector<StatusCode> c(other.size());
    const kvtier::Status off = client->Offload(other, *region, offsets, b.sizes, c);
    std::vector<kvtier::OnloadInfo> infos(other.size());
    const kvtier::Status on = client->Onload(other, *region, offsets, infos);
    const bool beside_ok = off.ok() && on.ok() && !waiter_done.load();
    gate = 1;
    t.join();
    uint64_t wrong = 0;
    if (waiter_status.ok()) {
      auto leases = client->Acquire(keys);
      Must(leases.status(), "acquire the blocks of the released offload");
      for (size_t i = 0; i < keys.size(); ++i) {
        const auto got = leases->data(i);
        wrong += got.size() != b.sizes[i] ||
                 std::memcmp(got.data(), b.bytes[i].data(), b.sizes[i]) != 0;
      }
    }
    const bool released_ok = waiter_status.ok() && wrong == 0;
    std::printf("| copies beside an offload whose event is stuck | %s; released: %s, %llu "
                "blocks differ | %s |\n",
                beside_ok ? "completed while it waited" : "held up or failed",
                waiter_status.ToString().c_str(), static_cast<unsigned long long>(wrong),
                beside_ok && released_ok ? "PASS" : "FAIL");
    all_ok &= beside_ok && released_ok;
    // Never released: the offload fails after kvtierd's limit, storing nothing.
    gate = 0;
    CUDA_OK(cudaLaunchHostFunc(blocked, [](void*) {
      while (gate.load() == 0) usleep(1000);
    }, nullptr));
    CUDA_OK(cudaEventRecord(stuck.events[0], blocked));
    std::vector<kvtier::Key> never;
    for (size_t i = 0; i < b.keys.size(); ++i) never.push_back(BlockKey("never", i));
    std::vector<StatusCode> nc(never.size());
    const kvtier::Status timed_out =
        waiter->Offload(never, *stuck_region, offsets, b.sizes, nc, {.wait_event = 0});
    gate = 1;
    CUDA_OK(cudaStreamSynchronize(blocked));
    auto matched = client->MatchPrefix(never);
    const bool timeout_ok = timed_out.code() == StatusCode::kTimedOut && matched.ok() &&
                            *matched == 0;
    std::printf("| an offload whose event never completes | %s | %s |\n",
                timed_out.ToString().c_str(), timeout_ok ? "PASS" : "FAIL");
    all_ok &= timeout_ok;
  }

  // 2. Another process onloads them.
  std::fflush(stdout);
  const pid_t child = fork();
  if (child == 0) {
    // A forked child may not use its parent's CUDA state: run the check in a fresh image.
    execl("/proc/self/exe", argv[0], "--socket", args.socket.c_str(), "--ctl", args.ctl.c_str(),
          "--second-process", "1", static_cast<char*>(nullptr));
    _exit(3);
  }
  int status = 0;
  waitpid(child, &status, 0);
  all_ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;

  // A 512 MiB region for the SSD filler and the speed runs.
  constexpr uint64_t kRunBytes = 512 * kMiB;
  void* big = nullptr;
  CUDA_OK(cudaMalloc(&big, kRunBytes));
  CUDA_OK(cudaMemset(big, 1, kRunBytes));
  auto big_region = client->RegisterCudaRegion(0, MemHandle(big), kRunBytes);
  Must(big_region.status(), "register the speed region");
  // 3. The check blocks again, from SSD. 512 MiB of filler pushes the dirty bytes past the
  // dirty limit (run.sh sets demote_above = 0.05: ~200 MiB), so the oldest dirty blocks, the
  // check blocks, are demoted; evicted from DRAM, an onload must promote them through the
  // pinned pool.
  {
    const size_t n = kRunBytes / (2 * kMiB);
    std::vector<Key> filler;
    std::vector<uint64_t> sizes(n, 2 * kMiB), where(n);
    for (size_t i = 0; i < n; ++i) {
      filler.push_back(BlockKey("filler/", i));
      where[i] = i * 2 * kMiB;
    }
    Must(client->Offload(filler, *big_region, where, sizes), "offload the filler");
    bool demoted = false;
    for (int i = 0; i < 300 && !demoted; ++i) {
      auto stats = client->Stats();
      demoted = stats.ok() && stats->ssd_blocks >= b.keys.size();
      if (!demoted) usleep(100000);
    }
    const std::string evict = args.ctl + " evict --tenant gpu --tier dram >/dev/null";
    const bool evicted = demoted && std::system(evict.c_str()) == 0;
    (void)client->Remove(filler);  // the evict dropped those still dirty: not_found is fine
    CUDA_OK(cudaMemset(dev, kPoison, bytes));
    std::vector<OnloadInfo> infos(b.keys.size());
    Must(client->Onload(b.keys, *region, offsets, infos), "onload from SSD");
    std::vector<unsigned char> host(bytes);
    CUDA_OK(cudaMemcpy(host.data(), dev, bytes, cudaMemcpyDeviceToHost));
    size_t from_ssd = 0;
    for (const OnloadInfo& info : infos) from_ssd += info.tier == kvtier::Tier::kSsd;
    const uint64_t wrong = Compare(b, offsets, 0, b.keys.size(), host);
    const uint64_t damaged = PoisonDamage(b, offsets, host);
    const bool ssd_ok = evicted && from_ssd == b.keys.size() && wrong == 0 && damaged == 0;
    std::printf("| onload of SSD-only blocks through the pinned pool | %zu/%zu from SSD, %llu "
                "wrong bytes, %llu poison bytes overwritten | %s |\n",
                from_ssd, b.keys.size(), static_cast<unsigned long long>(wrong),
                static_cast<unsigned long long>(damaged), ssd_ok ? "PASS" : "FAIL");
    all_ok &= ssd_ok;
  }

  // 4. Speed: 2 MiB and 64 KiB blocks, 512 MiB per run, against cudaMemcpyAsync between the
  // same pinned pool slots and device memory. (The SSD tier demotes in the background meanwhile:
  // each run's blocks exceed the dirty limit.)
  std::vector<Figure> figures;
  double offload_2m = 0, onload_2m = 0;
  for (const uint64_t block : {2 * kMiB, 64 * kKiB}) {
    const size_t n = kRunBytes / block;
    std::vector<uint64_t> sizes(n, block), where(n);
    for (size_t i = 0; i < n; ++i) where[i] = i * block;
    std::vector<double> off, on, h2d, d2h;
    for (int rep = 0; rep < 5; ++rep) {
      std::vector<Key> keys;
      for (size_t i = 0; i < n; ++i) {
        keys.push_back(BlockKey(block == 2 * kMiB ? "big/" : "small/", static_cast<uint64_t>(rep) * n + i));
      }
      auto t = std::chrono::steady_clock::now();
      Must(client->Offload(keys, *big_region, where, sizes), "offload (speed)");
      off.push_back(static_cast<double>(kRunBytes) / Seconds(t) / 1e9);
      std::vector<OnloadInfo> infos(n);
      t = std::chrono::steady_clock::now();
      Must(client->Onload(keys, *big_region, where, infos), "onload (speed)");
      on.push_back(static_cast<double>(kRunBytes) / Seconds(t) / 1e9);
      if (block == 2 * kMiB) {
        // The limit: the same pool slots (pinned, leased) to and from the same device memory.
        auto leases = client->Acquire(keys);
        Must(leases.status(), "acquire (speed)");
        for (int dir = 0; dir < 2; ++dir) {
          t = std::chrono::steady_clock::now();
          for (size_t i = 0; i < n; ++i) {
            void* pool = const_cast<std::byte*>(leases->data(i).data());
            char* gpu = static_cast<char*>(big) + where[i];
            if (dir == 0) {
              CUDA_OK(cudaMemcpyAsync(gpu, pool, block, cudaMemcpyHostToDevice, stream));
            } else {
              CUDA_OK(cudaMemcpyAsync(pool, gpu, block, cudaMemcpyDeviceToHost, stream));
            }
          }
          CUDA_OK(cudaStreamSynchronize(stream));
          (dir == 0 ? h2d : d2h).push_back(static_cast<double>(kRunBytes) / Seconds(t) / 1e9);
        }
      }
      Must(client->Remove(keys), "remove (speed)");
    }
    if (block == 2 * kMiB) {
      offload_2m = Median(off);
      onload_2m = Median(on);
      figures.push_back({"offload 2 MiB blocks (GPU to pool)", offload_2m,
                         "cudaMemcpyAsync D2H, same buffers", Median(d2h), 0.9});
      figures.push_back({"onload 2 MiB blocks (pool to GPU)", onload_2m,
                         "cudaMemcpyAsync H2D, same buffers", Median(h2d), 0.9});
    } else {
      figures.push_back({"offload 64 KiB blocks", Median(off), "offload 2 MiB blocks", offload_2m,
                         0.7});
      figures.push_back({"onload 64 KiB blocks", Median(on), "onload 2 MiB blocks", onload_2m,
                         0.7});
    }
  }

  std::printf("\n| figure | GB/s | beside | GB/s | ratio | target |\n|---|---|---|---|---|---|\n");
  for (const Figure& f : figures) {
    const double ratio = f.gbps / f.limit;
    std::printf("| %s | %.1f | %s | %.1f | %.2f | >= %.1f %s |\n", f.name, f.gbps, f.against,
                f.limit, ratio, f.target, ratio >= f.target ? "met" : "MISSED");
    all_ok &= ratio >= f.target;
  }
  std::printf("\n%s\n", all_ok ? "all GPU checks passed" : "SOME GPU CHECKS FAILED");
  return all_ok ? 0 : 1;
}
