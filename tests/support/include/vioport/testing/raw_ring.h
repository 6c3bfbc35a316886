// SPDX-License-Identifier: Apache-2.0
// Raw ring writers: a driver that writes ring memory byte by byte, so tests
// and fuzz targets can build any ring, valid or hostile, for the device side:
// over a flat memory in this process (FlatGuest), or over any transport's
// DMA memory (RawDriverRing).
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "vioport/core/device_queue.h"
#include "vioport/core/dma.h"
#include "vioport/core/driver.h"
#include "vioport/core/guest_memory.h"
#include "vioport/core/spec.h"

namespace vioport::testing {

// A flat guest memory [base, base + size) backed by a host vector, with
// guard zones on both sides that no device access may touch.
class FlatGuest {
 public:
  explicit FlatGuest(size_t size = 1 << 20, uint64_t base = 0x10000);
  std::shared_ptr<RegionMemory> memory() const { return mem_; }
  uint64_t base() const { return base_; }
  uint64_t end() const { return base_ + size(); }
  uint8_t* host(uint64_t addr) { return bytes_.data() + kGuard + (addr - base_); }
  const uint8_t* host_begin() const { return bytes_.data() + kGuard; }
  size_t size() const { return bytes_.size() - 2 * kGuard; }
  // True if the guard zones around the memory still hold their pattern.
  bool GuardsIntact() const;
  static constexpr size_t kGuard = 4096;
  static constexpr uint8_t kGuardByte = 0xCC;
  // Bump allocation of guest addresses (never freed).
  uint64_t Alloc(size_t len, size_t align = 16);
  void Write(uint64_t addr, const void* src, size_t len) { std::memcpy(host(addr), src, len); }
  void Read(uint64_t addr, void* dst, size_t len) { std::memcpy(dst, host(addr), len); }
  template <typename T>
  void Put(uint64_t addr, T v) { Write(addr, &v, sizeof v); }
  template <typename T>
  T Get(uint64_t addr) {
    T v;
    Read(addr, &v, sizeof v);
    return v;
  }

 private:
  std::vector<uint8_t> bytes_;
  uint64_t base_;
  uint64_t next_;
  std::shared_ptr<RegionMemory> mem_;
};

class RawSplitRing {
 public:
  RawSplitRing(FlatGuest& g, uint32_t size);
  QueueConfig config(uint64_t features, uint16_t index = 0) const;
  void SetDesc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0);
  // Writes avail.ring[avail_idx % size] = head and bumps avail.idx.
  void PushAvail(uint16_t head);
  void SetAvailIdx(uint16_t idx);
  uint16_t avail_idx() const { return avail_idx_; }
  void SetAvailFlags(uint16_t f);
  void SetUsedEvent(uint16_t v);
  uint16_t used_idx();
  uint16_t avail_event();
  uint16_t used_flags();
  VirtqUsedElem used(uint16_t slot);
  uint32_t size() const { return size_; }
  uint64_t desc() const { return desc_; }
  uint64_t avail() const { return avail_; }
  uint64_t used_ring() const { return used_; }

 private:
  FlatGuest& g_;
  uint32_t size_;
  uint64_t desc_, avail_, used_;
  uint16_t avail_idx_ = 0;
};

class RawPackedRing {
 public:
  RawPackedRing(FlatGuest& g, uint32_t size);
  QueueConfig config(uint64_t features, uint16_t index = 0) const;
  // Writes a descriptor; `avail` adds AVAIL/USED bits for wrap counter `wrap`.
  void SetDesc(uint16_t slot, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags, bool avail = true,
               bool wrap = true);
  PackedDesc desc(uint16_t slot);
  void SetDriverEvent(uint16_t off_wrap, uint16_t flags);
  PackedEventSuppress device_event();
  uint32_t size() const { return size_; }
  uint64_t ring() const { return ring_; }

 private:
  FlatGuest& g_;
  uint32_t size_;
  uint64_t ring_, driver_, device_;
};

// A split ring written by hand over any DriverTransport: its three areas
// come from the transport's DMA allocator, so the device sees them wherever
// that transport puts guest memory (a memfd, grants, a TCE window), and the
// descriptors say whatever the test writes, valid or not. Queue setup goes
// through the transport's own calls (status, features, EnableQueue).
class RawDriverRing {
 public:
  RawDriverRing(DriverTransport& t, uint16_t size = 8);
  ~RawDriverRing();  // frees what it allocated (the ring areas and Alloc's buffers)
  RawDriverRing(const RawDriverRing&) = delete;
  RawDriverRing& operator=(const RawDriverRing&) = delete;

  // Reset, ACKNOWLEDGE|DRIVER, VERSION_1 only, FEATURES_OK, queue `queue` on
  // this ring (zeroed first), DRIVER_OK. An error names the step refused.
  absl::Status Start(uint16_t queue = 0);
  // DMA memory for request buffers (zeroed), freed with the ring.
  absl::StatusOr<DmaBuffer> Alloc(size_t bytes, Access access);
  void SetDesc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0);
  // avail.ring[idx % size] = head, avail.idx + 1 (release), then notifies.
  void Publish(uint16_t head);
  uint16_t used_idx() const;
  VirtqUsedElem used(uint16_t slot) const;
  uint16_t queue() const { return queue_; }

 private:
  DriverTransport& t_;
  uint16_t size_;
  uint16_t queue_ = 0;
  uint16_t avail_idx_ = 0;
  DmaBuffer desc_{}, avail_{}, used_{};
  std::vector<DmaBuffer> buffers_;
};

}  // namespace vioport::testing
