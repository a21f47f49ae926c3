// A minimal engine-side use of libkvclient: store three KV blocks, find the cached prefix of a
// longer request, and read the blocks back.
//   kvclient_example [SOCKET]      (default: the dev daemon's .run/kvtierd.sock)
#include <cstdio>
#include <cstring>
#include <vector>

#include "kvclient/client.h"
#include "kvclient/copy.h"

int main(int argc, char** argv) {
  kvtier::ClientOptions options;
  options.socket_path = argc > 1 ? argv[1] : ".run/kvtierd.sock";
  options.name_space = "example-model/bf16/tp1/blk16";
  auto client = kvtier::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().ToString().c_str());
    return 1;
  }
  std::printf("connected as tenant '%s', pool %zu MiB\n", (*client)->tenant().c_str(),
              (*client)->pool().size() >> 20);

  // Keys are the engine's prefix hashes; here just names. Each block is 64 KiB of "KV".
  const std::vector<kvtier::Key> keys = {kvtier::Key::From("prefix-0"),
                                         kvtier::Key::From("prefix-0-1"),
                                         kvtier::Key::From("prefix-0-1-2")};
  const std::vector<uint64_t> sizes(keys.size(), 64 * 1024);
  std::vector<std::byte> kv(64 * 1024);
  auto reserved = (*client)->Reserve(keys, sizes);
  if (!reserved.ok()) {
    std::fprintf(stderr, "reserve: %s\n", reserved.status().ToString().c_str());
    return 1;
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (reserved->code(i) != kvtier::StatusCode::kOk) continue;  // e.g. already stored
    std::memset(kv.data(), static_cast<int>('a' + i), kv.size());
    kvtier::CopyToPool(reserved->data(i).data(), kv.data(), kv.size());
  }
  if (kvtier::Status s = reserved->Commit(); !s.ok()) {
    std::fprintf(stderr, "commit: %s\n", s.ToString().c_str());
    return 1;
  }

  // A later request shares the first three blocks and adds a fourth.
  std::vector<kvtier::Key> request = keys;
  request.push_back(kvtier::Key::From("prefix-0-1-2-3"));
  auto matched = (*client)->MatchPrefix(request);
  if (!matched.ok()) return 1;
  std::printf("cached prefix: %zu of %zu blocks\n", *matched, request.size());

  auto leases = (*client)->Acquire(std::span(request).first(*matched));
  if (!leases.ok()) return 1;
  for (size_t i = 0; i < leases->prefix(); ++i) {
    kvtier::CopyFromPool(kv.data(), leases->data(i).data(), leases->data(i).size());
    std::printf("block %zu: %zu bytes of '%c'\n", i, leases->data(i).size(),
                static_cast<char>(kv[0]));
  }
  return 0;  // the Leases destructor releases the leases
}
