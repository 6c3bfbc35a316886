// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/vhost_user_guest.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/core/log.h"

namespace vioport {

using vhost_user::VmmFrontend;
using vhost_user::VringSetup;
namespace proto = vhost_user::proto;

absl::StatusOr<std::unique_ptr<VhostUserDriverTransport>> VhostUserDriverTransport::Connect(
    const VhostUserGuestOptions& o) {
  if (o.queue_size_max == 0 || o.queue_size_max > 32768)
    return absl::InvalidArgumentError(absl::StrCat("queue size ", o.queue_size_max, ": 1 to 32768"));
  std::unique_ptr<VhostUserDriverTransport> t(new VhostUserDriverTransport(o));
  auto fe = VmmFrontend::Connect(o.frontend);
  if (!fe.ok()) return fe.status();
  t->fe_ = std::move(*fe);
  t->dma_ = std::make_unique<BufferDmaAllocator>(t->fe_->memory(), t->fe_->guest_phys_base(), t->fe_->memory_size());
  absl::MutexLock l(&t->mu_);
  t->rings_.assign(t->fe_->num_queues(), Ring{});
  t->stopped_base_.assign(t->fe_->num_queues(), -1);
  return t;
}

VhostUserDriverTransport::~VhostUserDriverTransport() = default;

int64_t VhostUserDriverTransport::last_stopped_base(uint16_t q) const {
  absl::MutexLock l(&mu_);
  return q < stopped_base_.size() ? stopped_base_[q] : -1;
}

absl::Status VhostUserDriverTransport::last_error() const {
  absl::MutexLock l(&mu_);
  return last_error_;
}

void VhostUserDriverTransport::SetError(absl::Status s) {
  VIOPORT_LOG(kWarning, "vhost-user guest: ", opts_.frontend.socket_path, ": ", s.message());
  last_error_ = std::move(s);
}

uint8_t VhostUserDriverTransport::GetStatus() {
  uint8_t s = status_.load(std::memory_order_acquire);
  if (!fe_->alive() || fe_->ring_errors() != 0 || failed_start_.load(std::memory_order_acquire))
    s |= status::kDeviceNeedsReset;
  return s;
}

void VhostUserDriverTransport::SetStatus(uint8_t s) {
  absl::MutexLock l(&mu_);
  const uint8_t cur = status_.load(std::memory_order_relaxed);
  s &= static_cast<uint8_t>(~status::kDeviceNeedsReset);  // the device's bit, never the driver's
  if (s == 0) {
    if (cur != 0) StopDevice();
    driver_features_ = 0;
    rings_.assign(rings_.size(), Ring{});
    fe_->ClearRingErrors();
    failed_start_.store(false, std::memory_order_release);
    last_error_ = absl::OkStatus();
    status_.store(0, std::memory_order_release);
    return;
  }
  if (cur & ~s) {
    SetError(absl::FailedPreconditionError(
        absl::StrFormat("status 0x%02x -> 0x%02x ignored: bits are cleared only by a reset", cur, s)));
    return;
  }
  uint8_t next = s;
  const uint8_t added = s & ~cur;
  if (added & status::kFeaturesOk) {
    if (absl::Status st = fe_->SetFeatures(driver_features_); !st.ok()) {
      SetError(st);
      next &= static_cast<uint8_t>(~(status::kFeaturesOk | status::kDriverOk));
    }
  }
  if ((added & status::kDriverOk) && (next & status::kDriverOk)) {
    if (!(next & status::kFeaturesOk)) {
      SetError(absl::FailedPreconditionError("DRIVER_OK without FEATURES_OK: nothing to start"));
      next &= static_cast<uint8_t>(~status::kDriverOk);
    } else if (absl::Status st = StartDevice(); !st.ok()) {
      SetError(st);
      failed_start_.store(true, std::memory_order_release);
    }
  }
  status_.store(next, std::memory_order_release);
}

absl::Status VhostUserDriverTransport::StartDevice() {
  // No ring is live yet: an ERR signal still in flight from an earlier life is stale.
  fe_->ClearRingErrors();
  if (absl::Status s = fe_->SetMemTable(); !s.ok()) return s;
  uint32_t max_size = 0;
  for (const Ring& r : rings_)
    if (r.enabled) max_size = std::max(max_size, r.size);
  if (max_size == 0) return absl::FailedPreconditionError("DRIVER_OK with no queue enabled");
  // The inflight region covers all of the back-end's queues (as QEMU), each
  // for the largest ring.
  if (absl::Status s = fe_->SetupInflight(fe_->num_queues(), static_cast<uint16_t>(std::min<uint32_t>(max_size, 32768)));
      !s.ok())
    return s;
  const bool packed = feature::Has(driver_features_, feature::kRingPacked);
  for (uint16_t q = 0; q < rings_.size(); ++q) {
    const Ring& r = rings_[q];
    if (!r.enabled) continue;
    VringSetup v;
    v.size = r.size;
    v.desc = r.desc;
    v.avail = r.driver;
    v.used = r.device;
    v.packed = packed;
    if (absl::Status s = fe_->StartVring(q, v); !s.ok()) return s;
  }
  // As QEMU: every ring set up and started first, then all enabled.
  for (uint16_t q = 0; q < rings_.size(); ++q) {
    if (!rings_[q].enabled) continue;
    if (absl::Status s = fe_->EnableVring(q, true); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void VhostUserDriverTransport::StopDevice() {
  if (!fe_->alive()) return;
  for (uint16_t q = 0; q < fe_->num_queues(); ++q) {
    if (!fe_->started(q)) continue;
    auto r = fe_->StopVring(q);
    if (r.ok()) {
      stopped_base_[q] = *r;
      continue;
    }
    SetError(r.status());
    if (!fe_->alive()) return;
  }
  if (fe_->has_protocol_feature(proto::kResetDevice)) {
    if (absl::Status s = fe_->ResetDevice(); !s.ok()) SetError(s);
  }
}

uint64_t VhostUserDriverTransport::GetDeviceFeatures() {
  // PROTOCOL_FEATURES and LOG_ALL belong to vhost-user, not to the device.
  return fe_->device_features() &
         ~((uint64_t{1} << vhost_user::kFeatureProtocolFeatures) | (uint64_t{1} << vhost_user::kFeatureLogAll));
}

void VhostUserDriverTransport::SetDriverFeatures(uint64_t features) {
  absl::MutexLock l(&mu_);
  if (status_.load() & status::kFeaturesOk) {
    SetError(absl::FailedPreconditionError("driver features written after FEATURES_OK: ignored"));
    return;
  }
  driver_features_ = features;
}

void VhostUserDriverTransport::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  if (out.empty()) return;
  // Read from offset 0: some back-ends (qemu-storage-daemon) ignore the
  // offset of GET_CONFIG and always answer from the start of the config.
  const uint64_t end = uint64_t{offset} + out.size();
  if (end <= vhost_user::kMaxConfigSize && fe_->alive()) {
    auto c = fe_->GetConfig(0, static_cast<uint32_t>(end));
    if (c.ok()) {
      std::memcpy(out.data(), c->data() + offset, out.size());
      return;
    }
    VIOPORT_LOG(kWarning, "vhost-user guest: config read of ", out.size(), " bytes at ", offset, ": ",
                c.status().message());
  }
  std::memset(out.data(), 0xff, out.size());
}

void VhostUserDriverTransport::WriteConfig(uint32_t offset, std::span<const uint8_t> in) {
  if (in.empty()) return;
  if (absl::Status s = fe_->SetConfig(offset, in); !s.ok()) {
    absl::MutexLock l(&mu_);
    SetError(s);
  }
}

uint32_t VhostUserDriverTransport::GetQueueMaxSize(uint16_t q) {
  return q < fe_->num_queues() ? opts_.queue_size_max : 0;
}

absl::Status VhostUserDriverTransport::EnableQueue(uint16_t q, uint32_t size, uint64_t desc, uint64_t driver,
                                                   uint64_t device) {
  absl::MutexLock l(&mu_);
  if (q >= rings_.size())
    return absl::OutOfRangeError(absl::StrCat("queue ", q, " does not exist (the back-end has ", rings_.size(), ")"));
  if (size == 0 || size > opts_.queue_size_max)
    return absl::InvalidArgumentError(absl::StrCat("queue ", q, ": size ", size, " (1 to ", opts_.queue_size_max, ")"));
  const uint8_t st = status_.load();
  if (!(st & status::kFeaturesOk) || (st & status::kDriverOk))
    return absl::FailedPreconditionError(
        absl::StrFormat("queue %u: set up with status 0x%02x (needs FEATURES_OK, not DRIVER_OK)", q, st));
  rings_[q] = Ring{true, size, desc, driver, device};
  return absl::OkStatus();
}

void VhostUserDriverTransport::Notify(uint16_t q, uint32_t) { fe_->Kick(q); }

uint64_t VhostUserDriverTransport::SupportedTransportFeatures() { return feature::kCoreSupported; }

bool VhostUserDriverTransport::WaitForInterrupt(uint16_t q, absl::Duration timeout) {
  if (GetStatus() & status::kDeviceNeedsReset) return true;  // let the caller look
  return fe_->WaitCall(q, timeout, opts_.interrupt_spin);
}

}  // namespace vioport
