// SPDX-License-Identifier: Apache-2.0
#include "backend_session.h"

#include <atomic>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/core/log.h"
#include "vioport/transports/xs_client.h"

namespace vioport::xen {

namespace {

// A frontend's value as it may appear in a message: its first 64 bytes,
// escaped, so a hostile value can neither flood the log nor forge lines in it.
std::string Quote(const std::string& v) {
  constexpr size_t kShown = 64;
  return absl::StrCat("'", absl::CHexEscape(v.substr(0, kShown)), v.size() > kShown ? "...'" : "'");
}

}  // namespace

BackendSession::BackendSession(std::shared_ptr<VirtioDevice> device, Host* host, Options options)
    : device_(std::move(device)), host_(host), o_(std::move(options)) {}

BackendSession::~BackendSession() { Disconnect("backend stopping"); }

void BackendSession::Close(const std::string& why) {
  Disconnect(why);
  host_->SetState(XenbusState::kClosed);
}

void BackendSession::OnFrontendState() {
  auto v = host_->ReadFrontend("state");
  const std::optional<uint64_t> st = v.ok() ? ParseDecimal(*v, 8) : std::nullopt;
  if (!st) {
    if (!v.ok()) {
      Disconnect("frontend gone");
    } else {
      const std::string why = absl::StrCat("key state = ", Quote(*v), " (not a XenbusState)");
      Disconnect(why);
      VIOPORT_LOG(kWarning, o_.name, ": ", why);
      host_->ProtocolError(why);
    }
    host_->SetState(XenbusState::kClosed);
    return;
  }
  switch (static_cast<XenbusState>(*st)) {
    case XenbusState::kInitialising:
      Disconnect("frontend re-initialising");
      host_->SetState(XenbusState::kInitWait);
      break;
    case XenbusState::kInitialised:
      // A frontend starts a new handshake with Initialising, which we see
      // before its Initialised (it waits for our InitWait), so Initialised
      // while connected is the same handshake seen again.
      if (connected()) break;
      if (absl::Status s = Connect(); !s.ok()) {
        const std::string why = absl::StrCat("connection refused: ", s.message());
        VIOPORT_LOG(kWarning, o_.name, ": ", why);
        Disconnect("refused");  // whatever was mapped and bound before the refusal
        host_->Refused(why);
        host_->SetState(XenbusState::kClosed);
      } else {
        host_->SetState(XenbusState::kConnected);
      }
      break;
    case XenbusState::kClosing:
    case XenbusState::kClosed:
      Disconnect("frontend closed");
      host_->SetState(XenbusState::kClosed);
      break;
    default:
      break;
  }
}

absl::StatusOr<uint64_t> BackendSession::Key(const std::string& k, uint64_t max) {
  // The frontend's keys: untrusted, parsed strictly, each failure named.
  auto v = host_->ReadFrontend(k);
  if (!v.ok()) return absl::InvalidArgumentError(absl::StrCat("key ", k, ": ", v.status().message()));
  auto n = ParseDecimal(*v, max);
  if (!n) return absl::InvalidArgumentError(absl::StrCat("key ", k, " = ", Quote(*v), " (not a number <= ", max, ")"));
  return *n;
}

absl::Status BackendSession::Connect() {
  auto ver = Key("protocol-version", 0xffffffff);
  if (!ver.ok()) return ver.status();
  if (*ver != kProtocolVersion) return absl::InvalidArgumentError(absl::StrCat("key protocol-version = ", *ver));
  auto ref = Key("ctrl-ref", 0xffffffff);
  if (!ref.ok()) return ref.status();
  auto cport = Key("ctrl-evtchn", 0xffffffff);
  if (!cport.ok()) return cport.status();
  auto nq = Key("num-queues", device_->num_queues());
  if (!nq.ok()) return nq.status();
  if (*nq == 0) return absl::InvalidArgumentError("key num-queues = 0");
  std::vector<uint64_t> qports;
  for (uint64_t q = 0; q < *nq; ++q) {
    auto p = Key(absl::StrCat("queue-", q, "/evtchn"), 0xffffffff);
    if (!p.ok()) return p.status();
    qports.push_back(*p);
  }
  const GrantRef r = static_cast<GrantRef>(*ref);
  auto page = host_->MapControl(r);
  if (!page.ok()) return absl::Status(page.status().code(), absl::StrCat("ctrl-ref ", r, ": ", page.status().message()));
  ctrl_ = *page;
  ctrl_ref_ = r;
  auto lp = host_->Bind(static_cast<EvtchnPort>(*cport));
  if (!lp.ok())
    return absl::Status(lp.status().code(), absl::StrCat("ctrl-evtchn ", *cport, ": ", lp.status().message()));
  ctrl_port_ = *lp;
  for (uint64_t q = 0; q < qports.size(); ++q) {
    auto qp = host_->Bind(static_cast<EvtchnPort>(qports[q]));
    if (!qp.ok())
      return absl::Status(qp.status().code(),
                          absl::StrCat("queue-", q, "/evtchn ", qports[q], ": ", qp.status().message()));
    queue_ports_.push_back(*qp);
  }
  BuildController();
  std::memset(ctrl_, 0, kRequestOffset);
  reinterpret_cast<ControlAnswer*>(ctrl_ + kAnswerOffset)->seq.store(0, std::memory_order_relaxed);
  // A request left in the page by an earlier connection is not replayed.
  last_seq_ = reinterpret_cast<ControlRequest*>(ctrl_ + kRequestOffset)->seq.load(std::memory_order_acquire);
  mirror_ = std::make_unique<mmio::MmioMirror>(*ctl_, 2, ctrl_);
  mirror_->Publish();
  host_->Attached(*ctl_, *ctrl_port_, queue_ports_);
  VIOPORT_LOG(kInfo, o_.name, ": domain ", o_.frontend, " connected (ctrl-ref ", r, ", ", queue_ports_.size(),
              " queue(s), grants=", o_.memory, ")");
  return absl::OkStatus();
}

// The memory, the interrupts (the queue ports, the config change on the
// control port) and the controller on the mapped control page and the bound
// ports.
void BackendSession::BuildController() {
  mem_ = host_->MakeMemory();
  irq_ = std::make_shared<mmio::MirrorInterrupts>(
      ctrl_,
      [host = host_, ctrl = *ctrl_port_, queues = queue_ports_](int q) {
        if (q == mmio::MirrorInterrupts::kConfig) host->Notify(ctrl);
        else if (static_cast<size_t>(q) < queues.size()) host->Notify(queues[q]);
      },
      [this] {
        if (mirror_) mirror_->Publish();
      });
  ctl_ = std::make_unique<DeviceController>(device_, mem_, irq_, o_.transport_features);
  ctl_->set_name(o_.name);
}

void BackendSession::Disconnect(const std::string& why) {
  const bool was_connected = connected();
  if (ctl_) host_->Detached(*ctl_);
  // Device first: its reset waits for in-flight requests; then nothing
  // touches the frontend's pages and the mappings can go.
  mirror_.reset();
  ctl_.reset();
  if (irq_) irq_->Disconnect();
  irq_.reset();
  mem_.reset();
  if (ctrl_) host_->UnmapControl(ctrl_);
  ctrl_ = nullptr;
  if (ctrl_port_) host_->Unbind(*ctrl_port_);
  for (EvtchnPort p : queue_ports_) host_->Unbind(p);
  ctrl_port_.reset();
  queue_ports_.clear();
  if (was_connected) VIOPORT_LOG(kInfo, o_.name, ": domain ", o_.frontend, " disconnected: ", why);
}

absl::Status BackendSession::Freeze(HandoverWriter* out) {
  if (!connected()) {
    out->U64(0);
    return absl::OkStatus();
  }
  auto snap = ctl_->Snapshot();
  if (!snap.ok()) return snap.status();
  Frozen f;
  f.ctrl_ref = ctrl_ref_;
  f.ctrl_port = *ctrl_port_;
  f.queue_ports = queue_ports_;
  f.mirror = mirror_->SaveState();
  f.snap = *snap;
  f.last_seq = last_seq_;
  out->U64(1);
  out->U64(f.ctrl_ref);
  out->U64(f.ctrl_port);
  out->U64s(std::vector<uint64_t>(f.queue_ports.begin(), f.queue_ports.end()));
  out->U64s(f.mirror);
  out->U64(f.last_seq);
  out->U64(counters_.register_writes);
  out->U64(counters_.register_writes_ignored);
  out->Snapshot(f.snap);
  // Let go of the mappings; the ports stay bound for whoever resumes.
  ctrl_port_.reset();
  queue_ports_.clear();
  Disconnect("handed over");
  frozen_ = std::move(f);
  return absl::OkStatus();
}

absl::Status BackendSession::Restore(HandoverReader& in) {
  uint64_t live = 0;
  if (absl::Status s = in.U64(&live, 1, "connected"); !s.ok()) return s;
  if (!live) return absl::OkStatus();
  Frozen f;
  uint64_t ref = 0, port = 0, seq = 0;
  std::vector<uint64_t> ports;
  if (absl::Status s = in.U64(&ref, 0xffffffff, "ctrl-ref"); !s.ok()) return s;
  if (absl::Status s = in.U64(&port, 0xffffffff, "ctrl port"); !s.ok()) return s;
  if (absl::Status s = in.U64s(&ports, device_->num_queues(), "queue ports"); !s.ok()) return s;
  if (absl::Status s = in.U64s(&f.mirror, 4 + 7 + 5 * kMaxQueues, "register state"); !s.ok()) return s;
  if (absl::Status s = in.U64(&seq, 0xffffffff, "control sequence"); !s.ok()) return s;
  if (absl::Status s = in.U64(&counters_.register_writes, "register writes"); !s.ok()) return s;
  if (absl::Status s = in.U64(&counters_.register_writes_ignored, "register writes ignored"); !s.ok()) return s;
  if (absl::Status s = in.Snapshot(&f.snap, device_->num_queues()); !s.ok()) return s;
  if (ports.empty()) return absl::InvalidArgumentError("handed-over xen connection has no queue port");
  for (uint64_t p : ports) {
    if (p > 0xffffffff) return absl::InvalidArgumentError(absl::StrCat("queue port ", p));
    f.queue_ports.push_back(static_cast<EvtchnPort>(p));
  }
  f.ctrl_ref = static_cast<GrantRef>(ref);
  f.ctrl_port = static_cast<EvtchnPort>(port);
  f.last_seq = static_cast<uint32_t>(seq);
  frozen_ = std::move(f);
  return absl::OkStatus();
}

absl::Status BackendSession::Resume() {
  if (!frozen_) return absl::OkStatus();
  Frozen f = std::move(*frozen_);
  frozen_.reset();
  ctrl_port_ = f.ctrl_port;
  queue_ports_ = f.queue_ports;
  auto page = host_->MapControl(f.ctrl_ref);
  if (!page.ok())
    return absl::Status(page.status().code(), absl::StrCat("ctrl-ref ", f.ctrl_ref, ": ", page.status().message()));
  ctrl_ = *page;
  ctrl_ref_ = f.ctrl_ref;
  BuildController();
  // A record the controller or the mirror refuses: the controller goes
  // unannounced (the host never heard of it: Close must not tell it
  // Detached); the page and the ports stay for Close to let go.
  auto refuse = [&](absl::Status s) {
    mirror_.reset();
    ctl_.reset();
    if (irq_) irq_->Disconnect();
    irq_.reset();
    mem_.reset();
    return s;
  };
  if (absl::Status s = ctl_->Restore(f.snap); !s.ok()) return refuse(s);
  // The page holds what the driver last read: not rewritten.
  mirror_ = std::make_unique<mmio::MmioMirror>(*ctl_, 2, ctrl_);
  if (absl::Status s = mirror_->RestoreState(f.mirror); !s.ok()) return refuse(s);
  last_seq_ = f.last_seq;
  host_->Attached(*ctl_, *ctrl_port_, queue_ports_);
  return absl::OkStatus();
}

void BackendSession::Abandon() {
  frozen_.reset();  // the ports stay bound: the new vios has them
  ctrl_port_.reset();
  queue_ports_.clear();
}

void BackendSession::OnControl() {
  if (!ctrl_ || !mirror_) return;
  auto* req = reinterpret_cast<ControlRequest*>(ctrl_ + kRequestOffset);
  auto* ans = reinterpret_cast<ControlAnswer*>(ctrl_ + kAnswerOffset);
  const uint32_t seq = req->seq.load(std::memory_order_acquire);
  if (seq == last_seq_) return;  // nothing new (a spurious or merged event)
  last_seq_ = seq;
  // Read once: the frontend may change the fields under us.
  const uint32_t off = std::atomic_ref<uint32_t>(req->offset).load(std::memory_order_relaxed);
  const uint32_t size = std::atomic_ref<uint32_t>(req->size).load(std::memory_order_relaxed);
  const uint64_t value = std::atomic_ref<uint64_t>(req->value).load(std::memory_order_relaxed);
  counters_.register_writes++;
  absl::Status s = off < kRequestOffset ? mirror_->Write(off, size, static_cast<uint32_t>(value))
                                        : absl::OutOfRangeError(absl::StrFormat("register 0x%x is past the mirror", off));
  if (!s.ok()) {
    counters_.register_writes_ignored++;
    VIOPORT_LOG(kInfo, o_.name, ": register write ignored: ", s.message());
  } else if (off == mmio::reg::kStatus && ctl_->status() == 0) {
    // A device reset ends what persistent mappings are kept for: the driver
    // sets its rings up anew, often on new grants, and a cache left full
    // would refuse to map them (the device could never start again).
    mem_ = host_->MakeMemory();
    (void)ctl_->SetMemory(mem_);  // the old memory goes, and its mappings with it
  }
  std::atomic_ref<uint32_t>(ans->result).store(s.ok() ? 0 : 1, std::memory_order_relaxed);
  ans->seq.store(seq, std::memory_order_release);
  host_->Notify(*ctrl_port_);
}

}  // namespace vioport::xen
