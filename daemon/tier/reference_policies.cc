#include "daemon/tier/reference_policies.h"

#include <iterator>
#include <list>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace kvtier::tier {
namespace {

constexpr uint64_t kNever = UINT64_MAX;

// Counts one request's lookups: `cached(id)` says whether the block is in the cache before
// the request touches it.
template <typename Cached>
void CountRequest(const TraceRequest& r, Cached cached, ReplayCounts* c) {
  bool prefix = true;
  for (uint64_t id : r.hash_ids) {
    const bool hit = cached(id);
    c->block_hits += hit;
    prefix = prefix && hit;
    c->usable_prefix_hits += prefix;
  }
  c->block_requests += r.hash_ids.size();
  ++c->requests;
}

}  // namespace

uint64_t UniqueBlocks(const std::vector<TraceRequest>& trace) {
  std::unordered_set<uint64_t> ids;
  for (const TraceRequest& r : trace) ids.insert(r.hash_ids.begin(), r.hash_ids.end());
  return ids.size();
}

ReplayCounts ReplayMin(const std::vector<TraceRequest>& trace, uint64_t capacity_blocks) {
  // The position of every access, then each access's next access to the same block.
  std::vector<uint64_t> ids;
  for (const TraceRequest& r : trace) ids.insert(ids.end(), r.hash_ids.begin(), r.hash_ids.end());
  std::vector<uint64_t> next(ids.size(), kNever);
  std::unordered_map<uint64_t, uint64_t> later;
  for (uint64_t i = ids.size(); i-- > 0;) {
    auto [it, fresh] = later.try_emplace(ids[i], i);
    if (!fresh) {
      next[i] = it->second;
      it->second = i;
    }
  }
  ReplayCounts c;
  c.unique_blocks = later.size();
  std::unordered_map<uint64_t, uint64_t> cache;  // id -> its next access
  std::set<std::pair<uint64_t, uint64_t>> by_next;  // (next access, id)
  uint64_t pos = 0;
  for (const TraceRequest& r : trace) {
    CountRequest(r, [&](uint64_t id) { return cache.count(id) != 0; }, &c);
    for (size_t k = 0; k < r.hash_ids.size(); ++k, ++pos) {
      const uint64_t id = ids[pos];
      const uint64_t n = next[pos];
      auto it = cache.find(id);
      if (it != cache.end()) {
        by_next.erase({it->second, id});
        if (n == kNever) {
          cache.erase(it);  // never read again: its space is better used elsewhere
          continue;
        }
        it->second = n;
        by_next.insert({n, id});
        continue;
      }
      if (n == kNever || capacity_blocks == 0) continue;
      if (cache.size() >= capacity_blocks) {
        auto farthest = std::prev(by_next.end());
        if (farthest->first <= n) continue;  // bypass: every cached block is needed sooner
        cache.erase(farthest->second);
        by_next.erase(farthest);
      }
      cache.emplace(id, n);
      by_next.insert({n, id});
    }
  }
  return c;
}

ReplayCounts ReplayLru(const std::vector<TraceRequest>& trace, uint64_t capacity_blocks) {
  ReplayCounts c;
  c.unique_blocks = UniqueBlocks(trace);
  std::list<uint64_t> order;  // most recent first
  std::unordered_map<uint64_t, std::list<uint64_t>::iterator> cache;
  for (const TraceRequest& r : trace) {
    CountRequest(r, [&](uint64_t id) { return cache.count(id) != 0; }, &c);
    for (uint64_t id : r.hash_ids) {
      auto it = cache.find(id);
      if (it != cache.end()) {
        order.splice(order.begin(), order, it->second);
        continue;
      }
      if (capacity_blocks == 0) continue;
      if (cache.size() >= capacity_blocks) {
        cache.erase(order.back());
        order.pop_back();
      }
      order.push_front(id);
      cache.emplace(id, order.begin());
    }
  }
  return c;
}

}  // namespace kvtier::tier
