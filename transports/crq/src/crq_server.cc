// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/crq_server.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <span>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/core/log.h"

namespace vioport::crq {

// ---- CrqServer -------------------------------------------------------------

struct CrqServer::Sink final : InterruptSink {
  CrqServer* s = nullptr;
  void QueueInterrupt(uint16_t q) override {
    if (s) s->SendInterrupt(q, false);
  }
  void ConfigInterrupt() override {
    if (s) s->SendInterrupt(0, true);
  }
};

uint64_t AreaBytes(const CrqServerOptions& o) {
  const uint64_t bounce = (uint64_t{o.max_transfer} + kTcePageSize - 1) & ~(kTcePageSize - 1);
  return kTcePageSize + bounce + uint64_t{o.staging_slots} * GuestMemory::kMaxStaging;
}

absl::StatusOr<std::unique_ptr<CrqServer>> CrqServer::Create(Partition& p, std::shared_ptr<VirtioDevice> device,
                                                            const CrqServerOptions& o, HandoverReader* handover) {
  if (o.memory_offset % kTcePageSize || o.window_ioba % kTcePageSize || o.max_transfer == 0 ||
      o.max_transfer > kMaxTransfer || o.crq_entries != kTcePageSize / 16)
    return absl::InvalidArgumentError("crq: bad server options");
  const uint64_t bounce_bytes = (o.max_transfer + kTcePageSize - 1) & ~(kTcePageSize - 1);
  if (o.memory_offset + AreaBytes(o) > p.memory_size())
    return absl::InvalidArgumentError("crq: server area outside the partition's memory");
  // Map the queue page and the bounce buffer in our own window. Handed
  // over: the hypervisor has them mapped already, and the old vios may
  // still be calling it until the commit, so no hypercall here.
  uint64_t handed_slots = 0;
  if (handover) {
    if (absl::Status st = handover->U64(&handed_slots, o.staging_slots, "staging slots"); !st.ok()) return st;
  } else {
    for (uint64_t off = 0; off < kTcePageSize + bounce_bytes; off += kTcePageSize) {
      const int64_t rc = p.PutTce(o.liobn, o.window_ioba + off, MakeTce(o.memory_offset + off, kTceRead | kTceWrite));
      if (rc != kHSuccess) return absl::InternalError(absl::StrCat("crq: H_PUT_TCE: ", std::string(ReturnCodeName(rc))));
    }
  }
  std::unique_ptr<CrqServer> s(new CrqServer(p, o));
  uint8_t* area = p.memory() + o.memory_offset;
  s->queue_ = CrqQueue(area, kTcePageSize);
  s->mem_ = std::make_shared<CrqCopyMemory>(p, o.liobn, o.remote_liobn, o.window_ioba + kTcePageSize,
                                            area + kTcePageSize, o.max_transfer, o.remote_window_bytes);
  // Staging slots, as many as the LOCAL window takes (H_PUT_TCE refuses an
  // IOBA past its end).
  const uint64_t staging_at = kTcePageSize + bounce_bytes;
  uint32_t slots = static_cast<uint32_t>(handed_slots);
  for (; !handover && slots < o.staging_slots; ++slots) {
    bool ok = true;
    for (uint64_t off = 0; ok && off < GuestMemory::kMaxStaging; off += kTcePageSize) {
      const uint64_t rel = staging_at + uint64_t{slots} * GuestMemory::kMaxStaging + off;
      ok = p.PutTce(o.liobn, o.window_ioba + rel, MakeTce(o.memory_offset + rel, kTceRead | kTceWrite)) == kHSuccess;
    }
    if (!ok) break;
  }
  if (!handover && slots < o.staging_slots)
    VIOPORT_LOG(kInfo, "crq ", o.name, ": ", slots, " of ", o.staging_slots,
                " staging slots fit in the LOCAL window; the rest of the bounce buffers are ordinary memory");
  s->mem_->SetStaging(o.window_ioba + staging_at, area + staging_at, slots);
  s->mem_->set_read_ahead(o.read_ahead);
  s->sink_ = std::make_shared<Sink>();
  s->sink_->s = s.get();
  s->pending_used_.assign(device->num_queues(), false);
  s->ctl_ = std::make_unique<DeviceController>(std::move(device), s->mem_, s->sink_);
  s->ctl_->set_name(o.name);
  // Every loop that serves the server flushes held interrupts before it
  // sleeps (Poll, CrqDispatcher::Poll, vios's partition host), so the
  // device's interrupts may be coalesced (device_set_coalescing).
  s->ctl_->EnableCoalescing(true);
  // PowerVM practice (ibmvscsis): after an H_PERMISSION, PING the client;
  // H_CLOSED means it is gone (its queue went with its partition).
  s->mem_->set_client_gone_probe([srv = s.get()] {
    const Message ping = Message::Command(Op::kPing, srv->generation_);
    const int64_t rc = srv->p_.SendCrq(srv->o_.unit, ping.hi(), ping.lo());
    if (rc == kHSuccess && srv->state() == State::kConnected) srv->flow_.Sent();  // it answers; counted both ways
    return rc == kHClosed;
  });
  if (handover) {
    if (absl::Status st = s->Load(*handover); !st.ok()) {
      s->abandoned_ = true;  // the old vios may still own the adapter: leave it registered
      return st;
    }
    return s;
  }
  if (absl::Status st = s->Register(); !st.ok()) return st;
  return s;
}

CrqServer::~CrqServer() {
  if (sink_) sink_->s = nullptr;
  ctl_.reset();
  if (!abandoned_) p_.FreeCrq(o_.unit);
}

absl::Status CrqServer::Save(HandoverWriter* out) const {
  auto snap = ctl_->Snapshot();
  if (!snap.ok()) return snap.status();
  out->U64(mem_->staging_slots());  // read by Create
  out->U64(static_cast<uint64_t>(state()));
  out->U64(generation_);
  out->U64(max_transfer_);
  out->U64(partner_entries_);
  out->U64(queue_.cursor());
  const auto flow = flow_.Save();
  out->U64s(std::vector<uint64_t>(flow.begin(), flow.end()));
  std::vector<uint64_t> pending;
  for (const Outgoing& o : pending_responses_) pending.insert(pending.end(), {o.m.hi(), o.m.lo(), o.counted ? 1u : 0u});
  out->U64s(pending);
  std::vector<uint64_t> used(pending_used_.begin(), pending_used_.end());
  out->U64s(used);
  out->U64(pending_config_ ? 1 : 0);
  out->Str(last_close_);
  out->Snapshot(*snap);
  return absl::OkStatus();
}

absl::Status CrqServer::Load(HandoverReader& in) {
  uint64_t state = 0, gen = 0, mt = 0, pe = 0, cursor = 0, config = 0;
  std::vector<uint64_t> flow, pending, used;
  ControllerSnapshot snap;
  if (absl::Status s = in.U64(&state, 2, "crq state"); !s.ok()) return s;
  if (absl::Status s = in.U64(&gen, 0xff, "generation"); !s.ok()) return s;
  if (absl::Status s = in.U64(&mt, kMaxTransfer, "max transfer"); !s.ok()) return s;
  if (absl::Status s = in.U64(&pe, 0xffff, "partner entries"); !s.ok()) return s;
  if (absl::Status s = in.U64(&cursor, "queue cursor"); !s.ok()) return s;
  if (absl::Status s = in.U64s(&flow, 6, "flow control"); !s.ok()) return s;
  if (absl::Status s = in.U64s(&pending, 3 * 4096, "pending sends"); !s.ok()) return s;
  if (absl::Status s = in.U64s(&used, 1024, "pending used"); !s.ok()) return s;
  if (absl::Status s = in.U64(&config, 1, "pending config"); !s.ok()) return s;
  if (absl::Status s = in.Str(&last_close_, 4096, "last close"); !s.ok()) return s;
  if (absl::Status s = in.Snapshot(&snap, ctl_->num_queues()); !s.ok()) return s;
  if (flow.size() != 6 || pending.size() % 3 || used.size() != pending_used_.size() || mt == 0)
    return absl::InvalidArgumentError("handed-over crq state is malformed");
  if (!queue_.set_cursor(cursor)) return absl::InvalidArgumentError(absl::StrCat("queue cursor ", cursor));
  std::array<uint16_t, 6> f{};
  for (size_t i = 0; i < 6; ++i) {
    if (flow[i] > 0xffff) return absl::InvalidArgumentError("handed-over flow control is malformed");
    f[i] = static_cast<uint16_t>(flow[i]);
  }
  flow_.Restore(f);
  for (size_t i = 0; i < pending.size(); i += 3)
    pending_responses_.push_back({Message::FromWords(pending[i], pending[i + 1]), pending[i + 2] != 0});
  for (size_t i = 0; i < used.size(); ++i) pending_used_[i] = used[i] != 0;
  pending_config_ = config != 0;
  generation_ = static_cast<uint8_t>(gen);
  max_transfer_ = static_cast<uint32_t>(mt);
  if (state == static_cast<uint64_t>(State::kConnected)) mem_->set_max_transfer(max_transfer_);
  partner_entries_ = static_cast<uint16_t>(pe);
  if (absl::Status s = ctl_->Restore(snap); !s.ok()) return s;
  state_ = static_cast<State>(state);
  return absl::OkStatus();
}

absl::Status CrqServer::Register() {
  queue_.Reset();
  int64_t rc = p_.RegCrq(o_.unit, o_.window_ioba, kTcePageSize);
  if (rc == kHResource) {  // left over from before: free, then register
    p_.FreeCrq(o_.unit);
    rc = p_.RegCrq(o_.unit, o_.window_ioba, kTcePageSize);
  }
  if (rc != kHSuccess && rc != kHClosed)
    return absl::UnavailableError(absl::StrCat("crq: H_REG_CRQ: ", std::string(ReturnCodeName(rc))));
  p_.VioSignal(o_.unit, 1);
  state_ = State::kWaitInit;
  // A partner already there gets our INIT; H_CLOSED: wait for its INIT.
  if (rc == kHSuccess) Send(Message::Init(kInit));
  return absl::OkStatus();
}

bool CrqServer::Send(const Message& m) {
  if (!pending_responses_.empty()) {  // behind others: keep the order
    pending_responses_.push_back({m, false});
    return true;
  }
  const int64_t rc = p_.SendCrq(o_.unit, m.hi(), m.lo());
  if (rc != kHDropped) return rc == kHSuccess;
  // The client's queue is full: it goes out from the poll loop, in order.
  counters_.dropped_retries++;
  pending_responses_.push_back({m, false});
  BackOff();
  return true;
}

bool CrqServer::TrySend(const Message& m) {
  if (!flow_.CanSend()) {
    counters_.flow_blocked++;
    if (stuck_since_ == absl::InfiniteFuture()) stuck_since_ = absl::Now();
    return false;
  }
  const int64_t rc = p_.SendCrq(o_.unit, m.hi(), m.lo());
  if (rc == kHSuccess) {
    flow_.Sent();
    return true;
  }
  if (rc != kHDropped) return true;  // closed: the partner's event follows
  counters_.dropped_retries++;
  BackOff();
  return false;
}

void CrqServer::ResetDevice() {
  if (ctl_->status() != 0) (void)ctl_->SetStatus(0);  // drops the device's in-flight requests
  std::fill(pending_used_.begin(), pending_used_.end(), false);
  pending_config_ = false;
  pending_responses_.clear();
  mem_->NewAvailableBatch();
  backoff_ = absl::ZeroDuration();
  stuck_since_ = absl::InfiniteFuture();
}

void CrqServer::PartnerGone(const std::string& why) {
  VIOPORT_LOG(kInfo, "crq ", o_.name, ": ", why, "; waiting for INIT");
  counters_.partner_resets++;
  ResetDevice();
  state_ = State::kWaitInit;
}

void CrqServer::Close(const std::string& why) {
  VIOPORT_LOG(kWarning, "crq ", o_.name, ": closing the connection: ", why);
  last_close_ = why;
  counters_.closes++;
  ResetDevice();
  int64_t rc = kHBusy;
  for (int i = 0; i < 1000 && (rc == kHBusy || IsLongBusy(rc)); ++i) {
    rc = p_.FreeCrq(o_.unit);
    if (rc == kHBusy || IsLongBusy(rc)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (absl::Status s = Register(); !s.ok()) VIOPORT_LOG(kError, "crq ", o_.name, ": ", s.message());
}

void CrqServer::Handle(const Message& m) {
  counters_.messages++;
  switch (m.valid) {
    case kValidEvent:
      if (m.op == kEventMigrated) {
        EnableAfterMigration(p_, o_.unit);
        PartnerGone("migrated");
        Send(Message::Init(kInit));
      } else {
        PartnerGone(m.op == kEventPartnerFailed ? "partner failed" : "partner deregistered");
      }
      return;
    case kValidInit:
      if (m.op == kInit) {
        if (state_ != State::kWaitInit) PartnerGone("INIT during a connection");
        if (Send(Message::Init(kInitComplete))) state_ = State::kWaitVersion;
      } else if (m.op == kInitComplete) {
        if (state_ == State::kWaitInit) state_ = State::kWaitVersion;
      } else {
        Close(absl::StrFormat("bad initialisation message C0 %02x", m.op));
      }
      return;
    case kValidCommand:
      HandleCommand(m);
      return;
    default:
      Close(absl::StrFormat("bad valid byte %02x", m.valid));
  }
}

void CrqServer::Respond(const Message& req, MsgStatus st, uint16_t a, uint16_t b, uint64_t value) {
  Message r = Message::Command(static_cast<Op>(req.op | kResponse), generation_, a, b, value);
  r.status = static_cast<uint8_t>(st);
  if (pending_responses_.empty() && TrySend(r)) return;
  pending_responses_.push_back({r, true});  // keeps the order behind any already waiting
}

void CrqServer::BackOff() {
  if (backoff_ == absl::ZeroDuration()) {
    backoff_ = absl::Microseconds(5);
    retry_at_ = absl::Now() + backoff_;
  }
  if (stuck_since_ == absl::InfiniteFuture()) stuck_since_ = absl::Now();
}

void CrqServer::ReportCredit() {
  if (state_ != State::kConnected || !flow_.ShouldReport()) return;
  counters_.credits_sent++;
  Send(Message::Command(Op::kCredit, generation_, flow_.Report()));
}

void CrqServer::HandleCommand(const Message& m) {
  const State st = state_.load();
  if (st == State::kWaitInit) {
    // Leftovers of a connection the partner (or a migration) reset: the
    // client sent them before it saw the event. Dropped, not an error.
    counters_.stale_generation++;
    return;
  }
  if (m.op & kResponse) {
    if (m.op != (static_cast<uint8_t>(Op::kPing) | kResponse))
      return Close(absl::StrFormat("unexpected response %02x", m.op));
    if (st == State::kConnected && m.generation == generation_) flow_.Consumed();
    return;
  }
  const Op op = static_cast<Op>(m.op);
  if (op == Op::kVersion) {
    counters_.requests++;
    const uint16_t major = m.a >> 8;
    const VersionCaps mine{o_.crq_entries, o_.max_transfer, ctl_->num_queues()};
    if (major != kVersionMajor) {
      generation_ = m.generation;
      Message r = Message::Command(static_cast<Op>(m.op | kResponse), generation_, kVersionMajor << 8 | kVersionMinor,
                                   0, mine.Encode());
      r.status = static_cast<uint8_t>(MsgStatus::kVersionMismatch);
      Send(r);
      return Close(absl::StrFormat("client protocol version %u.%u, server %u.%u", major, m.a & 0xff,
                                   kVersionMajor, kVersionMinor));
    }
    if (m.generation == 0) return Close("VERSION with generation 0");
    const VersionCaps theirs = VersionCaps::Decode(m.value);
    if (theirs.crq_entries < 2 || theirs.max_transfer < 512) return Close("VERSION with unusable capabilities");
    if (st == State::kConnected) ResetDevice();  // a new connection
    generation_ = m.generation;
    partner_entries_ = std::min(theirs.crq_entries, mine.crq_entries);
    max_transfer_ = std::min(theirs.max_transfer, mine.max_transfer);
    mem_->set_max_transfer(max_transfer_);
    state_ = State::kConnected;
    counters_.connections++;
    // VERSION and its answer are outside flow control; counting starts here.
    flow_.Reset(theirs.crq_entries, o_.crq_entries);
    Send(Message::Command(static_cast<Op>(m.op | kResponse), generation_, kVersionMajor << 8 | kVersionMinor, 0,
                          mine.Encode()));
    return;
  }
  if (st != State::kConnected) return Close(absl::StrFormat("command %02x before VERSION", m.op));
  if (m.generation != generation_) {
    counters_.stale_generation++;
    return;
  }
  if (op == Op::kCredit) {
    counters_.credits_received++;
    if (!flow_.Credit(m.a))
      return Close(absl::StrFormat("CREDIT for %u messages, more than were sent", m.a));
    return;  // what it freed goes out from RetryPending in this pass
  }
  flow_.Consumed();
  if (op == Op::kNotify) {
    counters_.notifies++;
    ctl_->NotifyQueue(m.a);
    return;
  }
  counters_.requests++;
  if (!pending_responses_.empty()) {
    // Our answer to the previous request has not even reached the client's
    // queue: this one was sent without waiting for it.
    counters_.protocol_errors++;
    VIOPORT_LOG(kWarning, "crq ", o_.name, ": request ", absl::StrFormat("%02x", m.op),
                " while the previous one is unanswered (one control request in flight): status 2");
    return Respond(m, MsgStatus::kBadState);
  }
  auto status_of = [](const absl::Status& s) { return s.ok() ? MsgStatus::kOk : MsgStatus::kBadState; };
  switch (op) {
    case Op::kPing:
      return Respond(m, MsgStatus::kOk);
    case Op::kDeviceInfo: {
      VirtioDevice& d = ctl_->device();
      return Respond(m, MsgStatus::kOk, static_cast<uint16_t>(d.device_id()), d.num_queues(),
                     uint64_t{d.config_size()} << 32 | d.max_queue_size());
    }
    case Op::kGetFeatures:
      if (m.a > 1) return Respond(m, MsgStatus::kBadRequest);
      return Respond(m, MsgStatus::kOk, m.a, 0, m.a == 0 ? ctl_->offered_features() : 0);
    case Op::kSetFeatures:
      if (m.a > 1) return Respond(m, MsgStatus::kBadRequest);
      if (m.a == 1) return Respond(m, m.value == 0 ? MsgStatus::kOk : MsgStatus::kBadRequest);
      return Respond(m, status_of(ctl_->SetDriverFeatures(m.value)));
    case Op::kGetStatus:
      return Respond(m, MsgStatus::kOk, 0, static_cast<uint16_t>(ctl_->config_generation()), ctl_->status());
    case Op::kSetStatus: {
      if (m.value > 0xff) return Close("SET_STATUS value above 0xff");
      const absl::Status s = ctl_->SetStatus(static_cast<uint8_t>(m.value));
      return Respond(m, status_of(s), 0, 0, ctl_->status());
    }
    case Op::kReadConfig: {
      if (m.b < 1 || m.b > 8) return Close(absl::StrFormat("READ_CONFIG length %u", m.b));
      uint8_t buf[8] = {};
      const absl::Status s = ctl_->ReadConfig(m.a, std::span<uint8_t>(buf, m.b));
      if (!s.ok()) return Respond(m, MsgStatus::kOutOfRange);
      uint64_t v = 0;
      for (int i = 0; i < 8; ++i) v = v << 8 | buf[i];
      return Respond(m, MsgStatus::kOk, m.a, static_cast<uint16_t>(ctl_->config_generation()), v);
    }
    case Op::kWriteConfig: {
      if (m.b < 1 || m.b > 8) return Close(absl::StrFormat("WRITE_CONFIG length %u", m.b));
      uint8_t buf[8];
      for (int i = 0; i < 8; ++i) buf[i] = static_cast<uint8_t>(m.value >> (56 - 8 * i));
      const absl::Status s = ctl_->WriteConfig(m.a, std::span<const uint8_t>(buf, m.b));
      return Respond(m, s.ok() ? MsgStatus::kOk : MsgStatus::kOutOfRange);
    }
    case Op::kQueueInfo:
      return Respond(m, MsgStatus::kOk, m.a, static_cast<uint16_t>(std::min<uint32_t>(ctl_->QueueMaxSize(m.a), 0x8000)));
    case Op::kSetQueue: {
      const QueueSetup* q = ctl_->queue_setup(m.a);
      if (!q) return Respond(m, MsgStatus::kOutOfRange);
      absl::Status s;
      switch (static_cast<QueueField>(m.b)) {
        case QueueField::kSize:
          if (m.value > 0x8000) return Respond(m, MsgStatus::kOutOfRange);
          s = ctl_->SetQueueSize(m.a, static_cast<uint32_t>(m.value));
          break;
        case QueueField::kDesc:
        case QueueField::kDriver:
        case QueueField::kDevice: {
          if (m.value >= o_.remote_window_bytes) {
            Respond(m, MsgStatus::kOutOfRange);
            return Close(absl::StrFormat("queue %u ring IOBA %#x outside the client's window (%#x bytes)", m.a,
                                         m.value, o_.remote_window_bytes));
          }
          uint64_t desc = q->desc, drv = q->driver, dev = q->device;
          (m.b == 1 ? desc : m.b == 2 ? drv : dev) = m.value;
          s = ctl_->SetQueueAddresses(m.a, desc, drv, dev);
          break;
        }
        case QueueField::kEnable:
          s = ctl_->SetQueueReady(m.a, m.value != 0);
          break;
        default:
          return Close(absl::StrFormat("SET_QUEUE field %u", m.b));
      }
      return Respond(m, status_of(s));
    }
    default:
      return Close(absl::StrFormat("unknown opcode %02x", m.op));
  }
}

void CrqServer::SendInterrupt(uint16_t queue, bool config) {
  if (state_ != State::kConnected) return;
  if (config ? pending_config_ : (queue < pending_used_.size() && pending_used_[queue])) return;  // coalesced
  const Message m = config ? Message::Command(Op::kConfigChanged, generation_)
                           : Message::Command(Op::kUsed, generation_, queue);
  if (TrySend(m)) {
    counters_.used_sent++;
    return;
  }
  if (config) {
    pending_config_ = true;
  } else if (queue < pending_used_.size()) {
    pending_used_[queue] = true;
  }
}

bool CrqServer::HasPending() const {
  return !pending_responses_.empty() || pending_config_ ||
         std::find(pending_used_.begin(), pending_used_.end(), true) != pending_used_.end();
}

void CrqServer::RetryPending() {
  if (!HasPending()) return;
  if (backoff_ != absl::ZeroDuration() && absl::Now() < retry_at_) return;  // waiting out an H_DROPPED
  const absl::Duration backoff = backoff_;
  backoff_ = absl::ZeroDuration();  // TrySend / Send set it again on H_DROPPED
  bool sent = false;
  while (!pending_responses_.empty()) {
    const Outgoing o = pending_responses_.front();
    pending_responses_.pop_front();
    bool ok;
    if (o.counted) {
      ok = TrySend(o.m);
    } else {
      const int64_t rc = p_.SendCrq(o_.unit, o.m.hi(), o.m.lo());
      ok = rc != kHDropped;
      if (!ok) BackOff();
    }
    if (!ok) {
      pending_responses_.push_front(o);
      break;
    }
    sent = true;
  }
  if (pending_responses_.empty()) {
    for (uint16_t q = 0; q < pending_used_.size(); ++q)
      if (pending_used_[q] && TrySend(Message::Command(Op::kUsed, generation_, q))) {
        pending_used_[q] = false;
        counters_.used_sent++;
        sent = true;
      }
    if (pending_config_ && TrySend(Message::Command(Op::kConfigChanged, generation_))) {
      pending_config_ = false;
      counters_.used_sent++;
      sent = true;
    }
  }
  if (backoff_ != absl::ZeroDuration()) {  // met H_DROPPED again: back off further
    backoff_ = std::min(std::max(backoff, absl::Microseconds(5)) * 2, absl::Milliseconds(10));
    retry_at_ = absl::Now() + backoff_;
  }
  if (!HasPending()) {
    stuck_since_ = absl::InfiniteFuture();
    return;
  }
  if (sent) stuck_since_ = absl::Now();  // the client is consuming, just slowly
  if (absl::Now() - stuck_since_ > absl::Seconds(30))
    return Close("no progress for 30 s (client queue full or no CREDIT)");
}

size_t CrqServer::Work() {
  size_t n = queue_.Drain([&](const Message& m) { Handle(m); });
  ReportCredit();
  VirtioDevice& dev = ctl_->device();
  // Whether or not the device runs: its events (a console's host socket, a
  // completion after a reset) drain its eventfd, or a watcher of that fd
  // would spin on it.
  if (dev.event_fd() >= 0 && dev.ProcessEvents()) ++n;
  ctl_->FlushInterrupts(false);
  RetryPending();
  return n;
}

int CrqServer::DeviceEventFd() { return ctl_->device().event_fd(); }

namespace {

// Waits until `deadline` for the partition's interrupt or a device
// completion; drains the interrupt eventfd if it fired.
void WaitForWork(Partition& p, std::span<CrqServer* const> servers, absl::Time deadline,
                 const std::function<int(CrqServer*)>& device_fd) {
  std::vector<pollfd> fds;
  fds.reserve(servers.size() + 1);
  fds.push_back({p.interrupt_fd(), POLLIN, 0});
  for (CrqServer* s : servers)
    if (const int fd = device_fd(s); fd >= 0) fds.push_back({fd, POLLIN, 0});
  const timespec ts = absl::ToTimespec(std::max(deadline - absl::Now(), absl::ZeroDuration()));
  if (::ppoll(fds.data(), fds.size(), &ts, nullptr) > 0 && (fds[0].revents & POLLIN)) {
    uint64_t v;
    (void)!::read(p.interrupt_fd(), &v, sizeof v);
  }
}

}  // namespace

void CrqServer::Poll(absl::Duration timeout) {
  const bool worked = Work() > 0;
  FlushInterrupts();  // the caller may sleep next
  if (worked) return;
  const absl::Time deadline = std::min(absl::Now() + std::min(timeout, kMaxUnsignalledWait), RetryAt());
  CrqServer* self = this;
  WaitForWork(p_, std::span<CrqServer* const>(&self, 1), deadline, [](CrqServer* s) { return s->DeviceEventFd(); });
  Work();
  FlushInterrupts();
}

// ---- CrqDispatcher -----------------------------------------------------------

void CrqDispatcher::Add(CrqServer* s) {
  if (std::find(servers_.begin(), servers_.end(), s) == servers_.end()) servers_.push_back(s);
}

void CrqDispatcher::Remove(CrqServer* s) { servers_.erase(std::remove(servers_.begin(), servers_.end(), s), servers_.end()); }

absl::Time CrqDispatcher::NextDeadline() const {
  absl::Time t = absl::InfiniteFuture();
  for (CrqServer* s : servers_) t = std::min(t, s->RetryAt());
  return t;
}

size_t CrqDispatcher::Work() {
  size_t n = 0;
  for (CrqServer* s : servers_) n += s->Work();
  return n;
}

void CrqDispatcher::FlushInterrupts() {
  for (CrqServer* s : servers_) s->FlushInterrupts();
}

void CrqDispatcher::Poll(absl::Duration timeout) {
  const bool worked = Work() > 0;
  FlushInterrupts();  // the caller may sleep next
  if (worked) return;
  absl::Time deadline = absl::Now() + timeout;
  for (CrqServer* s : servers_) deadline = std::min(deadline, s->RetryAt());
  WaitForWork(p_, servers_, deadline, [](CrqServer* s) { return s->DeviceEventFd(); });
  // The interrupt_fd is drained: every adapter's queue is looked at now, so
  // an entry that raised the edge is handled whichever server it is for.
  for (CrqServer* s : servers_) s->Work();
  FlushInterrupts();
}

}  // namespace vioport::crq
