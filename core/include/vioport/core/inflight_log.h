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
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "absl/functional/function_ref.h"
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

// The same record for a packed ring, in the packed in-flight region of
// vhost-user's INFLIGHT_SHMFD (virtio.md §7): a 32-byte header
//   {features u64, version u16, desc_num u16, free_head u16, old_free_head u16,
//    used_idx u16, old_used_idx u16, used_wrap_counter u8,
//    old_used_wrap_counter u8, pad[7]}
// then desc_num 32-byte entries
//   {inflight u8, completing u8, next u16, last u16, num u16, counter u64,
//    id u16, flags u16, len u32, addr u64}.
//
// A packed ring has no used index in memory and the device writes used
// descriptors over the slots the driver filled, so after out-of-order
// completions the ring no longer holds the descriptors of chains still in
// flight. The log therefore keeps a copy of every descriptor of every chain in
// flight (a chain takes `num` entries linked by `next`; its head has
// inflight = 1 and the pop counter), and the used position with its wrap
// counter. The VMM cannot say where a packed ring stood after a crash (QEMU
// re-sends the position of the last start), so a recovered log also gives the
// avail position: the used position plus the slots of the chains in flight.
//
// Publishing a batch is made crash-safe with the old_* fields: the batch's
// heads get completing = 1 and used_idx/used_wrap_counter the new position;
// the used descriptors go into the ring, the first one's flags last; then the
// heads are cleared and old_used_idx/old_used_wrap_counter catch up. Recovery
// finds a batch half done when the two positions differ and reads the USED bit
// of the batch's first ring slot: it equals the old wrap counter once the batch
// is visible (and stays so even after the driver refills the slot), so the
// batch is either completed or still in flight, never both and never lost.
// `completing` sits in the spec's padding byte. The free list is private
// (rebuilt at recovery); what the hot path reads is never the shared memory.
class PackedInflightLog {
 public:
  static constexpr size_t kHeaderBytes = 32;
  static constexpr size_t kEntryBytes = 32;
  static size_t RegionBytes(uint32_t queue_size) { return (kHeaderBytes + kEntryBytes * queue_size + 63) & ~size_t{63}; }

  PackedInflightLog(uint8_t* region, uint16_t queue_size);

  struct Desc {
    uint64_t addr = 0;
    uint32_t len = 0;
    uint16_t id = 0;
    uint16_t flags = 0;
  };

  bool fresh() const;
  // Starts a new log at the ring's used position; nothing in flight.
  void Initialize(uint16_t used_idx, bool used_wrap);

  struct Recovery {
    uint16_t used_idx = 0;  // where the device's used descriptors resume
    bool used_wrap = true;
    uint16_t next_avail = 0;  // where popping from the ring resumes
    bool avail_wrap = true;
    std::vector<uint16_t> resubmit;  // log entries heading chains in flight, oldest first
  };
  // Reads the log back after a restart. `slot_used(slot, wrap)` says whether
  // ring slot `slot` holds a used descriptor of wrap counter `wrap` (nullopt:
  // the ring cannot be read). InvalidArgument if the log does not describe
  // this queue or is inconsistent.
  absl::StatusOr<Recovery> Recover(absl::FunctionRef<std::optional<bool>(uint16_t slot, bool wrap)> slot_used);
  // A recovered chain's descriptors, in ring order (`head` from Recovery).
  void ReadChain(uint16_t head, std::vector<Desc>* out) const;

  // Hot path. A chain was popped with these ring descriptors: returns the log
  // entry heading it, or -1 if the log has no room (more descriptors in
  // flight than the ring has slots: only a misbehaving driver gets there).
  int Popped(std::span<const Desc> descs);
  // A batch of chains (by head entry) is about to be written to the ring; the
  // used position after it.
  void Completing(std::span<const uint16_t> heads, uint16_t used_idx, bool used_wrap);
  // The batch is visible in the ring.
  void Completed(std::span<const uint16_t> heads);

  // Tests only: called at each point a crash leaves a distinct state
  // (1: batch marked, 2: batch visible, 3: batch cleared).
  std::function<void(int)> step_hook;

 private:
  uint8_t* entry(uint16_t i) const { return p_ + kHeaderBytes + kEntryBytes * i; }
  void Link(uint16_t from, uint16_t to);
  void Hook(int step) {
    if (step_hook) step_hook(step);
  }
  uint8_t* p_;
  uint16_t n_;
  uint64_t counter_ = 1;
  // Private copies: chain links, lengths and the free list.
  std::vector<uint16_t> next_, len_, last_;
  uint16_t free_head_ = 0;
  uint32_t free_count_ = 0;
  uint16_t batch_used_ = 0;  // the position Completing() stored
  bool batch_wrap_ = true;
};

}  // namespace vioport
