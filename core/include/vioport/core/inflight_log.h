// SPDX-License-Identifier: Apache-2.0
// A record of the chains a device has popped from a split ring and not yet
// completed, kept in memory that outlives the device process (a memfd the
// VMM holds on to). A device restarted after a crash reads it back and
// resubmits exactly those chains, so nothing the driver submitted is lost
// and nothing completed is done twice.
//
// The layout is the split-ring in-flight region that vhost-user's
// INFLIGHT_SHMFD protocol feature defines (virtio.md §7): a 16-byte header
// {features u64, version u16, desc_num u16, last_batch_head u16, used_idx u16}
// then one 16-byte entry per descriptor {inflight u8, pad[5], next u16,
// counter u64}. Any transport with memory that survives the device may use it.
//
// The memory is written by this process only, but a restarted device reads
// what a previous one (or the VMM) left there: everything read back is checked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace vioport {

class SplitInflightLog {
 public:
  static constexpr size_t kHeaderBytes = 16;
  static constexpr size_t kEntryBytes = 16;
  // Bytes one queue's log takes (rounded to 64 so queues never share a line).
  static size_t RegionBytes(uint32_t queue_size) { return (kHeaderBytes + kEntryBytes * queue_size + 63) & ~size_t{63}; }

  // `region` holds RegionBytes(queue_size) bytes and stays mapped while the log is used.
  SplitInflightLog(uint8_t* region, uint16_t queue_size) : p_(region), n_(queue_size) {}

  // A zeroed (never used) region: nothing to recover.
  bool fresh() const;
  // Starts a new log: no entries in flight, `used_idx` = the ring's used index.
  void Initialize(uint16_t used_idx);

  struct Recovery {
    uint16_t next_avail = 0;         // where popping from the avail ring resumes
    std::vector<uint16_t> resubmit;  // heads still in flight, oldest first
  };
  // Reads the log back after a restart. `ring_used_idx` is the used index in
  // the ring itself (what the driver can see): a batch whose used index was
  // stored but whose log entries were not yet cleared is taken as completed.
  // InvalidArgument if the log does not describe this queue.
  absl::StatusOr<Recovery> Recover(uint16_t ring_used_idx);

  // Hot path, in ring order: a head was popped; a batch of heads is about to
  // become visible (before the used index store); the batch is visible.
  void Popped(uint16_t head);
  void Completing(std::span<const uint16_t> heads);
  void Completed(std::span<const uint16_t> heads, uint16_t used_idx);

 private:
  uint8_t* entry(uint16_t i) const { return p_ + kHeaderBytes + kEntryBytes * i; }
  uint8_t* p_;
  uint16_t n_;
  uint64_t counter_ = 1;
};

}  // namespace vioport
