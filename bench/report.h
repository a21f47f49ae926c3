// The benchmark's output: one table row per figure beside its limit, and the same rows as JSON
// lines (--json). Shared by every section of kvtier-bench.
#pragma once

#include <string>
#include <vector>

namespace kvtier::bench {

struct Row {
  std::string metric;
  double value = 0;
  std::string unit;
  std::string limit_metric;
  double limit = 0;
  double ratio = 0;
  std::string target;  // "" for figures shown for information
  bool pass = false;
};

// "%.*f", or "-" for NaN / infinity.
std::string Fixed(double v, int digits);
// The value as the table shows it for `unit` ("keys/s" in millions).
std::string Human(double v, const std::string& unit);

void PrintTable(const std::vector<Row>& rows);
// One JSON object per line; Fail()s if the file cannot be written.
void WriteJson(const std::string& path, const std::vector<Row>& rows);

}  // namespace kvtier::bench
