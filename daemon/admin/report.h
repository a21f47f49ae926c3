// Report: what an admin command answers, built once and rendered either for people (aligned
// tables, `kvtierctl CMD`) or for scripts (one JSON object, `kvtierctl --json CMD`), so the two
// can never disagree. A report is a list of named fields followed by named tables; a table is
// rows of values under fixed columns.
// JSON: {"field": value, ..., "table": [{"column": value, ...}, ...]}. Numbers stay numbers;
// strings are escaped per RFC 8259.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace kvtier {

using ReportValue = std::variant<uint64_t, double, bool, std::string>;

class Report {
 public:
  struct Table {
    std::string name;
    std::vector<std::string> columns;
    std::vector<std::vector<ReportValue>> rows;  // each as long as `columns`
    // Text only: one line per column and one column per row (for few rows of many values).
    bool transpose_text = false;
  };

  void Field(std::string name, ReportValue value) {
    fields_.emplace_back(std::move(name), std::move(value));
  }
  Table& AddTable(std::string name, std::vector<std::string> columns) {
    tables_.push_back(Table{std::move(name), std::move(columns), {}});
    return tables_.back();
  }

  std::string Text() const;
  std::string Json() const;

 private:
  std::vector<std::pair<std::string, ReportValue>> fields_;
  std::vector<Table> tables_;
};

// `text` as a JSON string literal, quotes included.
std::string JsonQuote(std::string_view text);

}  // namespace kvtier
