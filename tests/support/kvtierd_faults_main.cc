// kvtierd-faults: kvtierd (RunKvtierd, the same program) whose spill devices are wrapped in
// SwitchedDevice, a test double steered at run time through the control file named by
// $KVTIER_FAULT_CONTROL (format: tests/support/fault_plan.h); what it did is reported in
// $KVTIER_FAULT_REPORT (default: the control file's name + ".report"). Built in tests/ only,
// for tests/integration/spill_faults_test.cc: never installed, never shipped.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "daemon/daemon_main.h"
#include "tests/support/fault_switch.h"

int main(int argc, char** argv) {
  const char* control = std::getenv("KVTIER_FAULT_CONTROL");
  if (control == nullptr || *control == '\0') {
    std::fputs("kvtierd-faults: set KVTIER_FAULT_CONTROL to the fault control file's path\n",
               stderr);
    return 2;
  }
  const char* report = std::getenv("KVTIER_FAULT_REPORT");
  const std::string report_path =
      report != nullptr && *report != '\0' ? report : std::string(control) + ".report";
  // Outlives RunKvtierd, which destroys every spill device before it returns.
  kvtier::testing::FaultSwitch faults(control, report_path);
  kvtier::DaemonHooks hooks;
  hooks.wrap_spill_device = [&faults](std::unique_ptr<kvtier::BlockDevice> device,
                                      std::string_view tenant) {
    return faults.Wrap(std::move(device), tenant);
  };
  return kvtier::RunKvtierd(argc, argv, hooks);
}
