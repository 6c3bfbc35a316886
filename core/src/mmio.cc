// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/mmio.h"

#include <atomic>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vioport::mmio {

MmioRegisters::MmioRegisters(DeviceController& ctl, uint32_t version)
    : ctl_(ctl), version_(version), queues_(ctl.num_queues()) {
  // A legacy (version 1) driver is guest-native endian; our guests are
  // little-endian processes on the same machine.
  ctl_.SetLegacyByteOrder(RingByteOrder::kLittle);
}

absl::Status MmioRegisters::Write(uint32_t offset, uint32_t size, uint32_t value) {
  if (size != 4 || (offset & 3))
    return absl::InvalidArgumentError(absl::StrFormat("register 0x%03x: %u-byte access (control registers are 32-bit)", offset, size));
  const bool legacy = version_ == 1;
  switch (offset) {
    case reg::kDeviceFeaturesSel: device_features_sel_ = value; return absl::OkStatus();
    case reg::kDriverFeaturesSel: driver_features_sel_ = value; return absl::OkStatus();
    case reg::kDriverFeatures:
      if (driver_features_sel_ > 1) return absl::OkStatus();  // bits >= 64: none exist
      driver_features_ &= ~(uint64_t{0xffffffff} << (32 * driver_features_sel_));
      driver_features_ |= uint64_t{value} << (32 * driver_features_sel_);
      return ctl_.SetDriverFeatures(driver_features_);
    case reg::kQueueSel: queue_sel_ = value; return absl::OkStatus();
    case reg::kQueueSize:
      if (queue_sel_ > 0xffff) return absl::OutOfRangeError("queue select out of range");
      return ctl_.SetQueueSize(static_cast<uint16_t>(queue_sel_), value);
    case reg::kQueueNotify: ctl_.NotifyQueue(static_cast<uint16_t>(value & 0xffff)); return absl::OkStatus();
    case reg::kStatus: {
      absl::Status s = ctl_.SetStatus(static_cast<uint8_t>(value));
      if (value == 0) {  // reset clears the transport's registers too
        device_features_sel_ = driver_features_sel_ = queue_sel_ = 0;
        driver_features_ = 0;
        for (Queue& q : queues_) q = Queue{};
      }
      return s;
    }
    case reg::kShmSel:
    case reg::kQueueReset: return absl::OkStatus();  // no shared memory regions; RING_RESET not offered
    default: break;
  }
  if (legacy) {
    switch (offset) {
      case reg::kGuestPageSize:
        if (value == 0 || (value & (value - 1))) return absl::InvalidArgumentError("guest page size not a power of 2");
        guest_page_size_ = value;
        return absl::OkStatus();
      case reg::kQueueAlign:
        if (queue_sel_ >= queues_.size()) return absl::OutOfRangeError("queue select out of range");
        if (value == 0 || (value & (value - 1))) return absl::InvalidArgumentError("queue align not a power of 2");
        queues_[queue_sel_].align = value;
        return absl::OkStatus();
      case reg::kQueuePfn: return LegacyPfn(value);
      default: break;
    }
  } else {
    switch (offset) {
      case reg::kQueueReady: {
        if (queue_sel_ >= queues_.size()) return absl::OutOfRangeError("queue select out of range");
        const Queue& q = queues_[queue_sel_];
        const uint16_t i = static_cast<uint16_t>(queue_sel_);
        if (value & 1) {
          if (absl::Status s = ctl_.SetQueueAddresses(i, q.desc, q.driver, q.device); !s.ok()) return s;
        }
        return ctl_.SetQueueReady(i, value & 1);
      }
      case reg::kQueueDescLow:
      case reg::kQueueDescHigh:
      case reg::kQueueDriverLow:
      case reg::kQueueDriverHigh:
      case reg::kQueueDeviceLow:
      case reg::kQueueDeviceHigh: return WriteQueueAddress(offset, value);
      default: break;
    }
  }
  return absl::InvalidArgumentError(absl::StrFormat("register 0x%03x is not writable in version %u", offset, version_));
}

absl::Status MmioRegisters::WriteQueueAddress(uint32_t offset, uint32_t value) {
  if (queue_sel_ >= queues_.size()) return absl::OutOfRangeError("queue select out of range");
  const QueueSetup* setup = ctl_.queue_setup(static_cast<uint16_t>(queue_sel_));
  if (setup && setup->ready) return absl::FailedPreconditionError("ring address written while the queue is ready");
  Queue& q = queues_[queue_sel_];
  uint64_t* field = offset < reg::kQueueDriverLow ? &q.desc : offset < reg::kQueueDeviceLow ? &q.driver : &q.device;
  const bool high = offset & 4;
  *field = high ? ((*field & 0xffffffffull) | (uint64_t{value} << 32)) : ((*field & ~0xffffffffull) | value);
  return absl::OkStatus();
}

absl::Status MmioRegisters::LegacyPfn(uint32_t pfn) {
  if (queue_sel_ >= queues_.size()) return absl::OutOfRangeError("queue select out of range");
  const uint16_t i = static_cast<uint16_t>(queue_sel_);
  Queue& q = queues_[i];
  if (pfn == 0) {
    q.pfn = 0;
    return ctl_.SetQueueReady(i, false);
  }
  const QueueSetup* setup = ctl_.queue_setup(i);
  const uint32_t n = setup && setup->size ? setup->size : ctl_.QueueMaxSize(i);
  const uint64_t desc = uint64_t{pfn} * guest_page_size_;
  const uint64_t avail = desc + SplitLayout::DescBytes(n);
  const uint64_t used = desc + SplitLayout::LegacyUsedOffset(n, q.align);
  if (absl::Status s = ctl_.SetQueueSize(i, n); !s.ok()) return s;
  if (absl::Status s = ctl_.SetQueueAddresses(i, desc, avail, used); !s.ok()) return s;
  if (absl::Status s = ctl_.SetQueueReady(i, true); !s.ok()) return s;
  q.pfn = pfn;
  return absl::OkStatus();
}

uint32_t MmioRegisters::Read(uint32_t offset) const {
  switch (offset) {
    case reg::kMagic: return kMagicValue;
    case reg::kVersion: return version_;
    case reg::kDeviceId: return static_cast<uint32_t>(ctl_.device().device_id());
    case reg::kVendorId: return kVendorValue;
    case reg::kDeviceFeatures:
      return device_features_sel_ > 1 ? 0 : static_cast<uint32_t>(ctl_.offered_features() >> (32 * device_features_sel_));
    case reg::kQueueSizeMax: return queue_sel_ <= 0xffff ? ctl_.QueueMaxSize(static_cast<uint16_t>(queue_sel_)) : 0;
    case reg::kQueueReady: {
      if (version_ == 1 || queue_sel_ > 0xffff) return 0;
      const QueueSetup* s = ctl_.queue_setup(static_cast<uint16_t>(queue_sel_));
      return s && s->ready ? 1 : 0;
    }
    case reg::kQueuePfn:
      return version_ == 1 && queue_sel_ < queues_.size() ? queues_[queue_sel_].pfn : 0;
    case reg::kStatus: return ctl_.status();
    case reg::kShmLenLow:
    case reg::kShmLenHigh:
    case reg::kShmBaseLow:
    case reg::kShmBaseHigh: return 0xffffffff;  // no shared memory regions
    default: return 0;
  }
}


void MirrorInterrupts::QueueInterrupt(uint16_t q) {
  if (dead_.load(std::memory_order_acquire)) return;
  Reg32(page_, reg::kInterruptStatus).fetch_or(kIntUsedBuffer, std::memory_order_release);
  notify_(q);
}

void MirrorInterrupts::ConfigInterrupt() {
  if (dead_.load(std::memory_order_acquire)) return;
  if (before_config_) before_config_();
  Reg32(page_, reg::kInterruptStatus).fetch_or(kIntConfig, std::memory_order_release);
  notify_(kConfig);
}

MmioMirror::MmioMirror(DeviceController& ctl, uint32_t version, uint8_t* page)
    : ctl_(ctl), regs_(ctl, version), page_(page), scratch_(ctl.device().config_size()) {}

std::vector<uint64_t> MmioRegisters::SaveState() const {
  std::vector<uint64_t> s = {version_, device_features_sel_, driver_features_sel_, driver_features_, guest_page_size_,
                             queue_sel_, queues_.size()};
  for (const Queue& q : queues_) s.insert(s.end(), {q.desc, q.driver, q.device, q.align, q.pfn});
  return s;
}

absl::Status MmioRegisters::RestoreState(std::span<const uint64_t> s) {
  if (s.size() != 7 + 5 * queues_.size() || s[0] != version_ || s[6] != queues_.size())
    return absl::InvalidArgumentError("saved mmio registers do not fit this device");
  device_features_sel_ = static_cast<uint32_t>(s[1]);
  driver_features_sel_ = static_cast<uint32_t>(s[2]);
  driver_features_ = s[3];
  guest_page_size_ = static_cast<uint32_t>(s[4]);
  queue_sel_ = static_cast<uint32_t>(s[5]);
  for (size_t i = 0; i < queues_.size(); ++i) {
    const uint64_t* v = &s[7 + 5 * i];
    queues_[i] = Queue{v[0], v[1], v[2], static_cast<uint32_t>(v[3]), static_cast<uint32_t>(v[4])};
  }
  return absl::OkStatus();
}

std::vector<uint64_t> MmioMirror::SaveState() const {
  std::vector<uint64_t> s = {mirror_gen_, published_ctl_gen_, writes_, ignored_};
  const std::vector<uint64_t> r = regs_.SaveState();
  s.insert(s.end(), r.begin(), r.end());
  return s;
}

absl::Status MmioMirror::RestoreState(std::span<const uint64_t> s) {
  if (s.size() < 4 || s[0] % 2) return absl::InvalidArgumentError("saved mmio mirror state is malformed");
  mirror_gen_ = static_cast<uint32_t>(s[0]);
  published_ctl_gen_ = static_cast<uint32_t>(s[1]);
  writes_ = s[2];
  ignored_ = s[3];
  return regs_.RestoreState(s.subspan(4));
}

absl::Status MmioMirror::Write(uint32_t off, uint32_t size, uint32_t value) {
  absl::Status s;
  if (off >= kConfigOffset) {
    if (size != 1 && size != 2 && size != 4) {
      s = absl::InvalidArgumentError(absl::StrCat("config write of ", size, " bytes"));
    } else if (off - kConfigOffset + size > ctl_.device().config_size()) {
      s = absl::OutOfRangeError(absl::StrFormat("config write at 0x%x past the config space", off));
    } else {
      uint8_t b[4];
      std::memcpy(b, &value, 4);  // little-endian host: the low `size` bytes
      s = ctl_.WriteConfig(off - kConfigOffset, {b, size});
    }
  } else {
    s = regs_.Write(off, size, value);
  }
  writes_++;
  if (!s.ok()) ignored_++;
  Publish();
  return s;
}

void MmioMirror::Publish() {
  using namespace reg;
  for (uint32_t off : {kMagic, kVersion, kDeviceId, kVendorId, kDeviceFeatures, kQueueSizeMax, kQueueReady, kQueuePfn,
                       kShmLenLow, kShmLenHigh, kShmBaseLow, kShmBaseHigh})
    Reg32(page_, off).store(regs_.Read(off), std::memory_order_relaxed);
  Reg32(page_, kStatus).store(ctl_.status(), std::memory_order_release);
  // Config: a seqlock on ConfigGeneration (odd while rewriting), so a driver
  // never takes a half-written config for a consistent one.
  const uint32_t size = ctl_.device().config_size();
  if (size) (void)ctl_.ReadConfig(0, {scratch_.data(), size});
  uint8_t* cfg = page_ + kConfigOffset;
  if (ctl_.config_generation() != published_ctl_gen_ || (size && std::memcmp(cfg, scratch_.data(), size) != 0)) {
    Reg32(page_, kConfigGeneration).store(mirror_gen_ + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    for (uint32_t i = 0; i < size; ++i) std::atomic_ref<uint8_t>(cfg[i]).store(scratch_[i], std::memory_order_relaxed);
    mirror_gen_ += 2;
    Reg32(page_, kConfigGeneration).store(mirror_gen_, std::memory_order_release);
    published_ctl_gen_ = ctl_.config_generation();
  }
}

uint32_t MmioMirrorDriver::ReadRegister(uint32_t offset) {
  if (!page_ || offset >= kPageSize - 3) return ~0u;
  return Reg32(page_, offset & ~3u).load(std::memory_order_acquire);
}

void MmioMirrorDriver::AckInterrupt(uint32_t bits) {
  if (page_ && bits) Reg32(page_, reg::kInterruptStatus).fetch_and(~bits, std::memory_order_acq_rel);
}

bool MmioMirrorDriver::MarkGone(const std::string& why) {
  {
    absl::MutexLock l(&why_mu_);
    if (gone_.load()) return false;
    why_ = why;
    gone_.store(true, std::memory_order_release);
  }
  if (page_) Reg32(page_, reg::kStatus).fetch_or(status::kDeviceNeedsReset, std::memory_order_release);
  return true;
}

std::string MmioMirrorDriver::gone_reason() const {
  absl::MutexLock l(&why_mu_);
  return gone_.load() ? why_ : "";
}

uint8_t MmioMirrorDriver::GetStatus() { return static_cast<uint8_t>(ReadRegister(reg::kStatus)); }

void MmioMirrorDriver::SetStatus(uint8_t s) { WriteRegister(reg::kStatus, s); }

uint64_t MmioMirrorDriver::GetDeviceFeatures() {
  WriteRegister(reg::kDeviceFeaturesSel, 0);
  uint64_t f = ReadRegister(reg::kDeviceFeatures);
  WriteRegister(reg::kDeviceFeaturesSel, 1);
  f |= uint64_t{ReadRegister(reg::kDeviceFeatures)} << 32;
  return f;
}

void MmioMirrorDriver::SetDriverFeatures(uint64_t f) {
  WriteRegister(reg::kDriverFeaturesSel, 0);
  WriteRegister(reg::kDriverFeatures, static_cast<uint32_t>(f));
  WriteRegister(reg::kDriverFeaturesSel, 1);
  WriteRegister(reg::kDriverFeatures, static_cast<uint32_t>(f >> 32));
}

uint32_t MmioMirrorDriver::GetConfigGeneration() {
  // Odd while the device rewrites the config mirror (a seqlock).
  for (uint32_t spins = 0;; ++spins) {
    const uint32_t g = ReadRegister(reg::kConfigGeneration);
    if (!(g & 1) || gone()) return g;
    if (spins > 1000) std::this_thread::yield();
  }
}

void MmioMirrorDriver::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  constexpr uint32_t kMax = kPageSize - kConfigOffset;
  if (!page_ || offset > kMax || out.size() > kMax - offset) {
    std::memset(out.data(), 0xff, out.size());
    return;
  }
  const uint8_t* src = page_ + kConfigOffset + offset;
  std::atomic_thread_fence(std::memory_order_acquire);
  for (size_t i = 0; i < out.size(); ++i) out[i] = std::atomic_ref<const uint8_t>(src[i]).load(std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_acquire);
}

void MmioMirrorDriver::WriteConfig(uint32_t offset, std::span<const uint8_t> in) {
  size_t i = 0;
  while (i < in.size()) {
    const uint32_t off = offset + static_cast<uint32_t>(i);
    uint32_t w = 1;
    if (!(off & 3) && in.size() - i >= 4) w = 4;
    else if (!(off & 1) && in.size() - i >= 2) w = 2;
    uint32_t v = 0;
    std::memcpy(&v, in.data() + i, w);
    WriteRegister(kConfigOffset + off, v, w);
    i += w;
  }
}

uint32_t MmioMirrorDriver::GetQueueMaxSize(uint16_t q) {
  if (q >= num_queues_) return 0;
  if (!WriteRegister(reg::kQueueSel, q)) return 0;
  return ReadRegister(reg::kQueueSizeMax);
}

absl::Status MmioMirrorDriver::EnableQueue(uint16_t q, uint32_t size, uint64_t desc, uint64_t driver, uint64_t device) {
  if (q >= num_queues_) return absl::OutOfRangeError(absl::StrCat("queue ", q, " does not exist"));
  if (ReadRegister(reg::kVersion) != 2)
    return absl::UnimplementedError("legacy (version 1) queues are set up with raw register writes");
  const std::pair<uint32_t, uint32_t> writes[] = {
      {reg::kQueueSel, q},
      {reg::kQueueSize, size},
      {reg::kQueueDescLow, static_cast<uint32_t>(desc)},
      {reg::kQueueDescHigh, static_cast<uint32_t>(desc >> 32)},
      {reg::kQueueDriverLow, static_cast<uint32_t>(driver)},
      {reg::kQueueDriverHigh, static_cast<uint32_t>(driver >> 32)},
      {reg::kQueueDeviceLow, static_cast<uint32_t>(device)},
      {reg::kQueueDeviceHigh, static_cast<uint32_t>(device >> 32)},
      {reg::kQueueReady, 1},
  };
  for (const auto& [off, v] : writes)
    if (!WriteRegister(off, v))
      return absl::InvalidArgumentError(absl::StrFormat("queue %u: device refused register 0x%03x = 0x%x", q, off, v));
  if (ReadRegister(reg::kQueueReady) != 1) return absl::InternalError(absl::StrCat("queue ", q, " did not become ready"));
  return absl::OkStatus();
}

}  // namespace vioport::mmio
