// SPDX-License-Identifier: Apache-2.0
#pragma once

// virtio-mmio (virtio 1.2 §4.2.2) for transports that carry it without an
// MMIO trap: the register map, what a register write does to a device
// (MmioRegisters), a device-written mirror page the driver reads with plain
// loads (MmioMirror), and the driver side reading that page and sending
// writes through a transport-specific path (MmioMirrorDriver). The shm
// transport (a Unix socket) and the Xen transport (a granted page and an
// event channel) differ only in how a register write travels.

#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "vioport/core/device_controller.h"
#include "vioport/core/driver.h"

namespace vioport::mmio {

// Register offsets (L = legacy, version 1 only).
namespace reg {
inline constexpr uint32_t kMagic = 0x000;
inline constexpr uint32_t kVersion = 0x004;
inline constexpr uint32_t kDeviceId = 0x008;
inline constexpr uint32_t kVendorId = 0x00c;
inline constexpr uint32_t kDeviceFeatures = 0x010;
inline constexpr uint32_t kDeviceFeaturesSel = 0x014;
inline constexpr uint32_t kDriverFeatures = 0x020;
inline constexpr uint32_t kDriverFeaturesSel = 0x024;
inline constexpr uint32_t kGuestPageSize = 0x028;  // L
inline constexpr uint32_t kQueueSel = 0x030;
inline constexpr uint32_t kQueueSizeMax = 0x034;
inline constexpr uint32_t kQueueSize = 0x038;
inline constexpr uint32_t kQueueAlign = 0x03c;  // L
inline constexpr uint32_t kQueuePfn = 0x040;    // L
inline constexpr uint32_t kQueueReady = 0x044;
inline constexpr uint32_t kQueueNotify = 0x050;
inline constexpr uint32_t kInterruptStatus = 0x060;
inline constexpr uint32_t kInterruptAck = 0x064;
inline constexpr uint32_t kStatus = 0x070;
inline constexpr uint32_t kQueueDescLow = 0x080;
inline constexpr uint32_t kQueueDescHigh = 0x084;
inline constexpr uint32_t kQueueDriverLow = 0x090;
inline constexpr uint32_t kQueueDriverHigh = 0x094;
inline constexpr uint32_t kQueueDeviceLow = 0x0a0;
inline constexpr uint32_t kQueueDeviceHigh = 0x0a4;
inline constexpr uint32_t kShmSel = 0x0ac;
inline constexpr uint32_t kShmLenLow = 0x0b0;
inline constexpr uint32_t kShmLenHigh = 0x0b4;
inline constexpr uint32_t kShmBaseLow = 0x0b8;
inline constexpr uint32_t kShmBaseHigh = 0x0bc;
inline constexpr uint32_t kQueueReset = 0x0c0;
inline constexpr uint32_t kConfigGeneration = 0x0fc;
}  // namespace reg

inline constexpr uint32_t kMagicValue = 0x74726976;   // "virt"
inline constexpr uint32_t kVendorValue = 0x50524956;  // "VIRP": vioport
inline constexpr uint32_t kIntUsedBuffer = 1;
inline constexpr uint32_t kIntConfig = 2;
// The mirror page: registers at 0..0xff, device configuration from 0x100.
inline constexpr uint32_t kPageSize = 4096;
inline constexpr uint32_t kConfigOffset = 0x100;

// A 32-bit register of a mirror page, as an atomic.
inline std::atomic_ref<uint32_t> Reg32(uint8_t* page, uint32_t off) {
  return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(page + off));
}

class MmioRegisters {
 public:
  MmioRegisters(DeviceController& ctl, uint32_t version);

  // A driver write of `size` bytes (1, 2 or 4) at `offset`. Writes the spec
  // says a device ignores (wrong width, read-only or unknown register, a
  // register of the other mmio version, a refused controller transition)
  // return an error naming it; the device state is unchanged.
  absl::Status Write(uint32_t offset, uint32_t size, uint32_t value);

  // The value a 32-bit read of a control register (offset < 0x100) returns.
  uint32_t Read(uint32_t offset) const;

  uint32_t version() const { return version_; }

  // The registers the driver selected or wrote that the controller does not
  // hold (selectors, queue addresses before QueueReady), as numbers, for a
  // live upgrade; Restore checks the shape.
  std::vector<uint64_t> SaveState() const;
  absl::Status RestoreState(std::span<const uint64_t> s);

 private:
  struct Queue {
    uint64_t desc = 0, driver = 0, device = 0;
    uint32_t align = 4096, pfn = 0;  // legacy
  };
  absl::Status WriteQueueAddress(uint32_t offset, uint32_t value);
  absl::Status LegacyPfn(uint32_t pfn);

  DeviceController& ctl_;
  uint32_t version_;
  uint32_t device_features_sel_ = 0;
  uint32_t driver_features_sel_ = 0;
  uint64_t driver_features_ = 0;
  uint32_t guest_page_size_ = 4096;  // legacy
  uint32_t queue_sel_ = 0;
  std::vector<Queue> queues_;
};

// The device's side of a mirror page: `page` (kPageSize bytes the driver
// reads) shows the registers a driver reads and the configuration space
// under a seqlock on ConfigGeneration (odd while being rewritten).
// InterruptStatus is left to the transport.
class MmioMirror {
 public:
  MmioMirror(DeviceController& ctl, uint32_t version, uint8_t* page);
  // A register or configuration write (offset >= kConfigOffset), then the
  // mirror refreshed. An error names why the write was ignored.
  absl::Status Write(uint32_t offset, uint32_t size, uint32_t value);
  // Rewrites the mirror from the device (after anything changed it).
  void Publish();
  MmioRegisters& registers() { return regs_; }
  // The registers' state (MmioRegisters::SaveState), the mirror's seqlock
  // position and its counters, for a live upgrade. Restore does not rewrite
  // the page: the driver keeps reading what it read.
  std::vector<uint64_t> SaveState() const;
  absl::Status RestoreState(std::span<const uint64_t> s);
  // register_writes and register_writes_ignored, for the transport's counters.
  void AppendCounters(CounterList* out) const {
    out->insert(out->end(), {{"register_writes", writes_}, {"register_writes_ignored", ignored_}});
  }

 private:
  DeviceController& ctl_;
  MmioRegisters regs_;
  uint8_t* page_;
  uint32_t mirror_gen_ = 0;         // ConfigGeneration as published (even)
  uint32_t published_ctl_gen_ = ~0u;
  std::vector<uint8_t> scratch_;
  uint64_t writes_ = 0, ignored_ = 0;
};

// Interrupt-out through a mirror page: InterruptStatus gets the bit, then
// `notify` tells the driver however the channel can (an eventfd, an event
// channel): notify(q) for queue q's used buffers, notify(kConfig) for a
// configuration change, after `before_config` refreshed the mirror. Raises
// nothing once Disconnect() ran (the guest went; the device may still hold
// the sink until it is reset). Queue interrupts may come from any thread.
class MirrorInterrupts final : public InterruptSink {
 public:
  static constexpr int kConfig = -1;
  MirrorInterrupts(uint8_t* page, std::function<void(int)> notify, std::function<void()> before_config = nullptr)
      : page_(page), notify_(std::move(notify)), before_config_(std::move(before_config)) {}
  void QueueInterrupt(uint16_t q) override;
  void ConfigInterrupt() override;
  void Disconnect() { dead_.store(true, std::memory_order_release); }

 private:
  uint8_t* page_;
  std::function<void(int)> notify_;
  std::function<void()> before_config_;
  std::atomic<bool> dead_{false};
};

// The driver's side: reads from the mirror page; writes through
// WriteRegister, which the transport implements (send, wait for the answer).
class MmioMirrorDriver : public DriverTransport {
 public:
  uint8_t GetStatus() override;
  void SetStatus(uint8_t status) override;
  uint64_t GetDeviceFeatures() override;
  void SetDriverFeatures(uint64_t features) override;
  uint32_t GetConfigGeneration() override;
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override;
  void WriteConfig(uint32_t offset, std::span<const uint8_t> in) override;
  uint32_t GetQueueMaxSize(uint16_t queue) override;
  absl::Status EnableQueue(uint16_t queue, uint32_t size, uint64_t desc, uint64_t driver, uint64_t device) override;
  // A mirror page carries every ring the core implements.
  uint64_t SupportedTransportFeatures() override { return feature::kCoreSupported; }

  // Raw register access, as a driver of real virtio-mmio hardware does it.
  // A write goes to the device and waits for its answer: false if the device
  // ignored it (or is gone).
  uint32_t ReadRegister(uint32_t offset);
  virtual bool WriteRegister(uint32_t offset, uint32_t value, uint32_t size = 4) = 0;

 protected:
  // The mirror page and the queues the device has; set by the transport
  // before the driver uses it.
  void SetMirror(uint8_t* page, uint16_t num_queues) {
    page_ = page;
    num_queues_ = num_queues;
  }
  // InterruptACK: clears `bits` in the mirror's InterruptStatus.
  void AckInterrupt(uint32_t bits);
  // The device became unreachable: remember why (the first reason only) and
  // show DEVICE_NEEDS_RESET in the mirrored status, so drivers fail instead
  // of waiting for it. False if it was gone already.
  bool MarkGone(const std::string& why);
  // Reached again (the transport reconnected).
  void ClearGone() { gone_.store(false, std::memory_order_release); }

 public:
  // Whether the device is unreachable (reads stop waiting on the seqlock), and why.
  bool gone() const { return gone_.load(std::memory_order_acquire); }
  std::string gone_reason() const;

 private:
  uint8_t* page_ = nullptr;
  uint16_t num_queues_ = 0;
  std::atomic<bool> gone_{false};
  mutable absl::Mutex why_mu_;
  std::string why_ ABSL_GUARDED_BY(why_mu_);
};

}  // namespace vioport::mmio
