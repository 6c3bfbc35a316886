// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/crq_guest.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/core/log.h"
#include "vioport/transports/fd.h"
#include "vioport/transports/crq_server.h"

namespace vioport::crq {

// Device addresses are IOBAs: every allocation takes whole pages, mapped with
// exactly the access the device is given (read-only buffers get only the
// read bit) and unmapped on Free, so a stale IOBA faults.
class CrqDriverTransport::Dma final : public DmaAllocator {
 public:
  Dma(Partition& p, Liobn liobn, uint64_t memory_offset, uint64_t pool_ioba, uint64_t pool_bytes)
      : p_(p),
        liobn_(liobn),
        offset_(memory_offset),
        inner_(p.memory() + memory_offset + pool_ioba, pool_ioba, pool_bytes) {}
  absl::StatusOr<DmaBuffer> Allocate(size_t size, size_t align, Access access) override {
    const size_t bytes = (std::max<size_t>(size, 1) + kTcePageSize - 1) & ~(kTcePageSize - 1);
    auto b = inner_.Allocate(bytes, std::max<size_t>(align, kTcePageSize), access);
    if (!b.ok()) return b;
    const uint64_t perms = (Allows(access, Access::kRead) ? kTceRead : 0) | (Allows(access, Access::kWrite) ? kTceWrite : 0);
    for (uint64_t off = 0; off < bytes; off += kTcePageSize) {
      const uint64_t ioba = b->device_addr + off;
      const int64_t rc = p_.PutTce(liobn_, ioba, MakeTce(offset_ + ioba, perms));
      if (rc != kHSuccess) {
        Unmap(b->device_addr, off);
        inner_.Free(*b);
        return absl::InternalError(absl::StrCat("crq: H_PUT_TCE: ", std::string(ReturnCodeName(rc))));
      }
    }
    std::memset(b->host, 0, bytes);
    b->size = bytes;
    return b;
  }
  void Free(const DmaBuffer& b) override {
    const size_t bytes = (std::max<size_t>(b.size, 1) + kTcePageSize - 1) & ~(kTcePageSize - 1);
    Unmap(b.device_addr, bytes);
    DmaBuffer whole = b;
    whole.size = bytes;
    inner_.Free(whole);
  }

 private:
  void Unmap(uint64_t ioba, uint64_t bytes) {
    for (uint64_t off = 0; off < bytes; off += kTcePageSize) p_.PutTce(liobn_, ioba + off, 0);
  }
  Partition& p_;
  Liobn liobn_;
  uint64_t offset_;
  BufferDmaAllocator inner_;
};

absl::StatusOr<std::unique_ptr<CrqDriverTransport>> CrqDriverTransport::Connect(Partition& p,
                                                                               const CrqGuestOptions& o) {
  if (o.memory_offset % kTcePageSize || o.memory_bytes < 4 * kTcePageSize || o.window_bytes < o.memory_bytes ||
      o.memory_offset + o.memory_bytes > p.memory_size() || o.max_transfer < 512)
    return absl::InvalidArgumentError("crq: bad guest options");
  std::unique_ptr<CrqDriverTransport> t(new CrqDriverTransport(p, o));
  t->dma_ = std::make_unique<Dma>(p, o.liobn, o.memory_offset, kTcePageSize, o.memory_bytes - kTcePageSize);
  const int64_t rc = p.PutTce(o.liobn, 0, MakeTce(o.memory_offset, kTceRead | kTceWrite));
  if (rc != kHSuccess) return absl::InternalError(absl::StrCat("crq: H_PUT_TCE (queue): ", std::string(ReturnCodeName(rc))));
  absl::MutexLock l(&t->mu_);
  t->queue_ = CrqQueue(p.memory() + o.memory_offset, kTcePageSize);
  t->queue_entries_ = t->queue_.entries();
  if (absl::Status s = t->Register(); !s.ok()) return s;
  if (absl::Status s = t->Handshake(); !s.ok()) return s;
  return t;
}

CrqDriverTransport::CrqDriverTransport(Partition& p, const CrqGuestOptions& o) : p_(p), o_(o) {}

DmaAllocator& CrqDriverTransport::dma() { return *dma_; }

CrqDriverTransport::~CrqDriverTransport() { p_.FreeCrq(o_.unit); }

void CrqDriverTransport::Error(const std::string& why) {
  VIOPORT_LOG(kWarning, "crq guest: ", why);
  errors_.push_back(why);
}

absl::Status CrqDriverTransport::Register() {
  queue_.Reset();
  int64_t rc = p_.RegCrq(o_.unit, 0, kTcePageSize);
  if (rc == kHResource) {
    p_.FreeCrq(o_.unit);
    rc = p_.RegCrq(o_.unit, 0, kTcePageSize);
  }
  if (rc != kHSuccess && rc != kHClosed)
    return absl::UnavailableError(absl::StrCat("crq: H_REG_CRQ: ", std::string(ReturnCodeName(rc))));
  p_.VioSignal(o_.unit, 1);
  state_ = State::kWaitInit;
  return absl::OkStatus();
}

absl::Status CrqDriverTransport::Reconnect() {
  absl::MutexLock l(&mu_);
  int64_t rc = kHBusy;
  for (int i = 0; i < 1000 && (rc == kHBusy || IsLongBusy(rc)); ++i) {
    rc = p_.FreeCrq(o_.unit);
    if (rc == kHBusy || IsLongBusy(rc)) absl::SleepFor(absl::Milliseconds(1));
  }
  needs_reset_ = true;
  if (absl::Status s = Register(); !s.ok()) return s;
  return Handshake();
}

void CrqDriverTransport::WaitIrq(absl::Duration timeout) {
  if (WaitReadable(p_.interrupt_fd(), absl::Now() + timeout)) DrainEventFd(p_.interrupt_fd());
}

void CrqDriverTransport::DrainLocked() {
  backlog_ = 0;
  queue_.Drain([&](const Message& m) { Handle(m); });
  if (backlog_ > max_backlog_.load()) max_backlog_ = backlog_;
  if (state_ != State::kConnected) return;
  if (flow_.ShouldReport()) {
    credits_sent_++;
    SendWithRetry(Message::Command(Op::kCredit, generation_, flow_.Report()));
  }
  FlushLocked();
}

bool CrqDriverTransport::SendCountedLocked(const Message& m) {
  if (!flow_.CanSend()) return false;
  const int64_t rc = SendWithRetry(m);
  if (rc == kHSuccess) flow_.Sent();
  else needs_reset_ = true;  // H_CLOSED (or a queue full for 30 s): the partner is gone
  return true;
}

void CrqDriverTransport::FlushLocked() {
  if (state_ != State::kConnected) return;
  if (pending_ping_ &&
      SendCountedLocked(Message::Command(static_cast<Op>(static_cast<uint8_t>(Op::kPing) | kResponse), generation_)))
    pending_ping_ = false;
  for (uint16_t q = 0; q < pending_notify_.size(); ++q)
    if (pending_notify_[q] && SendCountedLocked(Message::Command(Op::kNotify, generation_, q))) pending_notify_[q] = false;
}

void CrqDriverTransport::Handle(const Message& m) {
  switch (m.valid) {
    case kValidEvent:
      if (m.op == kEventMigrated) {
        EnableAfterMigration(p_, o_.unit);
        SendWithRetry(Message::Init(kInit));
      }
      // The partner reset: keep our queue, wait for (or send) INIT.
      state_ = State::kWaitInit;
      needs_reset_ = true;
      resets_++;
      events_++;
      return;
    case kValidInit:
      if (m.op == kInit) {
        if (state_ == State::kConnected) needs_reset_ = true;  // the server restarted
        resets_++;
        SendWithRetry(Message::Init(kInitComplete));
        state_ = State::kWaitVersion;
      } else if (m.op == kInitComplete && state_ == State::kWaitInit) {
        state_ = State::kWaitVersion;
      }
      return;
    case kValidCommand:
      break;
    default:
      return Error(absl::StrFormat("bad valid byte %02x", m.valid));
  }
  const bool version_reply = m.op == (static_cast<uint8_t>(Op::kVersion) | kResponse);
  if (m.generation != generation_ && !version_reply) return;  // an old connection's leftover
  if (m.op == static_cast<uint8_t>(Op::kCredit)) {
    if (!flow_.Credit(m.a)) Error(absl::StrFormat("CREDIT for %u messages, more than were sent", m.a));
    return;
  }
  if (!version_reply) {
    flow_.Consumed();
    backlog_++;
  }
  if (m.op & kResponse) {
    response_ = m;
    have_response_ = true;
    return;
  }
  if (m.op == static_cast<uint8_t>(Op::kUsed)) {
    used_++;
    events_++;
  } else if (m.op == static_cast<uint8_t>(Op::kConfigChanged)) {
    config_changed_++;
    events_++;
  } else if (m.op == static_cast<uint8_t>(Op::kPing)) {
    pending_ping_ = true;  // answered by FlushLocked, under flow control
  }
}

int64_t CrqDriverTransport::SendWithRetry(const Message& m) {
  absl::Duration wait = absl::Microseconds(5);
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  for (;;) {
    const int64_t rc = p_.SendCrq(o_.unit, m.hi(), m.lo());
    if (rc != kHDropped || absl::Now() > give_up) return rc;
    absl::SleepFor(wait);
    wait = std::min(wait * 2, absl::Milliseconds(10));
  }
}

absl::Status CrqDriverTransport::Handshake() {
  const absl::Time deadline = absl::Now() + o_.timeout;
  DrainLocked();  // an INIT already queued is answered, not doubled
  if (state_ == State::kWaitInit) {
    const int64_t rc = SendWithRetry(Message::Init(kInit));  // H_DROPPED: backs off, retries
    if (rc != kHSuccess && rc != kHClosed)
      return absl::UnavailableError(absl::StrCat("crq: INIT: ", std::string(ReturnCodeName(rc))));
  }
  while (state_ == State::kWaitInit) {
    if (absl::Now() > deadline) return absl::DeadlineExceededError("crq: no INIT from the server");
    WaitIrq(absl::Milliseconds(1));
    DrainLocked();
  }
  generation_ = static_cast<uint8_t>(generation_ + 1);
  if (generation_ == 0) generation_ = 1;
  const VersionCaps mine{AdvertisedEntries(), o_.max_transfer, 0xffff};
  auto r = RequestLocked(Message::Command(Op::kVersion, generation_, kVersionMajor << 8 | kVersionMinor, 0,
                                          mine.Encode()));
  if (!r.ok()) return r.status();
  if (r->status == static_cast<uint8_t>(MsgStatus::kVersionMismatch))
    return absl::FailedPreconditionError(absl::StrFormat("crq: server speaks version %u.%u", r->a >> 8, r->a & 0xff));
  if (r->status != 0) return absl::UnavailableError(absl::StrFormat("crq: VERSION status %u", r->status));
  const VersionCaps theirs = VersionCaps::Decode(r->value);
  max_transfer_ = std::min(theirs.max_transfer, o_.max_transfer);
  flow_.Reset(theirs.crq_entries, AdvertisedEntries());
  pending_ping_ = false;
  std::fill(pending_notify_.begin(), pending_notify_.end(), false);
  state_ = State::kConnected;
  needs_reset_ = false;
  cache_ = {};
  return absl::OkStatus();
}

absl::StatusOr<Message> CrqDriverTransport::RequestLocked(const Message& m) {
  requests_++;
  have_response_ = false;
  const uint64_t epoch = resets_;
  const bool counted = m.op != static_cast<uint8_t>(Op::kVersion);
  const absl::Time credit_deadline = absl::Now() + o_.timeout;
  while (counted && !flow_.CanSend()) {  // half the server's queue unconsumed: wait for its CREDIT
    flow_waits_++;
    if (absl::Now() > credit_deadline) {
      needs_reset_ = true;
      return absl::DeadlineExceededError("crq: no CREDIT from the server");
    }
    WaitIrq(absl::Milliseconds(1));
    DrainLocked();
    if (state_ != State::kConnected) return absl::UnavailableError("crq: connection reset");
  }
  const int64_t rc = SendWithRetry(m);
  if (rc == kHSuccess && counted) flow_.Sent();
  if (rc != kHSuccess) {
    if (m.op != static_cast<uint8_t>(Op::kVersion)) needs_reset_ = true;  // H_CLOSED: the partner is gone
    return absl::UnavailableError(absl::StrCat("crq: H_SEND_CRQ: ", std::string(ReturnCodeName(rc))));
  }
  const absl::Time deadline = absl::Now() + o_.timeout;
  for (;;) {
    DrainLocked();
    if (have_response_) {
      if (response_.op != (m.op | kResponse))
        return absl::InternalError(absl::StrFormat("crq: response %02x to request %02x", response_.op, m.op));
      return response_;
    }
    // A partner event or an INIT since we sent it: that connection is gone,
    // whatever state the same drain left us in.
    if (state_ == State::kWaitInit || (resets_ != epoch && m.op != static_cast<uint8_t>(Op::kVersion)))
      return absl::UnavailableError("crq: connection reset");
    if (absl::Now() > deadline) {
      // The server is gone or stuck: the connection is lost. Later requests
      // fail at once (DEVICE_NEEDS_RESET) instead of each waiting the
      // timeout; the driver's reset (SET_STATUS 0) reconnects.
      needs_reset_ = true;
      return absl::DeadlineExceededError(absl::StrFormat("crq: no response to %02x", m.op));
    }
    WaitIrq(absl::Milliseconds(1));
  }
}

absl::StatusOr<Message> CrqDriverTransport::Request(Op op, uint16_t a, uint16_t b, uint64_t value) {
  absl::MutexLock l(&mu_);
  if (state_ != State::kConnected || needs_reset_) return absl::UnavailableError("crq: not connected");
  return RequestLocked(Message::Command(op, generation_, a, b, value));
}

uint32_t CrqDriverTransport::GetDeviceId() {
  auto r = Request(Op::kDeviceInfo);
  return r.ok() && r->status == 0 ? r->a : 0;
}

// The device changes its own status only to set DEVICE_NEEDS_RESET, and then
// it sends a configuration change notification (virtio §2.1.2): CONFIG_CHANGED.
// So the status last read or written stays true until a CONFIG_CHANGED
// arrives, and a driver polling NeedsReset() costs a look at our own queue,
// not a round trip to the server. The cache also expires after
// kStatusCacheLife, so a CONFIG_CHANGED lost on the way (a dropped message)
// delays the news by at most that much.
absl::StatusOr<Message> CrqDriverTransport::GetStatusLocked(bool need_generation) {
  if (state_ != State::kConnected || needs_reset_) return absl::UnavailableError("crq: not connected");
  DrainLocked();
  const uint64_t now = config_changed_.load();
  if (cache_.status_valid && cache_.seen == now && (!need_generation || cache_.generation_valid) &&
      absl::Now() < cache_.until) {
    Message m;
    m.value = cache_.status;
    m.b = cache_.generation;
    return m;
  }
  auto r = RequestLocked(Message::Command(Op::kGetStatus, generation_));
  if (!r.ok()) return r;
  // A CONFIG_CHANGED that raced the request leaves seen behind: re-read next time.
  cache_ = {true, true, static_cast<uint8_t>(r->value), r->b, now, absl::Now() + kStatusCacheLife};
  return r;
}

uint8_t CrqDriverTransport::GetStatus() {
  if (needs_reset_ || state_ != State::kConnected) return status::kDeviceNeedsReset;
  absl::MutexLock l(&mu_);
  auto r = GetStatusLocked(false);
  if (!r.ok()) return status::kDeviceNeedsReset;
  return static_cast<uint8_t>(r->value);
}

void CrqDriverTransport::SetStatus(uint8_t s) {
  if (s == 0 && (needs_reset_ || state_ != State::kConnected)) {
    absl::MutexLock l(&mu_);
    if (absl::Status st = Handshake(); !st.ok()) return Error(std::string(st.message()));
  }
  absl::MutexLock l(&mu_);
  if (state_ != State::kConnected || needs_reset_) return Error("crq: not connected");
  const uint64_t before = config_changed_.load();
  const bool generation_valid = cache_.generation_valid && cache_.seen == before && s != 0;
  cache_.status_valid = false;
  auto r = RequestLocked(Message::Command(Op::kSetStatus, generation_, 0, 0, s));
  if (!r.ok()) return Error(std::string(r.status().message()));
  if (r->status != 0) return Error(absl::StrFormat("SET_STATUS %#x refused", s));
  // The response is the status after the write (FEATURES_OK re-read).
  cache_ = {true, generation_valid, static_cast<uint8_t>(r->value), cache_.generation, before,
            absl::Now() + kStatusCacheLife};
}

uint64_t CrqDriverTransport::GetDeviceFeatures() {
  auto r = Request(Op::kGetFeatures, 0);
  return r.ok() && r->status == 0 ? r->value : 0;
}

void CrqDriverTransport::SetDriverFeatures(uint64_t f) {
  auto r = Request(Op::kSetFeatures, 0, 0, f);
  if (!r.ok() || r->status != 0) Error("SET_FEATURES refused");
}

uint32_t CrqDriverTransport::GetConfigGeneration() {
  absl::MutexLock l(&mu_);
  auto r = GetStatusLocked(true);
  return r.ok() ? r->b : 0;
}

void CrqDriverTransport::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  for (size_t done = 0; done < out.size();) {
    const uint16_t n = static_cast<uint16_t>(std::min<size_t>(8, out.size() - done));
    auto r = Request(Op::kReadConfig, static_cast<uint16_t>(offset + done), n);
    if (!r.ok() || r->status != 0) {
      std::memset(out.data() + done, 0xff, out.size() - done);
      return Error("READ_CONFIG failed");
    }
    for (uint16_t i = 0; i < n; ++i) out[done + i] = static_cast<uint8_t>(r->value >> (56 - 8 * i));
    done += n;
  }
}

void CrqDriverTransport::WriteConfig(uint32_t offset, std::span<const uint8_t> in) {
  for (size_t done = 0; done < in.size();) {
    const uint16_t n = static_cast<uint16_t>(std::min<size_t>(8, in.size() - done));
    uint64_t v = 0;
    for (uint16_t i = 0; i < 8; ++i) v = v << 8 | (i < n ? in[done + i] : 0);
    auto r = Request(Op::kWriteConfig, static_cast<uint16_t>(offset + done), n, v);
    if (!r.ok() || r->status != 0) return Error("WRITE_CONFIG failed");
    done += n;
  }
}

uint32_t CrqDriverTransport::GetQueueMaxSize(uint16_t q) {
  auto r = Request(Op::kQueueInfo, q);
  return r.ok() && r->status == 0 ? r->b : 0;
}

absl::Status CrqDriverTransport::EnableQueue(uint16_t q, uint32_t size, uint64_t desc, uint64_t driver,
                                             uint64_t device) {
  const std::pair<QueueField, uint64_t> steps[] = {{QueueField::kSize, size},
                                                    {QueueField::kDesc, desc},
                                                    {QueueField::kDriver, driver},
                                                    {QueueField::kDevice, device},
                                                    {QueueField::kEnable, 1}};
  for (const auto& [field, value] : steps) {
    auto r = Request(Op::kSetQueue, q, static_cast<uint16_t>(field), value);
    if (!r.ok()) return r.status();
    if (r->status != 0)
      return absl::InvalidArgumentError(absl::StrFormat("crq: SET_QUEUE %u field %u: status %u", q,
                                                        static_cast<unsigned>(field), r->status));
  }
  return absl::OkStatus();
}

void CrqDriverTransport::Notify(uint16_t q, uint32_t) {
  if (state_ != State::kConnected) return;
  std::atomic_thread_fence(std::memory_order_seq_cst);  // avail entries before the server's copy
  absl::MutexLock l(&mu_);
  if (q >= pending_notify_.size()) pending_notify_.resize(q + 1, false);
  if (pending_notify_[q]) return;  // one already waits for credit: coalesced
  if (!SendCountedLocked(Message::Command(Op::kNotify, generation_, q))) {
    flow_waits_++;
    pending_notify_[q] = true;  // sent when the server's CREDIT comes (DrainLocked)
  }
}

bool CrqDriverTransport::WaitForInterrupt(uint16_t, absl::Duration timeout) {
  auto check = [&] {
    absl::MutexLock l(&mu_);
    DrainLocked();
    const uint64_t now = events_.load();
    return seen_.exchange(now) != now;
  };
  if (check()) return true;
  WaitIrq(timeout);
  return check();
}

}  // namespace vioport::crq
