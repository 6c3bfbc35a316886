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
constexpr uint64_t kPackedBit = uint64_t{1} << 34;  // VIRTIO_F_RING_PACKED in the header's features

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
  if (Get<uint64_t>(p_) & kPackedBit) return absl::InvalidArgumentError("in-flight log is a packed ring's");
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

// ---- packed ------------------------------------------------------------------

namespace {
// Header fields.
constexpr size_t kPFreeHeadOff = 12, kPOldFreeHeadOff = 14, kPUsedOff = 16, kPOldUsedOff = 18, kPWrapOff = 20,
                 kPOldWrapOff = 21;
// Entry fields.
constexpr size_t kPInflight = 0, kPCompleting = 1, kPNext = 2, kPLast = 4, kPNum = 6, kPCounter = 8, kPId = 16,
                 kPFlags = 18, kPLen = 20, kPAddr = 24;
}  // namespace

PackedInflightLog::PackedInflightLog(uint8_t* region, uint16_t queue_size)
    : p_(region), n_(queue_size), next_(queue_size), len_(queue_size, 0), last_(queue_size, 0) {}

bool PackedInflightLog::fresh() const { return Get<uint16_t>(p_ + kVersionOff) == 0; }

void PackedInflightLog::Link(uint16_t from, uint16_t to) {
  next_[from] = to;
  Put<uint16_t>(entry(from) + kPNext, to);
}

void PackedInflightLog::Initialize(uint16_t used_idx, bool used_wrap) {
  std::memset(p_, 0, RegionBytes(n_));
  Put<uint64_t>(p_, kPackedBit);
  Put<uint16_t>(p_ + kDescNumOff, n_);
  Put<uint16_t>(p_ + kPUsedOff, used_idx);
  Put<uint16_t>(p_ + kPOldUsedOff, used_idx);
  p_[kPWrapOff] = p_[kPOldWrapOff] = used_wrap;
  for (uint16_t i = 0; i < n_; ++i) Link(i, static_cast<uint16_t>(i + 1));
  free_head_ = 0;
  free_count_ = n_;
  std::fill(len_.begin(), len_.end(), 0);
  Order();
  Put<uint16_t>(p_ + kVersionOff, kVersion);
  counter_ = 1;
}

absl::StatusOr<PackedInflightLog::Recovery> PackedInflightLog::Recover(
    absl::FunctionRef<std::optional<bool>(uint16_t slot, bool wrap)> slot_used) {
  // Everything here was written by another process (or the VMM): checked
  // before anything is believed, and nothing written until all of it is.
  const uint16_t version = Get<uint16_t>(p_ + kVersionOff), desc_num = Get<uint16_t>(p_ + kDescNumOff);
  if (!(Get<uint64_t>(p_) & kPackedBit)) return absl::InvalidArgumentError("in-flight log is a split ring's");
  if (version != kVersion) return absl::InvalidArgumentError(absl::StrCat("in-flight log version ", version));
  if (desc_num != n_)
    return absl::InvalidArgumentError(absl::StrCat("in-flight log is for ", desc_num, " descriptors, the ring has ", n_));
  const uint16_t used = Get<uint16_t>(p_ + kPUsedOff), old_used = Get<uint16_t>(p_ + kPOldUsedOff);
  const uint8_t wrap = p_[kPWrapOff], old_wrap = p_[kPOldWrapOff];
  if (used >= n_ || old_used >= n_ || wrap > 1 || old_wrap > 1)
    return absl::InvalidArgumentError(absl::StrCat("in-flight log used position ", used, "/", int{wrap}, " (old ",
                                                   old_used, "/", int{old_wrap}, ") for a ring of ", n_));
  bool marked = false;
  for (uint16_t i = 0; i < n_; ++i) {
    const uint8_t* e = entry(i);
    if (e[kPInflight] > 1 || e[kPCompleting] > 1)
      return absl::InvalidArgumentError(absl::StrCat("in-flight log entry ", i, " is corrupt"));
    marked |= e[kPInflight] && e[kPCompleting];
  }
  // A batch half published? Its heads are marked and used_* is ahead of old_*.
  const bool pending = used != old_used || wrap != old_wrap;
  bool forward = false;
  if (pending && !marked) {
    forward = true;  // the batch's heads were all cleared: only old_* was left to catch up
  } else if (pending) {
    std::optional<bool> seen = slot_used(old_used, old_wrap);
    if (!seen) return absl::InvalidArgumentError(absl::StrCat("ring slot ", old_used, " unreadable"));
    forward = *seen;
  }
  // Chains in flight after that decision, walked through their links.
  std::fill(len_.begin(), len_.end(), 0);
  std::vector<uint8_t> claimed(n_, 0);
  std::vector<std::pair<uint64_t, uint16_t>> live;
  uint32_t slots = 0;
  uint64_t max_counter = 0;
  for (uint16_t h = 0; h < n_; ++h) {
    const uint8_t* e = entry(h);
    if (!e[kPInflight] || (forward && e[kPCompleting])) continue;
    const uint16_t num = Get<uint16_t>(e + kPNum);
    if (num == 0 || num > n_ || slots + num > n_)
      return absl::InvalidArgumentError(absl::StrCat("in-flight log chain at ", h, " of ", num, " descriptors (",
                                                     slots, " already in flight of ", n_, ")"));
    uint16_t i = h;
    for (uint16_t k = 0;; ++k) {
      if (i >= n_ || claimed[i])
        return absl::InvalidArgumentError(absl::StrCat("in-flight log chain at ", h, " links to entry ", i));
      claimed[i] = 1;
      if (k + 1 == num) break;
      i = Get<uint16_t>(entry(i) + kPNext);
    }
    len_[h] = num;
    last_[h] = i;
    slots += num;
    const uint64_t c = Get<uint64_t>(e + kPCounter);
    live.emplace_back(c, h);
    max_counter = std::max(max_counter, c);
  }
  // Settle the batch, each step leaving a state this same code recovers.
  if (forward) {
    for (uint16_t h = 0; h < n_; ++h)
      if (entry(h)[kPCompleting]) entry(h)[kPInflight] = 0;
    Order();
    Put<uint16_t>(p_ + kPOldUsedOff, used);
    p_[kPOldWrapOff] = wrap;
  } else if (pending) {
    Put<uint16_t>(p_ + kPUsedOff, old_used);
    p_[kPWrapOff] = old_wrap;
  }
  Order();
  for (uint16_t h = 0; h < n_; ++h) entry(h)[kPCompleting] = 0;
  // The chains' own links stay; the free list is built again from the rest.
  for (uint16_t h = 0; h < n_; ++h) {
    if (!claimed[h]) continue;
    // next_ of a chain entry: the log's link (checked above), kept for ReadChain.
    next_[h] = Get<uint16_t>(entry(h) + kPNext);
  }
  free_count_ = 0;
  uint16_t prev = n_;
  for (uint16_t i = n_; i-- > 0;) {
    if (claimed[i]) continue;
    Link(i, prev);
    prev = i;
    free_count_++;
  }
  free_head_ = prev;
  Put<uint16_t>(p_ + kPFreeHeadOff, free_head_);
  Put<uint16_t>(p_ + kPOldFreeHeadOff, free_head_);

  Recovery r;
  r.used_idx = forward ? used : old_used;
  r.used_wrap = forward ? wrap : old_wrap;
  uint32_t avail = uint32_t{r.used_idx} + slots;
  r.avail_wrap = r.used_wrap;
  if (avail >= n_) {
    avail -= n_;
    r.avail_wrap = !r.avail_wrap;
  }
  r.next_avail = static_cast<uint16_t>(avail);
  std::sort(live.begin(), live.end());
  for (auto& [c, h] : live) r.resubmit.push_back(h);
  counter_ = max_counter + 1;
  return r;
}

void PackedInflightLog::ReadChain(uint16_t head, std::vector<Desc>* out) const {
  out->clear();
  if (head >= n_) return;
  uint16_t i = head;
  for (uint16_t k = 0; k < len_[head] && i < n_; ++k) {
    const uint8_t* e = entry(i);
    Desc d;
    d.addr = Get<uint64_t>(e + kPAddr);
    d.len = Get<uint32_t>(e + kPLen);
    d.id = Get<uint16_t>(e + kPId);
    d.flags = Get<uint16_t>(e + kPFlags);
    out->push_back(d);
    i = next_[i];
  }
}

int PackedInflightLog::Popped(std::span<const Desc> descs) {
  const size_t k = descs.size();
  if (k == 0 || k > free_count_) return -1;
  const uint16_t head = free_head_;
  uint16_t i = head;
  for (size_t j = 0;; ++j) {
    uint8_t* e = entry(i);
    Put<uint64_t>(e + kPAddr, descs[j].addr);
    Put<uint32_t>(e + kPLen, descs[j].len);
    Put<uint16_t>(e + kPId, descs[j].id);
    Put<uint16_t>(e + kPFlags, descs[j].flags);
    Put<uint16_t>(e + kPNext, next_[i]);  // the chain's link is the free list's
    if (j + 1 == k) break;
    i = next_[i];
  }
  uint8_t* h = entry(head);
  Put<uint16_t>(h + kPNum, static_cast<uint16_t>(k));
  Put<uint16_t>(h + kPLast, i);
  Put<uint64_t>(h + kPCounter, counter_++);
  len_[head] = static_cast<uint16_t>(k);
  last_[head] = i;
  Order();
  h[kPInflight] = 1;
  Order();
  free_head_ = next_[i];
  free_count_ -= static_cast<uint32_t>(k);
  Put<uint16_t>(p_ + kPFreeHeadOff, free_head_);
  return head;
}

void PackedInflightLog::Completing(std::span<const uint16_t> heads, uint16_t used_idx, bool used_wrap) {
  if (heads.empty()) return;
  Put<uint16_t>(p_ + kPOldFreeHeadOff, free_head_);
  for (uint16_t h : heads) entry(h)[kPCompleting] = 1;
  Order();
  Put<uint16_t>(p_ + kPUsedOff, used_idx);
  p_[kPWrapOff] = used_wrap;
  batch_used_ = used_idx;
  batch_wrap_ = used_wrap;
  Order();
  Hook(1);
}

void PackedInflightLog::Completed(std::span<const uint16_t> heads) {
  if (heads.empty()) return;
  Order();
  Hook(2);
  for (uint16_t h : heads) {
    uint8_t* e = entry(h);
    e[kPInflight] = 0;
    e[kPCompleting] = 0;
  }
  Order();
  Hook(3);
  Put<uint16_t>(p_ + kPOldUsedOff, batch_used_);
  p_[kPOldWrapOff] = batch_wrap_;
  for (uint16_t h : heads) {
    Link(last_[h], free_head_);
    free_head_ = h;
    free_count_ += len_[h];
    len_[h] = 0;
  }
  Put<uint16_t>(p_ + kPFreeHeadOff, free_head_);
}

}  // namespace vioport
