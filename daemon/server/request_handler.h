// RequestHandler: executes one decoded request of a session and writes its one reply.
//
// Whole-request checks come first (hello done, keys well-formed, sizes in range), so a bad
// request changes nothing; per-item outcomes (exists, not found, no room) are item statuses.
// Not thread-safe: runs on the Server's event-loop thread.
#pragma once

#include "daemon/server/session.h"
#include "daemon/tenant/tenant_registry.h"
#include "ipc/wire/frame_codec.h"

namespace kvtier {

struct HandlerLimits {
  uint64_t max_block_bytes = 0;
};

class RequestHandler {
 public:
  RequestHandler(TenantRegistry* tenants, HandlerLimits limits)
      : tenants_(tenants), limits_(limits) {}

  struct Outcome {
    bool close_session = false;  // after sending the reply
    int pass_fd = -1;            // send with the reply (hello: the tenant's pool memfd)
  };
  // `reply` has been begun with the request's op and id; Handle sets status and items.
  Outcome Handle(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);

 private:
  Outcome Hello(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  Status CheckKeys(const wire::FrameView& request, size_t stride) const;
  BlockKey KeyAt(const Session& session, const wire::FrameView& request, size_t i,
                 size_t stride) const;
  void Reserve(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  void PerKey(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  void MatchPrefix(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  void Acquire(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  void Release(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  void Stats(Session& session, wire::FrameWriter& reply);

  TenantRegistry* tenants_;
  HandlerLimits limits_;
};

}  // namespace kvtier
