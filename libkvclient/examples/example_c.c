/* The C ABI: store one block and read it back. kvclient_example_c [SOCKET] */
#include <stdio.h>
#include <string.h>

#include "kvclient/c_api.h"

int main(int argc, char** argv) {
  const char* socket_path = argc > 1 ? argv[1] : ".run/kvtierd.sock";
  char error[256];
  kvtier_client* c = NULL;
  kvtier_status s = kvtier_connect(socket_path, "example-c/blk1", &c, error, sizeof(error));
  if (s != KVTIER_OK) {
    fprintf(stderr, "connect: %s: %s\n", kvtier_status_name(s), error);
    return 1;
  }
  kvtier_key key = {0};
  key.len = 5;
  memcpy(key.bytes, "hello", 5);
  uint64_t size = 4096, offset = 0;
  uint16_t code = 0;
  s = kvtier_reserve(c, &key, &size, 1, &offset, &code);
  if (s == KVTIER_OK && code == KVTIER_OK) {
    memset((char*)kvtier_pool_base(c) + offset, 'x', size);
    s = kvtier_commit(c, &key, 1, &code);
  }
  /* The call's status says whether it was carried out; each key's outcome is in its code. */
  kvtier_lease lease = {0};
  if (s == KVTIER_OK && code == KVTIER_OK) s = kvtier_acquire(c, &key, 1, &lease);
  if (s != KVTIER_OK || code != KVTIER_OK || lease.code != KVTIER_OK) {
    fprintf(stderr, "failed: %s\n",
            s != KVTIER_OK ? kvtier_error()
                           : kvtier_status_name((kvtier_status)(code != KVTIER_OK ? code : lease.code)));
    kvtier_close(c);
    return 1;
  }
  const char first = ((const char*)kvtier_pool_base(c))[lease.offset];
  if (kvtier_verify_leases(c) != KVTIER_OK) { /* read, then check, then use */
    fprintf(stderr, "the lease was revoked (tenant purged?): %s\n", kvtier_error());
    kvtier_close(c);
    return 1;
  }
  printf("read back %llu bytes, first '%c'\n", (unsigned long long)lease.size, first);
  kvtier_release(c, &lease.lease_id, 1, NULL);
  kvtier_close(c);
  return 0;
}
