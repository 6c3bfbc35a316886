// SPDX-License-Identifier: Apache-2.0
// Device side of a packed virtqueue (§2.8): wrap counters, chains, indirect
// tables, event suppression. Same contract as SplitDeviceQueue.
#pragma once

#include <vector>

#include "vioport/core/device_queue.h"
#include "vioport/core/inflight_log.h"

namespace vioport {

class PackedDeviceQueue final : public DeviceQueue {
 public:
  PackedDeviceQueue(const QueueConfig& cfg, GuestMemory* mem, QueueErrorHandler on_error);
  RingError Init();

  PopStatus Pop(DescriptorChain& out) override;
  void AddUsed(DescriptorChain&& chain, uint32_t written) override;
  bool Publish() override;
  uint32_t GetBase() const override;
  void SetBase(uint32_t base) override;

  // As SplitDeviceQueue::UseInflightLog. A recovered log also gives the ring
  // positions (a packed ring keeps none in memory): it overrides SetBase().
  absl::Status UseInflightLog(PackedInflightLog* log);
  size_t resubmit_pending() const override { return resubmit_.size() - resubmit_pos_; }

 private:
  bool DoEnableNotifications() override;
  void DoDisableNotifications() override;
  struct RawDesc {
    uint64_t addr;
    uint32_t len;
    uint16_t id;
    uint16_t flags;
  };
  static RawDesc Decode(const uint8_t* p);
  RingError Break(RingError e);
  bool IsAvail(uint16_t flags, bool wrap) const;
  // Copies the ring window starting at next_avail_ (copy-only memory).
  RingError FetchWindow();
  RingError ReadDesc(uint32_t slot, RawDesc* d);
  RingError ReadHeadFlags(uint16_t* flags);
  RingError WalkIndirect(const RawDesc& d, DescriptorChain& out, uint64_t& total);
  PopStatus PopLogged(uint16_t entry, DescriptorChain& out);  // a chain recovered from the log
  bool WriteDriverWord(uint64_t off, uint16_t v);  // device event suppression area
  bool ReadEvent(uint16_t* off_wrap, uint16_t* flags);

  uint8_t* ring_h_ = nullptr;     // null on copy-only memory
  uint8_t* driver_h_ = nullptr;   // driver event suppression (read)
  uint8_t* device_h_ = nullptr;   // device event suppression (write)
  bool event_idx_ = false;
  bool indirect_ = false;

  uint16_t next_avail_ = 0;
  bool avail_wrap_ = true;
  uint16_t next_used_ = 0;
  bool used_wrap_ = true;
  uint16_t published_used_ = 0;
  bool published_wrap_ = true;

  std::vector<uint8_t> in_flight_ids_;  // per buffer id: popped, not yet used

  // Used descriptors not yet visible: written at Publish, first one's flags last.
  struct PendingUsed {
    uint16_t slot;
    uint16_t id;
    uint32_t len;
    uint16_t flags;
  };
  std::vector<PendingUsed> used_pending_;
  std::vector<uint8_t> run_buf_;

  // Copy-only memory: a snapshot of ring slots [win_start_, win_start_ + win_len_).
  std::vector<uint8_t> window_;
  std::vector<uint8_t> window_first_;  // the first of FetchWindow's two copies
  uint32_t win_start_ = 0;
  uint32_t win_len_ = 0;
  bool win_wrap_ = true;
  std::vector<uint16_t> win_flags1_;  // head flags as the first copy saw them
  std::vector<uint8_t> indirect_buf_;

  // In-flight log (vhost-user INFLIGHT_SHMFD), when one is used.
  PackedInflightLog* log_ = nullptr;
  std::vector<uint16_t> log_entry_;                 // per buffer id in flight: its log entry
  std::vector<PackedInflightLog::Desc> pop_descs_;  // the chain being popped, as read
  std::vector<uint16_t> resubmit_;
  size_t resubmit_pos_ = 0;
  std::vector<uint16_t> batch_entries_;  // log entries of the used entries not yet published
};

}  // namespace vioport
