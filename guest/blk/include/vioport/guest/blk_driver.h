// SPDX-License-Identifier: Apache-2.0
// virtio-blk guest driver (§5.2) over the core's driver model; any transport.
// Synchronous calls for tools and tests, an asynchronous queue API for load.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "vioport/core/driver.h"
#include "vioport/guest/wait.h"

namespace vioport {

struct BlkDriverOptions {
  uint64_t ring_features = 0;  // PACKED / INDIRECT / EVENT_IDX bits wanted
  uint16_t num_queues = 0;     // 0: as many as the device offers
  uint32_t queue_size = 0;     // 0: the device's maximum, capped at 256
  WaitPolicy wait;
};

struct BlkInfo {
  uint64_t capacity_sectors = 0;  // 512-byte sectors
  uint32_t blk_size = 512;
  uint32_t seg_max = 0;   // 0: not negotiated
  uint32_t size_max = 0;  // 0: not negotiated
  uint16_t num_queues = 0;
  bool read_only = false, flush = false, discard = false, write_zeroes = false;
  uint64_t features = 0;  // negotiated
  // Largest DISCARD / WRITE_ZEROES range per request (the sync calls split longer ones).
  uint32_t max_discard_sectors = 0, max_write_zeroes_sectors = 0;
};

enum class BlkOp : uint8_t { kRead, kWrite, kFlush, kDiscard, kWriteZeroes, kGetId };

struct BlkCompletion {
  uint64_t token;
  uint8_t status;  // virtio status: 0 OK, 1 IOERR, 2 UNSUPP (0xff: the device wrote none)
  uint32_t len;    // used length the device reported
};

class BlkDriver {
 public:
  explicit BlkDriver(DriverTransport& transport);
  ~BlkDriver();
  BlkDriver(const BlkDriver&) = delete;
  BlkDriver& operator=(const BlkDriver&) = delete;

  // Resets the device, negotiates, sets up the queues and reads the config.
  // Calling it again re-initialises (e.g. after DEVICE_NEEDS_RESET): requests
  // in flight are dropped and their buffers are the caller's again.
  absl::Status Init(const BlkDriverOptions& options);
  const BlkInfo& info() const { return info_; }

  // Synchronous. Any length that is a multiple of 512, split into requests
  // that respect size_max/seg_max and bounced through DMA memory. Status:
  // IOERR -> DataLoss, UNSUPP -> Unimplemented, DEVICE_NEEDS_RESET ->
  // Unavailable, no answer within WaitPolicy::timeout -> DeadlineExceeded.
  absl::Status Read(uint64_t sector, std::span<uint8_t> out, uint16_t queue = 0);
  absl::Status Write(uint64_t sector, std::span<const uint8_t> in, uint16_t queue = 0);
  // Without FLUSH negotiated the device has no volatile cache: returns OK at once.
  absl::Status Flush(uint16_t queue = 0);
  absl::Status Discard(uint64_t sector, uint32_t sectors);
  absl::Status WriteZeroes(uint64_t sector, uint32_t sectors, bool unmap);
  absl::StatusOr<std::string> GetId();

  // Asynchronous: data buffers come from AllocBuffer; one thread per queue.
  absl::StatusOr<DmaBuffer> AllocBuffer(size_t bytes);
  void FreeBuffer(const DmaBuffer& buffer);
  // Makes one request available without notifying. `len` is the data length
  // in bytes (kRead/kWrite: a multiple of 512 within `data`; kGetId: up to 20
  // bytes of `data` are written; kDiscard/kWriteZeroes: the range length, no
  // data; kFlush: 0). ResourceExhausted when the queue is full.
  absl::Status Submit(uint16_t queue, BlkOp op, uint64_t sector, const DmaBuffer* data, uint32_t len,
                      uint64_t token);
  // Publishes submitted requests; notifies if the device asked for it.
  void Kick(uint16_t queue);
  // Collects completions. `wait`: spin, then sleep, until at least one (an
  // error if nothing is in flight).
  absl::StatusOr<size_t> Reap(uint16_t queue, std::span<BlkCompletion> out, bool wait);

  VirtioDriver& driver() { return drv_; }

 private:
  struct QueueState;
  struct Done;
  // One request of a synchronous call.
  struct SyncPiece {
    BlkOp op;
    uint64_t sector;
    uint32_t bytes;    // data through the bounce buffer (read, write, get-id)
    uint32_t sectors;  // discard / write-zeroes range
    uint32_t flags;    // discard / write-zeroes segment flags
  };

  absl::Status CheckQueue(uint16_t queue) const;
  absl::Status Enqueue(uint16_t queue, const SyncPiece& p, uint64_t data_addr, bool sync, int32_t chunk,
                       uint64_t token, uint32_t gen);
  // Takes one used request off the queue (waiting if asked); false if none.
  absl::StatusOr<bool> PollOne(uint16_t queue, bool wait, Done* out);
  // Runs `count` requests on `queue`, several in flight at a time.
  absl::Status RunSync(uint16_t queue, size_t count, absl::FunctionRef<SyncPiece(size_t)> piece,
                       absl::FunctionRef<void(size_t, uint8_t*)> fill,
                       absl::FunctionRef<void(size_t, const uint8_t*)> done);
  absl::Status RangeOps(BlkOp op, uint64_t sector, uint32_t sectors, uint32_t flags);
  void FreeDma();

  DriverTransport& t_;
  VirtioDriver drv_;
  BlkDriverOptions opts_;
  BlkInfo info_;
  bool ready_ = false;
  uint32_t seg_limit_ = 1;         // data segments per request
  uint32_t seg_bytes_ = 0;         // bytes per data segment
  uint32_t chunk_bytes_ = 0;       // data bytes per synchronous request
  std::vector<std::unique_ptr<QueueState>> queues_;
};

}  // namespace vioport
