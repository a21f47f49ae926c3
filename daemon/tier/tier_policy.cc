#include "daemon/tier/tier_policy.h"

namespace kvtier {

std::unique_ptr<SsdAdmission> MakeSsdAdmission(TierPolicy policy) {
  switch (policy) {
    case TierPolicy::kLru: return nullptr;
    case TierPolicy::kReuse: return std::make_unique<ReuseAdmission>();
  }
  return nullptr;
}

}  // namespace kvtier
