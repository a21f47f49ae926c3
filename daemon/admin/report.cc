#include "daemon/admin/report.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

namespace kvtier {
namespace {

std::string Render(const ReportValue& value, bool json) {
  if (const auto* n = std::get_if<uint64_t>(&value)) return std::to_string(*n);
  if (const auto* b = std::get_if<bool>(&value)) return *b ? "true" : "false";
  if (const auto* d = std::get_if<double>(&value)) {
    char text[32];
    std::snprintf(text, sizeof(text), "%.6g", *d);
    return text;
  }
  const auto& s = std::get<std::string>(value);
  return json ? JsonQuote(s) : s;
}

}  // namespace

std::string JsonQuote(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", u);
      out += escaped;
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

std::string Report::Text() const {
  std::string out;
  size_t width = 0;
  for (const auto& [name, value] : fields_)
    width = std::max(width, name.size());
  for (const auto& [name, value] : fields_) {
    out += name;
    out.append(width + 2 - name.size(), ' ');
    out += Render(value, false);
    out += '\n';
  }
  for (const Table& table : tables_) {
    if (!out.empty()) out += '\n';
    // cells[0] is the header line.
    std::vector<std::vector<std::string>> cells(1, table.columns);
    for (const auto& row : table.rows) {
      cells.emplace_back();
      for (const ReportValue& value : row)
        cells.back().push_back(Render(value, false));
    }
    if (table.transpose_text) {
      std::vector<std::vector<std::string>> t(table.columns.size());
      for (size_t c = 0; c < t.size(); ++c) {
        for (const auto& row : cells)
          t[c].push_back(row[c]);
      }
      cells = std::move(t);
    }
    std::vector<size_t> widths(cells[0].size(), 0);
    for (const auto& row : cells) {
      for (size_t i = 0; i < row.size(); ++i)
        widths[i] = std::max(widths[i], row[i].size());
    }
    auto line = [&](const std::vector<std::string>& values) {
      for (size_t i = 0; i < values.size(); ++i) {
        // Text left-aligned in the first column, numbers right-aligned elsewhere.
        const size_t pad = widths[i] - values[i].size();
        if (i == 0) {
          out += values[i];
          if (values.size() > 1) out.append(pad + 2, ' ');
        } else {
          out.append(pad, ' ');
          out += values[i];
          if (i + 1 < values.size()) out += "  ";
        }
      }
      out += '\n';
    };
    for (const auto& row : cells)
      line(row);
  }
  return out;
}

std::string Report::Json() const {
  std::string out = "{";
  bool first = true;
  auto key = [&](const std::string& name) {
    if (!first) out += ", ";
    first = false;
    out += JsonQuote(name);
    out += ": ";
  };
  for (const auto& [name, value] : fields_) {
    key(name);
    out += Render(value, true);
  }
  for (const Table& table : tables_) {
    key(table.name);
    out += '[';
    for (size_t r = 0; r < table.rows.size(); ++r) {
      if (r > 0) out += ", ";
      out += '{';
      for (size_t i = 0; i < table.columns.size(); ++i) {
        if (i > 0) out += ", ";
        out += JsonQuote(table.columns[i]);
        out += ": ";
        out += Render(table.rows[r][i], true);
      }
      out += '}';
    }
    out += ']';
  }
  out += "}\n";
  return out;
}

}  // namespace kvtier
