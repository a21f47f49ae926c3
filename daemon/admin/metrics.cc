#include "daemon/admin/metrics.h"

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <limits>

namespace kvtier {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

constexpr std::array<const char*, wire::kMaxOp + 1> kOpNames = {
    "",        "hello",   "reserve", "commit", "abort",   "match_prefix",
    "acquire", "release", "remove",  "stats",  "prefetch", "register_region",
    "deregister_region", "offload", "onload", "reuse_soon", "done_with",
    "match_prefix_estimate"};

class Builder {
 public:
  // Starts a family; Add() appends samples to it.
  void Family(std::string name, std::string help, MetricType type) {
    families_.push_back(MetricFamily{std::move(name), std::move(help), type, {}});
  }
  void Add(std::vector<ClientMetric::Label> labels, double value) {
    ClientMetric m;
    m.label = std::move(labels);
    if (families_.back().type == MetricType::Counter) {
      m.counter.value = value;
    } else {
      m.gauge.value = value;
    }
    families_.back().metric.push_back(std::move(m));
  }
  // One sample per tenant of `value(tenant)`, plus `extra` labels.
  template <typename F>
  void PerTenant(const MetricsSnapshot& s,
                 F&& value,
                 const std::vector<ClientMetric::Label>& extra = {}) {
    for (const TenantMetrics& t : s.tenants) {
      std::vector<ClientMetric::Label> labels = {{"tenant", t.name}};
      labels.insert(labels.end(), extra.begin(), extra.end());
      Add(std::move(labels), static_cast<double>(value(t)));
    }
  }
  std::vector<MetricFamily>& families() { return families_; }

 private:
  std::vector<MetricFamily> families_;
};

void AddTierMetrics(const MetricsSnapshot& s, Builder& b) {
  b.Family("kvtier_hits_total", "Keys found by acquire and match_prefix, by the tier they were in",
           MetricType::Counter);
  b.PerTenant(s, [](const TenantMetrics& t) { return t.dram_hits; }, {{"tier", "dram"}});
  b.PerTenant(s, [](const TenantMetrics& t) { return t.ssd_hits; }, {{"tier", "ssd"}});
  b.Family("kvtier_misses_total", "Keys looked up by acquire and match_prefix and not found",
           MetricType::Counter);
  b.PerTenant(s, [](const TenantMetrics& t) { return t.stats.misses; });
  b.Family("kvtier_bytes", "Bytes held, by tier (dram: slot bytes in use; ssd: block payloads)",
           MetricType::Gauge);
  b.PerTenant(s, [](const TenantMetrics& t) { return t.stats.used_bytes; }, {{"tier", "dram"}});
  b.PerTenant(s, [](const TenantMetrics& t) { return t.stats.ssd_payload_bytes; },
              {{"tier", "ssd"}});
  b.Family("kvtier_quota_bytes", "Each tenant's limit, by tier", MetricType::Gauge);
  b.PerTenant(s, [](const TenantMetrics& t) { return t.stats.pool_bytes; }, {{"tier", "dram"}});
  b.PerTenant(s, [](const TenantMetrics& t) { return t.stats.ssd_quota_bytes; }, {{"tier", "ssd"}});
  b.Family("kvtier_blocks", "Committed blocks, by tier (ssd: on SSD only)", MetricType::Gauge);
  b.PerTenant(
      s, [](const TenantMetrics& t) { return t.stats.committed_blocks - t.stats.ssd_only_blocks; },
      {{"tier", "dram"}});
  b.PerTenant(s, [](const TenantMetrics& t) { return t.stats.ssd_only_blocks; }, {{"tier", "ssd"}});
  b.Family("kvtier_dirty_bytes", "DRAM held by blocks not yet written to SSD", MetricType::Gauge);
  b.PerTenant(s, [](const TenantMetrics& t) { return t.stats.dirty_bytes; });
}

void AddEventMetrics(const MetricsSnapshot& s, Builder& b) {
  struct Counter {
    const char* name;
    const char* help;
    uint64_t wire::StatsReply::*field;
  };
  static constexpr Counter kCounters[] = {
      {"kvtier_evictions_total", "Committed blocks dropped from DRAM to make room",
       &wire::StatsReply::evictions},
      {"kvtier_expirations_total", "Blocks dropped because their TTL ran out",
       &wire::StatsReply::expirations},
      {"kvtier_demotions_total", "Blocks written to the SSD tier", &wire::StatsReply::demotions},
      {"kvtier_promotions_total", "Blocks read back from the SSD tier into DRAM",
       &wire::StatsReply::promotions},
      {"kvtier_demote_failures_total", "SSD writes that failed (disk full, I/O error)",
       &wire::StatsReply::demote_failures},
      {"kvtier_promote_failures_total", "SSD reads that failed or did not verify",
       &wire::StatsReply::promote_failures},
      {"kvtier_integrity_failures_total",
       "SSD records that failed authentication (tampered or torn); served as misses",
       &wire::StatsReply::integrity_failures},
      {"kvtier_ssd_dropped_total", "SSD records dropped when their segment was reclaimed",
       &wire::StatsReply::ssd_dropped},
  };
  for (const Counter& c : kCounters) {
    b.Family(c.name, c.help, MetricType::Counter);
    b.PerTenant(s, [&](const TenantMetrics& t) { return t.stats.*c.field; });
  }
  b.Family("kvtier_ssd_scrub_failures_total",
           "Failed attempts to zero a removed SSD record's header on disk (each is retried; "
           "until one lands a restart may serve the record)",
           MetricType::Counter);
  b.PerTenant(s, [](const TenantMetrics& t) { return t.scrub_failures; });
  b.Family("kvtier_ssd_erase_failures_total",
           "Segments removed without their wrapped key destroyed on disk (the write failed)",
           MetricType::Counter);
  b.PerTenant(s, [](const TenantMetrics& t) { return t.erase_failures; });
  b.Family("kvtier_sessions", "Connected client sessions", MetricType::Gauge);
  b.PerTenant(s, [](const TenantMetrics& t) { return t.stats.sessions; });
  b.Family("kvtier_ssd_segments", "Spill segment files held", MetricType::Gauge);
  b.PerTenant(s, [](const TenantMetrics& t) { return t.stats.ssd_segments; });
  b.Family("kvtier_spill_in_flight",
           "Spill I/Os queued or running on the tenant's SSD queue, by direction",
           MetricType::Gauge);
  b.PerTenant(s, [](const TenantMetrics& t) { return t.demotions_in_flight; },
              {{"direction", "write"}});
  b.PerTenant(s, [](const TenantMetrics& t) { return t.promotions_in_flight; },
              {{"direction", "read"}});
  b.Family("kvtier_spill_queue_depth", "io_uring entries per tenant (spill.queue_depth)",
           MetricType::Gauge);
  b.Add({}, s.spill_queue_depth);
  b.Family("kvtier_connections", "Open client connections, before hello included",
           MetricType::Gauge);
  b.Add({}, static_cast<double>(s.sessions));
  b.Family("kvtier_uptime_seconds", "Seconds since kvtierd started", MetricType::Gauge);
  b.Add({}, static_cast<double>(s.uptime_seconds));
}

void AddLatency(const MetricsSnapshot& s, Builder& b) {
  b.Family("kvtier_request_duration_seconds",
           "Client requests from arrival to reply (time waiting for the SSD tier included)",
           MetricType::Histogram);
  for (size_t op = 1; op < s.latency.size(); ++op) {
    const LatencyHistogram& h = s.latency[op];
    ClientMetric m;
    m.label = {{"op", kOpNames[op]}};
    for (size_t i = 0; i <= LatencyHistogram::kBoundsUs.size(); ++i) {
      const double bound = i < LatencyHistogram::kBoundsUs.size()
                               ? static_cast<double>(LatencyHistogram::kBoundsUs[i]) / 1e6
                               : std::numeric_limits<double>::infinity();
      m.histogram.bucket.push_back({h.Cumulative(i), bound});
    }
    m.histogram.sample_count = h.Cumulative(LatencyHistogram::kBoundsUs.size());
    m.histogram.sample_sum = static_cast<double>(h.sum_us()) / 1e6;
    b.families().back().metric.push_back(std::move(m));
  }
}

}  // namespace

std::string RenderMetrics(const MetricsSnapshot& snapshot) {
  Builder builder;
  AddTierMetrics(snapshot, builder);
  AddEventMetrics(snapshot, builder);
  AddLatency(snapshot, builder);
  return prometheus::TextSerializer().Serialize(builder.families());
}

}  // namespace kvtier
