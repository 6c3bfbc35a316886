// SPDX-License-Identifier: Apache-2.0
// The device side's view of a CRQ client's memory (docs/transports/crq.md):
// a copy-only GuestMemory over H_COPY_RDMA between the client's window and
// bounce or staging buffers in the server's own. The server never maps the
// client's memory; CrqServer builds one per adapter.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "vioport/core/guest_memory.h"
#include "vioport/transports/crq_channel.h"

namespace vioport::crq {

inline constexpr uint32_t kMaxTransfer = 128 * 1024;

// The client's DMA window seen from the server: every access is H_COPY_RDMA
// between REMOTE (the client's LIOBN) and a bounce buffer in the server's own
// memory, mapped read|write in its LOCAL window. Errors: H_PERMISSION ->
// PermissionDenied, H_SOURCE_PARM / H_DEST_PARM / H_PARAMETER -> OutOfRange,
// anything else -> Unavailable. Used from the device's thread only.
class CrqCopyMemory final : public GuestMemory {
 public:
  CrqCopyMemory(Partition& p, Liobn local, Liobn remote, uint64_t bounce_ioba, uint8_t* bounce_host,
                uint32_t bounce_bytes, uint64_t remote_window_bytes);
  absl::Status Read(uint64_t addr, void* dst, uint64_t len) override;
  absl::Status Write(uint64_t addr, const void* src, uint64_t len) override;
  bool Accessible(uint64_t addr, uint64_t len, Access access) override;
  // Staging buffers: `count` slots of kMaxStaging bytes at staging_host,
  // mapped read|write at staging_ioba.. in LOCAL. A Read() into / Write()
  // from a slot copies between the client's window and the slot directly.
  void SetStaging(uint64_t staging_ioba, uint8_t* staging_host, uint32_t count);
  // Reads of up to kReadAheadMax bytes inside one 4 KiB page copy the whole
  // page once (one TCE: the same permission for all of it) and serve later
  // small reads in it from here until NewAvailableBatch() or a write to it.
  absl::Status ReadBuffer(uint64_t addr, void* dst, uint64_t len) override;
  void NewAvailableBatch() override;
  void set_read_ahead(bool on) { read_ahead_ = on; }
  uint64_t read_ahead_hits() const { return ra_hits_.load(std::memory_order_relaxed); }
  static constexpr uint64_t kReadAheadMax = 512;
  uint8_t* AcquireStaging(size_t bytes) override;
  void ReleaseStaging(uint8_t* buffer) override;
  uint32_t staging_slots() const { return staging_count_; }
  uint64_t direct_copies() const { return direct_.load(std::memory_order_relaxed); }  // no memcpy

  void set_max_transfer(uint32_t n) { max_transfer_ = n; }
  // How to tell a dead client from a hostile one when a copy answers
  // H_PERMISSION (PowerVM revokes a failed partner's window): true if the
  // client is gone. The failure is then a channel fault (Unavailable), not
  // an address the client refused us (PermissionDenied).
  void set_client_gone_probe(std::function<bool()> gone) { client_gone_ = std::move(gone); }
  uint64_t reads() const { return reads_.load(std::memory_order_relaxed); }    // Read() calls
  uint64_t writes() const { return writes_.load(std::memory_order_relaxed); }  // Write() calls
  uint64_t copies() const { return copies_.load(std::memory_order_relaxed); }  // H_COPY_RDMA calls
  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }    // bytes copied
  uint64_t failures() const { return failures_.load(std::memory_order_relaxed); }

 private:
  absl::Status Map(int64_t rc, uint64_t addr, uint64_t len, const char* what);
  // H_COPY_RDMA between the client's [addr, addr + len) and our LOCAL window
  // at local_ioba, split at the transfer size; with bounce_from, through the
  // bounce buffer from/to that host memory (never written when to_client).
  absl::Status Copy(bool to_client, uint64_t addr, uint64_t len, uint64_t local_ioba, uint8_t* bounce_from);
  // The IOBA of [p, p + len) if it lies in one staging slot, else 0.
  uint64_t StagingIoba(const void* p, uint64_t len) const;
  Partition& p_;
  Liobn local_, remote_;
  uint64_t bounce_ioba_;
  uint8_t* bounce_;
  uint32_t bounce_bytes_;
  uint64_t window_;
  uint32_t max_transfer_;
  std::function<bool()> client_gone_;
  uint64_t staging_ioba_ = 0;
  uint8_t* staging_ = nullptr;
  uint32_t staging_count_ = 0;
  std::vector<uint32_t> staging_free_;
  std::atomic<uint64_t> direct_{0};
  struct ReadAhead {
    bool valid = false;
    uint64_t page = 0;
    uint8_t data[4096];
  };
  static constexpr size_t kReadAheadPages = 4;
  std::unique_ptr<ReadAhead[]> ra_ = std::make_unique<ReadAhead[]>(kReadAheadPages);
  bool read_ahead_ = true;
  std::atomic<uint64_t> ra_hits_{0};
  std::atomic<uint64_t> reads_{0}, writes_{0}, copies_{0}, bytes_{0}, failures_{0};
};

}  // namespace vioport::crq
