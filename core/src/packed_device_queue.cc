// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/packed_device_queue.h"

#include <atomic>
#include <boost/endian/conversion.hpp>
#include <cstring>

#include "ring_access.h"
#include "vioport/core/spec.h"

namespace vioport {
namespace be = boost::endian;
using namespace internal;

namespace {
constexpr uint32_t kWindow = 64;  // ring slots fetched per copy on copy-only memory

void EncodeUsed(uint8_t* p, uint16_t id, uint32_t len) {
  uint32_t l = be::native_to_little(len);
  uint16_t i = be::native_to_little(id);
  std::memset(p, 0, 8);  // addr is not used in a used descriptor
  std::memcpy(p + 8, &l, 4);
  std::memcpy(p + 12, &i, 2);
}
}  // namespace

PackedDeviceQueue::PackedDeviceQueue(const QueueConfig& cfg, GuestMemory* mem, QueueErrorHandler on_error)
    : DeviceQueue(cfg, mem, std::move(on_error)) {
  event_idx_ = feature::Has(cfg.features, feature::kEventIdx);
  indirect_ = feature::Has(cfg.features, feature::kIndirectDesc);
}

PackedDeviceQueue::RawDesc PackedDeviceQueue::Decode(const uint8_t* p) {
  uint8_t b[16];
  std::memcpy(b, p, 16);
  RawDesc d;
  std::memcpy(&d.addr, b, 8);
  std::memcpy(&d.len, b + 8, 4);
  std::memcpy(&d.id, b + 12, 2);
  std::memcpy(&d.flags, b + 14, 2);
  d.addr = be::little_to_native(d.addr);
  d.len = be::little_to_native(d.len);
  d.id = be::little_to_native(d.id);
  d.flags = be::little_to_native(d.flags);
  return d;
}

RingError PackedDeviceQueue::Init() {
  const uint32_t n = cfg_.size;
  if (n == 0 || n > kMaxQueueSize) return RingError::kBadQueueSize;
  if (cfg_.desc_addr % 16 || cfg_.driver_addr % 4 || cfg_.device_addr % 4) return RingError::kRingMisaligned;
  if (mem_->zero_copy()) {
    ring_h_ = mem_->Map(cfg_.desc_addr, 16ull * n, Access::kReadWrite);
    driver_h_ = mem_->Map(cfg_.driver_addr, 4, Access::kRead);
    device_h_ = mem_->Map(cfg_.device_addr, 4, Access::kReadWrite);
    if (!ring_h_ || !driver_h_ || !device_h_) {
      // Reachable but not mappable now (a full grant-map table): the ring
      // goes through the memory's copies instead.
      ring_h_ = driver_h_ = device_h_ = nullptr;
      if (!mem_->Accessible(cfg_.desc_addr, 16ull * n, Access::kReadWrite) ||
          !mem_->Accessible(cfg_.driver_addr, 4, Access::kRead) ||
          !mem_->Accessible(cfg_.device_addr, 4, Access::kReadWrite))
        return RingError::kAddressOutOfRange;
    }
  }
  if (!ring_h_) {
    window_.resize(16 * kWindow);
    window_first_.resize(16 * kWindow);
  }
  in_flight_ids_.assign(n, 0);
  return RingError::kNone;
}

RingError PackedDeviceQueue::Break(RingError e) {
  Fail(e);
  return e;
}

bool PackedDeviceQueue::IsAvail(uint16_t flags, bool wrap) const {
  // §2.8.1: available when AVAIL == wrap and USED != wrap.
  return bool(flags & desc_flag::kAvail) == wrap && bool(flags & desc_flag::kUsed) != wrap;
}

RingError PackedDeviceQueue::FetchWindow() {
  // Two copies: the first shows which heads are available; after an acquire
  // fence the second holds consistent contents for those chains (the driver
  // writes a chain's head flags last).
  const uint32_t w = std::min<uint32_t>(kWindow, cfg_.size - next_avail_);
  const uint64_t addr = cfg_.desc_addr + 16ull * next_avail_;
  mem_->NewAvailableBatch();
  std::vector<uint8_t>& first = window_first_;  // sized 16 * kWindow at Init
  absl::Status s = mem_->Read(addr, first.data(), 16ull * w);
  if (!s.ok()) return RingErrorFromMemoryStatus(s);
  std::atomic_thread_fence(std::memory_order_acquire);
  s = mem_->Read(addr, window_.data(), 16ull * w);
  if (!s.ok()) return RingErrorFromMemoryStatus(s);
  win_start_ = next_avail_;
  win_len_ = w;
  win_wrap_ = avail_wrap_;
  // Heads are trusted only where the first copy saw them available.
  win_flags1_.resize(w);
  for (uint32_t i = 0; i < w; ++i) {
    uint16_t f;
    std::memcpy(&f, &first[16 * i + 14], 2);
    win_flags1_[i] = be::little_to_native(f);
  }
  return RingError::kNone;
}

RingError PackedDeviceQueue::ReadHeadFlags(uint16_t* flags) {
  if (ring_h_) {
    *flags = be::little_to_native(AtomicLoad16(ring_h_ + 16ull * next_avail_ + 14, std::memory_order_acquire));
    return RingError::kNone;
  }
  bool in_window = win_len_ && win_wrap_ == avail_wrap_ && next_avail_ >= win_start_ &&
                   next_avail_ < win_start_ + win_len_;
  if (!in_window || !IsAvail(win_flags1_[next_avail_ - win_start_], avail_wrap_)) {
    if (RingError e = FetchWindow(); e != RingError::kNone) return e;
    if (!IsAvail(win_flags1_[0], avail_wrap_)) {
      *flags = win_flags1_[0];
      return RingError::kNone;
    }
  }
  uint16_t f;  // contents from the second, consistent copy
  std::memcpy(&f, &window_[16 * (next_avail_ - win_start_) + 14], 2);
  *flags = be::little_to_native(f);
  return RingError::kNone;
}

RingError PackedDeviceQueue::ReadDesc(uint32_t slot, RawDesc* d) {
  if (ring_h_) {
    *d = Decode(ring_h_ + 16ull * slot);
    return RingError::kNone;
  }
  if (win_len_ && win_wrap_ == avail_wrap_ && slot >= win_start_ && slot < win_start_ + win_len_) {
    *d = Decode(&window_[16 * (slot - win_start_)]);
    return RingError::kNone;
  }
  uint8_t b[16];
  absl::Status s = mem_->Read(cfg_.desc_addr + 16ull * slot, b, 16);
  if (!s.ok()) return RingErrorFromMemoryStatus(s);
  *d = Decode(b);
  return RingError::kNone;
}

RingError PackedDeviceQueue::WalkIndirect(const RawDesc& d, DescriptorChain& out, uint64_t& total) {
  // §2.8.9: a table of packed descriptors, used in order; only WRITE is valid.
  if (d.len == 0 || d.len % 16 != 0) return RingError::kIndirectBadLength;
  const uint32_t entries = d.len / 16;
  if (entries > 65535) return RingError::kIndirectTooLarge;
  const uint8_t* table = mem_->zero_copy() ? mem_->Map(d.addr, d.len, Access::kRead) : nullptr;
  if (!table) {
    indirect_buf_.resize(d.len);
    absl::Status s = mem_->Read(d.addr, indirect_buf_.data(), d.len);
    if (!s.ok()) return RingErrorFromMemoryStatus(s);
    table = indirect_buf_.data();
  }
  for (uint32_t j = 0; j < entries; ++j) {
    RawDesc e = Decode(table + 16ull * j);  // guest-controlled
    if (e.flags & desc_flag::kIndirect) return RingError::kNestedIndirect;
    RingError r = AppendSegment(out, e.addr, e.len, e.flags & desc_flag::kWrite, total);
    if (r != RingError::kNone) return r;
  }
  return RingError::kNone;
}

PopStatus PackedDeviceQueue::Pop(DescriptorChain& out) {
  if (broken()) return PopStatus::kError;
  if (resubmit_pos_ < resubmit_.size()) return PopLogged(resubmit_[resubmit_pos_++], out);
  const uint32_t n = cfg_.size;
  uint16_t head_flags;  // guest-controlled
  if (RingError e = ReadHeadFlags(&head_flags); e != RingError::kNone) {
    Break(e);
    return PopStatus::kError;
  }
  if (!IsAvail(head_flags, avail_wrap_)) return PopStatus::kEmpty;

  FillChainHeader(out, 0, 0);
  uint32_t slot = next_avail_;
  bool wrap = avail_wrap_;
  uint32_t slots = 0;
  uint64_t total = 0;
  uint16_t id = 0;
  RingError r = RingError::kNone;
  if (log_) pop_descs_.clear();
  for (;;) {
    if (++slots > n) {
      r = RingError::kChainTooLong;
      break;
    }
    RawDesc d;  // guest-controlled
    if ((r = ReadDesc(slot, &d)) != RingError::kNone) break;
    if (slots == 1) d.flags = head_flags;  // validate what was seen available
    if (log_) pop_descs_.push_back({d.addr, d.len, d.id, d.flags});
    if (++slot == n) {
      slot = 0;
      wrap = !wrap;
    }
    if (d.flags & desc_flag::kIndirect) {
      if (!indirect_) r = RingError::kIndirectNotNegotiated;
      else if ((d.flags & desc_flag::kNext) || slots > 1) r = RingError::kIndirectWithNext;
      else r = WalkIndirect(d, out, total);
      id = d.id;
      break;
    }
    if ((r = AppendSegment(out, d.addr, d.len, d.flags & desc_flag::kWrite, total)) != RingError::kNone) break;
    if (!(d.flags & desc_flag::kNext)) {
      id = d.id;  // §2.8.6: the buffer id is in the last descriptor
      break;
    }
  }
  if (r == RingError::kNone && (id >= n || in_flight_ids_[id])) r = RingError::kBadBufferId;
  int entry = 0;
  // More descriptors in flight than the ring has slots: the driver offered
  // slots the device had not given back.
  if (r == RingError::kNone && log_ && (entry = log_->Popped(pop_descs_)) < 0) r = RingError::kAvailIndexJump;
  if (r != RingError::kNone) {
    out.Clear();
    Break(r);
    return PopStatus::kError;
  }
  if (log_) log_entry_[id] = static_cast<uint16_t>(entry);
  in_flight_ids_[id] = 1;
  out.id_ = id;
  out.ring_slots_ = static_cast<uint16_t>(slots);
  next_avail_ = static_cast<uint16_t>(slot);
  avail_wrap_ = wrap;
  in_flight_++;
  counters_.popped++;
  MarkPopped(id);
  return PopStatus::kChain;
}

void PackedDeviceQueue::AddUsed(DescriptorChain&& chain, uint32_t written) {
  const uint16_t id = chain.id_;
  const uint16_t slots = chain.ring_slots_;
  const bool has_writable = chain.writable_bytes_ > 0;
  const bool ours = chain.owner_ == this && chain.epoch_ == epoch_;
  if (!AcceptUsed(chain, written)) {
    if (ours && id < in_flight_ids_.size()) in_flight_ids_[id] = 0;
    return;
  }
  in_flight_ids_[id] = 0;
  if (log_) batch_entries_.push_back(log_entry_[id]);
  uint16_t flags = used_wrap_ ? (desc_flag::kAvail | desc_flag::kUsed) : 0;
  if (has_writable) flags |= desc_flag::kWrite;  // §2.8.7: len is valid
  PendingUsed& u = used_pending_.emplace_back();  // in place: see AppendSegment
  u.slot = next_used_;
  u.id = id;
  u.len = written;
  u.flags = flags;
  uint32_t next = uint32_t{next_used_} + slots;
  if (next >= cfg_.size) {
    next -= cfg_.size;
    used_wrap_ = !used_wrap_;
  }
  next_used_ = static_cast<uint16_t>(next);
}

bool PackedDeviceQueue::Publish() {
  if (broken() || used_pending_.empty()) return false;
  const PendingUsed& first = used_pending_.front();
  if (log_) log_->Completing(batch_entries_, next_used_, used_wrap_);
  if (ring_h_) {
    // Later entries first; the first entry's flags last, with release: the
    // driver polls the first slot and then finds the rest complete.
    for (size_t k = used_pending_.size(); k-- > 0;) {
      const PendingUsed& u = used_pending_[k];
      uint8_t* p = ring_h_ + 16ull * u.slot;
      const uint32_t len = be::native_to_little(u.len);
      const uint16_t id = be::native_to_little(u.id);
      std::memcpy(p + 8, &len, 4);
      std::memcpy(p + 12, &id, 2);
      if (k != 0) AtomicStore16(p + 14, be::native_to_little(u.flags), std::memory_order_relaxed);
    }
    AtomicStore16(ring_h_ + 16ull * first.slot + 14, be::native_to_little(first.flags), std::memory_order_release);
  } else {
    // Copy-only memory: the first entry's len and id in one copy; the other
    // entries in one copy per run of adjacent slots (1-descriptor chains make
    // one run); then, after a barrier, the first entry's flags.
    uint8_t e[16];
    EncodeUsed(e, first.id, first.len);
    absl::Status s = mem_->Write(cfg_.desc_addr + 16ull * first.slot + 8, e + 8, 6);
    for (size_t i = 1; s.ok() && i < used_pending_.size();) {
      size_t j = i + 1;
      while (j < used_pending_.size() && used_pending_[j].slot == used_pending_[j - 1].slot + 1) j++;
      run_buf_.resize(16 * (j - i));
      for (size_t k = i; k < j; ++k) {
        uint8_t* p = &run_buf_[16 * (k - i)];
        EncodeUsed(p, used_pending_[k].id, used_pending_[k].len);
        const uint16_t f = be::native_to_little(used_pending_[k].flags);
        std::memcpy(p + 14, &f, 2);
      }
      s = mem_->Write(cfg_.desc_addr + 16ull * used_pending_[i].slot, run_buf_.data(), run_buf_.size());
      i = j;
    }
    if (s.ok()) {
      std::atomic_thread_fence(std::memory_order_release);
      const uint16_t f = be::native_to_little(first.flags);
      s = mem_->Write(cfg_.desc_addr + 16ull * first.slot + 14, &f, 2);
    }
    if (!s.ok()) {
      Break(RingErrorFromMemoryStatus(s));
      return false;
    }
  }
  used_pending_.clear();
  if (log_) {
    log_->Completed(batch_entries_);
    batch_entries_.clear();
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);

  uint16_t old = published_used_;
  const uint16_t now = next_used_;
  published_used_ = next_used_;
  published_wrap_ = used_wrap_;
  counters_.publishes++;

  uint16_t off_wrap, flags;  // guest-controlled
  if (!ReadEvent(&off_wrap, &flags)) return false;
  bool need;
  const uint16_t mode = flags & 3;
  if (mode == packed_event::kDisable) {
    need = false;
  } else if (mode != packed_event::kDesc || !event_idx_) {
    need = true;
  } else {
    // §2.8.10: the event offset is in the driver's wrap; move it into ours.
    uint16_t off = off_wrap & 0x7fff;
    const uint16_t n = static_cast<uint16_t>(cfg_.size);
    if (now <= old) old = static_cast<uint16_t>(old - n);
    if (used_wrap_ != bool(off_wrap >> 15)) off = static_cast<uint16_t>(off - n);
    need = VringNeedEvent(off, now, old);
  }
  (need ? counters_.interrupts_wanted : counters_.interrupts_suppressed)++;
  return need;
}

bool PackedDeviceQueue::ReadEvent(uint16_t* off_wrap, uint16_t* flags) {
  // Read flags, then a read barrier, then off_wrap (§2.8.10).
  if (driver_h_) {
    *flags = be::little_to_native(AtomicLoad16(driver_h_ + 2, std::memory_order_acquire));
    *off_wrap = be::little_to_native(AtomicLoad16(driver_h_, std::memory_order_relaxed));
    return true;
  }
  uint16_t raw[2];
  absl::Status s = mem_->Read(cfg_.driver_addr, raw, 4);
  if (!s.ok()) {
    Break(RingErrorFromMemoryStatus(s));
    return false;
  }
  *off_wrap = be::little_to_native(raw[0]);
  *flags = be::little_to_native(raw[1]);
  return true;
}

bool PackedDeviceQueue::WriteDriverWord(uint64_t off, uint16_t v) {
  v = be::native_to_little(v);
  if (device_h_) {
    AtomicStore16(device_h_ + off, v, std::memory_order_release);
    return true;
  }
  absl::Status s = mem_->Write(cfg_.device_addr + off, &v, 2);
  if (!s.ok()) {
    Break(RingErrorFromMemoryStatus(s));
    return false;
  }
  return true;
}

bool PackedDeviceQueue::DoEnableNotifications() {
  if (broken()) return false;
  if (event_idx_) {
    if (!WriteDriverWord(0, static_cast<uint16_t>(next_avail_ | (avail_wrap_ ? 0x8000 : 0)))) return false;
    if (!WriteDriverWord(2, packed_event::kDesc)) return false;
  } else if (!WriteDriverWord(2, packed_event::kEnable)) {
    return false;
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  uint16_t flags;
  if (ring_h_) {
    flags = be::little_to_native(AtomicLoad16(ring_h_ + 16ull * next_avail_ + 14, std::memory_order_acquire));
  } else {
    win_len_ = 0;  // force a fresh look
    if (RingError e = ReadHeadFlags(&flags); e != RingError::kNone) {
      Break(e);
      return false;
    }
  }
  return IsAvail(flags, avail_wrap_);
}

void PackedDeviceQueue::DoDisableNotifications() {
  if (broken()) return;
  WriteDriverWord(2, packed_event::kDisable);
}

uint32_t PackedDeviceQueue::GetBase() const {
  // Only what the driver can see: entries added but not published are
  // dropped by SetBase(), so counting them would leave a hole in the ring.
  return uint32_t{next_avail_} | (avail_wrap_ ? 1u << 15 : 0) | (uint32_t{published_used_} << 16) |
         (published_wrap_ ? 1u << 31 : 0);
}

void PackedDeviceQueue::SetBase(uint32_t base) {
  next_avail_ = static_cast<uint16_t>(base & 0x7fff) % cfg_.size;
  avail_wrap_ = base & (1u << 15);
  if ((base >> 16) == 0) {
    // Only the avail half (DPDK's virtio-user sends 0x8000 for a fresh
    // ring, as the vhost-user text describes SET_VRING_BASE for packed
    // rings): the used position is the avail one, as DPDK's vhost library
    // takes it. QEMU sends both halves (used wrap counter set at start).
    next_used_ = published_used_ = next_avail_;
    used_wrap_ = published_wrap_ = avail_wrap_;
  } else {
    next_used_ = published_used_ = static_cast<uint16_t>((base >> 16) & 0x7fff) % cfg_.size;
    used_wrap_ = published_wrap_ = base & (1u << 31);
  }
  used_pending_.clear();
  win_len_ = 0;
  std::fill(in_flight_ids_.begin(), in_flight_ids_.end(), 0);
  resubmit_.clear();
  resubmit_pos_ = 0;
  batch_entries_.clear();
}

absl::Status PackedDeviceQueue::UseInflightLog(PackedInflightLog* log) {
  log_ = nullptr;
  resubmit_.clear();
  resubmit_pos_ = 0;
  batch_entries_.clear();
  if (!log) return absl::OkStatus();
  log_entry_.assign(cfg_.size, 0);
  if (log->fresh()) {
    log->Initialize(published_used_, published_wrap_);
    log_ = log;
    return absl::OkStatus();
  }
  auto slot_used = [this](uint16_t slot, bool wrap) -> std::optional<bool> {
    uint16_t f;
    if (ring_h_) {
      f = be::little_to_native(AtomicLoad16(ring_h_ + 16ull * slot + 14, std::memory_order_acquire));
    } else if (!mem_->Read(cfg_.desc_addr + 16ull * slot + 14, &f, 2).ok()) {
      return std::nullopt;
    } else {
      f = be::little_to_native(f);
    }
    return bool(f & desc_flag::kUsed) == wrap;
  };
  absl::StatusOr<PackedInflightLog::Recovery> r = log->Recover(slot_used);
  if (!r.ok()) {
    log->Initialize(published_used_, published_wrap_);
    log_ = log;
    return r.status();
  }
  next_avail_ = r->next_avail;
  avail_wrap_ = r->avail_wrap;
  next_used_ = published_used_ = r->used_idx;
  used_wrap_ = published_wrap_ = r->used_wrap;
  win_len_ = 0;
  resubmit_ = std::move(r->resubmit);
  log_ = log;
  return absl::OkStatus();
}

PopStatus PackedDeviceQueue::PopLogged(uint16_t entry, DescriptorChain& out) {
  // The descriptors as the earlier device read them from the ring (the ring
  // slots may hold used descriptors by now); checked as if read afresh.
  log_->ReadChain(entry, &pop_descs_);
  FillChainHeader(out, 0, 0);
  const uint32_t n = cfg_.size;
  uint64_t total = 0;
  uint16_t id = 0;
  RingError r = pop_descs_.empty() ? RingError::kChainTooLong : RingError::kNone;
  for (size_t k = 0; r == RingError::kNone && k < pop_descs_.size(); ++k) {
    const PackedInflightLog::Desc& e = pop_descs_[k];  // shared memory: untrusted
    const bool last = k + 1 == pop_descs_.size();
    RawDesc d{e.addr, e.len, e.id, e.flags};
    if (bool(d.flags & desc_flag::kNext) == last) {
      r = RingError::kChainTooLong;
    } else if (d.flags & desc_flag::kIndirect) {
      if (!indirect_) r = RingError::kIndirectNotNegotiated;
      else if (!last || k > 0) r = RingError::kIndirectWithNext;
      else r = WalkIndirect(d, out, total);
    } else {
      r = AppendSegment(out, d.addr, d.len, d.flags & desc_flag::kWrite, total);
    }
    id = d.id;
  }
  if (r == RingError::kNone && (id >= n || in_flight_ids_[id])) r = RingError::kBadBufferId;
  if (r != RingError::kNone) {
    out.Clear();
    Break(r);
    return PopStatus::kError;
  }
  log_entry_[id] = entry;
  in_flight_ids_[id] = 1;
  out.id_ = id;
  out.ring_slots_ = static_cast<uint16_t>(pop_descs_.size());
  in_flight_++;
  counters_.popped++;
  MarkPopped(id);
  return PopStatus::kChain;
}

}  // namespace vioport
