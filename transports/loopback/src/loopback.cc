// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/loopback.h"

#include <poll.h>

#include <cstring>

#include "absl/strings/str_format.h"
#include "vioport/core/log.h"

namespace vioport {

LoopbackTransport::LoopbackTransport(std::shared_ptr<VirtioDevice> device, const LoopbackOptions& options)
    : opts_(options), buffer_(options.memory_bytes) {
  dma_ = std::make_unique<BufferDmaAllocator>(buffer_.data(), opts_.memory_base, buffer_.size());
  auto mapped = std::make_shared<RegionMemory>();
  absl::Status s = mapped->AddRegion({opts_.memory_base, buffer_.size(), buffer_.data(), Access::kReadWrite});
  (void)s;  // one region into an empty table cannot fail
  device_mem_ = opts_.copy_only ? std::shared_ptr<GuestMemory>(std::make_shared<CopyOnlyMemory>(mapped))
                                : std::shared_ptr<GuestMemory>(mapped);
  irq_ = std::make_shared<Irq>();
  ctl_ = std::make_unique<DeviceController>(std::move(device), device_mem_, irq_, opts_.transport_features);
  if (!opts_.name.empty()) ctl_->set_name(opts_.name);
}

LoopbackTransport::~LoopbackTransport() { ctl_.reset(); }

void LoopbackTransport::Check(const absl::Status& s) {
  if (s.ok()) return;
  VIOPORT_LOG(kInfo, "loopback: device refused: ", s.message());
  refused_.emplace_back(s.message());
}

void LoopbackTransport::SetStatus(uint8_t s) { Check(ctl_->SetStatus(s)); }
void LoopbackTransport::SetDriverFeatures(uint64_t f) { Check(ctl_->SetDriverFeatures(f)); }

void LoopbackTransport::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  absl::Status s = ctl_->ReadConfig(offset, out);
  if (!s.ok()) std::memset(out.data(), 0xff, out.size());  // a bus returns all-ones
  Check(s);
}

void LoopbackTransport::WriteConfig(uint32_t offset, std::span<const uint8_t> in) {
  Check(ctl_->WriteConfig(offset, in));
}

absl::Status LoopbackTransport::EnableQueue(uint16_t q, uint32_t size, uint64_t desc, uint64_t driver,
                                            uint64_t device) {
  if (absl::Status s = ctl_->SetQueueSize(q, size); !s.ok()) return s;
  if (absl::Status s = ctl_->SetQueueAddresses(q, desc, driver, device); !s.ok()) return s;
  return ctl_->SetQueueReady(q, true);
}

void LoopbackTransport::Notify(uint16_t q, uint32_t data) {
  (void)data;  // queue index in the low 16 bits either way
  ctl_->NotifyQueue(q);
}

bool LoopbackTransport::WaitForInterrupt(uint16_t, absl::Duration timeout) {
  auto seen = [&] { return irq_->queue.load() + irq_->config.load() != irq_seen_.load(); };
  VirtioDevice& dev = ctl_->device();
  const int fd = dev.event_fd();
  if (fd >= 0 && ctl_->running()) {
    dev.ProcessEvents();
    if (!seen()) {
      pollfd p{fd, POLLIN, 0};
      const int ms = static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(timeout), 1000));
      if (::poll(&p, 1, ms) > 0) dev.ProcessEvents();
    }
  }
  const uint64_t now = irq_->queue.load() + irq_->config.load();
  return irq_seen_.exchange(now) != now;
}

}  // namespace vioport
