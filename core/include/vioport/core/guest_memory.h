// How the device side reaches driver-owned memory: map it (zero copy) or copy
// through the channel. Queues and backends use only this; transports implement it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"

namespace vioport {

enum class Access : uint8_t { kRead = 1, kWrite = 2, kReadWrite = 3 };

constexpr bool Allows(Access have, Access want) {
  return (static_cast<uint8_t>(have) & static_cast<uint8_t>(want)) == static_cast<uint8_t>(want);
}

// Addresses are whatever the driver puts in descriptors: guest-physical,
// IOVA or grant-encoded. Translation is the memory's business, not the queue's.
//
// Two kinds exist:
//  - mapped (zero_copy() == true): Map() returns host pointers, valid until the
//    memory object is destroyed. Shared memory, vhost-user regions, Xen grant map.
//  - copy-only (zero_copy() == false): Map() always returns nullptr and every
//    access goes through Read()/Write(). PowerVM H_COPY_RDMA, Xen grant copy.
// The queues run unchanged on both; on a copy-only memory they batch reads
// (a whole descriptor table, a run of avail entries) into one Read().
class GuestMemory {
 public:
  virtual ~GuestMemory() = default;

  virtual bool zero_copy() const = 0;

  // Host pointer for [addr, addr+len) if the whole range is mapped contiguously
  // with `access`; nullptr otherwise (outside memory, no permission, not
  // contiguous in the host, or a copy-only memory). len == 0 is allowed.
  virtual uint8_t* Map(uint64_t addr, uint64_t len, Access access) = 0;

  // Copies; work on every kind of memory. A range may span several regions.
  // Errors: OutOfRange (not in memory), PermissionDenied, Unavailable (channel).
  virtual absl::Status Read(uint64_t addr, void* dst, uint64_t len) = 0;
  virtual absl::Status Write(uint64_t addr, const void* src, uint64_t len) = 0;

  // Whether [addr, addr+len) is reachable with `access`, without touching it.
  // A copy-only memory may not know in advance and return true; its copies
  // report the error.
  virtual bool Accessible(uint64_t addr, uint64_t len, Access access) = 0;
};

// Guest memory made of host-mapped regions, each a contiguous range of
// addresses backed by host memory the caller keeps alive (an mmap of a memfd,
// a vector in a test). Used by shared-memory and vhost-user transports.
class RegionMemory final : public GuestMemory {
 public:
  struct Region {
    uint64_t addr;  // first address as the driver names it
    uint64_t size;
    uint8_t* host;
    Access access = Access::kReadWrite;
  };

  RegionMemory() = default;
  explicit RegionMemory(std::vector<Region> regions);

  // Fails with InvalidArgument on a zero-size, wrapping or overlapping region.
  absl::Status AddRegion(const Region& r);
  const std::vector<Region>& regions() const { return regions_; }

  bool zero_copy() const override { return true; }
  uint8_t* Map(uint64_t addr, uint64_t len, Access access) override;
  absl::Status Read(uint64_t addr, void* dst, uint64_t len) override;
  absl::Status Write(uint64_t addr, const void* src, uint64_t len) override;
  bool Accessible(uint64_t addr, uint64_t len, Access access) override;

 private:
  const Region* Find(uint64_t addr) const;
  template <typename Fn>
  absl::Status Walk(uint64_t addr, uint64_t len, Access access, Fn&& fn);

  // Sorted by addr, non-overlapping. Read-only after set-up, so queues on
  // several threads may share one RegionMemory.
  std::vector<Region> regions_;
};

// A copy-only view of another memory: Map() always fails, so everything goes
// through Read()/Write(), as over H_COPY_RDMA or Xen grant copy. Counts the
// copies, which lets tests and benchmarks check how well the queues batch.
class CopyOnlyMemory final : public GuestMemory {
 public:
  explicit CopyOnlyMemory(std::shared_ptr<GuestMemory> inner) : inner_(std::move(inner)) {}
  bool zero_copy() const override { return false; }
  uint8_t* Map(uint64_t, uint64_t, Access) override { return nullptr; }
  absl::Status Read(uint64_t addr, void* dst, uint64_t len) override {
    reads_.fetch_add(1, std::memory_order_relaxed);
    return inner_->Read(addr, dst, len);
  }
  absl::Status Write(uint64_t addr, const void* src, uint64_t len) override {
    writes_.fetch_add(1, std::memory_order_relaxed);
    return inner_->Write(addr, src, len);
  }
  bool Accessible(uint64_t addr, uint64_t len, Access access) override {
    return inner_->Accessible(addr, len, access);
  }
  uint64_t reads() const { return reads_.load(std::memory_order_relaxed); }
  uint64_t writes() const { return writes_.load(std::memory_order_relaxed); }

 private:
  std::shared_ptr<GuestMemory> inner_;
  std::atomic<uint64_t> reads_{0}, writes_{0};
};

}  // namespace vioport
