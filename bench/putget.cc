// kvtier-putget: the C++ client's put and get throughput against a running kvtierd, for one
// block size and batch; bench/python_bench.py runs it beside the Python client on the same
// daemon, in the same run, and prints the two as a ratio.
//
//   kvtier-putget --socket PATH --namespace NS --block-bytes B --batch K --blocks N --rounds R
//
// Each round: put N blocks (Reserve -> CopyToPool each -> Commit, K per call), get them
// (Acquire -> CopyFromPool each -> Verify -> Release), remove them. Prints one line per op:
// "put <GB/s>" and "get <GB/s>", the best round (the machine's noise only ever slows).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kvclient/client.h"
#include "kvclient/copy.h"

namespace {

using kvtier::Key;
using kvtier::StatusCode;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "kvtier-putget: %s\n", what.c_str());
  std::exit(1);
}

void Check(const kvtier::Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + s.ToString());
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket, ns = "putget";
  uint64_t block = 2 << 20, batch = 64, blocks = 256, rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const char* v = argv[i + 1];
    if (a == "--socket") socket = v;
    else if (a == "--namespace") ns = v;
    else if (a == "--block-bytes") block = std::strtoull(v, nullptr, 10);
    else if (a == "--batch") batch = std::strtoull(v, nullptr, 10);
    else if (a == "--blocks") blocks = std::strtoull(v, nullptr, 10);
    else if (a == "--rounds") rounds = std::strtoull(v, nullptr, 10);
    else Die("unknown option " + a);
  }
  if (socket.empty() || block == 0 || batch == 0 || blocks == 0) Die("usage: see the header");
  auto client = kvtier::Client::Connect({.socket_path = socket, .name_space = ns});
  if (!client.ok()) Die("connect: " + client.status().ToString());
  kvtier::Client& c = **client;
  // Source and destination: private memory, touched before timing.
  std::vector<std::byte> src(batch * block, std::byte{1}), dst(batch * block, std::byte{0});
  std::vector<Key> keys(blocks);
  for (uint64_t i = 0; i < blocks; ++i) keys[i] = Key::From("putget-" + std::to_string(i));
  const std::vector<uint64_t> sizes(batch, block);
  double best_put = 0, best_get = 0;
  for (uint64_t round = 0; round < rounds; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    for (uint64_t first = 0; first < blocks; first += batch) {
      const uint64_t n = std::min(batch, blocks - first);
      auto r = c.Reserve(std::span(keys).subspan(first, n), std::span(sizes).first(n));
      Check(r.status(), "reserve");
      for (uint64_t j = 0; j < n; ++j) {
        if (r->code(j) != StatusCode::kOk) Die("reserve: a key was refused");
        kvtier::CopyToPool(r->data(j).data(), src.data() + j * block, block);
      }
      Check(r->Commit(), "commit");
    }
    best_put = std::max(best_put, double(blocks * block) / Seconds(t0) / 1e9);
    t0 = std::chrono::steady_clock::now();
    for (uint64_t first = 0; first < blocks; first += batch) {
      const uint64_t n = std::min(batch, blocks - first);
      auto l = c.Acquire(std::span(keys).subspan(first, n));
      Check(l.status(), "acquire");
      for (uint64_t j = 0; j < n; ++j) {
        if (l->code(j) != StatusCode::kOk) Die("acquire: a key was missing");
        kvtier::CopyFromPool(dst.data() + j * block, l->data(j).data(), block);
      }
      Check(l->Verify(), "verify");
      Check(l->Release(), "release");
    }
    best_get = std::max(best_get, double(blocks * block) / Seconds(t0) / 1e9);
    std::vector<StatusCode> codes(blocks);
    Check(c.Remove(keys, codes), "remove");
  }
  std::printf("put %.3f\nget %.3f\n", best_put, best_get);
  return 0;
}
