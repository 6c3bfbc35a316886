// SPDX-License-Identifier: Apache-2.0
// Raw ring writers: a driver that writes ring memory byte by byte, so tests
// and fuzz targets can build any ring, valid or hostile, for the device side.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "vioport/core/device_queue.h"
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

}  // namespace vioport::testing
