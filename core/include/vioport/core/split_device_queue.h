// SPDX-License-Identifier: Apache-2.0
// Device side of a split virtqueue (§2.7): pops validated chains, writes used
// entries. Runs on mapped memory through host pointers and on copy-only
// memory through batched copies (one copy per run of avail entries, one per
// descriptor table, one per run of used entries).
#pragma once

#include <vector>

#include "vioport/core/device_queue.h"
#include "vioport/core/inflight_log.h"

namespace vioport {

class SplitDeviceQueue final : public DeviceQueue {
 public:
  SplitDeviceQueue(const QueueConfig& cfg, GuestMemory* mem, QueueErrorHandler on_error);
  // Checks size and alignment; maps the three areas on zero-copy memory.
  RingError Init();

  PopStatus Pop(DescriptorChain& out) override;
  void AddUsed(DescriptorChain&& chain, uint32_t written) override;
  bool Publish() override;
  uint32_t GetBase() const override { return next_avail_; }
  void SetBase(uint32_t base) override;

  // Keeps `log` (which must outlive the queue) up to date from now on. After
  // SetBase(): a fresh log is started at the ring's used index; a log written
  // by an earlier device is recovered: popping resumes after the chains it
  // still holds, and those are popped again first, oldest first.
  absl::Status UseInflightLog(SplitInflightLog* log);
  // Chains recovered from the log not yet popped again.
  size_t resubmit_pending() const override { return resubmit_.size() - resubmit_pos_; }

 private:
  bool DoEnableNotifications() override;
  void DoDisableNotifications() override;
  struct RawDesc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
  };

  uint16_t Ord16(uint16_t v) const;
  template <typename T>
  T ToRing(T v) const;  // native -> the ring's byte order
  void EncodeUsedElem(uint8_t* p, uint32_t id, uint32_t len) const;
  RawDesc Decode(const uint8_t* p) const;

  RingError Break(RingError e);
  bool LoadAvailIdx(uint16_t* idx);  // false on memory fault (queue broken)
  RingError FetchAvail(uint16_t from, uint16_t to);
  RingError ReadHead(uint16_t slot, uint16_t* head);
  RingError ReadDesc(uint16_t i, RawDesc* d);
  PopStatus WalkChain(uint16_t head, DescriptorChain& out);
  RingError WalkIndirect(const RawDesc& d, DescriptorChain& out, uint64_t& total);
  bool Load16(uint8_t* host, uint64_t addr, uint16_t* v);
  bool Store16(uint8_t* host, uint64_t addr, uint16_t v);

  uint8_t* desc_h_ = nullptr;   // null on copy-only memory
  uint8_t* avail_h_ = nullptr;
  uint8_t* used_h_ = nullptr;
  bool event_idx_ = false;
  bool indirect_ = false;
  uint16_t next_avail_ = 0;      // next avail ring entry to consume
  uint16_t avail_shadow_ = 0;    // last avail idx read from the driver
  uint16_t next_used_ = 0;       // used idx after the entries added so far
  uint16_t published_used_ = 0;  // used idx the driver can see

  // Copy-only memory: shadows filled by one copy each.
  std::vector<uint16_t> avail_cache_;  // indexed by slot
  std::vector<uint8_t> desc_cache_;    // whole descriptor table
  bool desc_cache_valid_ = false;
  struct PendingUsed {
    uint16_t slot;
    uint32_t id;
    uint32_t len;
  };
  std::vector<PendingUsed> used_pending_;
  std::vector<uint8_t> run_buf_;
  std::vector<uint8_t> indirect_buf_;

  SplitInflightLog* log_ = nullptr;
  std::vector<uint16_t> resubmit_;
  size_t resubmit_pos_ = 0;
  std::vector<uint16_t> batch_heads_;  // added since the last Publish (log only)
};

}  // namespace vioport
