// SPDX-License-Identifier: Apache-2.0
// virtio-blk (§5.2) device backed by a regular file or a block device, with
// asynchronous I/O through one io_uring per virtqueue. Used by vios; any transport.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "vioport/core/blk_spec.h"
#include "vioport/core/device.h"

struct io_uring_sqe;

namespace vioport {

struct BlkOptions {
  std::string path;
  bool read_only = false;
  uint16_t num_queues = 1;
  uint16_t queue_size = 1024;  // max_queue_size() offered to the driver (QEMU allows up to 1024)
  std::string serial;         // GET_ID; empty: the path's basename (at most 20 bytes)
  uint32_t seg_max = 126;     // data segments per request; 0: not offered
  uint32_t size_max = 1 << 20;  // bytes per segment; 0: not offered
  // How reads and writes are issued. kIoUring: always through io_uring.
  // kInline: preadv/pwritev on the device thread. kAuto: inline when the
  // file lives in memory (tmpfs, ramfs: its reads and writes are memory
  // copies that never wait for a device, and io_uring would hand each one
  // to a kernel worker thread because tmpfs has no non-blocking I/O),
  // io_uring otherwise. FLUSH, DISCARD and WRITE_ZEROES ranges always use
  // io_uring.
  enum class Io : uint8_t { kAuto, kIoUring, kInline };
  Io io = Io::kAuto;
};

struct BlkCounters {
  std::atomic<uint64_t> reads{0}, writes{0}, flushes{0}, discards{0}, write_zeroes{0};
  std::atomic<uint64_t> get_ids{0}, unsupported{0};
  std::atomic<uint64_t> bytes_read{0}, bytes_written{0};
  std::atomic<uint64_t> errors{0};        // requests completed with IOERR or UNSUPP
  std::atomic<uint64_t> bad_requests{0};  // malformed requests that failed their queue
  std::atomic<uint64_t> resizes{0};       // capacity changes made by Resize (each announced to the driver)
};

class BlkDevice final : public VirtioDevice {
 public:
  // Opens the backing file (read-write, or read-only) and sets up one io_uring
  // per queue, all signalling one eventfd. Errors name the path and the errno.
  static absl::StatusOr<std::shared_ptr<BlkDevice>> Open(const BlkOptions& options);
  ~BlkDevice() override;
  BlkDevice(const BlkDevice&) = delete;
  BlkDevice& operator=(const BlkDevice&) = delete;

  DeviceId device_id() const override { return DeviceId::kBlock; }
  uint64_t device_features() const override { return features_; }
  uint16_t num_queues() const override { return opts_.num_queues; }
  uint16_t max_queue_size() const override { return opts_.queue_size; }
  uint32_t config_size() const override { return blk::kConfigSize; }
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override;

  absl::Status Activate(ActivateContext ctx) override;
  ActivateContext Reset() override;
  void QueueNotify(uint16_t queue) override;
  // Made on first use (a driver's loop asks when a guest attaches).
  int event_fd() const override;
  bool events_without_driver() const override { return false; }  // completions come from a driver's requests
  bool ProcessEvents() override;
  absl::Status Quiesce() override;
  absl::Status Drain() override;
  absl::Status CanHandOver() const override { return absl::OkStatus(); }  // reopened from its spec
  void AppendCounters(std::vector<std::pair<std::string, uint64_t>>* out) const override;

  // Changes the capacity at run time, like QEMU's block_resize. Callable from
  // any thread (vios's control thread) while the device serves requests on its
  // own: requests started afterwards are checked against the new capacity,
  // requests in flight complete. The driver learns of the change through a
  // config change (generation + config interrupt) that the device thread
  // raises on its next ProcessEvents(), which a write to event_fd() wakes.
  //   new_size_bytes == 0: take the backing file's / block device's current
  //     size (grown or shrunk by the operator), rounded down to 512 bytes.
  //   otherwise: a multiple of 512. A regular file opened read-write is
  //     truncated or extended to it; a read-only device or a block device
  //     cannot be changed from here, so the size must be what the backing
  //     has now (FailedPrecondition otherwise).
  // On error the capacity is unchanged.
  absl::Status Resize(uint64_t new_size_bytes) ABSL_LOCKS_EXCLUDED(resize_mu_, mu_);

  // Current capacity: any thread.
  uint64_t capacity_bytes() const { return capacity_.load(std::memory_order_acquire); }
  uint64_t capacity_sectors() const { return capacity_bytes() >> blk::kSectorShift; }
  bool inline_io() const { return inline_io_; }
  const BlkOptions& options() const { return opts_; }
  const BlkCounters& counters() const { return counters_; }

 private:
  struct Queue;    // per virtqueue: io_uring, request pool (src/blk_queue.h)
  struct Request;  // one popped chain and its I/O state

  BlkDevice(const BlkOptions& options, int fd, bool block_device, uint64_t capacity_bytes);
  absl::Status InitRings() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Pops, starts and completes requests of one queue until it is empty.
  void Drain(Queue& q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Start(Queue& q, Request& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartReadWrite(Queue& q, Request& r, bool write, uint64_t sector) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartDiscardWriteZeroes(Queue& q, Request& r, bool zeroes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartFlush(Queue& q, Request& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartGetId(Queue& q, Request& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues the next SQE of a request (read/write/zero-fill rest, fsync,
  // fallocate); on failure the request completes with IOERR.
  void Submit(Queue& q, Request& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  io_uring_sqe* GetSqe(Queue& q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SubmitPending(Queue& q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs the reads and writes queued for inline I/O (or drops them on reset).
  void RunInline(Queue& q, bool drop) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BuildZeroIov(Request& r);
  // Reaps what the ring holds; with `drop` (reset) completions are discarded.
  bool Reap(Queue& q, bool drop) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnCompletion(Queue& q, Request& r, int res, bool drop) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseFlushes(Queue& q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Release(Queue& q, Request& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void ReleaseStaging(Request& r);
  // A chain whose copy faulted: returning it breaks the queue (no status written).
  void Abandon(Queue& q, Request& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Finish(Queue& q, Request& r, uint8_t status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailQueue(Queue& q, Request& r, const char* why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishIfNeeded(Queue& q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Submits and reaps until nothing of q is in flight (Reset, Quiesce).
  void WaitIdle(Queue& q, bool drop) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LogIoError(const char* what, int err) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The backing's current size in bytes (fstat, or BLKGETSIZE64 for a block device).
  absl::Status BackingSize(uint64_t* bytes) const;
  // Waits for the writes in flight that reach past `end` (a shrink must not
  // be undone by a write the old capacity let through).
  void WaitWritesBeyond(uint64_t end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const BlkOptions opts_;
  const int fd_;
  const bool block_device_;  // the backing is a block device (else a regular file)
  // Bytes, a multiple of 512. Written by Resize (any thread), read by request
  // checks and ReadConfig on the device thread: an atomic, never a copy.
  std::atomic<uint64_t> capacity_;
  // Set by Resize; the device thread consumes it in ProcessEvents and tells
  // the driver (NotifyConfigChanged must run on the device thread).
  std::atomic<bool> resize_pending_{false};
  // Serialises Resize calls: size check, ftruncate and capacity go together.
  absl::Mutex resize_mu_;
  mutable absl::Mutex efd_mu_;
  mutable std::atomic<int> event_fd_{-1};
  bool rings_ready_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t features_ = 0;
  blk::Config config_{};  // fixed after construction, except capacity: ReadConfig takes capacity_
  std::vector<uint8_t> zeroes_;  // source of WRITE_ZEROES when fallocate cannot
  bool inline_io_ = false;       // BlkOptions::io resolved at Open

  absl::Mutex mu_ ABSL_ACQUIRED_AFTER(resize_mu_);
  ActivateContext ctx_ ABSL_GUARDED_BY(mu_);
  bool active_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::unique_ptr<Queue>> queues_;  // fixed after Open; contents guarded by mu_
  bool punch_hole_unsupported_ ABSL_GUARDED_BY(mu_) = false;
  bool zero_range_unsupported_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t io_errors_logged_ ABSL_GUARDED_BY(mu_) = 0;
  BlkCounters counters_;
};

}  // namespace vioport
