// RequestHandler: executes one decoded request of a session and writes its one reply.
//
// Whole-request checks come first (hello done, keys well-formed, sizes in range), so a bad
// request changes nothing; per-item outcomes (exists, not found, no room) are item statuses.
// Not thread-safe: runs on the Server's event-loop thread.
#pragma once

#include <optional>

#include "daemon/server/session.h"
#include "daemon/transfer/copy_engine.h"
#include "daemon/tenant/tenant_registry.h"
#include "daemon/tier/tier_coordinator.h"
#include "ipc/wire/frame_codec.h"

namespace kvtier {

struct HandlerLimits {
  uint64_t max_block_bytes = 0;
  uint64_t spill_max_block_bytes = 0;  // for tenants with an SSD tier
};


class RequestHandler {
 public:
  // `estimator` prices match_prefix_estimate; it must outlive the handler.
  RequestHandler(TenantRegistry* tenants, HandlerLimits limits, const LoadEstimator* estimator)
      : tenants_(tenants), limits_(limits), estimator_(estimator) {}

  struct Outcome {
    bool close_session = false;  // after sending the reply
    int pass_fd = -1;            // send with the reply (hello: the tenant's pool memfd)
    bool park = false;           // the request waits for the SSD tier: keep it and `reply`,
                                 // and call Continue after spill results (ParkedRequest)
    // Offload and onload: the copy to run (the caller sets its id and posts it). The request
    // stays parked until the copy's result, then FinishCopy completes the reply.
    std::optional<CopyJob> copy;
    CopyHold hold;
  };
  // `reply` has been begun with the request's op and id; Handle sets status and items.
  // `passed_fd`: a file descriptor that came with the request (register_region's memfd).
  Outcome Handle(Session& session, const wire::FrameView& request, wire::FrameWriter& reply,
                 UniqueFd passed_fd = UniqueFd());
  // Continues a parked request: park again, a copy to run, or else the reply is complete.
  Outcome Continue(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  // A copy has ended with `status`: gives back what `hold` held in the session (an offload's
  // blocks are committed if the copy succeeded, else aborted) and, if `reply` is not null,
  // completes the reply (item statuses, or the copy's error).
  void FinishCopy(Session& session, const CopyHold& hold, const Status& status,
                  wire::FrameWriter* reply, const wire::FrameView* request);

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
  void RegisterRegion(Session& session, const wire::FrameView& request, wire::FrameWriter& reply,
                      UniqueFd passed_fd);
  void DeregisterRegion(Session& session, const wire::FrameView& request,
                        wire::FrameWriter& reply);
  // Offload and onload, before their reserve or acquire phase: the regions, the progress word
  // and (offload) every item's range.
  Status CheckTransfer(Session& session, const wire::FrameView& request) const;
  // After that phase: the copy of every item that got a slot or a lease.
  Outcome StartCopy(Session& session, const wire::FrameView& request, wire::FrameWriter& reply);
  // Where a phase writes its per-item results: the reply, or ItemProgress::scratch.
  std::byte* ResultsBase(Session& session, wire::FrameWriter& reply) const;

  TenantRegistry* tenants_;
  HandlerLimits limits_;
  const LoadEstimator* estimator_;
};

}  // namespace kvtier
