// SPDX-License-Identifier: Apache-2.0
#include "vioport/guest/rng_driver.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace vioport {
namespace {

// §5.4.6: the device writes at least one byte. A device that keeps answering
// with none would otherwise keep Read spinning forever.
constexpr uint32_t kMaxEmptyAnswers = 64;

}  // namespace

RngDriver::RngDriver(DriverTransport& transport) : drv_(transport) {}

RngDriver::~RngDriver() {
  // Stop the device before the bounce buffer goes back to the allocator.
  if (drv_.num_queues() > 0) drv_.Reset();
  if (bounce_.host) drv_.transport().dma().Free(bounce_);
}

absl::Status RngDriver::Init(uint64_t ring_features, WaitPolicy wait) {
  wait_ = wait;
  ready_ = false;
  in_flight_ = 0;  // a reset drops whatever the device had
  DriverOptions o;
  o.device_id = static_cast<uint32_t>(DeviceId::kEntropy);
  o.wanted_features = ring_features;
  o.num_queues = 1;
  o.queue_size = 64;
  if (absl::Status s = drv_.Init(o); !s.ok()) return s;
  if (!bounce_.host) {
    auto b = drv_.transport().dma().Allocate(kBounceBytes, 64, Access::kWrite);
    if (!b.ok()) return b.status();
    bounce_ = *b;
  }
  ready_ = true;
  return absl::OkStatus();
}

absl::Status RngDriver::WaitOne(uint64_t* token, uint32_t* len) {
  DriverQueue& q = drv_.queue(0);
  switch (WaitUsed(drv_, q, wait_, token, len)) {
    case WaitResult::kUsed: return absl::OkStatus();
    case WaitResult::kNeedsReset: return absl::UnavailableError("rng: device needs reset");
    case WaitResult::kBroken: return RingErrorStatus(q.error(), 0);
    case WaitResult::kTimeout:
      return absl::DeadlineExceededError(
          absl::StrCat("rng: no answer from the device in ", absl::FormatDuration(wait_.timeout)));
  }
  return absl::InternalError("rng: unexpected wait result");
}

absl::Status RngDriver::Read(std::span<uint8_t> out, size_t chunk) {
  if (!ready_) return absl::FailedPreconditionError("rng: Read before a successful Init");
  if (chunk == 0) return absl::InvalidArgumentError("rng: chunk of 0 bytes");
  DriverQueue& q = drv_.queue(0);
  uint64_t token;
  uint32_t len;
  while (in_flight_ > 0) {
    if (absl::Status s = WaitOne(&token, &len); !s.ok()) return s;
    --in_flight_;
  }

  chunk = std::min(chunk, bounce_.size);
  const uint32_t slots = static_cast<uint32_t>(
      std::min<size_t>({kMaxInFlight, bounce_.size / chunk, size_t{q.size()}}));
  std::vector<uint32_t> asked(slots, 0);  // per slot: bytes requested, 0 = free
  std::vector<uint32_t> free_slots;
  for (uint32_t i = slots; i > 0; --i) free_slots.push_back(i - 1);
  size_t done = 0, outstanding = 0;  // invariant: done + outstanding <= out.size()
  uint32_t empty_answers = 0;
  while (done < out.size()) {
    bool added = false;
    while (!free_slots.empty() && done + outstanding < out.size()) {
      const uint32_t slot = free_slots.back();
      const uint32_t want = static_cast<uint32_t>(std::min(chunk, out.size() - done - outstanding));
      DriverBuffer b{bounce_.device_addr + uint64_t{slot} * chunk, want, true};
      const AddStatus a = q.Add({&b, 1}, slot);
      if (a == AddStatus::kBroken) return RingErrorStatus(q.error(), 0);
      if (a != AddStatus::kOk) return absl::InternalError(absl::StrCat("rng: queueing request ", slot, " failed"));
      free_slots.pop_back();
      asked[slot] = want;
      outstanding += want;
      ++in_flight_;
      added = true;
    }
    if (added) drv_.Kick(0);
    UsedStatus u = q.GetUsed(&token, &len);
    if (u == UsedStatus::kBroken) return RingErrorStatus(q.error(), 0);
    if (u == UsedStatus::kNone) {
      if (absl::Status s = WaitOne(&token, &len); !s.ok()) return s;
    }
    --in_flight_;
    // The queue returns only tokens it was given, with len <= what was offered.
    if (token >= slots || asked[token] == 0 || len > asked[token])
      return absl::DataLossError(absl::StrCat("rng: device returned request ", token, " with ", len, " bytes"));
    const uint32_t slot = static_cast<uint32_t>(token);
    // §5.4.6.1: only the bytes the device says it wrote are entropy.
    std::memcpy(out.data() + done, bounce_.host + size_t{slot} * chunk, len);
    done += len;
    outstanding -= asked[slot];
    asked[slot] = 0;
    free_slots.push_back(slot);
    empty_answers = len == 0 ? empty_answers + 1 : 0;
    if (empty_answers >= kMaxEmptyAnswers)
      return absl::DataLossError(absl::StrCat("rng: device answered ", kMaxEmptyAnswers,
                                              " requests in a row with no bytes"));
  }
  return absl::OkStatus();
}

}  // namespace vioport
