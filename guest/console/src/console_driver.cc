// SPDX-License-Identifier: Apache-2.0
#include "vioport/guest/console_driver.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "vioport/core/console_spec.h"

namespace vioport {
namespace {

using console::kFeatureSize;
using console::kReceiveQueue;
using console::kTransmitQueue;
constexpr uint32_t kQueueSize = 64;

}  // namespace

ConsoleDriver::ConsoleDriver(DriverTransport& transport) : drv_(transport) {}

ConsoleDriver::~ConsoleDriver() {
  // Stop the device before its buffers go back to the allocator.
  if (drv_.num_queues() > 0) drv_.Reset();
  DmaAllocator& dma = drv_.transport().dma();
  if (rx_dma_.host) dma.Free(rx_dma_);
  if (tx_dma_.host) dma.Free(tx_dma_);
}

absl::Status ConsoleDriver::Init(uint64_t ring_features, WaitPolicy wait) {
  wait_ = wait;
  ready_to_use_ = false;
  DriverOptions o;
  o.device_id = static_cast<uint32_t>(DeviceId::kConsole);
  o.wanted_features = ring_features | feature::Bit(kFeatureSize);
  o.num_queues = 2;
  o.queue_size = kQueueSize;
  if (absl::Status s = drv_.Init(o); !s.ok()) return s;
  DmaAllocator& dma = drv_.transport().dma();
  if (!rx_dma_.host) {
    auto b = dma.Allocate(size_t{kRxBuffers} * kRxBufferSize, 64, Access::kWrite);
    if (!b.ok()) return b.status();
    rx_dma_ = *b;
  }
  if (!tx_dma_.host) {
    auto b = dma.Allocate(size_t{kTxSlots} * kTxSlotSize, 64, Access::kRead);
    if (!b.ok()) return b.status();
    tx_dma_ = *b;
  }
  // A device with small queues gets fewer buffers, never a full ring.
  rx_count_ = std::min(kRxBuffers, drv_.queue(kReceiveQueue).size());
  tx_count_ = std::min(kTxSlots, drv_.queue(kTransmitQueue).size());
  tx_free_.clear();
  for (uint32_t i = tx_count_; i > 0; --i) tx_free_.push_back(i - 1);
  // ready_ survives a re-Init: those bytes were delivered before the reset.
  // §5.3.6: receive buffers are posted up front, so host bytes never wait for a Read.
  for (uint32_t i = 0; i < rx_count_; ++i) {
    if (absl::Status s = PostRx(i); !s.ok()) return s;
  }
  drv_.Kick(kReceiveQueue);
  ready_to_use_ = true;
  return absl::OkStatus();
}

absl::Status ConsoleDriver::Fail(WaitResult r, DriverQueue& q, const char* what) {
  switch (r) {
    case WaitResult::kNeedsReset:
      return absl::UnavailableError(absl::StrCat("console: device needs reset (", what, ")"));
    case WaitResult::kBroken: return RingErrorStatus(q.error(), q.index());
    case WaitResult::kTimeout: return absl::DeadlineExceededError(absl::StrCat("console: ", what, " timed out"));
    case WaitResult::kUsed: break;
  }
  return absl::InternalError("console: unexpected wait result");
}

absl::Status ConsoleDriver::PostRx(uint32_t slot) {
  DriverBuffer b{rx_dma_.device_addr + uint64_t{slot} * kRxBufferSize, kRxBufferSize, true};
  switch (drv_.queue(kReceiveQueue).Add({&b, 1}, slot)) {
    case AddStatus::kOk: return absl::OkStatus();
    case AddStatus::kBroken: return RingErrorStatus(drv_.queue(kReceiveQueue).error(), kReceiveQueue);
    default: return absl::InternalError(absl::StrCat("console: posting receive buffer ", slot, " failed"));
  }
}

size_t ConsoleDriver::TakeReady(std::span<uint8_t> out) {
  const size_t n = std::min(out.size(), ready_.size() - ready_head_);
  if (n == 0) return 0;
  std::memcpy(out.data(), ready_.data() + ready_head_, n);
  ready_head_ += n;
  if (ready_head_ == ready_.size()) {
    ready_.clear();
    ready_head_ = 0;
  }
  return n;
}

absl::Status ConsoleDriver::TakeRx(uint64_t token, uint32_t len, std::span<uint8_t> out, size_t* n) {
  // The queue hands back only tokens we gave it, with len <= what we offered.
  if (token >= rx_count_ || len > kRxBufferSize)
    return absl::DataLossError(absl::StrCat("console: receive buffer ", token, " came back with ", len, " bytes"));
  const uint32_t slot = static_cast<uint32_t>(token);
  const uint8_t* src = rx_dma_.host + size_t{slot} * kRxBufferSize;
  const size_t direct = std::min<size_t>(len, out.size() - *n);
  std::memcpy(out.data() + *n, src, direct);
  *n += direct;
  ready_.insert(ready_.end(), src + direct, src + len);
  return PostRx(slot);
}

absl::StatusOr<size_t> ConsoleDriver::Read(std::span<uint8_t> out, absl::Duration timeout) {
  if (!ready_to_use_) return absl::FailedPreconditionError("console: Read before a successful Init");
  if (out.empty()) return absl::InvalidArgumentError("console: Read into an empty buffer");
  size_t n = TakeReady(out);
  DriverQueue& q = drv_.queue(kReceiveQueue);
  bool reposted = false;
  absl::Status err = absl::OkStatus();
  // What the device already delivered, without waiting; stop once `out` is
  // full so at most one buffer's overflow lands in ready_ (the unreaped
  // buffers hold the device back instead).
  while (n < out.size() && err.ok()) {
    uint64_t token;
    uint32_t len;
    const UsedStatus u = q.GetUsed(&token, &len);
    if (u == UsedStatus::kNone) break;
    if (u == UsedStatus::kBroken) {
      err = RingErrorStatus(q.error(), kReceiveQueue);
      break;
    }
    err = TakeRx(token, len, out, &n);
    reposted = true;
  }
  if (n == 0 && err.ok()) {
    // A used buffer with len 0 is legal; keep waiting until a byte or the deadline.
    const absl::Time deadline = absl::Now() + timeout;
    while (n == 0 && err.ok()) {
      const absl::Duration left = std::max(deadline - absl::Now(), absl::ZeroDuration());
      uint64_t token;
      uint32_t len;
      const WaitResult r = WaitUsed(drv_, q, WaitPolicy{std::min(wait_.spin, left), left}, &token, &len);
      if (r != WaitResult::kUsed) {
        err = Fail(r, q, "read");
        break;
      }
      err = TakeRx(token, len, out, &n);
      reposted = true;
    }
  }
  if (reposted) drv_.Kick(kReceiveQueue);
  if (n > 0) return n;  // bytes in hand win over an error; it shows on the next call
  return err;
}

absl::Status ConsoleDriver::ReapTx(uint64_t token) {
  if (token >= tx_count_) return absl::DataLossError(absl::StrCat("console: unknown transmit buffer ", token));
  tx_free_.push_back(static_cast<uint32_t>(token));
  return absl::OkStatus();
}

absl::Status ConsoleDriver::Write(std::span<const uint8_t> data) {
  if (!ready_to_use_) return absl::FailedPreconditionError("console: Write before a successful Init");
  DriverQueue& q = drv_.queue(kTransmitQueue);
  size_t off = 0;
  // Done when every byte is submitted and every buffer is back, including
  // any a previous failed Write left with the device.
  while (off < data.size() || tx_free_.size() < tx_count_) {
    bool added = false;
    while (off < data.size() && !tx_free_.empty()) {
      const uint32_t slot = tx_free_.back();
      const uint32_t n = static_cast<uint32_t>(std::min<size_t>(kTxSlotSize, data.size() - off));
      std::memcpy(tx_dma_.host + size_t{slot} * kTxSlotSize, data.data() + off, n);
      DriverBuffer b{tx_dma_.device_addr + uint64_t{slot} * kTxSlotSize, n, false};
      const AddStatus a = q.Add({&b, 1}, slot);
      if (a == AddStatus::kBroken) return RingErrorStatus(q.error(), kTransmitQueue);
      if (a != AddStatus::kOk) return absl::InternalError(absl::StrCat("console: queueing transmit buffer ", slot));
      tx_free_.pop_back();
      off += n;
      added = true;
    }
    if (added) drv_.Kick(kTransmitQueue);
    uint64_t token;
    uint32_t len;
    bool reaped = false;
    for (;;) {
      const UsedStatus u = q.GetUsed(&token, &len);
      if (u == UsedStatus::kNone) break;
      if (u == UsedStatus::kBroken) return RingErrorStatus(q.error(), kTransmitQueue);
      if (absl::Status s = ReapTx(token); !s.ok()) return s;
      reaped = true;
    }
    if (reaped) continue;
    const WaitResult r = WaitUsed(drv_, q, wait_, &token, &len);
    if (r != WaitResult::kUsed) return Fail(r, q, "write");
    if (absl::Status s = ReapTx(token); !s.ok()) return s;
  }
  return absl::OkStatus();
}

std::pair<uint16_t, uint16_t> ConsoleDriver::size() {
  if (!ready_to_use_ || !drv_.has_feature(kFeatureSize)) return {0, 0};
  struct {
    le16 cols;
    le16 rows;
  } cfg;
  static_assert(sizeof cfg == 4);
  if (!drv_.ReadConfig(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&cfg), sizeof cfg)).ok()) return {0, 0};
  return {cfg.cols, cfg.rows};
}

}  // namespace vioport
