#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "daemon/tier/reference_policies.h"
#include "daemon/tier/trace.h"

namespace kvtier::tier {
namespace {

TraceRequest Parse(const std::string& line) {
  TraceRequest r;
  const Status s = ParseTraceLine(line, &r);
  INFO(s.message());
  REQUIRE(s.ok());
  return r;
}

std::string ParseError(const std::string& line) {
  TraceRequest r;
  const Status s = ParseTraceLine(line, &r);
  REQUIRE_FALSE(s.ok());
  CHECK(s.code() == StatusCode::kInvalidArgument);
  return s.message();
}

std::vector<TraceRequest> Requests(const std::vector<std::vector<uint64_t>>& ids) {
  std::vector<TraceRequest> out;
  for (const auto& r : ids) out.push_back(TraceRequest{0, 0, 0, r});
  return out;
}

TEST_CASE("A Mooncake trace line parses, with unknown keys of any JSON type skipped") {
  const TraceRequest r = Parse(
      R"({"timestamp": 1500, "input_length": 40160, "output_length": 6, "hash_ids": [0, 1, 79]})");
  CHECK(r.timestamp_ms == 1500);
  CHECK(r.input_length == 40160);
  CHECK(r.output_length == 6);
  CHECK(r.hash_ids == std::vector<uint64_t>{0, 1, 79});

  const TraceRequest extra = Parse(
      R"( { "model": "llama \"3\"\\x", "hash_ids":[ 7 ,8 ], "meta": {"a": [1, {"b": null}], )"
      R"("ok": true, "f": -1.5e3}, "timestamp": 12.75 } )");
  CHECK(extra.hash_ids == std::vector<uint64_t>{7, 8});
  CHECK(extra.timestamp_ms == 12);  // fractions of a millisecond are dropped
  CHECK(extra.input_length == 0);   // the lengths are optional
  CHECK(Parse(R"({"timestamp": 0, "hash_ids": []})").hash_ids.empty());
}

TEST_CASE("A malformed trace line is refused with what is wrong") {
  CHECK_THAT(ParseError("[1, 2]"), Catch::Contains("expected a JSON object"));
  CHECK_THAT(ParseError(R"({"timestamp": 1})"), Catch::Contains("no \"hash_ids\""));
  CHECK_THAT(ParseError(R"({"hash_ids": [1]})"), Catch::Contains("no \"timestamp\""));
  CHECK_THAT(ParseError(R"({"timestamp": 1, "hash_ids": [1, -2]})"),
             Catch::Contains("a hash id is negative"));
  CHECK_THAT(ParseError(R"({"timestamp": 1, "hash_ids": [1, 2.5]})"),
             Catch::Contains("a hash id must be a whole number"));
  CHECK_THAT(ParseError(R"({"timestamp": 1, "hash_ids": [1 2]})"),
             Catch::Contains("',' or ']' in \"hash_ids\""));
  CHECK_THAT(ParseError(R"({"timestamp": 1, "hash_ids": [99999999999999999999]})"),
             Catch::Contains("too large"));
  CHECK_THAT(ParseError(R"({"timestamp": "soon", "hash_ids": []})"),
             Catch::Contains("timestamp must be a number"));
  CHECK_THAT(ParseError(R"({"timestamp": 1, "timestamp": 2, "hash_ids": []})"),
             Catch::Contains("\"timestamp\" appears twice"));
  CHECK_THAT(ParseError(R"({"timestamp": 1, "hash_ids": []} x)"),
             Catch::Contains("text after the object"));
  CHECK_THAT(ParseError(R"({"timestamp": 1, "hash_ids": [], "note": "open)"),
             Catch::Contains("unterminated string"));
  CHECK_THAT(ParseError(R"({"timestamp": 1, "hash_ids": [])"), Catch::Contains("column"));
}

TEST_CASE("ReadTrace skips blank lines and names the line of an error") {
  std::istringstream good(
      "{\"timestamp\": 0, \"hash_ids\": [1, 2]}\n\n  \n{\"timestamp\": 5, \"hash_ids\": [1]}\n");
  std::vector<TraceRequest> trace;
  REQUIRE(ReadTrace(good, &trace).ok());
  REQUIRE(trace.size() == 2);
  CHECK(trace[1].timestamp_ms == 5);

  std::istringstream bad("{\"timestamp\": 0, \"hash_ids\": [1]}\n\n{\"timestamp\": 1}\n");
  const Status s = ReadTrace(bad, &trace);
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(s.message(), Catch::StartsWith("line 3: no \"hash_ids\""));
}

TEST_CASE("Usable prefix counts only each request's leading run of hits") {
  // Capacity for everything: the second request hits 1 and 2, misses 9, then hits 3 (a hit,
  // but not usable: an engine cannot skip the block before it).
  const auto c = ReplayLru(Requests({{1, 2, 3}, {1, 2, 9, 3}}), 100);
  CHECK(c.requests == 2);
  CHECK(c.block_requests == 7);
  CHECK(c.unique_blocks == 4);
  CHECK(c.block_hits == 3);
  CHECK(c.usable_prefix_hits == 2);
}

TEST_CASE("MIN keeps what is needed soonest and declines what is never needed again") {
  // One block of space: LRU keeps the last block seen and never hits; MIN keeps block 1
  // (needed again) instead of caching block 2 (never needed again), and hits.
  const auto trace = Requests({{1}, {2}, {1}});
  CHECK(ReplayLru(trace, 1).block_hits == 0);
  const auto min = ReplayMin(trace, 1);
  CHECK(min.block_hits == 1);
  CHECK(min.usable_prefix_hits == 1);
  CHECK(ReplayMin(trace, 0).block_hits == 0);
}

TEST_CASE("A cyclic scan larger than the cache: LRU gets nothing, MIN keeps part of it") {
  // 40 documents of 20 blocks, read three times in the same order (LMCache's long-document
  // QA, tiled): with room for a tenth of them, recency always evicts what comes next.
  std::vector<std::vector<uint64_t>> ids;
  for (int pass = 0; pass < 3; ++pass) {
    for (uint64_t doc = 0; doc < 40; ++doc) {
      std::vector<uint64_t> r;
      for (uint64_t b = 0; b < 20; ++b) r.push_back(doc * 20 + b);
      ids.push_back(r);
    }
  }
  const auto trace = Requests(ids);
  CHECK(UniqueBlocks(trace) == 800);
  CHECK(ReplayLru(trace, 80).usable_prefix_hits == 0);
  const auto min = ReplayMin(trace, 80);
  CHECK(min.usable_prefix_hit_ratio() > 0.05);
  CHECK(ReplayMin(trace, 800).block_hits == 1600);  // everything fits: every reread hits
}

TEST_CASE("MIN never has fewer block hits than LRU, at any capacity") {
  std::mt19937_64 rng(7);
  std::vector<std::vector<uint64_t>> ids;
  for (int i = 0; i < 400; ++i) {  // prefix-chained: ids are (prefix family, depth)
    const uint64_t family = rng() % 30;
    const uint64_t depth = 1 + rng() % 12;
    std::vector<uint64_t> r;
    for (uint64_t d = 0; d < depth; ++d) r.push_back(family * 100 + d);
    ids.push_back(r);
  }
  const auto trace = Requests(ids);
  for (uint64_t capacity : {0ULL, 1ULL, 5ULL, 20ULL, 60ULL, 150ULL, 400ULL}) {
    INFO("capacity " << capacity);
    const auto min = ReplayMin(trace, capacity);
    const auto lru = ReplayLru(trace, capacity);
    CHECK(min.block_hits >= lru.block_hits);
    CHECK(min.block_requests == lru.block_requests);
  }
}

}  // namespace
}  // namespace kvtier::tier
