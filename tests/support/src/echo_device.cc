// SPDX-License-Identifier: Apache-2.0
#include "vioport/testing/echo_device.h"

#include <cstring>

#include "absl/strings/str_format.h"

namespace vioport::testing {

void EchoDevice::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  std::memcpy(out.data(), config_ + offset, out.size());
}

void EchoDevice::WriteConfig(uint32_t offset, std::span<const uint8_t> in) {
  if (offset >= 4) std::memcpy(config_ + offset, in.data(), std::min<size_t>(in.size(), kConfigSize - offset));
}

absl::Status EchoDevice::CheckFeatures(uint64_t acked) {
  if (acked & opts_.refuse_features)
    return absl::InvalidArgumentError(absl::StrFormat("echo refuses 0x%x", acked & opts_.refuse_features));
  return absl::OkStatus();
}

absl::Status EchoDevice::Activate(ActivateContext ctx) {
  absl::MutexLock l(&mu_);
  ctx_ = std::move(ctx);
  active_ = true;
  activations_++;
  return absl::OkStatus();
}

ActivateContext EchoDevice::Reset() {
  absl::MutexLock l(&mu_);
  held_.clear();  // in-flight requests are dropped: the driver gets them back from DetachUnused
  active_ = false;
  return std::move(ctx_);
}

void EchoDevice::Process(DeviceQueue& q, DescriptorChain&& chain) {
  const uint8_t key = EchoKey(q.index());
  const uint32_t n = std::min(chain.readable_bytes(), chain.writable_bytes());
  std::vector<uint8_t> buf(n);
  uint32_t written = 0;
  if (chain.Read(0, buf.data(), n) == RingError::kNone) {
    for (auto& b : buf) b ^= key;
    if (chain.Write(0, buf.data(), n) == RingError::kNone) written = n;
  }
  q.AddUsed(std::move(chain), written);
  completed_++;
}

void EchoDevice::QueueNotify(uint16_t queue) {
  absl::MutexLock l(&mu_);
  if (!active_ || queue >= ctx_.queues.size() || !ctx_.queues[queue]) return;
  DeviceQueue& q = *ctx_.queues[queue];
  q.DisableNotifications();
  for (;;) {
    DescriptorChain chain;
    PopStatus st;
    while ((st = q.Pop(chain)) == PopStatus::kChain) {
      if (opts_.hold) {
        held_.emplace_back(queue, std::move(chain));
      } else {
        Process(q, std::move(chain));
      }
    }
    if (q.Publish() && ctx_.interrupt) ctx_.interrupt->QueueInterrupt(queue);
    if (st == PopStatus::kError || !q.EnableNotifications()) break;
    q.DisableNotifications();
  }
}

void EchoDevice::ChangeConfig(uint32_t value) {
  std::memcpy(config_, &value, 4);
  NotifyConfigChanged();
}

void EchoDevice::set_hold(bool hold) {
  absl::MutexLock l(&mu_);
  opts_.hold = hold;
}

size_t EchoDevice::held() const {
  absl::MutexLock l(&mu_);
  return held_.size();
}

void EchoDevice::ReleaseHeld() {
  absl::MutexLock l(&mu_);
  auto held = std::move(held_);
  held_.clear();
  std::vector<bool> touched(ctx_.queues.size());
  for (auto& [qi, chain] : held) {
    Process(*ctx_.queues[qi], std::move(chain));
    touched[qi] = true;
  }
  for (size_t i = 0; i < touched.size(); ++i)
    if (touched[i] && ctx_.queues[i]->Publish() && ctx_.interrupt) ctx_.interrupt->QueueInterrupt(i);
}

bool EchoDevice::active() const {
  absl::MutexLock l(&mu_);
  return active_;
}

uint64_t EchoDevice::completed() const {
  absl::MutexLock l(&mu_);
  return completed_;
}

}  // namespace vioport::testing
