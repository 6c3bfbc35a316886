// SPDX-License-Identifier: Apache-2.0
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

  bool zero_copy() const { return zero_copy_; }

  // Host pointer for [addr, addr+len) if the whole range is mapped contiguously
  // with `access`; nullptr otherwise (outside memory, no permission, not
  // contiguous in the host, or a copy-only memory). len == 0 is allowed.
  // Inline for a memory that is one flat mapping (the common case on the
  // ring hot path); otherwise the implementation's DoMap().
  uint8_t* Map(uint64_t addr, uint64_t len, Access access) {
    if (flat_host_) {
      const uint64_t off = addr - flat_addr_;  // wraps to huge when addr < base
      if (off < flat_size_ && len <= flat_size_ - off && Allows(flat_access_, access)) return flat_host_ + off;
      if (flat_only_) return nullptr;
    }
    return zero_copy_ ? DoMap(addr, len, access) : nullptr;
  }

  // Copies; work on every kind of memory. A range may span several regions.
  // Errors: OutOfRange (not in memory), PermissionDenied, Unavailable (channel).
  virtual absl::Status Read(uint64_t addr, void* dst, uint64_t len) = 0;
  virtual absl::Status Write(uint64_t addr, const void* src, uint64_t len) = 0;

  // Whether [addr, addr+len) is reachable with `access`, without touching it.
  // A copy-only memory may not know in advance and return true; its copies
  // report the error.
  virtual bool Accessible(uint64_t addr, uint64_t len, Access access) = 0;

  // Staging buffers (copy-only memories may offer them): host memory the
  // channel copies to and from directly, so a Read() into one or a Write()
  // from one skips the memory's own intermediate copy. For PowerVM these are
  // pages of the server's own DMA window: H_COPY_RDMA moves the data between
  // the client's buffer and the backend's, with no memcpy through a private
  // bounce buffer. AcquireStaging returns a buffer of at least `bytes`
  // (<= kMaxStaging), or nullptr if none is free or the memory has none;
  // callers then use ordinary memory, which works the same, one copy slower.
  // Give every buffer back with ReleaseStaging before the memory goes.
  static constexpr size_t kMaxStaging = 256 << 10;

  // Reads of a chain's buffers (never of the rings) come through here, so a
  // copy-only memory may serve small ones from a read-ahead of the page
  // around them: one copy brings in the request headers of a whole batch.
  // Such data is only as fresh as the last NewAvailableBatch().
  virtual absl::Status ReadBuffer(uint64_t addr, void* dst, uint64_t len) { return Read(addr, dst, len); }
  // The device is about to look for newly available buffers (a split ring's
  // avail index, a packed ring's descriptor flags): anything read ahead may
  // be older than the chains it will find, so it is dropped. A chain is only
  // read after the look that found it, so what ReadBuffer serves is never
  // older than the chain.
  virtual void NewAvailableBatch() {}
  virtual uint8_t* AcquireStaging(size_t /*bytes*/) { return nullptr; }
  virtual void ReleaseStaging(uint8_t* /*buffer*/) {}

 protected:
  explicit GuestMemory(bool zero_copy) : zero_copy_(zero_copy) {}
  // Mapping for memories that are not (only) one flat range.
  virtual uint8_t* DoMap(uint64_t /*addr*/, uint64_t /*len*/, Access /*access*/) { return nullptr; }
  // Declares [addr, addr+size) -> host as one flat mapping for the inline
  // path of Map(). `only`: nothing else is mapped (skip DoMap on a miss).
  // Set during set-up only, before queues use the memory.
  void SetFlatMapping(uint64_t addr, uint64_t size, uint8_t* host, Access access, bool only) {
    flat_addr_ = addr;
    flat_size_ = size;
    flat_host_ = host;
    flat_access_ = access;
    flat_only_ = only;
  }
  void ClearFlatMapping() { flat_host_ = nullptr; }

 private:
  const bool zero_copy_;
  uint8_t* flat_host_ = nullptr;
  uint64_t flat_addr_ = 0, flat_size_ = 0;
  Access flat_access_ = Access::kReadWrite;
  bool flat_only_ = false;
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

  RegionMemory() : GuestMemory(true) {}
  explicit RegionMemory(std::vector<Region> regions);

  // Fails with InvalidArgument on a zero-size, wrapping or overlapping region.
  absl::Status AddRegion(const Region& r);
  const std::vector<Region>& regions() const { return regions_; }

  absl::Status Read(uint64_t addr, void* dst, uint64_t len) override;
  absl::Status Write(uint64_t addr, const void* src, uint64_t len) override;
  bool Accessible(uint64_t addr, uint64_t len, Access access) override;

 protected:
  uint8_t* DoMap(uint64_t addr, uint64_t len, Access access) override;

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
  explicit CopyOnlyMemory(std::shared_ptr<GuestMemory> inner) : GuestMemory(false), inner_(std::move(inner)) {}
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
