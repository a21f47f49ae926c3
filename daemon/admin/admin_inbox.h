// AdminInbox: admin commands on their way from the admin thread (AdminServer) to the event
// loop, which owns all tenant state and so runs every command. Push from any thread; the loop
// watches event_fd() and Takes. Each request carries its `done` callback, which the loop calls
// exactly once (from any thread it is safe: AdminServer posts the reply to its own thread).
// Close() answers everything queued with "kvtierd is stopping" and every later Push at once.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "ipc/base/mutex.h"
#include "ipc/base/unique_fd.h"
#include "ipc/socket/seqpacket.h"
#include "kvclient/status.h"

namespace kvtier {

struct AdminRequest {
  PeerCredentials peer;           // of the admin socket's peer; zeros for the HTTP listener
  std::vector<std::string> args;  // the command and its arguments
  bool json = false;              // render the report as JSON
};

struct AdminReply {
  Status status;
  std::string body;  // the rendered report, or Prometheus text for "metrics"
};

using AdminDone = std::function<void(AdminReply)>;

class AdminInbox {
 public:
  AdminInbox() : event_fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

  bool valid() const { return event_fd_.valid(); }
  int event_fd() const { return event_fd_.get(); }

  void Push(AdminRequest request, AdminDone done) {
    {
      MutexLock lock(mu_);
      if (!closed_) {
        queue_.emplace_back(std::move(request), std::move(done));
        const uint64_t one = 1;
        (void)!write(event_fd_.get(), &one, sizeof(one));
        return;
      }
    }
    done(AdminReply{Status(StatusCode::kUnavailable, "kvtierd is stopping"), {}});
  }

  std::vector<std::pair<AdminRequest, AdminDone>> Take() {
    uint64_t count = 0;
    (void)!read(event_fd_.get(), &count, sizeof(count));
    MutexLock lock(mu_);
    return std::exchange(queue_, {});
  }

  void Close() {
    std::vector<std::pair<AdminRequest, AdminDone>> left;
    {
      MutexLock lock(mu_);
      closed_ = true;
      left = std::exchange(queue_, {});
    }
    for (auto& [request, done] : left) {
      done(AdminReply{Status(StatusCode::kUnavailable, "kvtierd is stopping"), {}});
    }
  }

 private:
  UniqueFd event_fd_;
  Mutex mu_;
  std::vector<std::pair<AdminRequest, AdminDone>> queue_ KVT_GUARDED_BY(mu_);
  bool closed_ KVT_GUARDED_BY(mu_) = false;
};

}  // namespace kvtier
