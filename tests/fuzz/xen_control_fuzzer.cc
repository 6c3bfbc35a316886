// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the Xen backend's protocol (xen::BackendSession,
// transports/xen/src/backend_session.h) against a hostile frontend domain:
// its xenstore keys (non-numbers, huge numbers, missing keys, a wrong
// protocol version, refs and ports meant for other domains), its state
// sequence (Initialised repeated, Closing mid-handshake, garbage, reconnects)
// and its register-write mailbox on the control page (bad offsets, sizes and
// seqs, writes before connecting), with the real grant memory (map or copy)
// over a fake grant table and event channels, and an echo device behind it.
// No I/O: the Host and the channel are in this file. The world starts with
// frontend pages 0-11 granted to the backend read-write (ref r is page r),
// 12-13 read-only, 14 to another domain, refs 16-23 granting nothing, and
// frontend ports 1-3 offered to the backend; the page mapped as the control
// page is not reachable as guest memory, so any change in it is the
// session's.
//
// Input: byte 0: bit 0 grants=copy (else map), bit 1 the device holds its
// chains in flight, bits 2-3 the map cache (64, 1, 4 or 0 pages), bit 4
// op 9 is a live upgrade instead (below). Then
// 8-byte ops {op u8, a u8, b u16, c u32}, op % 10:
//   0  xenstore key kKeys[a % 8] = a value chosen by b % 8 from c (below)
//   1  state = a % 12 (9: "9", 10: removed, 11: "3\n"), then the watch fires
//   2  the state watch fires again (spurious)
//   3  register write: offset b, size a & 7, value c; seq by (a >> 3) & 3:
//      next, the same again, c, or next with offset c; then the control event
//   4  frontend scribble: 4 bytes c at (b & 0xffc) of page a % kPages
//      (a & 0x80: of the page the backend mapped as its control page)
//   5  grants: ref b % kRefs granted to the backend rw (a % 4 == 0), ro (1),
//      to another domain (2), or access ended (3; refused while mapped)
//   6  ports: frontend port b % 9 allocated for the backend (a % 3 == 0), for
//      another domain (1), or closed (2)
//   7  kick queue a % 4 (notify + one serve, as DeviceLoop::Kick)
//   8  the device completes the chains it holds
//   9  the backend stops (Close) and a new session starts; with bit 4 of
//      byte 0, a live upgrade instead: the session freezes (Freeze), its
//      record is read by a new session (Restore; a byte past the ports,
//      chosen by c, xor'ed with a when b is odd), which resumes (Resume) and carries on as the old
//      one gives up its ports (Abandon), as vios does at the commit. A
//      record it refuses leaves the old one to resume; a changed record it
//      took ends with that session closed (the model cannot know its seq).
// Values (op 0): 0 decimal c, 1 decimal c % 16, 2 the world's good value
// for the key, 3 a huge number, 4 key removed, 5 the 4 raw bytes of c,
// 6 "+1", " 1", "01" or "1 " by c, 7 empty.
// Checked besides ASan/UBSan:
//  * the backend state after each watch event follows the handshake table
//    of docs/transports/xen.md, and Initialised connects exactly when every
//    key, the control grant and every port are good (a model here);
//  * a refusal names the first bad key, and every message the session gives
//    is short and printable (a hostile value cannot forge log lines);
//  * whenever the session is not connected, no grant is mapped and no port
//    is bound (after a refusal, a close, a reconnect, a restart), and no
//    notify ever goes to a port that is not bound;
//  * the session writes the frontend's memory only in the control page's
//    mirror and answer while connected; never the request, never any page
//    while not connected; a new seq is answered with that seq (result 1 for
//    an offset past the mirror or a size other than 1, 2 or 4), a repeated
//    one not at all;
//  * a device reset leaves only the control page mapped (a driver setting
//    its rings up anew on new grants must not find the map cache full);
//  * staging buffers are all given back.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "../../transports/xen/src/backend_session.h"
#include "../../transports/xen/src/grant_memory.h"
#include "vioport/core/log.h"
#include "vioport/transports/handover.h"
#include "vioport/testing/echo_device.h"

using namespace vioport;
using namespace vioport::xen;

namespace {

constexpr DomId kBackend = 0, kFrontend = 1, kStranger = 7;
constexpr uint32_t kPages = 16;  // frontend pages; ref r grants page r
constexpr uint32_t kRefs = 24;   // refs kPages.. exist but grant nothing
constexpr uint32_t kPorts = 8;   // frontend ports 1..kPorts
constexpr uint16_t kQueues = 2;
constexpr GrantRef kGoodCtrlRef = 0;

void Check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_xen_control: invariant broken: %s\n", what);
  std::abort();
}

// The hypervisor as the backend domain sees it: the frontend's grant table
// (identity: ref r is page r) and event channels. Traps on calls a backend
// never makes and on unbinding, unmapping or notifying what it does not hold.
class FakeXen final : public XenChannel {
 public:
  struct Grant {
    bool active = false;
    DomId to = 0;
    bool readonly = false;
    uint32_t pins = 0;
  };
  enum class PortState { kFree, kUnbound, kBound };
  struct Port {
    PortState state = PortState::kFree;
    DomId remote = 0;
    EvtchnPort local = 0;  // kBound
  };

  explicit FakeXen(uint8_t* mem) : mem_(mem) {}

  std::string name() const override { return "fake"; }
  DomId self() const override { return kBackend; }
  absl::StatusOr<SharedPages> SharePages(DomId, uint32_t, bool) override { Trap("SharePages"); }
  void UnsharePages(const SharedPages&) override { Trap("UnsharePages"); }

  absl::StatusOr<uint8_t*> MapGrant(DomId granter, GrantRef ref, bool writable) override {
    return MapGrants(granter, {&ref, 1}, writable);
  }
  absl::Status UnmapGrant(uint8_t* addr) override { return UnmapGrants(addr, 1); }
  absl::StatusOr<uint8_t*> MapGrants(DomId granter, std::span<const GrantRef> refs, bool writable) override {
    if (granter != kFrontend) return absl::PermissionDeniedError("GNTST_bad_domain");
    if (refs.empty() || refs.size() > kPages) return absl::InvalidArgumentError("GNTST_bad_copy_arg");
    for (size_t i = 0; i < refs.size(); ++i) {
      if (refs[i] != refs[0] + i) return absl::UnimplementedError("refs not consecutive");
      if (int16_t st = Reach(refs[i], writable, !mapping_control_); st != gntst::kOkay)
        return absl::PermissionDeniedError(GntstName(st));
    }
    for (GrantRef r : refs) grants_[r].pins++;
    uint8_t* addr = mem_ + uint64_t{refs[0]} * kPageSize;
    maps_.insert({addr, static_cast<uint32_t>(refs.size())});
    return addr;
  }
  absl::Status UnmapGrants(uint8_t* addr, uint32_t count) override {
    auto it = maps_.find({addr, count});
    Check(it != maps_.end(), "unmapping what is not mapped");
    maps_.erase(it);
    const uint32_t first = static_cast<uint32_t>((addr - mem_) / kPageSize);
    for (uint32_t i = 0; i < count; ++i) grants_[first + i].pins--;
    return absl::OkStatus();
  }
  void GrantCopy(std::span<GrantCopySegment> segs) override {
    for (GrantCopySegment& s : segs) {
      if (s.domid != kFrontend) {
        s.status = gntst::kBadDomain;
      } else if (uint32_t{s.offset} + s.len > kPageSize) {
        s.status = gntst::kBadCopyArg;
      } else if ((s.status = Reach(s.ref, s.to_foreign, true)) == gntst::kOkay) {
        uint8_t* page = mem_ + uint64_t{s.ref} * kPageSize + s.offset;
        if (s.to_foreign) std::memcpy(page, s.local, s.len);
        else std::memcpy(s.local, page, s.len);
      }
    }
  }
  uint8_t* AllocCopyBuffer(size_t bytes) override {
    auto* b = static_cast<uint8_t*>(std::malloc(bytes));
    buffers_.insert(b);
    return b;
  }
  void FreeCopyBuffer(uint8_t* b) override {
    Check(buffers_.erase(b) == 1, "freeing a copy buffer never handed out");
    std::free(b);
  }

  int event_fd() override { Trap("event_fd"); }
  absl::StatusOr<EvtchnPort> BindUnboundPort(DomId) override { Trap("BindUnboundPort"); }
  absl::StatusOr<EvtchnPort> BindInterdomain(DomId remote, EvtchnPort rport) override {
    if (remote != kFrontend || !CanBind(rport)) return absl::InvalidArgumentError("EINVAL");
    EvtchnPort local = 1;
    while (locals_.count(local)) ++local;
    locals_[local] = rport;
    ports_[rport].state = PortState::kBound;
    ports_[rport].local = local;
    return local;
  }
  absl::Status Notify(EvtchnPort local) override {
    auto it = locals_.find(local);
    Check(it != locals_.end(), "notify on a port not bound");
    notifies_[local]++;
    return it->second ? absl::OkStatus() : absl::FailedPreconditionError("ECS_UNBOUND");
  }
  absl::Status Unmask(EvtchnPort) override { return absl::OkStatus(); }
  absl::Status Unbind(EvtchnPort local) override {
    auto it = locals_.find(local);
    Check(it != locals_.end(), "unbinding a port not bound");
    // The frontend's end is unbound for us again, as Xen leaves it.
    if (it->second) ports_[it->second] = Port{PortState::kUnbound, kBackend, 0};
    locals_.erase(it);
    return absl::OkStatus();
  }
  void PendingPorts(std::vector<EvtchnPort>&) override { Trap("PendingPorts"); }
  std::string xenstore_path() const override { return ""; }

  // Whether the backend may reach ref (with write access), as Xen decides.
  // The page mapped as the control page is not reachable as guest memory,
  // so that whatever changes in it is the session's doing.
  int16_t Reach(GrantRef ref, bool write, bool as_memory) const {
    if (ref >= kRefs) return gntst::kBadGntref;
    if (ref >= kPages || !grants_[ref].active || grants_[ref].to != kBackend) return gntst::kPermissionDenied;
    if (write && grants_[ref].readonly) return gntst::kPermissionDenied;
    if (as_memory && control_ && control_ == mem_ + uint64_t{ref} * kPageSize) return gntst::kPermissionDenied;
    return gntst::kOkay;
  }
  bool CanBind(uint64_t rport) const {
    return rport >= 1 && rport <= kPorts && ports_[rport].state == PortState::kUnbound &&
           ports_[rport].remote == kBackend;
  }

  // The frontend's side.
  void SetGrant(GrantRef ref, bool active, DomId to, bool readonly) {
    if (ref >= kPages || grants_[ref].pins) return;  // Xen refuses to end or change a mapped grant
    grants_[ref] = Grant{active, to, readonly, 0};
  }
  void SetPort(uint32_t p, int what) {
    if (p < 1 || p > kPorts) return;
    Port& port = ports_[p];
    if (what == 2) {
      if (port.state == PortState::kBound) locals_[port.local] = 0;  // our end is left unbound
      port = Port{};
    } else if (port.state != PortState::kBound) {
      port = Port{PortState::kUnbound, what == 0 ? kBackend : kStranger, 0};
    }
  }

  size_t mapped() const { return maps_.size(); }
  size_t bound() const { return locals_.size(); }
  size_t buffers() const { return buffers_.size(); }
  bool IsBound(EvtchnPort local) const { return locals_.count(local) != 0; }
  uint64_t notifies() const {
    uint64_t n = 0;
    for (const auto& [p, c] : notifies_) n += c;
    return n;
  }
  uint64_t notifies(EvtchnPort p) const {
    auto it = notifies_.find(p);
    return it == notifies_.end() ? 0 : it->second;
  }
  // The session's control mapping is made through here (Host::MapControl).
  void set_mapping_control(bool on) { mapping_control_ = on; }
  void set_control(uint8_t* page) { control_ = page; }
  uint8_t* control() const { return control_; }

 private:
  [[noreturn]] static void Trap(const char* call) {
    std::fprintf(stderr, "fuzz_xen_control: the backend called %s\n", call);
    std::abort();
  }
  uint8_t* mem_;
  Grant grants_[kPages + 1] = {};
  Port ports_[kPorts + 1] = {};
  std::map<EvtchnPort, EvtchnPort> locals_;  // local -> the frontend's port (0: its end closed)
  std::multiset<std::pair<uint8_t*, uint32_t>> maps_;
  std::set<uint8_t*> buffers_;
  std::map<EvtchnPort, uint64_t> notifies_;
  bool mapping_control_ = false;
  uint8_t* control_ = nullptr;
};

const char* const kKeys[] = {"state",          "protocol-version", "ctrl-ref",       "ctrl-evtchn",
                             "num-queues",     "queue-0/evtchn",   "queue-1/evtchn", "queue-2/evtchn"};

bool Printable(const std::string& s) {
  for (char c : s)
    if (c < 0x20 || c > 0x7e) return false;
  return true;
}

// The session's world: xenstore (the frontend's keys, the backend's state),
// the fake hypervisor, and what the session told us.
struct World final : BackendSession::Host {
  FakeXen& xen;
  bool copy;
  uint32_t cache_pages;
  std::map<std::string, std::string> store;
  std::vector<XenbusState> states;  // backend state writes of the current call
  std::optional<XenbusState> backend_state;
  bool attached = false;
  const DeviceController* ctl = nullptr;
  EvtchnPort ctrl_port = 0;
  size_t queues = 0;
  std::vector<std::string> refusals, errors;

  World(FakeXen& x, bool c, uint32_t cache) : xen(x), copy(c), cache_pages(cache) {}

  absl::StatusOr<std::string> ReadFrontend(const std::string& key) override {
    auto it = store.find(key);
    if (it == store.end()) return absl::NotFoundError("ENOENT");
    return it->second;
  }
  void SetState(XenbusState s) override {
    Check(s == XenbusState::kInitWait || s == XenbusState::kConnected || s == XenbusState::kClosed,
          "a backend state other than InitWait, Connected or Closed");
    states.push_back(s);
    backend_state = s;
  }
  absl::StatusOr<uint8_t*> MapControl(GrantRef ref) override {
    Check(!xen.control(), "a second control page mapped");
    xen.set_mapping_control(true);
    auto p = xen.MapGrants(kFrontend, {&ref, 1}, true);
    xen.set_mapping_control(false);
    if (p.ok()) xen.set_control(*p);
    return p;
  }
  void UnmapControl(uint8_t* page) override {
    Check(page == xen.control(), "unmapping a control page not mapped");
    (void)xen.UnmapGrants(page, 1);
    xen.set_control(nullptr);
  }
  absl::StatusOr<EvtchnPort> Bind(EvtchnPort remote) override { return xen.BindInterdomain(kFrontend, remote); }
  void Unbind(EvtchnPort local) override { (void)xen.Unbind(local); }
  void Notify(EvtchnPort local) override { (void)xen.Notify(local); }
  std::shared_ptr<GuestMemory> MakeMemory() override {
    return copy ? MakeGrantCopyMemory(xen, kFrontend) : MakeGrantMapMemory(xen, kFrontend, cache_pages);
  }
  void Attached(DeviceController& c, EvtchnPort ctrl, std::span<const EvtchnPort> qs) override {
    Check(!attached, "attached twice");
    Check(xen.IsBound(ctrl), "attached with a control port not bound");
    for (EvtchnPort p : qs) Check(xen.IsBound(p), "attached with a queue port not bound");
    Check(xen.control() != nullptr, "attached without a control page");
    attached = true;
    ctl = &c;
    ctrl_port = ctrl;
    queues = qs.size();
  }
  void Detached(const DeviceController& c) override {
    Check(attached && &c == ctl, "detached what was not attached");
    attached = false;
    ctl = nullptr;
  }
  void Refused(const std::string& why) override { refusals.push_back(why); }
  void ProtocolError(const std::string& why) override { errors.push_back(why); }
};

// Strict decimal, independently of the transport's ParseDecimal.
std::optional<uint64_t> Parse(const std::map<std::string, std::string>& store, const std::string& key, uint64_t max) {
  auto it = store.find(key);
  if (it == store.end() || it->second.empty() || it->second.size() > 20) return std::nullopt;
  unsigned __int128 v = 0;
  for (char c : it->second) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<unsigned>(c - '0');
    if (v > max) return std::nullopt;
  }
  return static_cast<uint64_t>(v);
}

// Whether Initialised should connect, else the key a refusal must name.
std::optional<std::string> FirstBadKey(const World& w) {
  const auto& s = w.store;
  auto pv = Parse(s, "protocol-version", 0xffffffff);
  if (!pv || *pv != kProtocolVersion) return "protocol-version";
  auto ref = Parse(s, "ctrl-ref", 0xffffffff);
  if (!ref) return "ctrl-ref";
  auto cport = Parse(s, "ctrl-evtchn", 0xffffffff);
  if (!cport) return "ctrl-evtchn";
  auto nq = Parse(s, "num-queues", kQueues);
  if (!nq || *nq == 0) return "num-queues";
  std::vector<uint64_t> qports;
  for (uint64_t q = 0; q < *nq; ++q) {
    auto p = Parse(s, "queue-" + std::to_string(q) + "/evtchn", 0xffffffff);
    if (!p) return "queue-" + std::to_string(q) + "/evtchn";
    qports.push_back(*p);
  }
  if (w.xen.Reach(static_cast<GrantRef>(*ref), true, false) != gntst::kOkay) return "ctrl-ref";
  std::set<uint64_t> taken;
  auto bindable = [&](uint64_t p) { return w.xen.CanBind(p) && taken.insert(p).second; };
  if (!bindable(*cport)) return "ctrl-evtchn";
  for (uint64_t q = 0; q < qports.size(); ++q)
    if (!bindable(qports[q])) return "queue-" + std::to_string(q) + "/evtchn";
  return std::nullopt;
}

std::string Value(const std::string& key, uint8_t how, uint32_t c) {
  switch (how) {
    case 0: return std::to_string(c);
    case 1: return std::to_string(c % 16);
    case 2:
      if (key == "state") return std::to_string(c % 9);
      if (key == "protocol-version") return "1";
      if (key == "ctrl-ref") return std::to_string(kGoodCtrlRef);
      if (key == "num-queues") return std::to_string(1 + c % kQueues);
      if (key == "ctrl-evtchn") return "1";
      return std::to_string(2 + (key[6] - '0'));  // queue-K/evtchn: port 2 + K
    case 3: {
      static const char* const huge[] = {"4294967296", "18446744073709551615", "18446744073709551616",
                                         "99999999999999999999999999"};
      return huge[c % 4];
    }
    case 5: return std::string(reinterpret_cast<const char*>(&c), 4);
    case 6: {
      static const char* const odd[] = {"+1", " 1", "01", "1 "};
      return odd[c % 4];
    }
    default: return "";
  }
}

struct Mailbox {
  uint32_t seq = 0;  // the frontend's last seq
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool init = [] {
    // Hostile input makes the session log a lot; VIOPORT_FUZZ_LOG=1 shows it.
    SetLogLevel(std::getenv("VIOPORT_FUZZ_LOG") ? LogLevel::kDebug : LogLevel::kError);
    return true;
  }();
  (void)init;
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  static const uint32_t kCaches[] = {64, 1, 4, 0};
  std::vector<uint8_t> frontend(kPages * kPageSize, 0);
  uint8_t* mem = frontend.data();
  FakeXen xen(mem);
  // The world a well-behaved frontend sets up: pages 0..11 granted to the
  // backend rw, 12..13 ro, 14 to another domain; ports 1..3 for the backend.
  for (GrantRef r = 0; r < 15; ++r) xen.SetGrant(r, true, r == 14 ? kStranger : kBackend, r == 12 || r == 13);
  for (uint32_t p = 1; p <= 3; ++p) xen.SetPort(p, 0);
  World w(xen, flags & 1, kCaches[(flags >> 2) & 3]);
  testing::EchoOptions eo;
  eo.num_queues = kQueues;
  eo.max_queue_size = 16;
  eo.hold = flags & 2;
  auto device = std::make_shared<testing::EchoDevice>(eo);
  BackendSession::Options so{"fuzz", kFrontend, w.copy ? "copy" : "map", feature::kCoreSupported};
  auto session = std::make_unique<BackendSession>(device, &w, so);
  Mailbox mb;
  uint32_t model_last_seq = 0;  // the session's last seen seq, as the model has it

  // The page the frontend uses for its mailbox: the mapped one, else the
  // page of the good ctrl ref.
  auto mailbox_page = [&] { return xen.control() ? xen.control() : mem + kGoodCtrlRef * kPageSize; };
  auto check_messages = [&] {
    for (const auto* v : {&w.refusals, &w.errors})
      for (const std::string& m : *v) Check(m.size() <= 512 && Printable(m), "a message long or unprintable");
  };
  // A call into the session, checked for what it may write in the frontend's memory.
  auto call = [&](auto&& f) {
    const std::vector<uint8_t> before = frontend;
    const bool was_connected = session->connected();
    const uint8_t* ctrl_before = session->control_page();
    w.states.clear();
    f();
    const bool now_connected = session->connected();
    Check(now_connected == w.attached, "connected() disagrees with Attached/Detached");
    if (!now_connected) {
      Check(xen.mapped() == 0, "a grant left mapped while not connected");
      Check(xen.bound() == 0, "a port left bound while not connected");
      Check(xen.control() == nullptr, "the control page left mapped");
    } else {
      Check(xen.bound() == 1 + w.queues, "connected with the wrong number of ports bound");
    }
    if (!was_connected && !now_connected) {
      Check(before == frontend, "the frontend's memory written while not connected");
      return;
    }
    // In the control page, only the mirror and the answer (the device may
    // write its buffers elsewhere; it cannot reach the control page here).
    const uint8_t* ctrl = session->control_page() ? session->control_page() : ctrl_before;
    const size_t at = static_cast<size_t>(ctrl - mem);
    for (size_t i = kRequestOffset; i < kPageSize; ++i) {
      if (i >= kAnswerOffset && i < kAnswerOffset + 8) continue;
      Check(before[at + i] == frontend[at + i], "the session wrote outside the mirror and the answer");
    }
  };

  for (size_t i = 1; i + 8 <= size; i += 8) {
    const uint8_t op = data[i] % 10, a = data[i + 1];
    uint16_t b;
    uint32_t c;
    std::memcpy(&b, data + i + 2, 2);
    std::memcpy(&c, data + i + 4, 4);
    switch (op) {
      case 0: {
        const std::string key = kKeys[a % 8];
        if (b % 8 == 4) {
          w.store.erase(key);
        } else {
          w.store[key] = Value(key, static_cast<uint8_t>(b % 8), c);
        }
        break;
      }
      case 1:
      case 2: {
        if (op == 1) {
          const uint8_t s = a % 12;
          if (s == 10) w.store.erase("state");
          else w.store["state"] = s == 11 ? "3\n" : std::to_string(s);
        }
        const bool was_connected = session->connected();
        std::optional<std::string> bad;
        if (!was_connected) bad = FirstBadKey(w);
        const size_t refusals = w.refusals.size(), errors = w.errors.size();
        const auto st = Parse(w.store, "state", 8);
        call([&] { session->OnFrontendState(); });
        const std::optional<XenbusState> wrote =
            w.states.empty() ? std::nullopt : std::optional<XenbusState>(w.states.back());
        Check(w.states.size() <= 1, "more than one state write for one event");
        if (!st) {
          Check(wrote == XenbusState::kClosed && !session->connected(), "a bad state not answered with Closed");
          if (w.store.count("state")) {
            Check(w.errors.size() == errors + 1 && w.errors.back().find("key state") != std::string::npos,
                  "a bad state not reported naming the key");
          }
          break;
        }
        switch (static_cast<XenbusState>(*st)) {
          case XenbusState::kInitialising:
            Check(wrote == XenbusState::kInitWait && !session->connected(), "Initialising not answered with InitWait");
            break;
          case XenbusState::kInitialised:
            if (was_connected) {
              Check(!wrote && session->connected(), "Initialised again changed a connection");
            } else if (!bad) {
              Check(wrote == XenbusState::kConnected && session->connected(), "good keys not connected");
              const uint8_t* page = session->control_page();
              Check(mmio::Reg32(const_cast<uint8_t*>(page), mmio::reg::kMagic).load() == mmio::kMagicValue &&
                        mmio::Reg32(const_cast<uint8_t*>(page), mmio::reg::kVersion).load() == 2,
                    "the mirror has no virtio-mmio signature");
              model_last_seq = reinterpret_cast<const ControlRequest*>(page + kRequestOffset)->seq.load();
            } else {
              Check(wrote == XenbusState::kClosed && !session->connected(), "bad keys not answered with Closed");
              Check(w.refusals.size() == refusals + 1, "a refusal not reported");
              Check(w.refusals.back().find(*bad) != std::string::npos, "a refusal not naming the bad key");
            }
            break;
          case XenbusState::kClosing:
          case XenbusState::kClosed:
            Check(wrote == XenbusState::kClosed && !session->connected(), "Closing not answered with Closed");
            break;
          default:
            Check(!wrote && session->connected() == was_connected, "a state the backend ignores changed it");
            break;
        }
        break;
      }
      case 3: {
        uint8_t* page = mailbox_page();
        auto* req = reinterpret_cast<ControlRequest*>(page + kRequestOffset);
        uint32_t off = b;
        switch ((a >> 3) & 3) {
          case 0: ++mb.seq; break;
          case 1: break;
          case 2: mb.seq = c; break;
          default:
            ++mb.seq;
            off = c;
            break;
        }
        const uint32_t sz = a & 7;
        std::memcpy(page + kRequestOffset + 4, &off, 4);
        std::memcpy(page + kRequestOffset + 8, &sz, 4);
        const uint64_t value = c;
        std::memcpy(page + kRequestOffset + 16, &value, 8);
        req->seq.store(mb.seq);
        const bool connected = session->connected();
        const uint64_t writes = session->counters().register_writes, notifies = xen.notifies();
        const auto* ans = reinterpret_cast<const ControlAnswer*>(page + kAnswerOffset);
        const uint32_t ans_seq = ans->seq.load();
        const EvtchnPort ctrl_port = w.ctrl_port;
        const uint64_t ctrl_notifies = xen.notifies(ctrl_port);
        call([&] { session->OnControl(); });
        if (!connected) {
          Check(xen.notifies() == notifies && session->counters().register_writes == writes,
                "a register write served before connecting");
        } else if (mb.seq == model_last_seq) {
          Check(xen.notifies() == notifies && session->counters().register_writes == writes &&
                    ans->seq.load() == ans_seq,
                "a repeated seq served again");
        } else {
          model_last_seq = mb.seq;
          Check(session->counters().register_writes == writes + 1, "a new seq not counted");
          if (session->connected()) {
            Check(ans->seq.load() == mb.seq, "a new seq not answered with it");
            const uint32_t result = ans->result;
            Check(result <= 1, "an answer neither done nor ignored");
            if (off >= kRequestOffset || (sz != 1 && sz != 2 && sz != 4))
              Check(result == 1, "a write past the mirror or of a bad size not ignored");
            Check(xen.notifies(ctrl_port) > ctrl_notifies, "an answer without a notify");
            if (session->controller()->status() == 0)
              Check(xen.mapped() == 1, "grants other than the control page mapped across a device reset");
          }
        }
        break;
      }
      case 4: {
        uint8_t* page = (a & 0x80) ? mailbox_page() : mem + uint64_t{a % kPages} * kPageSize;
        std::memcpy(page + (b & 0xffc), &c, 4);
        break;
      }
      case 5: {
        const GrantRef r = b % kRefs;
        switch (a % 4) {
          case 0: xen.SetGrant(r, true, kBackend, false); break;
          case 1: xen.SetGrant(r, true, kBackend, true); break;
          case 2: xen.SetGrant(r, true, kStranger, false); break;
          default: xen.SetGrant(r, false, 0, false); break;
        }
        break;
      }
      case 6: xen.SetPort(b % 9, a % 3); break;
      case 7: {
        const uint16_t q = a % 4;
        call([&] {
          if (DeviceController* ctl = session->controller()) {
            ctl->NotifyQueue(q);
            ctl->ServeWhileBusy(0);
          }
        });
        break;
      }
      case 8: call([&] { device->ReleaseHeld(); }); break;
      default: {
        if (flags & 0x10) {
          call([&] {
            HandoverWriter out;
            if (!session->Freeze(&out).ok()) return;  // held chains: not quiesced, nothing changed
            std::string bytes = out.bytes();
            // Changed past the ports (connected, ctrl-ref, ctrl port, the
            // queue ports): a record lying about those would strand the
            // real ones bound, which no session can undo.
            size_t skip = bytes.size();
            if (bytes.size() >= 32) {
              uint64_t nports = 0;
              std::memcpy(&nports, bytes.data() + 24, 8);
              skip = nports <= 64 ? 32 + 8 * nports : bytes.size();
            }
            const bool changed = (b & 1) && skip < bytes.size() && a != 0;
            if (changed) bytes[skip + c % (bytes.size() - skip)] ^= static_cast<char>(a);
            HandoverReader in(std::move(bytes), {});
            auto next = std::make_unique<BackendSession>(device, &w, so);
            if (!next->Restore(in).ok()) {
              next->Abandon();  // vios's give_up: the old one thaws
              next.reset();
              const absl::Status st = session->Resume();
              if (!st.ok() && std::getenv("VIOPORT_FUZZ_LOG"))
                std::fprintf(stderr, "resume after a refused record: %s\n", std::string(st.message()).c_str());
              Check(st.ok(), "the frozen session did not resume after a refused record");
              if (DeviceController* ctl = session->controller()) ctl->Resume();  // as DeviceLoop::Thaw
              return;
            }
            session->Abandon();  // committed: the new one has the ports
            session = std::move(next);
            if (absl::Status st = session->Resume(); !st.ok()) {
              if (std::getenv("VIOPORT_FUZZ_LOG"))
                std::fprintf(stderr, "resume: %s (record %s)\n", std::string(st.message()).c_str(),
                             changed ? "changed" : "as written");
              session->Close("resume failed");  // as XenServer::Thaw
              return;
            }
            if (DeviceController* ctl = session->controller()) ctl->Resume();  // as DeviceLoop::Thaw
            if (changed) session->Close("a changed record");
          });
          break;
        }
        call([&] { session->Close("backend stopping"); });
        Check(w.states.size() == 1 && w.states.back() == XenbusState::kClosed, "a stopping backend not Closed");
        session.reset();
        session = std::make_unique<BackendSession>(device, &w, so);
        break;
      }
    }
    check_messages();
  }
  session.reset();
  Check(!w.attached && xen.mapped() == 0 && xen.bound() == 0, "a session gone with grants mapped or ports bound");
  Check(xen.buffers() == 0, "copy buffers not given back");
  if (std::getenv("VIOPORT_FUZZ_LOG"))  // how far a seed gets
    std::fprintf(stderr, "fuzz_xen_control: %llu chain(s) echoed\n",
                 static_cast<unsigned long long>(device->completed()));
  return 0;
}
