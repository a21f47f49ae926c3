// FaultPlan and FaultReport: the two small text files through which a test steers the faults of
// kvtierd-faults (tests/support/kvtierd_faults_main.cc) while it runs, and reads back what the
// fault double did. Header-only, shared by that daemon (FaultSwitch, fault_switch.h) and the
// tests, which do not link the daemon's libraries.
//
// Control file ($KVTIER_FAULT_CONTROL), one `key=value` a line, all optional:
//   seq=N            the plan's number, echoed in the report once the plan is in force
//   write_errno=E    every read/write I/O that writes completes with -E (E: EIO, ENOSPC, EROFS,
//   read_errno=E     EDQUOT or a number; 0 or absent: none); reads the same
//   create_errno=E   every new file (BlockDevice::OpenFile with create) fails: ENOSPC as a full
//                    disk's preallocation does (kResourceExhausted), others as their errno
//   delay_ms=N       each I/O completes no sooner than N ms (+ up to jitter_ms) after its Submit;
//   jitter_ms=N      each Sync takes delay_ms too
//   stall=1          completions are held back (the I/O itself may be done) until a plan
//                    without stall; then each is handed back once its delay has passed
// Write it whole and atomically (WriteFaultPlan: a temporary file renamed over it).
//
// Report file ($KVTIER_FAULT_REPORT): the same format, rewritten when a value changes:
//   plan=N  devices=N  submitted=N  completed=N  in_flight=N  held=N  failed_writes=N
//   failed_reads=N  failed_creates=N  and control_error=TEXT while the control file is malformed.
// `held` counts I/Os whose completion is known but not handed back yet (stall or delay).
// Thread-safety: free functions on values.
#pragma once

#include <errno.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>

namespace kvtier::testing {

struct FaultPlan {
  uint64_t seq = 0;
  int write_errno = 0;
  int read_errno = 0;
  int create_errno = 0;
  uint32_t delay_ms = 0;
  uint32_t jitter_ms = 0;
  bool stall = false;
};

struct FaultReport {
  uint64_t plan = 0;
  uint64_t devices = 0;
  uint64_t submitted = 0;
  uint64_t completed = 0;
  uint64_t in_flight = 0;
  uint64_t held = 0;
  uint64_t failed_writes = 0;
  uint64_t failed_reads = 0;
  uint64_t failed_creates = 0;
  std::string control_error;
};

namespace fault_plan_detail {

struct ErrnoName {
  int value;
  const char* name;
};
inline constexpr ErrnoName kErrnoNames[] = {
    {EIO, "EIO"}, {ENOSPC, "ENOSPC"}, {EROFS, "EROFS"}, {EDQUOT, "EDQUOT"}};

inline std::string ErrnoText(int err) {
  for (const ErrnoName& e : kErrnoNames) {
    if (e.value == err) return e.name;
  }
  return std::to_string(err);
}

inline std::optional<uint64_t> Number(const std::string& text) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  return value;
}

inline std::optional<int> Errno(const std::string& text) {
  for (const ErrnoName& e : kErrnoNames) {
    if (text == e.name) return e.value;
  }
  const std::optional<uint64_t> n = Number(text);
  if (!n || *n > 4095) return std::nullopt;
  return static_cast<int>(*n);
}

// key=value lines; false (with `error` set) on a line without '=' or a repeated key.
inline bool Lines(const std::string& text, std::map<std::string, std::string>* out,
                  std::string* error) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const size_t eq = line.find('=');
    if (eq == std::string::npos || eq == 0) {
      *error = "not key=value: '" + line + "'";
      return false;
    }
    if (!out->emplace(line.substr(0, eq), line.substr(eq + 1)).second) {
      *error = "repeated key: '" + line + "'";
      return false;
    }
  }
  return true;
}

}  // namespace fault_plan_detail

inline std::string FormatFaultPlan(const FaultPlan& plan) {
  using fault_plan_detail::ErrnoText;
  return "seq=" + std::to_string(plan.seq) + "\nwrite_errno=" + ErrnoText(plan.write_errno) +
         "\nread_errno=" + ErrnoText(plan.read_errno) +
         "\ncreate_errno=" + ErrnoText(plan.create_errno) +
         "\ndelay_ms=" + std::to_string(plan.delay_ms) +
         "\njitter_ms=" + std::to_string(plan.jitter_ms) + "\nstall=" + (plan.stall ? "1" : "0") +
         "\n";
}

// The plan in `text`, or nullopt with `error` saying what is wrong (an unknown key, a bad value).
inline std::optional<FaultPlan> ParseFaultPlan(const std::string& text, std::string* error) {
  using namespace fault_plan_detail;
  std::map<std::string, std::string> fields;
  if (!Lines(text, &fields, error)) return std::nullopt;
  FaultPlan plan;
  for (const auto& [key, value] : fields) {
    bool ok = true;
    if (key == "write_errno" || key == "read_errno" || key == "create_errno") {
      const std::optional<int> err = Errno(value);
      ok = err.has_value();
      if (ok) {
        (key == "write_errno" ? plan.write_errno
         : key == "read_errno" ? plan.read_errno
                               : plan.create_errno) = *err;
      }
    } else if (key == "seq") {
      const std::optional<uint64_t> n = Number(value);
      ok = n.has_value();
      if (ok) plan.seq = *n;
    } else if (key == "delay_ms" || key == "jitter_ms") {
      const std::optional<uint64_t> n = Number(value);
      ok = n.has_value() && *n <= 600000;
      if (ok) (key == "delay_ms" ? plan.delay_ms : plan.jitter_ms) = static_cast<uint32_t>(*n);
    } else if (key == "stall") {
      ok = value == "0" || value == "1";
      plan.stall = value == "1";
    } else {
      *error = "unknown key '" + key + "'";
      return std::nullopt;
    }
    if (!ok) {
      *error = "bad value for " + key + ": '" + value + "'";
      return std::nullopt;
    }
  }
  return plan;
}

inline std::string FormatFaultReport(const FaultReport& r) {
  std::string text = "plan=" + std::to_string(r.plan) + "\ndevices=" + std::to_string(r.devices) +
                     "\nsubmitted=" + std::to_string(r.submitted) +
                     "\ncompleted=" + std::to_string(r.completed) +
                     "\nin_flight=" + std::to_string(r.in_flight) +
                     "\nheld=" + std::to_string(r.held) +
                     "\nfailed_writes=" + std::to_string(r.failed_writes) +
                     "\nfailed_reads=" + std::to_string(r.failed_reads) +
                     "\nfailed_creates=" + std::to_string(r.failed_creates) + "\n";
  if (!r.control_error.empty()) text += "control_error=" + r.control_error + "\n";
  return text;
}

// nullopt if `text` is not a report (e.g. empty: not written yet).
inline std::optional<FaultReport> ParseFaultReport(const std::string& text) {
  using namespace fault_plan_detail;
  std::map<std::string, std::string> fields;
  std::string error;
  if (!Lines(text, &fields, &error) || fields.count("plan") == 0) return std::nullopt;
  FaultReport r;
  const std::pair<const char*, uint64_t*> numbers[] = {
      {"plan", &r.plan},           {"devices", &r.devices},
      {"submitted", &r.submitted}, {"completed", &r.completed},
      {"in_flight", &r.in_flight}, {"held", &r.held},
      {"failed_writes", &r.failed_writes}, {"failed_reads", &r.failed_reads},
      {"failed_creates", &r.failed_creates}};
  for (const auto& [key, field] : numbers) {
    const auto it = fields.find(key);
    if (it == fields.end()) return std::nullopt;
    const std::optional<uint64_t> n = Number(it->second);
    if (!n) return std::nullopt;
    *field = *n;
  }
  if (const auto it = fields.find("control_error"); it != fields.end()) {
    r.control_error = it->second;
  }
  return r;
}

// Writes `text` to `path` through a temporary file renamed over it, so that a reader never sees
// half of it. False if it could not.
inline bool ReplaceFile(const std::filesystem::path& path, const std::string& text) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) return false;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  return !ec;
}

inline bool WriteFaultPlan(const std::filesystem::path& path, const FaultPlan& plan) {
  return ReplaceFile(path, FormatFaultPlan(plan));
}

}  // namespace kvtier::testing
