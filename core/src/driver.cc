// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/driver.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vioport {

VirtioDriver::~VirtioDriver() {
  if (!queues_.empty()) Reset();
}

absl::Status VirtioDriver::Fail(absl::Status why) {
  t_.SetStatus(t_.GetStatus() | status::kFailed);
  return why;
}

std::vector<std::vector<uint64_t>> VirtioDriver::Reset() {
  t_.SetStatus(0);
  // §4.2.3.1 and friends: the reset completes when status reads back 0.
  for (int i = 0; i < 1000 && t_.GetStatus() != 0; ++i) {
  }
  std::vector<std::vector<uint64_t>> lost;
  for (auto& q : queues_) lost.push_back(q ? q->DetachUnused() : std::vector<uint64_t>{});
  queues_.clear();
  return lost;
}

absl::Status VirtioDriver::Init(const DriverOptions& options) {
  opts_ = options;
  if (options.device_id != 0) {
    const uint32_t id = t_.GetDeviceId();
    if (id != options.device_id)
      return absl::FailedPreconditionError(absl::StrCat("the device is virtio device id ", id, ", this driver is for id ",
                                                        options.device_id));
  }
  Reset();
  if (t_.GetStatus() != 0) return absl::UnavailableError("device did not complete reset");
  t_.SetStatus(status::kAcknowledge);
  t_.SetStatus(status::kAcknowledge | status::kDriver);

  const uint64_t offered = t_.GetDeviceFeatures();
  if (!feature::Has(offered, feature::kVersion1))
    return Fail(absl::FailedPreconditionError("device does not offer VERSION_1"));
  uint64_t want = feature::Offer(opts_.wanted_features, t_.SupportedTransportFeatures());
  // ACCESS_PLATFORM is the device's requirement, not ours to refuse (§6.1).
  want |= offered & feature::Bit(feature::kAccessPlatform);
  features_ = offered & want;
  t_.SetDriverFeatures(features_);
  const uint8_t fok = status::kAcknowledge | status::kDriver | status::kFeaturesOk;
  t_.SetStatus(fok);
  if (!(t_.GetStatus() & status::kFeaturesOk))
    return Fail(absl::FailedPreconditionError(
        absl::StrFormat("device refused features 0x%x (FEATURES_OK did not stick)", features_)));

  for (uint16_t i = 0; i < opts_.num_queues; ++i) {
    const uint32_t max = t_.GetQueueMaxSize(i);
    if (max == 0) return Fail(absl::NotFoundError(absl::StrCat("device has no queue ", i)));
    uint32_t size = opts_.queue_size ? std::min(opts_.queue_size, max) : std::min<uint32_t>(max, 1024);
    if (!has_feature(feature::kRingPacked)) {  // split sizes are powers of 2
      uint32_t p = 1;
      while (p * 2 <= size) p *= 2;
      size = p;
    }
    DriverQueueOptions qo{i, size, features_, opts_.indirect_max};
    auto q = DriverQueue::Create(qo, t_.dma());
    if (!q.ok()) return Fail(q.status());
    absl::Status s = t_.EnableQueue(i, size, (*q)->desc_addr(), (*q)->driver_addr(), (*q)->device_addr());
    if (!s.ok()) return Fail(s);
    queues_.push_back(std::move(*q));
  }
  t_.SetStatus(fok | status::kDriverOk);
  if (t_.GetStatus() & status::kDeviceNeedsReset)
    return Fail(absl::FailedPreconditionError("device needs reset right after DRIVER_OK"));
  return absl::OkStatus();
}

absl::Status VirtioDriver::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  for (uint32_t attempt = 0; attempt <= opts_.config_retries; ++attempt) {
    const uint32_t before = t_.GetConfigGeneration();
    t_.ReadConfig(offset, out);
    if (t_.GetConfigGeneration() == before) return absl::OkStatus();
  }
  return absl::UnavailableError(
      absl::StrCat("config generation kept changing over ", opts_.config_retries + 1, " reads"));
}

bool VirtioDriver::Kick(uint16_t q) {
  DriverQueue& vq = *queues_[q];
  if (!vq.KickPrepare()) return false;
  t_.Notify(q, has_feature(feature::kNotificationData) ? vq.NotificationData() : q);
  return true;
}

absl::StatusOr<std::vector<std::vector<uint64_t>>> VirtioDriver::Recover() {
  auto lost = Reset();
  absl::Status s = Init(opts_);
  if (!s.ok()) return s;
  return lost;
}

}  // namespace vioport
