/* libkvclient C ABI: for engines written in C, Python (ctypes/cffi), Rust and others.
 *
 * Same semantics as kvclient/client.h, one round trip per call for up to 4096 keys (longer
 * arrays are split). Every function returns a kvtier_status (0 = KVTIER_OK).
 *
 * Errors: kvtier_error() is the message of the calling thread's last call: "" after a call
 * that succeeded, the reason after one that failed (kvtier_connect included), and, after a
 * reserve or offload that succeeded with RESOURCE_EXHAUSTED items, why the first was refused.
 * Valid until that thread's next call.
 *
 * One rule for every batch call: the returned status says whether the call was carried out;
 * what happened to each key is only in its per-key result (`codes`, kvtier_lease.code,
 * kvtier_onload_result.code). A call carried out returns KVTIER_OK even if every key was
 * refused. A failed call never leaves a per-key result of KVTIER_OK for a key it did not carry
 * out: those keys get the call's status, and a failed reserve or acquire holds nothing.
 * `codes` arrays are as long as `keys` (optional where the pointer may be NULL).
 *
 * Leases: read (or copy) a leased block, then call kvtier_verify_leases before using the
 * bytes (after an asynchronous copy has finished, not when it is queued). kvtierd ends a session before it reuses or wipes what it leased (a purge of the
 * tenant, a drain, a shutdown); after that the bytes read may be wrong (zeroed) and must be
 * treated as a miss.
 *
 * Arrays must not be NULL (except where noted) and n must be at most 2^24; violations return
 * KVTIER_INVALID_ARGUMENT. No C++ exception ever escapes these functions.
 * Thread-safety: calls on one kvtier_client may come from several threads (they are
 * serialized on its one connection).
 * Lifetime: every lease taken by kvtier_acquire must be given back with kvtier_release, and
 * every reservation committed or aborted; kvtier_close (or the process exiting) releases all.
 *
 * Restarts: once kvtierd goes away every call fails at once with KVTIER_UNAVAILABLE. With
 * kvtier_client_options.reconnect, the next call opens a new session first and then runs
 * (kvtier_reconnects counts them). What the lost session held is void: its lease ids are
 * refused per key (FAILED_PRECONDITION, nothing sent; release them still, so the client forgets
 * them), its region ids per call, and kvtier_verify_leases fails while any of its lease ids is
 * unreleased. Sessions have generations (0, then one more per reconnect): tag what a call
 * returned with kvtier_call_generation() right after it, read leased bytes at
 * kvtier_pool_base_of(c, generation) + offset (NULL once that session is gone), check them with
 * kvtier_verify_session, and end reservations with kvtier_commit_in_session or
 * kvtier_abort_in_session: reservations are named by key, so a plain commit or abort after a
 * reconnect would act on a reservation of the same key made in the new session.
 */
#ifndef KVCLIENT_C_API_H_
#define KVCLIENT_C_API_H_

#include <stddef.h>
#include <stdint.h>

#include "kvclient/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Values are the wire's status codes (kvclient/status.h) and never change. */
typedef enum kvtier_status {
  KVTIER_OK = 0,
  KVTIER_INVALID_ARGUMENT = 1,
  KVTIER_NOT_FOUND = 2,
  KVTIER_ALREADY_EXISTS = 3,
  KVTIER_RESOURCE_EXHAUSTED = 4,
  KVTIER_PERMISSION_DENIED = 5,
  KVTIER_UNAVAILABLE = 6,
  KVTIER_VERSION_MISMATCH = 7,
  KVTIER_PROTOCOL_ERROR = 8,
  KVTIER_FAILED_PRECONDITION = 9,
  KVTIER_DATA_LOSS = 10,
  KVTIER_INTERNAL = 11,
  KVTIER_IO_ERROR = 12,
  KVTIER_TIMED_OUT = 13
} kvtier_status;

typedef enum kvtier_tier { KVTIER_TIER_NONE = 0, KVTIER_TIER_GPU = 1, KVTIER_TIER_DRAM = 2,
                           KVTIER_TIER_SSD = 3 } kvtier_tier;

typedef struct kvtier_client kvtier_client;

typedef struct kvtier_key {
  uint8_t len;          /* 1..32 */
  uint8_t bytes[32];    /* bytes past len are ignored */
} kvtier_key;

typedef struct kvtier_lease {
  uint64_t lease_id;    /* pass to kvtier_release */
  uint64_t offset;      /* the block is at kvtier_pool_base(c) + offset */
  uint64_t size;
  uint16_t code;        /* kvtier_status of this key: OK or NOT_FOUND */
  uint8_t tier;         /* kvtier_tier */
} kvtier_lease;

typedef struct kvtier_stats {
  uint64_t pool_bytes, used_bytes, slab_bytes_in_use, committed_blocks, reserved_blocks,
      leased_blocks, index_capacity, index_bytes, hits, misses, evictions, sessions;
  /* SSD tier (0 without one); see docs/protocol.md, "9 stats". */
  uint64_t ssd_quota_bytes, ssd_blocks, ssd_only_blocks, ssd_payload_bytes, dirty_bytes,
      demotions, promotions, demote_failures, promote_failures, integrity_failures, ssd_dropped,
      ssd_segments;
  uint64_t expirations; /* blocks dropped because their TTL ran out */
} kvtier_stats;

/* What loading a matched prefix would cost (kvtier_match_prefix_estimate). */
typedef struct kvtier_prefix_estimate {
  uint32_t valid;       /* 0: this kvtierd does not estimate (the rest is 0) */
  uint32_t dram_blocks; /* of the matched prefix: in DRAM */
  uint32_t ssd_blocks;  /* on SSD only */
  uint32_t reserved;
  uint64_t dram_bytes, ssd_bytes;
  uint64_t load_us;      /* until the whole prefix is in this process's memory */
  uint64_t ssd_queue_us; /* of which: behind SSD work already queued */
  uint32_t dram_mb_per_s, ssd_mb_per_s; /* the rates assumed */
} kvtier_prefix_estimate;

/* Connects to the daemon at socket_path (NULL: /run/kvtier/kvtierd.sock) for namespace
 * name_space. On failure *out is NULL and, if error is not NULL, a message is written there. */
KVCLIENT_EXPORT kvtier_status kvtier_connect(const char* socket_path, const char* name_space,
                                             kvtier_client** out, char* error,
                                             size_t error_bytes);
typedef struct kvtier_connect_options {
  int32_t timeout_ms;  /* per round trip (0: 30000); KVTIER_TIMED_OUT after it */
  uint32_t spin_us;    /* poll for a reply this long before sleeping (0: no spinning) */
} kvtier_connect_options;
/* kvtier_connect with options (NULL: the defaults, 30000 ms and 50 us); the message of a
 * failure is kvtier_error(). */
KVCLIENT_EXPORT kvtier_status kvtier_connect_ex(const char* socket_path, const char* name_space,
                                                const kvtier_connect_options* options,
                                                kvtier_client** out);
/* Options versioned by size: start from KVTIER_CLIENT_OPTIONS_INIT, which sets struct_size to
 * the size of this struct as your header has it. A newer libkvclient takes the fields past
 * struct_size as their defaults; an older one refuses (INVALID_ARGUMENT) non-zero fields it
 * does not know. Fields are only ever appended. */
typedef struct kvtier_client_options {
  uint32_t struct_size; /* sizeof(kvtier_client_options) */
  int32_t timeout_ms;   /* per round trip (0: 30000); KVTIER_TIMED_OUT after it */
  uint32_t spin_us;     /* poll for a reply this long before sleeping (0: no spinning) */
  uint32_t reconnect;   /* 1: after the connection is lost, the next call opens a new session
                           (if kvtierd is still down it fails at once with UNAVAILABLE, and the
                           call after tries again); 0: every call fails with UNAVAILABLE */
} kvtier_client_options;
#define KVTIER_CLIENT_OPTIONS_INIT { sizeof(kvtier_client_options), 30000, 50, 0 }
/* kvtier_connect_ex with kvtier_client_options (NULL: the defaults). */
KVCLIENT_EXPORT kvtier_status kvtier_connect_with(const char* socket_path,
                                                  const char* name_space,
                                                  const kvtier_client_options* options,
                                                  kvtier_client** out);
KVCLIENT_EXPORT void kvtier_close(kvtier_client* client);
/* The calling thread's last message (see "Errors" above). */
KVCLIENT_EXPORT const char* kvtier_error(void);
/* The same as kvtier_error(); `client` is not used and may be NULL (kept for old callers). */
KVCLIENT_EXPORT const char* kvtier_last_error(const kvtier_client* client);
KVCLIENT_EXPORT const char* kvtier_status_name(kvtier_status status);
/* This library's version (e.g. "0.4.0": the project's) and the wire protocol version it speaks. */
KVCLIENT_EXPORT const char* kvtier_version(void);
KVCLIENT_EXPORT uint32_t kvtier_protocol_version(void);

/* The current session's pool (after a reconnect: the new one). */
KVCLIENT_EXPORT void* kvtier_pool_base(const kvtier_client* client);
KVCLIENT_EXPORT uint64_t kvtier_pool_size(const kvtier_client* client);
/* --- Reconnecting (kvtier_client_options.reconnect; see "Restarts" above) --- */
/* How many new sessions the client opened after losing one: the current generation. */
KVCLIENT_EXPORT uint64_t kvtier_reconnects(const kvtier_client* client);
/* The generation of the session the calling thread's last call on `client` ran in. */
KVCLIENT_EXPORT uint64_t kvtier_call_generation(const kvtier_client* client);
/* The pool base of session `generation` while it is the current one, else NULL. An earlier
 * session's range stays reserved (zero pages, not its pool) until kvtier_close, so a pointer
 * taken before a reconnect never dangles. */
KVCLIENT_EXPORT void* kvtier_pool_base_of(const kvtier_client* client, uint64_t generation);
/* kvtier_verify_leases for the leases of session `generation` only: OK while it is the current
 * session and kvtierd has not ended it. */
KVCLIENT_EXPORT kvtier_status kvtier_verify_session(const kvtier_client* client,
                                                    uint64_t generation);
/* Largest block reserve and offload accept; largest block the tenant's SSD tier stores (0: it
 * has none; larger blocks live in DRAM only and are gone once evicted). */
KVCLIENT_EXPORT uint64_t kvtier_max_block_bytes(const kvtier_client* client);
KVCLIENT_EXPORT uint64_t kvtier_spill_max_block_bytes(const kvtier_client* client);

/* offsets[i] is valid where codes[i] == KVTIER_OK: write the block at pool base + offset. */
KVCLIENT_EXPORT kvtier_status kvtier_reserve(kvtier_client* client, const kvtier_key* keys,
                                             const uint64_t* sizes, size_t n, uint64_t* offsets,
                                             uint16_t* codes);
/* kvtier_reserve with a TTL per key (ttl_seconds may be NULL): seconds from commit until the
 * block expires; 0: the tenant's default_ttl_seconds; capped by its max_ttl_seconds. */
KVCLIENT_EXPORT kvtier_status kvtier_reserve_ex(kvtier_client* client, const kvtier_key* keys,
                                                const uint64_t* sizes,
                                                const uint32_t* ttl_seconds, size_t n,
                                                uint64_t* offsets, uint16_t* codes);
KVCLIENT_EXPORT kvtier_status kvtier_commit(kvtier_client* client, const kvtier_key* keys,
                                            size_t n, uint16_t* codes);
KVCLIENT_EXPORT kvtier_status kvtier_abort(kvtier_client* client, const kvtier_key* keys,
                                           size_t n, uint16_t* codes);
/* kvtier_commit and kvtier_abort carried out only if session `generation` (that of the
 * reserve) is still the current one; else FAILED_PRECONDITION and nothing is sent. */
KVCLIENT_EXPORT kvtier_status kvtier_commit_in_session(kvtier_client* client, uint64_t generation,
                                                       const kvtier_key* keys, size_t n,
                                                       uint16_t* codes);
KVCLIENT_EXPORT kvtier_status kvtier_abort_in_session(kvtier_client* client, uint64_t generation,
                                                      const kvtier_key* keys, size_t n,
                                                      uint16_t* codes);
/* *matched: how many leading keys are present; tiers (may be NULL) gets each one's tier. */
KVCLIENT_EXPORT kvtier_status kvtier_match_prefix(kvtier_client* client, const kvtier_key* keys,
                                                  size_t n, size_t* matched, uint8_t* tiers);
/* kvtier_match_prefix, and *estimate gets what loading the matched prefix would cost. */
KVCLIENT_EXPORT kvtier_status kvtier_match_prefix_estimate(kvtier_client* client,
                                                           const kvtier_key* keys, size_t n,
                                                           size_t* matched, uint8_t* tiers,
                                                           kvtier_prefix_estimate* estimate);
KVCLIENT_EXPORT kvtier_status kvtier_acquire(kvtier_client* client, const kvtier_key* keys,
                                             size_t n, kvtier_lease* out);
/* codes: OK, NOT_FOUND (no live lease), FAILED_PRECONDITION (a lease of an earlier session:
 * forgotten, nothing sent). Never reconnects. */
KVCLIENT_EXPORT kvtier_status kvtier_release(kvtier_client* client, const uint64_t* lease_ids,
                                             size_t n, uint16_t* codes);
/* KVTIER_OK if every lease this client holds was still held while it read: call after reading
 * or copying leased bytes, before using them. KVTIER_FAILED_PRECONDITION: kvtierd ended the
 * session (purge, drain, shutdown, error) and the bytes read may be wrong: treat as a miss.
 * After a reconnect also while any lease id of an earlier session is unreleased.
 * One poll(2), no round trip. */
KVCLIENT_EXPORT kvtier_status kvtier_verify_leases(const kvtier_client* client);
KVCLIENT_EXPORT kvtier_status kvtier_remove(kvtier_client* client, const kvtier_key* keys,
                                            size_t n, uint16_t* codes);
/* Brings SSD blocks into DRAM before an acquire; returns when each is in DRAM (OK) or known
 * missing (NOT_FOUND). */
KVCLIENT_EXPORT kvtier_status kvtier_prefetch(kvtier_client* client, const kvtier_key* keys,
                                              size_t n, uint16_t* codes);
/* Hints to the tenant's tier policy: these keys will be read again soon (keep them; worth an
 * SSD write), or the request that used them is done with them (let them go first). codes: OK
 * per stored key, NOT_FOUND otherwise. KVTIER_FAILED_PRECONDITION (nothing sent) from a
 * kvtierd without hints: kvtier_has_hints says which. */
KVCLIENT_EXPORT kvtier_status kvtier_reuse_soon(kvtier_client* client, const kvtier_key* keys,
                                                size_t n, uint16_t* codes);
KVCLIENT_EXPORT kvtier_status kvtier_done_with(kvtier_client* client, const kvtier_key* keys,
                                               size_t n, uint16_t* codes);
/* 1 if the daemon takes hints, else 0. */
KVCLIENT_EXPORT int kvtier_has_hints(const kvtier_client* client);
KVCLIENT_EXPORT kvtier_status kvtier_stats_get(kvtier_client* client, kvtier_stats* out);

/* --- Daemon-driven copies (kvclient/client.h "Daemon-driven copies", docs/protocol.md
 * "Regions"): kvtierd copies blocks between its pool and a registered region itself. --- */
#define KVTIER_NO_EVENT UINT32_MAX
typedef struct kvtier_transfer_options {
  uint32_t layers;           /* keys form this many equal groups, in order; 0 means 1 */
  uint32_t progress_region;  /* host region of the progress word; 0: none */
  uint64_t progress_offset;  /* 4-byte aligned: set to i + 1 when layer i has landed */
  uint32_t wait_event;       /* offload from CUDA: region event to wait for; KVTIER_NO_EVENT */
  uint32_t signal_event;     /* onload to CUDA: layer i records signal_event + i; KVTIER_NO_EVENT */
} kvtier_transfer_options;   /* NULL options: 1 layer, no progress word, no events */
typedef struct kvtier_onload_result {
  uint64_t size;  /* the block's size (also for INVALID_ARGUMENT: it does not fit there) */
  uint16_t code;  /* OK, NOT_FOUND (a miss), INVALID_ARGUMENT (does not fit the region) */
  uint8_t tier;   /* kvtier_tier it was found in */
} kvtier_onload_result;
/* Creates host memory kvtierd accepts as a region: a sealed, fully allocated memfd of `bytes`,
 * mapped read-write at *data. Free it with kvtier_host_memory_free (after deregistering it). */
KVCLIENT_EXPORT kvtier_status kvtier_host_memory_create(uint64_t bytes, int* memfd, void** data);
KVCLIENT_EXPORT void kvtier_host_memory_free(int memfd, void* data, uint64_t bytes);
/* Host memory: a memfd sealed with F_SEAL_SHRINK, fully allocated, at least `bytes` long;
 * `local` (may be NULL) is the caller's mapping of it, needed to wait on progress words. */
KVCLIENT_EXPORT kvtier_status kvtier_register_host_region(kvtier_client* client, int memfd,
                                                          uint64_t bytes, void* local,
                                                          uint32_t* region);
/* CUDA memory: a 64-byte cudaIpcMemHandle_t, and `events` 64-byte cudaIpcEventHandle_t. */
KVCLIENT_EXPORT kvtier_status kvtier_register_cuda_region(kvtier_client* client, int device,
                                                          const void* ipc_handle, uint64_t bytes,
                                                          const void* event_handles,
                                                          size_t events, uint32_t* region);
KVCLIENT_EXPORT kvtier_status kvtier_deregister_region(kvtier_client* client, uint32_t region);
/* Stores sizes[i] bytes at offsets[i] of the region as keys[i] (committed on return). */
KVCLIENT_EXPORT kvtier_status kvtier_offload(kvtier_client* client, const kvtier_key* keys,
                                             const uint64_t* offsets, const uint64_t* sizes,
                                             size_t n, uint32_t region,
                                             const kvtier_transfer_options* options,
                                             uint16_t* codes);
/* kvtier_offload with a TTL per key (ttl_seconds may be NULL), as kvtier_reserve_ex. */
KVCLIENT_EXPORT kvtier_status kvtier_offload_ex(kvtier_client* client, const kvtier_key* keys,
                                                const uint64_t* offsets, const uint64_t* sizes,
                                                const uint32_t* ttl_seconds, size_t n,
                                                uint32_t region,
                                                const kvtier_transfer_options* options,
                                                uint16_t* codes);
/* Copies each found block to offsets[i] of the region; `out` gets a result per key. */
KVCLIENT_EXPORT kvtier_status kvtier_onload(kvtier_client* client, const kvtier_key* keys,
                                            const uint64_t* offsets, size_t n, uint32_t region,
                                            const kvtier_transfer_options* options,
                                            kvtier_onload_result* out);
/* The same onload in steps (at most 4096 keys): start, wait for each layer, finish. No other
 * call on this client until kvtier_finish_onload. */
KVCLIENT_EXPORT kvtier_status kvtier_start_onload(kvtier_client* client, const kvtier_key* keys,
                                                  const uint64_t* offsets, size_t n,
                                                  uint32_t region,
                                                  const kvtier_transfer_options* options);
KVCLIENT_EXPORT kvtier_status kvtier_wait_layer(kvtier_client* client, uint32_t layer);
KVCLIENT_EXPORT kvtier_status kvtier_finish_onload(kvtier_client* client,
                                                   kvtier_onload_result* out, size_t n);
/* Page-locks this client's mapping of the pool for CUDA (UNAVAILABLE without CUDA). */
KVCLIENT_EXPORT kvtier_status kvtier_pin_pool_for_cuda(kvtier_client* client);

/* Streaming-store copy helpers (kvclient/copy.h): use for blocks of 16 KiB and more. */
KVCLIENT_EXPORT void kvtier_copy_to_pool(void* dst, const void* src, size_t bytes);
KVCLIENT_EXPORT void kvtier_copy_from_pool(void* dst, const void* src, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif /* KVCLIENT_C_API_H_ */
