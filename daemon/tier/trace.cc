#include "daemon/tier/trace.h"

#include <cmath>
#include <string>

#include "ipc/base/check.h"

namespace kvtier::tier {
namespace {

// A cursor over one line of JSON with just what the trace format needs: objects, arrays,
// numbers, and skipping any other value (strings with escapes, literals, nested containers).
class Cursor {
 public:
  explicit Cursor(std::string_view s) : s_(s) {}

  void SkipSpace() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
  }
  bool AtEnd() {
    SkipSpace();
    return i_ == s_.size();
  }
  bool Eat(char c) {
    SkipSpace();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  Status Expect(char c, std::string_view what) {
    if (Eat(c)) return Status::Ok();
    return Error("expected " + std::string(what));
  }
  Status Error(std::string what) const {
    return Status(StatusCode::kInvalidArgument,
                  what + " at column " + std::to_string(i_ + 1));
  }

  Status String(std::string* out) {
    if (!Eat('"')) return Error("expected a string");
    out->clear();
    while (i_ < s_.size()) {
      const char c = s_[i_++];
      if (c == '"') return Status::Ok();
      if (c == '\\') {
        if (i_ >= s_.size()) break;
        const char e = s_[i_++];
        if (e == 'u') {  // kept as written: keys of the format are plain ASCII
          if (i_ + 4 > s_.size()) break;
          out->append("\\u").append(s_.substr(i_, 4));
          i_ += 4;
          continue;
        }
        out->push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e);
        continue;
      }
      if (static_cast<unsigned char>(c) < 0x20) return Error("control character in a string");
      out->push_back(c);
    }
    return Error("unterminated string");
  }

  // A JSON number that must be a non-negative integer (fractions are allowed only if
  // `fraction_ok`, then rounded down: timestamps in ms may carry them).
  Status Unsigned(std::string_view what, bool fraction_ok, uint64_t* out) {
    SkipSpace();
    const size_t start = i_;
    if (i_ < s_.size() && s_[i_] == '-') return Error(std::string(what) + " is negative");
    uint64_t v = 0;
    bool digits = false;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
      const uint64_t d = static_cast<uint64_t>(s_[i_] - '0');
      if (v > (UINT64_MAX - d) / 10) return Error(std::string(what) + " is too large");
      v = v * 10 + d;
      digits = true;
      ++i_;
    }
    if (!digits) {
      i_ = start;
      return Error(std::string(what) + " must be a number");
    }
    if (i_ < s_.size() && (s_[i_] == '.' || s_[i_] == 'e' || s_[i_] == 'E')) {
      if (!fraction_ok) return Error(std::string(what) + " must be a whole number");
      std::string text(s_.substr(start));
      size_t used = 0;
      double d = 0;
      try {
        d = std::stod(text, &used);
      } catch (const std::exception&) {
        return Error(std::string(what) + " is not a number");
      }
      if (!std::isfinite(d) || d < 0 || d >= 1.8e19) {
        return Error(std::string(what) + " is out of range");
      }
      i_ = start + used;
      v = static_cast<uint64_t>(d);
    }
    *out = v;
    return Status::Ok();
  }

  Status SkipValue(int depth = 0) {
    if (depth > 64) return Error("nesting too deep");
    SkipSpace();
    if (i_ >= s_.size()) return Error("expected a value");
    const char c = s_[i_];
    if (c == '"') {
      std::string ignored;
      return String(&ignored);
    }
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++i_;
      if (Eat(close)) return Status::Ok();
      do {
        if (c == '{') {
          std::string key;
          KVT_RETURN_IF_ERROR(String(&key));
          KVT_RETURN_IF_ERROR(Expect(':', "':'"));
        }
        KVT_RETURN_IF_ERROR(SkipValue(depth + 1));
      } while (Eat(','));
      return Expect(close, close == '}' ? "'}'" : "']'");
    }
    for (std::string_view literal : {"true", "false", "null"}) {
      if (s_.substr(i_, literal.size()) == literal) {
        i_ += literal.size();
        return Status::Ok();
      }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      ++i_;
      while (i_ < s_.size() && (std::string_view("0123456789.eE+-").find(s_[i_]) !=
                                std::string_view::npos)) {
        ++i_;
      }
      return Status::Ok();
    }
    return Error("expected a value");
  }

 private:
  std::string_view s_;
  size_t i_ = 0;
};

}  // namespace

Status ParseTraceLine(std::string_view line, TraceRequest* out) {
  *out = TraceRequest{};
  Cursor c(line);
  KVT_RETURN_IF_ERROR(c.Expect('{', "a JSON object"));
  bool have_timestamp = false, have_ids = false, have_in = false, have_out = false;
  if (!c.Eat('}')) {
    do {
      std::string key;
      KVT_RETURN_IF_ERROR(c.String(&key));
      KVT_RETURN_IF_ERROR(c.Expect(':', "':' after \"" + key + "\""));
      auto once = [&](bool* seen) -> Status {
        if (*seen) return c.Error("\"" + key + "\" appears twice");
        *seen = true;
        return Status::Ok();
      };
      if (key == "timestamp") {
        KVT_RETURN_IF_ERROR(once(&have_timestamp));
        KVT_RETURN_IF_ERROR(c.Unsigned("timestamp", true, &out->timestamp_ms));
      } else if (key == "input_length") {
        KVT_RETURN_IF_ERROR(once(&have_in));
        KVT_RETURN_IF_ERROR(c.Unsigned("input_length", false, &out->input_length));
      } else if (key == "output_length") {
        KVT_RETURN_IF_ERROR(once(&have_out));
        KVT_RETURN_IF_ERROR(c.Unsigned("output_length", false, &out->output_length));
      } else if (key == "hash_ids") {
        KVT_RETURN_IF_ERROR(once(&have_ids));
        KVT_RETURN_IF_ERROR(c.Expect('[', "an array for \"hash_ids\""));
        if (!c.Eat(']')) {
          do {
            uint64_t id = 0;
            KVT_RETURN_IF_ERROR(c.Unsigned("a hash id", false, &id));
            out->hash_ids.push_back(id);
          } while (c.Eat(','));
          KVT_RETURN_IF_ERROR(c.Expect(']', "',' or ']' in \"hash_ids\""));
        }
      } else {
        KVT_RETURN_IF_ERROR(c.SkipValue());
      }
    } while (c.Eat(','));
    KVT_RETURN_IF_ERROR(c.Expect('}', "',' or '}'"));
  }
  if (!c.AtEnd()) return c.Error("text after the object");
  if (!have_timestamp) return Status(StatusCode::kInvalidArgument, "no \"timestamp\"");
  if (!have_ids) return Status(StatusCode::kInvalidArgument, "no \"hash_ids\"");
  return Status::Ok();
}

Status ReadTrace(std::istream& in, std::vector<TraceRequest>* out) {
  out->clear();
  std::string line;
  for (uint64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    TraceRequest r;
    const Status s = ParseTraceLine(line, &r);
    if (!s.ok()) {
      return Status(StatusCode::kInvalidArgument, "line " + std::to_string(n) + ": " +
                                                      s.message());
    }
    out->push_back(std::move(r));
  }
  if (in.bad()) return Status(StatusCode::kIoError, "reading the trace failed");
  return Status::Ok();
}

}  // namespace kvtier::tier
