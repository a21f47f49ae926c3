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

// The tenant's counters, as the stats op and the admin commands report them.
wire::StatsReply StatsOf(const Tenant& tenant);

class RequestHandler {
 public:
  RequestHandler(TenantRegistry* tenants, HandlerLimits limits)
      : tenants_(tenants), limits_(limits) {}

  struct Outcome {
    bool close_session = false;  // after sending the reply
    int pass_fd = -1;            // send with the reply (hello: the tenant's pool memfd)
    bool park = false;           // the request waits for the SSD tier: keep it and `reply`,
                                 // and call Continue after spill results (ParkedRequest)
  };
  // `reply` has been begun with the request's op and id; Handle sets status and items.
  Outcome Handle(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  // Continues a parked request; true when its reply is complete (then send it).
  bool Continue(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);

 private:
  Outcome Hello(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  Status CheckKeys(const wire::FrameView& request, size_t stride) const;
  BlockKey KeyAt(const Session& session, const wire::FrameView& request, size_t i,
                 size_t stride) const;
  // Reserve, Acquire and Prefetch handle items from session.progress().next on and return
  // false when an item must wait for the SSD tier.
  bool Reserve(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  void PerKey(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  void MatchPrefix(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  bool Acquire(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  // Settles items whose promotion ended; true when none waits.
  bool SettlePromotions(Session& session, wire::Op op, wire::FrameWriter& reply);
  void Release(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  void Stats(Session& session, wire::FrameWriter& reply);

  TenantRegistry* tenants_;
  HandlerLimits limits_;
};

}  // namespace kvtier
