#include "bench/report.h"

#include <cmath>
#include <cstdio>

#include "bench/bench_util.h"

namespace kvtier::bench {
namespace {

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

}  // namespace

std::string Fixed(double v, int digits) {
  if (!std::isfinite(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string Human(double v, const std::string& unit) {
  if (!std::isfinite(v)) return "-";
  if (unit == "keys/s") return Fixed(v / 1e6, 2) + "M";
  if (unit == "GB/s") return Fixed(v, 2);
  if (unit == "us") return Fixed(v, 1);
  return Fixed(v, 1);
}

void PrintTable(const std::vector<Row>& rows) {
  std::printf("\n%-34s %10s %-7s  %-44s %10s %6s  %-12s %s\n", "figure", "value", "unit",
              "limit (same run)", "limit", "ratio", "target", "result");
  for (const Row& r : rows) {
    std::printf("%-34s %10s %-7s  %-44s %10s %6s  %-12s %s\n", r.metric.c_str(),
                Human(r.value, r.unit).c_str(), r.unit.c_str(), r.limit_metric.empty() ? "-" : r.limit_metric.c_str(),
                Human(r.limit, r.unit).c_str(), Fixed(r.ratio, 3).c_str(),
                r.target.empty() ? "-" : r.target.c_str(),
                r.target.empty() ? "info" : (r.pass ? "PASS" : "MISS"));
  }
}

void WriteJson(const std::string& path, const std::vector<Row>& rows) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) Fail("cannot write " + path);
  for (const Row& r : rows) {
    std::fprintf(f,
                 "{\"metric\": %s, \"value\": %s, \"unit\": %s, \"limit_metric\": %s, "
                 "\"limit\": %s, \"ratio\": %s, \"target\": %s, \"result\": %s}\n",
                 JsonString(r.metric).c_str(), JsonNumber(r.value).c_str(),
                 JsonString(r.unit).c_str(), JsonString(r.limit_metric).c_str(),
                 JsonNumber(r.limit).c_str(), JsonNumber(r.ratio).c_str(),
                 JsonString(r.target).c_str(),
                 JsonString(r.target.empty() ? "info" : (r.pass ? "PASS" : "MISS")).c_str());
  }
  if (std::fclose(f) != 0) Fail("cannot write " + path);
}

}  // namespace kvtier::bench
