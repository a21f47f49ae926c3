#include "kvclient/c_api.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <memory>
#include <cstdio>
#include <string>
#include <vector>

#include "kvclient/client.h"
#include "kvclient/copy.h"

struct kvtier_client {
  std::unique_ptr<kvtier::Client> client;
};

namespace {

using kvtier::Key;
using kvtier::Status;
using kvtier::StatusCode;

// Like errno: each thread sees the message of its own last failed call.
thread_local std::string t_last_error;

static_assert(sizeof(kvtier_key) == 33);

kvtier_status Record(kvtier_client* /*c*/, const Status& s) {
  if (!s.ok()) t_last_error = s.message();
  return static_cast<kvtier_status>(s.code());
}

// Arguments refused before the call reached libkvclient proper: each key's code says so too
// (a failed call never leaves a per-key OK behind).
kvtier_status Refuse(kvtier_status status, uint16_t* codes, size_t n) {
  if (codes != nullptr && n <= (size_t{1} << 24)) {
    for (size_t i = 0; i < n; ++i) codes[i] = static_cast<uint16_t>(status);
  }
  return status;
}

// Sets the thread's message without letting std::bad_alloc escape (no exception crosses the
// C ABI).
void SetError(const char* a, const char* b = "") noexcept {
  try {
    t_last_error.assign(a).append(b);
  } catch (...) {
    t_last_error.clear();
  }
}

// Every entry point runs its body through Guard: no C++ exception ever crosses the C ABI
// (std::bad_alloc for an absurd n becomes RESOURCE_EXHAUSTED), and null arrays are refused.
template <typename F>
kvtier_status Guard(F&& body) noexcept {
  try {
    t_last_error.clear();
    return body();
  } catch (const std::bad_alloc&) {
    SetError("out of memory (is n reasonable?)");
    return KVTIER_RESOURCE_EXHAUSTED;
  } catch (...) {
    SetError("internal error in libkvclient");
    return KVTIER_INTERNAL;
  }
}

kvtier_status NullArgument(const char* what) noexcept {
  SetError(what, " is NULL");
  return KVTIER_INVALID_ARGUMENT;
}

// Far above any real batch (a call is split into frames of 4096), low enough that the copies
// this shim makes can always be allocated: a larger n is a caller's bug, not a request.
constexpr size_t kMaxKeysPerCall = size_t{1} << 24;

kvtier_status CountTooLarge(size_t n) noexcept {
  char text[96];
  std::snprintf(text, sizeof(text), "n = %zu exceeds %zu keys per call", n, kMaxKeysPerCall);
  SetError(text);
  return KVTIER_INVALID_ARGUMENT;
}

std::vector<Key> Keys(const kvtier_key* keys, size_t n) {
  std::vector<Key> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i].len = keys[i].len;
    std::memcpy(out[i].bytes.data(), keys[i].bytes, std::min<size_t>(keys[i].len, 32));
  }
  return out;
}

void CopyCodes(const std::vector<StatusCode>& in, uint16_t* out) {
  if (out == nullptr) return;
  for (size_t i = 0; i < in.size(); ++i) out[i] = static_cast<uint16_t>(in[i]);
}

std::span<const uint32_t> Ttls(const uint32_t* ttl_seconds, size_t n) {
  if (ttl_seconds == nullptr) return {};
  return {ttl_seconds, n};
}

// Commit, abort and remove: keys in, a code per key out.
// A per-key call: its arguments checked (a count over the limit, a null client or keys), then
// `op` with one code per key.
// `op(client, keys, codes)` calls the C++ method.
template <typename Op>
kvtier_status PerKeyCodes(kvtier_client* c, const kvtier_key* keys, size_t n, uint16_t* codes,
                          Op&& op) {
  if (n > kMaxKeysPerCall) return CountTooLarge(n);
  if (c == nullptr) return Refuse(NullArgument("c"), codes, n);
  if (keys == nullptr) return Refuse(NullArgument("keys"), codes, n);
  (void)Refuse(KVTIER_INTERNAL, codes, n);  // what stays if Guard catches an exception
  return Guard([&]() -> kvtier_status {
    std::vector<StatusCode> out(n, StatusCode::kInternal);
    const Status s = op(*c->client, Keys(keys, n), std::span<StatusCode>(out));
    CopyCodes(out, codes);
    return Record(c, s);
  });
}

kvtier_status PerKeyCodes(kvtier_client* c, const kvtier_key* keys, size_t n, uint16_t* codes,
                          Status (kvtier::Client::*method)(std::span<const Key>,
                                                           std::span<StatusCode>)) {
  return PerKeyCodes(c, keys, n, codes,
                     [method](kvtier::Client& client, std::span<const Key> k,
                              std::span<StatusCode> out) { return (client.*method)(k, out); });
}

// What kvtier_connect_with reads of the caller's options: the fields its struct_size covers
// (the others keep their defaults); past this library's own struct, only zero bytes.
kvtier_status ReadClientOptions(const kvtier_client_options* in, kvtier_client_options* out) {
  *out = KVTIER_CLIENT_OPTIONS_INIT;
  if (in == nullptr) return KVTIER_OK;
  const size_t given = in->struct_size;
  if (given < sizeof(uint32_t) || given > 4096) {
    t_last_error = "kvtier_client_options.struct_size is " + std::to_string(given) +
                   ": set it to sizeof(kvtier_client_options) (KVTIER_CLIENT_OPTIONS_INIT does)";
    return KVTIER_INVALID_ARGUMENT;
  }
  const auto* bytes = reinterpret_cast<const unsigned char*>(in);
  for (size_t i = sizeof(kvtier_client_options); i < given; ++i) {
    if (bytes[i] != 0) {
      t_last_error = "kvtier_client_options sets a field this libkvclient (" +
                     std::string(kvtier::LibraryVersion()) +
                     ") does not know: upgrade it, or leave the field 0";
      return KVTIER_INVALID_ARGUMENT;
    }
  }
  std::memcpy(out, in, std::min(given, sizeof(kvtier_client_options)));
  out->struct_size = sizeof(kvtier_client_options);
  return KVTIER_OK;
}

kvtier::TransferOptions Options(const kvtier_transfer_options* o) {
  kvtier::TransferOptions out;
  if (o == nullptr) return out;
  out.layers = o->layers == 0 ? 1 : o->layers;
  out.progress_region = o->progress_region;
  out.progress_offset = o->progress_offset;
  out.wait_event = o->wait_event;
  out.signal_event = o->signal_event;
  return out;
}

void CopyResults(const std::vector<kvtier::OnloadInfo>& in, kvtier_onload_result* out) {
  for (size_t i = 0; i < in.size(); ++i) {
    out[i] = kvtier_onload_result{in[i].size, static_cast<uint16_t>(in[i].code),
                                  static_cast<uint8_t>(in[i].tier)};
  }
}

}  // namespace

extern "C" {

kvtier_status kvtier_connect_with(const char* socket_path, const char* name_space,
                                  const kvtier_client_options* options, kvtier_client** out) {
  if (out == nullptr) return NullArgument("out");
  return Guard([&]() -> kvtier_status {
    *out = nullptr;
    kvtier_client_options given;
    if (kvtier_status s = ReadClientOptions(options, &given); s != KVTIER_OK) return s;
    kvtier::ClientOptions o;
    if (socket_path != nullptr) o.socket_path = socket_path;
    o.name_space = name_space != nullptr ? name_space : "";
    if (given.timeout_ms < 0) {
      t_last_error = "timeout_ms must not be negative";
      return KVTIER_INVALID_ARGUMENT;
    }
    if (given.timeout_ms > 0) o.timeout_ms = given.timeout_ms;
    o.spin_us = given.spin_us;
    if (given.reconnect > 1) {
      t_last_error = "reconnect is 0 or 1";
      return KVTIER_INVALID_ARGUMENT;
    }
    o.reconnect = given.reconnect == 1;
    auto client = kvtier::Client::Connect(o);
    if (!client.ok()) {
      t_last_error = client.status().message();
      return static_cast<kvtier_status>(client.status().code());
    }
    *out = new kvtier_client{std::move(*client)};
    return KVTIER_OK;
  });
}

kvtier_status kvtier_connect_ex(const char* socket_path, const char* name_space,
                                const kvtier_connect_options* options, kvtier_client** out) {
  kvtier_client_options o = KVTIER_CLIENT_OPTIONS_INIT;
  if (options != nullptr) {
    o.timeout_ms = options->timeout_ms;
    o.spin_us = options->spin_us;
  }
  return kvtier_connect_with(socket_path, name_space, &o, out);
}

kvtier_status kvtier_connect(const char* socket_path, const char* name_space, kvtier_client** out,
                             char* error, size_t error_bytes) {
  const kvtier_status s = kvtier_connect_ex(socket_path, name_space, nullptr, out);
  if (s != KVTIER_OK && error != nullptr && error_bytes > 0) {
    std::snprintf(error, error_bytes, "%s", t_last_error.c_str());
  }
  return s;
}

void kvtier_close(kvtier_client* client) { delete client; }

const char* kvtier_error(void) { return t_last_error.c_str(); }
const char* kvtier_last_error(const kvtier_client* /*client*/) { return t_last_error.c_str(); }
const char* kvtier_version(void) { return kvtier::LibraryVersion(); }
uint32_t kvtier_protocol_version(void) { return kvtier::ProtocolVersion(); }
uint64_t kvtier_max_block_bytes(const kvtier_client* client) {
  return client == nullptr ? 0 : client->client->max_block_bytes();
}
uint64_t kvtier_spill_max_block_bytes(const kvtier_client* client) {
  return client == nullptr ? 0 : client->client->spill_max_block_bytes();
}

const char* kvtier_status_name(kvtier_status status) {
  return kvtier::StatusCodeName(static_cast<StatusCode>(status)).data();
}

void* kvtier_pool_base(const kvtier_client* client) { return client->client->pool().data(); }
uint64_t kvtier_pool_size(const kvtier_client* client) { return client->client->pool().size(); }
uint64_t kvtier_reconnects(const kvtier_client* client) {
  return client == nullptr ? 0 : client->client->reconnects();
}
uint64_t kvtier_call_generation(const kvtier_client* client) {
  return client == nullptr ? 0 : client->client->last_call_generation();
}
void* kvtier_pool_base_of(const kvtier_client* client, uint64_t generation) {
  if (client == nullptr) return nullptr;
  const std::span<std::byte> pool = client->client->pool(generation);
  return pool.empty() ? nullptr : pool.data();
}

kvtier_status kvtier_verify_session(const kvtier_client* c, uint64_t generation) {
  if (c == nullptr) return NullArgument("c");
  return Guard([&]() -> kvtier_status {
    return Record(nullptr, c->client->VerifySession(generation));
  });
}

kvtier_status kvtier_reserve_ex(kvtier_client* c, const kvtier_key* keys, const uint64_t* sizes,
                                const uint32_t* ttl_seconds, size_t n, uint64_t* offsets,
                                uint16_t* codes) {
  if (n > kMaxKeysPerCall) return CountTooLarge(n);
  if (c == nullptr) return Refuse(NullArgument("c"), codes, n);
  if (keys == nullptr) return Refuse(NullArgument("keys"), codes, n);
  if (sizes == nullptr) return Refuse(NullArgument("sizes"), codes, n);
  if (offsets == nullptr) return Refuse(NullArgument("offsets"), codes, n);
  (void)Refuse(KVTIER_INTERNAL, codes, n);  // what stays if Guard catches an exception
  return Guard([&]() -> kvtier_status {
    std::vector<StatusCode> out(n, StatusCode::kInternal);
    std::string refusal;
    const Status s = c->client->ReserveRaw(Keys(keys, n), {sizes, n}, {offsets, n}, out,
                                           Ttls(ttl_seconds, n), &refusal);
    CopyCodes(out, codes);
    if (s.ok()) t_last_error = refusal;
    return Record(c, s);
  });
}

kvtier_status kvtier_reserve(kvtier_client* c, const kvtier_key* keys, const uint64_t* sizes,
                             size_t n, uint64_t* offsets, uint16_t* codes) {
  return kvtier_reserve_ex(c, keys, sizes, nullptr, n, offsets, codes);
}

kvtier_status kvtier_commit(kvtier_client* c, const kvtier_key* keys, size_t n,
                            uint16_t* codes) {
  return PerKeyCodes(c, keys, n, codes, &kvtier::Client::CommitRaw);
}

kvtier_status kvtier_abort(kvtier_client* c, const kvtier_key* keys, size_t n, uint16_t* codes) {
  return PerKeyCodes(c, keys, n, codes, &kvtier::Client::AbortRaw);
}

kvtier_status kvtier_commit_in_session(kvtier_client* c, uint64_t generation,
                                       const kvtier_key* keys, size_t n, uint16_t* codes) {
  return PerKeyCodes(c, keys, n, codes,
                     [generation](kvtier::Client& client, std::span<const Key> k,
                                  std::span<StatusCode> out) {
                       return client.CommitRawInSession(generation, k, out);
                     });
}

kvtier_status kvtier_abort_in_session(kvtier_client* c, uint64_t generation,
                                      const kvtier_key* keys, size_t n, uint16_t* codes) {
  return PerKeyCodes(c, keys, n, codes,
                     [generation](kvtier::Client& client, std::span<const Key> k,
                                  std::span<StatusCode> out) {
                       return client.AbortRawInSession(generation, k, out);
                     });
}

kvtier_status kvtier_match_prefix_estimate(kvtier_client* c, const kvtier_key* keys, size_t n,
                                           size_t* matched, uint8_t* tiers,
                                           kvtier_prefix_estimate* estimate) {
  if (c == nullptr) return NullArgument("c");
  if (keys == nullptr) return NullArgument("keys");
  if (matched == nullptr) return NullArgument("matched");
  if (n > kMaxKeysPerCall) return CountTooLarge(n);
  return Guard([&]() -> kvtier_status {
    std::vector<kvtier::Tier> t(tiers != nullptr ? n : 0);
    kvtier::PrefixEstimate e;
    auto r = c->client->MatchPrefix(Keys(keys, n), t, estimate != nullptr ? &e : nullptr);
    if (!r.ok()) return Record(c, r.status());
    *matched = *r;
    for (size_t i = 0; i < *r && tiers != nullptr; ++i) tiers[i] = static_cast<uint8_t>(t[i]);
    if (estimate != nullptr) {
      *estimate = kvtier_prefix_estimate{e.valid ? 1u : 0u, e.dram_blocks,  e.ssd_blocks,
                                         0,                e.dram_bytes,   e.ssd_bytes,
                                         e.load_us,        e.ssd_queue_us, e.dram_mb_per_s,
                                         e.ssd_mb_per_s};
    }
    return KVTIER_OK;
  });
}

kvtier_status kvtier_match_prefix(kvtier_client* c, const kvtier_key* keys, size_t n,
                                  size_t* matched, uint8_t* tiers) {
  return kvtier_match_prefix_estimate(c, keys, n, matched, tiers, nullptr);
}

kvtier_status kvtier_acquire(kvtier_client* c, const kvtier_key* keys, size_t n,
                             kvtier_lease* out) {
  if (n > kMaxKeysPerCall) return CountTooLarge(n);
  if (out == nullptr) return NullArgument("out");
  for (size_t i = 0; i < n; ++i) {
    out[i] = kvtier_lease{0, 0, 0, KVTIER_INTERNAL, KVTIER_TIER_NONE};
  }
  if (c == nullptr) return NullArgument("c");
  if (keys == nullptr) return NullArgument("keys");
  return Guard([&]() -> kvtier_status {
    std::vector<kvtier::LeaseInfo> infos(n);
    const Status s = c->client->AcquireRaw(Keys(keys, n), infos);
    for (size_t i = 0; i < n; ++i) {
      out[i] = kvtier_lease{infos[i].lease_id, infos[i].offset, infos[i].size,
                            static_cast<uint16_t>(infos[i].code),
                            static_cast<uint8_t>(infos[i].tier)};
    }
    return Record(c, s);
  });
}

kvtier_status kvtier_release(kvtier_client* c, const uint64_t* lease_ids, size_t n,
                             uint16_t* codes) {
  if (n > kMaxKeysPerCall) return CountTooLarge(n);
  if (c == nullptr) return Refuse(NullArgument("c"), codes, n);
  if (lease_ids == nullptr) return Refuse(NullArgument("lease_ids"), codes, n);
  (void)Refuse(KVTIER_INTERNAL, codes, n);  // what stays if Guard catches an exception
  return Guard([&]() -> kvtier_status {
    std::vector<StatusCode> out(n, StatusCode::kInternal);
    const Status s = c->client->ReleaseRaw({lease_ids, n}, out);
    CopyCodes(out, codes);
    return Record(c, s);
  });
}

kvtier_status kvtier_remove(kvtier_client* c, const kvtier_key* keys, size_t n,
                            uint16_t* codes) {
  return PerKeyCodes(c, keys, n, codes, &kvtier::Client::Remove);
}

kvtier_status kvtier_prefetch(kvtier_client* c, const kvtier_key* keys, size_t n,
                              uint16_t* codes) {
  return PerKeyCodes(c, keys, n, codes, &kvtier::Client::Prefetch);
}

kvtier_status kvtier_reuse_soon(kvtier_client* c, const kvtier_key* keys, size_t n,
                                uint16_t* codes) {
  return PerKeyCodes(c, keys, n, codes, &kvtier::Client::ReuseSoon);
}

kvtier_status kvtier_done_with(kvtier_client* c, const kvtier_key* keys, size_t n,
                               uint16_t* codes) {
  return PerKeyCodes(c, keys, n, codes, &kvtier::Client::DoneWith);
}

int kvtier_has_hints(const kvtier_client* c) {
  return c != nullptr && c->client->has_hints() ? 1 : 0;
}

kvtier_status kvtier_verify_leases(const kvtier_client* c) {
  if (c == nullptr) return NullArgument("c");
  return Guard([&]() -> kvtier_status { return Record(nullptr, c->client->VerifyLeases()); });
}

kvtier_status kvtier_stats_get(kvtier_client* c, kvtier_stats* out) {
  if (c == nullptr) return NullArgument("c");
  if (out == nullptr) return NullArgument("out");
  return Guard([&]() -> kvtier_status {
    auto r = c->client->Stats();
    if (!r.ok()) return Record(c, r.status());
    *out = kvtier_stats{r->pool_bytes,         r->used_bytes,         r->slab_bytes_in_use,
                        r->committed_blocks,   r->reserved_blocks,    r->leased_blocks,
                        r->index_capacity,     r->index_bytes,        r->hits,
                        r->misses,             r->evictions,          r->sessions,
                        r->ssd_quota_bytes,    r->ssd_blocks,         r->ssd_only_blocks,
                        r->ssd_payload_bytes,  r->dirty_bytes,        r->demotions,
                        r->promotions,         r->demote_failures,    r->promote_failures,
                        r->integrity_failures, r->ssd_dropped,        r->ssd_segments,
                        r->expirations};
    return KVTIER_OK;
  });
}

kvtier_status kvtier_host_memory_create(uint64_t bytes, int* memfd, void** data) {
  if (memfd == nullptr) return NullArgument("memfd");
  if (data == nullptr) return NullArgument("data");
  return Guard([&]() -> kvtier_status {
    auto memory = kvtier::HostMemory::Create(bytes);
    if (!memory.ok()) return Record(nullptr, memory.status());
    *memfd = memory->fd();
    *data = memory->data();
    memory->Release();  // the caller owns the fd and mapping now (kvtier_host_memory_free)
    return KVTIER_OK;
  });
}

void kvtier_host_memory_free(int memfd, void* data, uint64_t bytes) {
  if (data != nullptr) munmap(data, bytes);
  if (memfd >= 0) close(memfd);
}

kvtier_status kvtier_register_host_region(kvtier_client* c, int memfd, uint64_t bytes,
                                          void* local, uint32_t* region) {
  if (c == nullptr) return NullArgument("c");
  if (region == nullptr) return NullArgument("region");
  return Guard([&]() -> kvtier_status {
    auto r = c->client->RegisterHostRegion(memfd, bytes, static_cast<std::byte*>(local));
    if (!r.ok()) return Record(c, r.status());
    *region = *r;
    return KVTIER_OK;
  });
}

kvtier_status kvtier_register_cuda_region(kvtier_client* c, int device, const void* ipc_handle,
                                          uint64_t bytes, const void* event_handles,
                                          size_t events, uint32_t* region) {
  if (c == nullptr) return NullArgument("c");
  if (ipc_handle == nullptr) return NullArgument("ipc_handle");
  if (events > 0 && event_handles == nullptr) return NullArgument("event_handles");
  if (region == nullptr) return NullArgument("region");
  if (events > 1024) return CountTooLarge(events);
  return Guard([&]() -> kvtier_status {
    auto r = c->client->RegisterCudaRegion(
        device, {static_cast<const std::byte*>(ipc_handle), 64}, bytes,
        {static_cast<const std::byte*>(event_handles), events * 64});
    if (!r.ok()) return Record(c, r.status());
    *region = *r;
    return KVTIER_OK;
  });
}

kvtier_status kvtier_deregister_region(kvtier_client* c, uint32_t region) {
  if (c == nullptr) return NullArgument("c");
  return Guard([&]() -> kvtier_status { return Record(c, c->client->DeregisterRegion(region)); });
}

kvtier_status kvtier_offload_ex(kvtier_client* c, const kvtier_key* keys, const uint64_t* offsets,
                                const uint64_t* sizes, const uint32_t* ttl_seconds, size_t n,
                                uint32_t region, const kvtier_transfer_options* options,
                                uint16_t* codes) {
  if (n > kMaxKeysPerCall) return CountTooLarge(n);
  if (c == nullptr) return Refuse(NullArgument("c"), codes, n);
  if (keys == nullptr) return Refuse(NullArgument("keys"), codes, n);
  if (offsets == nullptr) return Refuse(NullArgument("offsets"), codes, n);
  if (sizes == nullptr) return Refuse(NullArgument("sizes"), codes, n);
  (void)Refuse(KVTIER_INTERNAL, codes, n);  // what stays if Guard catches an exception
  return Guard([&]() -> kvtier_status {
    std::vector<StatusCode> out(n, StatusCode::kInternal);
    std::string refusal;
    const Status s = c->client->Offload(Keys(keys, n), region, {offsets, n}, {sizes, n}, out,
                                        Options(options), Ttls(ttl_seconds, n), &refusal);
    CopyCodes(out, codes);
    if (s.ok()) t_last_error = refusal;
    return Record(c, s);
  });
}

kvtier_status kvtier_offload(kvtier_client* c, const kvtier_key* keys, const uint64_t* offsets,
                             const uint64_t* sizes, size_t n, uint32_t region,
                             const kvtier_transfer_options* options, uint16_t* codes) {
  return kvtier_offload_ex(c, keys, offsets, sizes, nullptr, n, region, options, codes);
}

kvtier_status kvtier_onload(kvtier_client* c, const kvtier_key* keys, const uint64_t* offsets,
                            size_t n, uint32_t region, const kvtier_transfer_options* options,
                            kvtier_onload_result* out) {
  if (n > kMaxKeysPerCall) return CountTooLarge(n);
  if (out == nullptr) return NullArgument("out");
  for (size_t i = 0; i < n; ++i) out[i] = kvtier_onload_result{0, KVTIER_INTERNAL, 0};
  if (c == nullptr) return NullArgument("c");
  if (keys == nullptr) return NullArgument("keys");
  if (offsets == nullptr) return NullArgument("offsets");
  return Guard([&]() -> kvtier_status {
    std::vector<kvtier::OnloadInfo> infos(n);
    const Status s =
        c->client->Onload(Keys(keys, n), region, {offsets, n}, infos, Options(options));
    CopyResults(infos, out);
    return Record(c, s);
  });
}

kvtier_status kvtier_start_onload(kvtier_client* c, const kvtier_key* keys,
                                  const uint64_t* offsets, size_t n, uint32_t region,
                                  const kvtier_transfer_options* options) {
  if (c == nullptr) return NullArgument("c");
  if (keys == nullptr) return NullArgument("keys");
  if (offsets == nullptr) return NullArgument("offsets");
  if (n > kMaxKeysPerCall) return CountTooLarge(n);
  return Guard([&]() -> kvtier_status {
    return Record(c, c->client->StartOnload(Keys(keys, n), region, {offsets, n},
                                            Options(options)));
  });
}

kvtier_status kvtier_wait_layer(kvtier_client* c, uint32_t layer) {
  if (c == nullptr) return NullArgument("c");
  return Guard([&]() -> kvtier_status { return Record(c, c->client->WaitLayer(layer)); });
}

kvtier_status kvtier_finish_onload(kvtier_client* c, kvtier_onload_result* out, size_t n) {
  if (c == nullptr) return NullArgument("c");
  if (out == nullptr) return NullArgument("out");
  if (n > kMaxKeysPerCall) return CountTooLarge(n);
  return Guard([&]() -> kvtier_status {
    std::vector<kvtier::OnloadInfo> infos(n);
    const Status s = c->client->FinishOnload(infos);
    if (!s.ok()) {  // also when it failed before reading a reply (no onload was open)
      for (kvtier::OnloadInfo& info : infos) info = kvtier::OnloadInfo{.code = s.code()};
    }
    CopyResults(infos, out);
    return Record(c, s);
  });
}

kvtier_status kvtier_pin_pool_for_cuda(kvtier_client* c) {
  if (c == nullptr) return NullArgument("c");
  return Guard([&]() -> kvtier_status { return Record(c, c->client->PinPoolForCuda()); });
}

void kvtier_copy_to_pool(void* dst, const void* src, size_t bytes) {
  kvtier::CopyToPool(dst, src, bytes);
}
void kvtier_copy_from_pool(void* dst, const void* src, size_t bytes) {
  kvtier::CopyFromPool(dst, src, bytes);
}

}  // extern "C"
