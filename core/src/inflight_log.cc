// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/inflight_log.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace vioport {
namespace {

// Header fields.
constexpr size_t kVersionOff = 8, kDescNumOff = 10, kLastBatchOff = 12, kUsedIdxOff = 14;
// Entry fields.
constexpr size_t kInflightOff = 0, kNextOff = 6, kCounterOff = 8;
constexpr uint16_t kVersion = 1;

template <typename T>
T Get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
void Put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}
// The log only has to be right at the instant the process dies: program
// order of stores is what matters, so a compiler barrier between steps suffices
// (stores a CPU has executed reach the shared page even if the process is killed).
inline void Order() { std::atomic_signal_fence(std::memory_order_seq_cst); }

}  // namespace

bool SplitInflightLog::fresh() const { return Get<uint16_t>(p_ + kVersionOff) == 0; }

void SplitInflightLog::Initialize(uint16_t used_idx) {
  std::memset(p_, 0, RegionBytes(n_));
  Put<uint16_t>(p_ + kDescNumOff, n_);
  Put<uint16_t>(p_ + kUsedIdxOff, used_idx);
  Order();
  Put<uint16_t>(p_ + kVersionOff, kVersion);
  counter_ = 1;
}

absl::StatusOr<SplitInflightLog::Recovery> SplitInflightLog::Recover(uint16_t ring_used_idx) {
  const uint16_t version = Get<uint16_t>(p_ + kVersionOff), desc_num = Get<uint16_t>(p_ + kDescNumOff);
  if (version != kVersion) return absl::InvalidArgumentError(absl::StrCat("in-flight log version ", version));
  if (desc_num != n_)
    return absl::InvalidArgumentError(absl::StrCat("in-flight log is for ", desc_num, " descriptors, the ring has ", n_));
  const uint16_t log_used = Get<uint16_t>(p_ + kUsedIdxOff);
  if (log_used != ring_used_idx) {
    // Died between the used index store and clearing the batch's entries:
    // that batch is complete. Walk it through the `next` links.
    const uint16_t done = static_cast<uint16_t>(ring_used_idx - log_used);
    if (done > n_)
      return absl::InvalidArgumentError(
          absl::StrCat("in-flight log used index ", log_used, " is ", done, " behind the ring's ", ring_used_idx));
    uint16_t h = Get<uint16_t>(p_ + kLastBatchOff);
    for (uint16_t i = 0; i < done && h < n_; ++i) {
      entry(h)[kInflightOff] = 0;
      h = Get<uint16_t>(entry(h) + kNextOff);
    }
    Order();
    Put<uint16_t>(p_ + kUsedIdxOff, ring_used_idx);
  }
  std::vector<std::pair<uint64_t, uint16_t>> live;
  uint64_t max_counter = 0;
  for (uint16_t i = 0; i < n_; ++i) {
    const uint8_t* e = entry(i);
    if (e[kInflightOff] > 1) return absl::InvalidArgumentError(absl::StrCat("in-flight log entry ", i, " is corrupt"));
    if (e[kInflightOff] == 1) {
      const uint64_t c = Get<uint64_t>(e + kCounterOff);
      live.emplace_back(c, i);
      max_counter = std::max(max_counter, c);
    }
  }
  std::sort(live.begin(), live.end());
  Recovery r;
  r.next_avail = static_cast<uint16_t>(ring_used_idx + live.size());
  r.resubmit.reserve(live.size());
  for (auto& [c, h] : live) r.resubmit.push_back(h);
  counter_ = max_counter + 1;
  return r;
}

void SplitInflightLog::Popped(uint16_t head) {
  uint8_t* e = entry(head);
  Put<uint64_t>(e + kCounterOff, counter_++);
  Order();
  e[kInflightOff] = 1;
}

void SplitInflightLog::Completing(std::span<const uint16_t> heads) {
  if (heads.empty()) return;
  for (size_t i = 0; i + 1 < heads.size(); ++i) Put<uint16_t>(entry(heads[i]) + kNextOff, heads[i + 1]);
  Put<uint16_t>(p_ + kLastBatchOff, heads[0]);
  Order();
}

void SplitInflightLog::Completed(std::span<const uint16_t> heads, uint16_t used_idx) {
  Order();
  for (uint16_t h : heads) entry(h)[kInflightOff] = 0;
  Order();
  Put<uint16_t>(p_ + kUsedIdxOff, used_idx);
}

}  // namespace vioport
