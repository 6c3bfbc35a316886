// SPDX-License-Identifier: Apache-2.0
#include "vsock_hub.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <deque>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "vioport/core/log.h"

namespace vioport::vios {

using vsock::Endpoint;
using vsock::Packet;
using vsock::Refusal;

namespace {
// epoll tags: the wake-up eventfd; a guest's listener (its CID); a host
// connection (its CID and, above, its number within the guest).
constexpr uint64_t kTagWake = uint64_t{1} << 61;
constexpr uint64_t kTagListener = uint64_t{1} << 62, kTagConn = uint64_t{1} << 63;
constexpr uint32_t kConnIdMask = (1u << 29) - 1;  // bits 32..60 of a tag
constexpr uint32_t kHubSource = 1;        // the hub's own RSTs, in a device's inbox
constexpr size_t kMaxLine = vsock::kMaxConnectLine;  // "CONNECT <port>\n"
constexpr size_t kMaxBacklog = 16384;     // packets for one guest its inbox had no room for
constexpr size_t kReadChunk = 64 * 1024;
constexpr uint32_t kFirstHostPort = 1u << 30;

uint64_t Key(uint32_t guest_port, uint32_t host_port) { return (uint64_t{guest_port} << 32) | host_port; }
uint64_t ConnTag(uint64_t cid, uint32_t id) { return kTagConn | (uint64_t{id} << 32) | cid; }
// Host sockets are read into this, on whichever thread reads them.
std::vector<uint8_t>& ReadBuffer() {
  thread_local std::vector<uint8_t> buf(256 * 1024);
  return buf;
}
void Bump(std::atomic<uint64_t>& a, uint64_t n = 1) { a.fetch_add(n, std::memory_order_relaxed); }

bool ShareGroup(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  for (const auto& x : a)
    for (const auto& y : b)
      if (x == y) return true;
  return false;
}
}  // namespace

struct VsockHub::GuestState {
  Guest g;
  // The guest's lock: over its host connections and everything below up
  // to the counters.
  absl::Mutex mu;
  int listen_fd = -1;
  bool removed = false;        // RemoveGuest has closed it all
  std::map<uint32_t, std::unique_ptr<Conn>> conns;  // by number (in its epoll tag)
  uint32_t next_id = 1;
  std::deque<Packet> backlog;  // for the guest, waiting for room in its inbox
  std::vector<Packet> batch;   // PushBacklog's
  bool stalled = false;        // its inbox refused packets: host reads paused
  bool reading_inline = false;  // its device thread reads a host socket
  absl::flat_hash_map<uint64_t, uint32_t> by_key;  // (guest port, host port) -> connection
  uint32_t next_port = kFirstHostPort;
  uint32_t open = 0;
  // Any thread.
  std::array<std::atomic<uint64_t>, static_cast<size_t>(Refusal::kCount)> refused{};
  std::atomic<uint64_t> conns_open{0}, conns_total{0}, bad_connect{0}, to_host_bytes{0}, from_host_bytes{0};
  std::atomic<uint64_t> dest_full{0}, drop_to_guest{0};
  std::atomic<uint64_t> to_host_queued{0};  // in-place bytes the host socket had no room for (copied)
};

struct VsockHub::Conn {
  using Phase = VsockHub::Phase;
  uint32_t id = 0;
  GuestState* g = nullptr;  // its owner
  int fd = -1;
  bool seq = false;
  Phase phase = Phase::kOpen;
  std::optional<Endpoint> ep;
  std::string line;                    // the CONNECT line so far
  std::vector<uint8_t> in;             // host bytes read, not yet taken by the guest's credit
  bool in_eom = false;                 // (SEQPACKET) `in` ends a message
  std::deque<std::vector<uint8_t>> out;  // for the host: stream chunks, or whole messages
  size_t out_off = 0;
  std::vector<uint8_t> msg;            // (SEQPACKET) a message from the guest, being assembled
  bool host_eof = false;               // the host will send no more
  bool shut_wr_pending = false, shut_wr_done = false;
  bool draining = false;               // closed on the vsock side; writing what is left
  absl::Time deadline = absl::InfiniteFuture();
  uint32_t events = 0;
};

absl::StatusOr<std::shared_ptr<VsockHub>> VsockHub::Create(Options options) {
  std::shared_ptr<VsockHub> h(new VsockHub(std::move(options)));
  if (h->ep_ < 0 || h->wake_fd_ < 0)
    return absl::ResourceExhaustedError(absl::StrCat("vsock hub: epoll/eventfd: ", std::strerror(errno)));
  auto add = [&](int fd, uint64_t tag) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    return ::epoll_ctl(h->ep_, EPOLL_CTL_ADD, fd, &ev) == 0;
  };
  if (!add(h->wake_fd_, kTagWake))
    return absl::InternalError(absl::StrCat("vsock hub: epoll_ctl: ", std::strerror(errno)));
  h->thread_ = std::thread([raw = h.get()] { raw->Run(); });
  return h;
}

VsockHub::VsockHub(Options options) : opts_(std::move(options)) {
  ep_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

VsockHub::~VsockHub() {
  if (thread_.joinable()) {
    stop_.store(true);
    Wake();
    thread_.join();
  }
  absl::MutexLock l(&mu_);
  for (auto& [cid, gp] : guests_) {
    absl::MutexLock gl(&gp->mu);
    for (auto& [id, c] : gp->conns) ::close(c->fd);
    gp->conns.clear();
    if (gp->listen_fd >= 0) {
      ::close(gp->listen_fd);
      ::unlink(gp->g.uds_path.c_str());
      gp->listen_fd = -1;
    }
  }
  if (ep_ >= 0) ::close(ep_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void VsockHub::Wake() {
  const uint64_t one = 1;
  while (::write(wake_fd_, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

absl::Status VsockHub::AddGuest(Guest g) {
  if (!vsock::IsGuestCid(g.cid)) return absl::InvalidArgumentError(absl::StrCat("vsock: cid ", g.cid, " is not a guest CID"));
  auto st = std::make_shared<GuestState>();
  if (!g.uds_path.empty()) {
    sockaddr_un addr{};
    if (g.uds_path.size() + 12 >= sizeof addr.sun_path)  // room for "_<port>"
      return absl::InvalidArgumentError(absl::StrCat("vsock: uds-path '", g.uds_path, "' is too long for a Unix socket"));
    // A socket left by an earlier run is replaced; anything else is not ours.
    struct stat sb;
    if (::lstat(g.uds_path.c_str(), &sb) == 0) {
      if (!S_ISSOCK(sb.st_mode))
        return absl::AlreadyExistsError(absl::StrCat("vsock: uds-path '", g.uds_path, "' exists and is not a socket"));
      ::unlink(g.uds_path.c_str());
    }
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::UnavailableError(absl::StrCat("vsock: socket: ", std::strerror(errno)));
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, g.uds_path.c_str(), g.uds_path.size() + 1);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 || ::listen(fd, 128) < 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      return absl::UnavailableError(absl::StrCat("vsock: uds-path '", g.uds_path, "': ", why));
    }
    st->listen_fd = fd;
  }
  st->g = std::move(g);
  absl::MutexLock l(&mu_);
  if (guests_.count(st->g.cid)) {
    if (st->listen_fd >= 0) {
      ::close(st->listen_fd);
      ::unlink(st->g.uds_path.c_str());
    }
    return absl::AlreadyExistsError(absl::StrCat("vsock: cid ", st->g.cid, " is taken by another device"));
  }
  guests_[st->g.cid] = st;
  if (st->listen_fd >= 0) {
    // Under mu_: RemoveGuest cannot close it meanwhile.
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kTagListener | st->g.cid;
    ::epoll_ctl(ep_, EPOLL_CTL_ADD, st->listen_fd, &ev);
  }
  return absl::OkStatus();
}

std::unique_ptr<absl::MutexLock> VsockHub::HoldGuestForTesting(uint64_t cid) {
  std::shared_ptr<GuestState> gp = Find(cid);
  return gp ? std::make_unique<absl::MutexLock>(&gp->mu) : nullptr;
}

std::shared_ptr<VsockHub::GuestState> VsockHub::Find(uint64_t cid) const {
  absl::ReaderMutexLock l(&mu_);
  auto it = guests_.find(cid);
  return it == guests_.end() ? nullptr : it->second;
}

void VsockHub::RemoveGuest(uint64_t cid) {
  EndSiblings(cid);
  std::shared_ptr<GuestState> gp;
  {
    absl::MutexLock l(&mu_);
    auto it = guests_.find(cid);
    if (it == guests_.end()) return;
    gp = std::move(it->second);
    guests_.erase(it);
  }
  // Its packets are refused from here on (Route no longer finds it); a
  // thread that found it before waits for this and then sees `removed`.
  GuestState& g = *gp;
  absl::MutexLock gl(&g.mu);
  std::vector<uint32_t> ids;
  for (const auto& [id, c] : g.conns) ids.push_back(id);
  for (uint32_t id : ids) Close(g, id);
  if (g.listen_fd >= 0) {
    ::epoll_ctl(ep_, EPOLL_CTL_DEL, g.listen_fd, nullptr);
    ::close(g.listen_fd);
    ::unlink(g.g.uds_path.c_str());
    g.listen_fd = -1;
  }
  g.backlog.clear();
  g.stalled = false;
  g.removed = true;
  absl::MutexLock wl(&watch_mu_);
  stalled_.erase(cid);
  timed_.erase(cid);
}

void VsockHub::DriverGone(uint64_t cid) {
  EndSiblings(cid);
  absl::MutexLock l(&mu_);
  if (!guests_.count(cid)) return;
  gone_.push_back(cid);
  Wake();
}

VsockHub::SibKey VsockHub::SibKeyOf(const vsock::Hdr& h) {
  if (h.src_cid < h.dst_cid) return {h.src_cid, h.src_port, h.dst_cid, h.dst_port};
  return {h.dst_cid, h.dst_port, h.src_cid, h.src_port};
}

void VsockHub::TrackSibling(const vsock::Hdr& h, bool* refuse) {
  absl::MutexLock l(&sib_mu_);
  const SibKey k = SibKeyOf(h);
  if (h.op == vsock::kOpRst) {
    if (siblings_.erase(k)) {
      --sib_count_[std::get<0>(k)];
      --sib_count_[std::get<2>(k)];
    }
    return;
  }
  if (siblings_.count(k)) return;  // a REQUEST again: the receiver answers it
  if (sib_count_[h.src_cid] >= opts_.max_conns || sib_count_[h.dst_cid] >= opts_.max_conns) {
    *refuse = true;
    return;
  }
  siblings_[k] = h.type;
  ++sib_count_[std::get<0>(k)];
  ++sib_count_[std::get<2>(k)];
}

void VsockHub::EndSiblings(uint64_t cid) {
  std::vector<std::pair<SibKey, uint16_t>> ended;
  {
    absl::MutexLock l(&sib_mu_);
    for (auto it = siblings_.begin(); it != siblings_.end();) {
      if (std::get<0>(it->first) == cid || std::get<2>(it->first) == cid) {
        ended.push_back(*it);
        --sib_count_[std::get<0>(it->first)];
        --sib_count_[std::get<2>(it->first)];
        it = siblings_.erase(it);
      } else {
        ++it;
      }
    }
    sib_count_.erase(cid);
  }
  absl::ReaderMutexLock l(&mu_);
  for (const auto& [k, type] : ended) {
    const bool low = std::get<0>(k) == cid;
    Packet r;
    r.hdr.src_cid = cid;
    r.hdr.src_port = low ? std::get<1>(k) : std::get<3>(k);
    r.hdr.dst_cid = low ? std::get<2>(k) : std::get<0>(k);
    r.hdr.dst_port = low ? std::get<3>(k) : std::get<1>(k);
    r.hdr.type = type;
    r.hdr.op = vsock::kOpRst;
    auto it = guests_.find(r.hdr.dst_cid);
    if (it != guests_.end()) it->second->g.inbox->Push(kHubSource, {&r, 1});
  }
}

bool VsockHub::HasCid(uint64_t cid) const {
  absl::ReaderMutexLock l(&mu_);
  return guests_.count(cid) > 0;
}

void VsockHub::Send(uint64_t from_cid, std::vector<Packet>& packets) {
  std::vector<Packet> host;
  std::shared_ptr<GuestState> gp = Route(from_cid, packets, host);
  if (!gp) return;
  // Packets for the host are handled here, on the sending device's thread,
  // under its guest's lock only: its socket writes need no hand-over to
  // the hub thread, and other guests' threads do the same meanwhile.
  GuestState& g = *gp;
  absl::MutexLock l(&g.mu);
  if (g.removed) return;
  for (Packet& p : host) HandleGuestPacket(g, p.hdr, &p.payload, {});
  PushBacklog(g);
}

bool VsockHub::SendInPlace(uint64_t from_cid, const vsock::Hdr& h, std::span<const uint8_t> payload) {
  if (h.dst_cid != vsock::kCidHost) return false;
  std::shared_ptr<GuestState> gp = Find(from_cid);
  if (!gp) return false;
  GuestState& g = *gp;
  absl::MutexLock l(&g.mu);
  if (g.removed) return false;
  auto k = g.by_key.find(Key(h.src_port, h.dst_port));
  if (k == g.by_key.end()) return false;  // Send refuses it
  HandleConnPacket(g, *g.conns.at(k->second), h, nullptr, payload);
  PushBacklog(g);
  return true;
}

std::shared_ptr<VsockHub::GuestState> VsockHub::Route(uint64_t from_cid, std::vector<Packet>& packets,
                                                      std::vector<Packet>& host) {
  absl::ReaderMutexLock l(&mu_);
  auto fit = guests_.find(from_cid);
  if (fit == guests_.end()) return nullptr;  // a device the hub let go of
  GuestState& from = *fit->second;
  auto refuse = [&](const vsock::Hdr& h, Refusal why) {
    Bump(from.refused[static_cast<size_t>(why)]);
    if (h.op == vsock::kOpRst) return;
    Packet r;
    r.hdr = vsock::RstFor(h);
    r.hdr.dst_cid = from_cid;
    from.g.inbox->Push(kHubSource, {&r, 1});
  };
  for (Packet& p : packets) {
    const uint64_t dst = p.hdr.dst_cid;
    if (dst == vsock::kCidHost) {
      host.push_back(std::move(p));
      continue;
    }
    auto tit = guests_.find(dst);
    if (tit == guests_.end()) {
      refuse(p.hdr, Refusal::kNoRoute);
      continue;
    }
    GuestState& to = *tit->second;
    if (!ShareGroup(from.g.groups, to.g.groups)) {
      refuse(p.hdr, Refusal::kGroup);
      continue;
    }
    const vsock::Hdr h = p.hdr;
    if (h.op == vsock::kOpRequest || h.op == vsock::kOpRst) {
      bool over = false;
      TrackSibling(h, &over);
      if (over) {
        refuse(h, Refusal::kTooManyConns);
        continue;
      }
    }
    if (to.g.inbox->Push(static_cast<uint32_t>(from_cid), {&p, 1}) == 0) {
      // The receiver's inbox is full: rather than lose a piece of a stream
      // silently, both ends get an RST.
      Bump(from.dest_full);
      if (h.op != vsock::kOpRst) {
        Packet r;
        r.hdr = vsock::RstFor(h);
        to.g.inbox->Push(kHubSource, {&r, 1});
        r.hdr = vsock::RstFor(h);
        r.hdr.dst_cid = from_cid;
        from.g.inbox->Push(kHubSource, {&r, 1});
      }
    }
  }
  return host.empty() ? nullptr : fit->second;
}

void VsockHub::AppendCounters(uint64_t cid, std::vector<std::pair<std::string, uint64_t>>* out) const {
  std::shared_ptr<GuestState> g;
  {
    absl::ReaderMutexLock l(&mu_);
    auto it = guests_.find(cid);
    if (it == guests_.end()) return;
    g = it->second;
  }
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  out->push_back({"hub.conns_open", get(g->conns_open)});
  out->push_back({"hub.conns_total", get(g->conns_total)});
  out->push_back({"hub.to_host_bytes", get(g->to_host_bytes)});
  out->push_back({"hub.from_host_bytes", get(g->from_host_bytes)});
  out->push_back({"hub.to_host_queued_bytes", get(g->to_host_queued)});
  for (size_t i = 1; i < g->refused.size(); ++i)
    out->push_back({absl::StrCat("hub.refused_", vsock::RefusalName(static_cast<Refusal>(i))), get(g->refused[i])});
  out->push_back({"hub.bad_connect", get(g->bad_connect)});
  out->push_back({"hub.drop_dest_full", get(g->dest_full)});
  out->push_back({"hub.drop_to_guest", get(g->drop_to_guest)});
}

// ---- the hub thread ------------------------------------------------------------

void VsockHub::Run() {
  epoll_event evs[64];
  while (!stop_.load()) {
    int timeout = -1;  // nothing to watch: asleep until a socket or Wake
    {
      absl::MutexLock l(&watch_mu_);
      if (!stalled_.empty())
        timeout = 1;
      else if (!timed_.empty())
        timeout = 100;  // deadlines are checked at least this often
    }
    const int n = ::epoll_wait(ep_, evs, 64, timeout);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      const uint64_t tag = evs[i].data.u64;
      if (tag == kTagWake) {
        uint64_t v;
        while (::read(wake_fd_, &v, sizeof v) < 0 && errno == EINTR) {
        }
        DropGone();
        continue;
      }
      std::shared_ptr<GuestState> gp = Find(tag & 0xffffffffu);
      if (!gp) continue;
      GuestState& g = *gp;
      absl::MutexLock l(&g.mu);
      if (g.removed) continue;
      if (tag & kTagConn) {
        auto it = g.conns.find(static_cast<uint32_t>(tag >> 32) & kConnIdMask);
        if (it != g.conns.end()) {
          Conn& c = *it->second;
          const uint32_t id = c.id;
          if (evs[i].events & EPOLLOUT) OnHostWritable(c);
          if (g.conns.count(id) && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) OnHostReadable(c);
        }
      } else if (tag & kTagListener) {
        Accept(g);
      }
      PushBacklog(g);
    }
    RetryStalled();
    CheckDeadlines();
  }
}

void VsockHub::DropGone() {
  // What the guests sent before their drivers went was handled as it came
  // (Send): their host sockets have it.
  std::vector<uint64_t> gone;
  {
    absl::MutexLock l(&mu_);
    gone.swap(gone_);
  }
  for (uint64_t cid : gone) {
    std::shared_ptr<GuestState> gp = Find(cid);
    if (!gp) continue;
    absl::MutexLock l(&gp->mu);
    if (!gp->removed) DropConnections(*gp);
  }
}

void VsockHub::RetryStalled() {
  std::vector<uint64_t> cids;
  {
    absl::MutexLock l(&watch_mu_);
    cids.assign(stalled_.begin(), stalled_.end());
  }
  for (uint64_t cid : cids) {
    std::shared_ptr<GuestState> gp = Find(cid);
    if (!gp) continue;
    absl::MutexLock l(&gp->mu);
    if (!gp->removed) PushBacklog(*gp);
  }
}

void VsockHub::CheckDeadlines() {
  std::vector<uint64_t> cids;
  {
    absl::MutexLock l(&watch_mu_);
    cids.assign(timed_.begin(), timed_.end());
  }
  const absl::Time now = absl::Now();
  for (uint64_t cid : cids) {
    std::shared_ptr<GuestState> gp = Find(cid);
    if (!gp) continue;  // RemoveGuest took it off the list
    GuestState& g = *gp;
    absl::MutexLock l(&g.mu);
    if (g.removed) continue;
    std::vector<uint32_t> due;
    bool more = false;
    for (const auto& [id, c] : g.conns) {
      if (c->deadline <= now)
        due.push_back(id);
      else if (c->deadline != absl::InfiniteFuture())
        more = true;
    }
    for (uint32_t id : due) {
      // A CONNECT line never finished, a REQUEST never answered, a SHUTDOWN
      // the guest never followed with its RST, or a close still writing.
      ResetToGuest(*g.conns.at(id));
      Close(g, id);
    }
    PushBacklog(g);
    if (!more) {
      absl::MutexLock wl(&watch_mu_);  // under the guest's lock: SetDeadline cannot slip in between
      timed_.erase(cid);
    }
  }
}

void VsockHub::DropConnections(GuestState& g) {
  // Nothing goes to the guest any more (no RST: its driver has forgotten
  // the connections). A host socket still owed bytes the guest sent drains
  // them, as after a close, and is then closed; the others are closed now.
  // Sockets still on their CONNECT line do not belong to the driver: they
  // stay.
  std::vector<uint32_t> ids;
  for (const auto& [id, c] : g.conns)
    if (c->phase != Conn::Phase::kConnectLine) ids.push_back(id);
  for (uint32_t id : ids) {
    Conn& c = *g.conns.at(id);
    if (c.ep && !c.ep->closed()) {
      Endpoint::Output unused;
      c.ep->Reset(&unused);
    }
    c.in.clear();
    c.msg.clear();
    if (c.out.empty() || c.phase != Conn::Phase::kOpen) {
      Close(g, id);
      continue;
    }
    c.draining = true;
    SetDeadline(c, absl::Now() + opts_.close_timeout);
    UpdateInterest(c);
  }
  g.backlog.clear();
  if (g.stalled) SetStalled(g, false);
}

void VsockHub::Refuse(GuestState& g, const vsock::Hdr& h, Refusal why) {
  Bump(g.refused[static_cast<size_t>(why)]);
  if (h.op == vsock::kOpRst) return;
  Packet r;
  r.hdr = vsock::RstFor(h);
  ToGuest(g, std::move(r));
}

void VsockHub::HandleGuestPacket(GuestState& g, const vsock::Hdr& h, std::vector<uint8_t>* payload,
                                 std::span<const uint8_t> in_place) {
  auto it = g.by_key.find(Key(h.src_port, h.dst_port));
  if (it == g.by_key.end()) {
    if (h.op == vsock::kOpRequest) return GuestConnect(g, h);
    return Refuse(g, h, Refusal::kNoConnection);
  }
  HandleConnPacket(g, *g.conns.at(it->second), h, payload, in_place);
}

void VsockHub::HandleConnPacket(GuestState& g, Conn& c, const vsock::Hdr& h, std::vector<uint8_t>* payload,
                                std::span<const uint8_t> in_place) {
  if (!c.ep || c.draining) return;
  const uint32_t credit = c.ep->peer_free();
  const uint32_t id = c.id;
  Endpoint::Output out;
  if (payload)
    c.ep->TakePacket(h, std::move(*payload), &out);
  else
    c.ep->PeekPacket(h, in_place, &out);
  // When the guest makes room (it read what we sent), the host socket is
  // read now, on this thread, as long as there are credit and data (up to
  // a bound); only then is it the hub thread's to watch again (waking that
  // thread meanwhile would only have it wait for this one's lock).
  g.reading_inline = true;
  Apply(c, out);
  if (g.conns.count(id) && c.ep->peer_free() > credit) {
    for (int i = 0; i < 8 && WantsRead(c); ++i) {
      const uint64_t before = g.from_host_bytes.load(std::memory_order_relaxed);
      OnHostReadable(c);
      if (!g.conns.count(id) || g.from_host_bytes.load(std::memory_order_relaxed) == before) break;
    }
  }
  g.reading_inline = false;
  if (g.conns.count(id)) UpdateInterest(c);
}

void VsockHub::GuestConnect(GuestState& g, const vsock::Hdr& h) {
  if (g.g.uds_path.empty()) return Refuse(g, h, Refusal::kNoListener);
  if (g.open >= opts_.max_conns) return Refuse(g, h, Refusal::kTooManyConns);
  const bool seq = h.type == vsock::kTypeSeqpacket;
  const std::string path = absl::StrCat(g.g.uds_path, "_", h.dst_port);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return Refuse(g, h, Refusal::kNoListener);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, (seq ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Refuse(g, h, Refusal::kNoListener);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    // Nobody listening there (ENOENT, ECONNREFUSED), or a full backlog (EAGAIN).
    ::close(fd);
    return Refuse(g, h, Refusal::kNoListener);
  }
  Conn& c = AddConn(g, fd, Conn::Phase::kOpen);
  c.seq = seq;
  c.ep.emplace(vsock::kCidHost, h.dst_port, g.g.cid, h.src_port, h.type, LimitsOf(g));
  Bind(g, c);
  ToGuest(g, c.ep->Accept(h));
  UpdateInterest(c);
}

VsockHub::Conn& VsockHub::AddConn(GuestState& g, int fd, Phase phase) {
  auto c = std::make_unique<Conn>();
  // A number free in this guest (at most max_conns of 2^29 are in use).
  while (g.next_id == 0 || g.conns.count(g.next_id)) g.next_id = (g.next_id + 1) & kConnIdMask;
  c->id = g.next_id;
  g.next_id = (g.next_id + 1) & kConnIdMask;
  c->g = &g;
  c->fd = fd;
  c->phase = phase;
  Conn& ref = *c;
  g.conns[c->id] = std::move(c);
  epoll_event ev{};
  ev.events = 0;  // UpdateInterest sets them
  ev.data.u64 = ConnTag(g.g.cid, ref.id);
  ::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
  return ref;
}

void VsockHub::Bind(GuestState& g, Conn& c) {
  // Close() undoes each of these.
  g.by_key[Key(c.ep->peer_port(), c.ep->local_port())] = c.id;
  ++g.open;
  Bump(g.conns_open);
  Bump(g.conns_total);
  ++open_;
}

void VsockHub::ResetToGuest(Conn& c) {
  if (!c.ep || c.ep->closed()) return;
  Endpoint::Output o;
  c.ep->Reset(&o);
  for (Packet& p : o.to_peer) ToGuest(*c.g, std::move(p));
}

void VsockHub::Accept(GuestState& g) {
  for (;;) {
    const int fd = ::accept4(g.listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    Conn& c = AddConn(g, fd, Conn::Phase::kConnectLine);
    SetDeadline(c, absl::Now() + opts_.close_timeout);
    UpdateInterest(c);
  }
}

void VsockHub::OnHostReadable(Conn& c) {
  GuestState& g = *c.g;
  if (c.phase == Conn::Phase::kConnectLine) {
    char tmp[kMaxLine];
    const ssize_t r = ::recv(c.fd, tmp, kMaxLine - c.line.size(), 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0) return Close(g, c.id);
    c.line.append(tmp, static_cast<size_t>(r));
    const vsock::ConnectLine cl = vsock::ParseConnectLine(c.line);
    if (cl.result == vsock::ConnectLine::Result::kNeedMore) return;
    if (cl.result == vsock::ConnectLine::Result::kBad) {
      Bump(g.bad_connect);
      return Close(g, c.id);
    }
    c.in.assign(c.line.begin() + static_cast<ptrdiff_t>(cl.consumed), c.line.end());  // the stream's first bytes
    c.line.clear();
    const uint32_t port = cl.port;
    if (g.open >= opts_.max_conns) {
      Bump(g.refused[static_cast<size_t>(Refusal::kTooManyConns)]);
      return Close(g, c.id);
    }
    // A host port the guest sees the connection come from.
    uint32_t hp = g.next_port;
    for (uint32_t tries = 0; g.by_key.count(Key(port, hp)); ++tries) {
      if (tries > 1u << 20) {
        Bump(g.refused[static_cast<size_t>(Refusal::kTooManyConns)]);
        return Close(g, c.id);
      }
      hp = hp + 1 >= (1u << 31) ? kFirstHostPort : hp + 1;
    }
    g.next_port = hp + 1 >= (1u << 31) ? kFirstHostPort : hp + 1;
    c.ep.emplace(vsock::kCidHost, hp, g.g.cid, port, vsock::kTypeStream, LimitsOf(g));
    Bind(g, c);
    c.phase = Conn::Phase::kWaitResponse;
    SetDeadline(c, absl::Now() + opts_.close_timeout);
    ToGuest(g, c.ep->Connect());
    UpdateInterest(c);
    return;
  }
  if (c.phase != Conn::Phase::kOpen || !c.ep || c.draining) {
    UpdateInterest(c);
    return;
  }
  if (!c.in.empty() || g.stalled || c.host_eof) {
    UpdateInterest(c);
    return;
  }
  const uint32_t credit = c.ep->peer_free();
  if (credit == 0) {
    UpdateInterest(c);
    return;
  }
  std::vector<uint8_t>& buf = ReadBuffer();
  const size_t want = c.seq ? buf.size() : std::min<size_t>(credit, kReadChunk);
  const ssize_t r = ::recv(c.fd, buf.data(), want, 0);
  if (r <= 0) return HostReadEnd(c, r);
  Endpoint::Output out;
  const std::span<const uint8_t> got(buf.data(), static_cast<size_t>(r));
  const size_t took = c.ep->Send(got, c.seq, &out);
  Bump(g.from_host_bytes, took);
  if (took < got.size()) {
    c.in.assign(got.begin() + static_cast<ptrdiff_t>(took), got.end());
    c.in_eom = c.seq;
  }
  Apply(c, out);
}

void VsockHub::HostReadEnd(Conn& c, ssize_t r) {
  Endpoint::Output out;
  if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (r < 0) {
    c.ep->Reset(&out);
    return Apply(c, out);
  }
  // The host's end of the stream (a close, or a half-close: it may still
  // read): the guest hears SHUTDOWN SEND and closes when it is done.
  c.host_eof = true;
  c.ep->Shutdown(vsock::kShutdownSend, &out);
  Apply(c, out);
}

void VsockHub::OnHostWritable(Conn& c) {
  Flush(c);
  if (!c.g->conns.count(c.id)) return;
  if (c.draining && c.out.empty()) return Close(*c.g, c.id);
  UpdateInterest(c);
}

vsock::Endpoint::Limits VsockHub::LimitsOf(const GuestState& g) const {
  vsock::Endpoint::Limits l = opts_.limits;
  if (g.g.buf_alloc) l.buf_alloc = std::max(g.g.buf_alloc, l.max_packet);
  if (g.g.budget) {
    // Windows already given stay (data may be on its way under them), so
    // the most vios holds is the sum of each connection's share when it
    // opened: about budget x (1 + ln(connections x buf_alloc / budget)).
    const uint64_t share = g.g.budget / (uint64_t{g.open} + 1);
    l.buf_alloc = static_cast<uint32_t>(std::max<uint64_t>(std::min<uint64_t>(l.buf_alloc, share), l.max_packet));
  }
  return l;
}

void VsockHub::Apply(Conn& c, Endpoint::Output& out) {
  GuestState& g = *c.g;
  for (Packet& p : out.to_peer) ToGuest(g, std::move(p));
  if (out.refused != Refusal::kNone) Bump(g.refused[static_cast<size_t>(out.refused)]);
  if (!out.to_host_in_place.empty()) {
    const std::span<const uint8_t> d = out.to_host_in_place;
    if (c.seq) {
      c.msg.insert(c.msg.end(), d.begin(), d.end());  // its end (eom) below
    } else {
      // Straight from the guest's buffer when nothing waits before it
      // (what waits is written first, here: the socket may have room
      // again); what the socket does not take now is copied. A failed
      // write is left to Flush below, which sees it again.
      size_t sent = 0;
      if (!c.out.empty()) WriteOut(c);
      if (c.out.empty()) {
        const ssize_t w = ::send(c.fd, d.data(), d.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) sent = static_cast<size_t>(w);
      }
      if (sent < d.size()) {
        QueueOut(c, d.subspan(sent));
        Bump(g.to_host_queued, d.size() - sent);
      }
      if (sent > 0) Wrote(c, sent);
    }
  }
  if (!out.to_host.empty() || (c.seq && out.eom)) {
    if (c.seq) {
      c.msg.insert(c.msg.end(), out.to_host.begin(), out.to_host.end());
      if (out.eom) c.out.push_back(std::move(c.msg)), c.msg.clear();
    } else if (!c.out.empty() && c.out.back().size() < kReadChunk) {
      QueueOut(c, out.to_host);
    } else {
      c.out.push_back(std::move(out.to_host));
    }
  }
  if (out.host_eof) c.shut_wr_pending = true;
  if (c.phase == Conn::Phase::kWaitResponse) {
    if (c.ep->closed()) return Close(g, c.id);  // the guest refused: the host's socket is closed
    if (c.ep->state() == Endpoint::State::kEstablished) {
      const std::string ok = absl::StrCat("OK ", c.ep->local_port(), "\n");
      if (::send(c.fd, ok.data(), ok.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(ok.size())) {
        ResetToGuest(c);
        return Close(g, c.id);
      }
      c.phase = Conn::Phase::kOpen;
      c.deadline = absl::InfiniteFuture();
    }
  }
  // Host bytes that waited for credit.
  if (!c.in.empty() && c.phase == Conn::Phase::kOpen && !c.ep->closed() && c.ep->peer_free() > 0) {
    Endpoint::Output o;
    const size_t took = c.ep->Send(c.in, c.in_eom, &o);
    Bump(g.from_host_bytes, took);
    c.in.erase(c.in.begin(), c.in.begin() + static_cast<ptrdiff_t>(took));
    for (Packet& p : o.to_peer) ToGuest(g, std::move(p));
  }
  Flush(c);
  if (!g.conns.count(c.id)) return;
  if (c.ep->closed() && !c.draining) {
    // Write what the guest sent before it closed, for a while.
    c.draining = true;
    if (c.out.empty()) return Close(g, c.id);
    SetDeadline(c, absl::Now() + opts_.close_timeout);
  }
  UpdateInterest(c);
}

bool VsockHub::WriteOut(Conn& c) {
  uint64_t wrote = 0;
  bool ok = true;
  while (!c.out.empty()) {
    std::vector<uint8_t>& front = c.out.front();
    ssize_t w;
    if (c.seq) {
      w = ::send(c.fd, front.data() + c.out_off, front.size() - c.out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
      // A stream's chunks in one call.
      std::array<iovec, 64> iov;
      size_t n = 0;
      for (auto it = c.out.begin(); it != c.out.end() && n < iov.size(); ++it, ++n) {
        const size_t off = n == 0 ? c.out_off : 0;
        iov[n] = {it->data() + off, it->size() - off};
      }
      msghdr m{};
      m.msg_iov = iov.data();
      m.msg_iovlen = n;
      w = ::sendmsg(c.fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    if (w < 0 && (errno == EAGAIN || errno == EINTR)) break;
    if (w < 0) {
      ok = false;
      break;
    }
    wrote += static_cast<uint64_t>(w);
    if (c.seq) {  // one message per write (an empty one too)
      c.out_off += static_cast<size_t>(w);
      if (c.out_off == front.size()) {
        c.out.pop_front();
        c.out_off = 0;
      }
      continue;
    }
    if (w == 0) break;
    for (size_t left = static_cast<size_t>(w); left > 0;) {
      const size_t take = std::min(left, c.out.front().size() - c.out_off);
      c.out_off += take;
      left -= take;
      if (c.out_off == c.out.front().size()) {
        c.out.pop_front();
        c.out_off = 0;
      }
    }
  }
  if (wrote > 0) Wrote(c, wrote);
  return ok;
}

void VsockHub::Flush(Conn& c) {
  if (!WriteOut(c)) {
    // The host side went away: the guest's end is reset.
    c.out.clear();
    c.out_off = 0;
    ResetToGuest(c);
    return Close(*c.g, c.id);
  }
  if (c.out.empty() && c.shut_wr_pending && !c.shut_wr_done) {
    ::shutdown(c.fd, SHUT_WR);
    c.shut_wr_done = true;
  }
}

void VsockHub::QueueOut(Conn& c, std::span<const uint8_t> d) {
  // Small pieces join the last chunk: Flush's writes stay large.
  if (!c.out.empty() && c.out.back().size() < kReadChunk)
    c.out.back().insert(c.out.back().end(), d.begin(), d.end());
  else
    c.out.emplace_back(d.begin(), d.end());
}

void VsockHub::Wrote(Conn& c, uint64_t n) {
  Bump(c.g->to_host_bytes, n);
  if (!c.ep || c.ep->closed()) return;
  Endpoint::Output o;
  c.ep->Consumed(static_cast<uint32_t>(n), &o);
  for (Packet& p : o.to_peer) ToGuest(*c.g, std::move(p));
}

bool VsockHub::WantsRead(const Conn& c) const {
  return c.phase == Conn::Phase::kOpen && c.ep && !c.ep->closed() && !c.draining && !c.host_eof && !c.g->stalled &&
         c.in.empty() && c.ep->peer_free() > 0;
}

void VsockHub::UpdateInterest(Conn& c) {
  uint32_t want = 0;
  if (c.phase == Conn::Phase::kConnectLine) want |= EPOLLIN;
  // While a device thread reads inline, EPOLLIN is not added (it stays if
  // it was there: toggling it would cost two epoll_ctl per packet).
  if (WantsRead(c) && (!c.g->reading_inline || (c.events & EPOLLIN))) want |= EPOLLIN;
  if (!c.out.empty()) want |= EPOLLOUT;
  if (want == c.events) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = ConnTag(c.g->g.cid, c.id);
  ::epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
  c.events = want;
}

void VsockHub::Close(GuestState& g, uint32_t id) {
  auto it = g.conns.find(id);
  if (it == g.conns.end()) return;
  Conn& c = *it->second;
  ::epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
  ::close(c.fd);
  if (c.ep) {
    const uint64_t key = Key(c.ep->peer_port(), c.ep->local_port());
    auto k = g.by_key.find(key);
    if (k != g.by_key.end() && k->second == id) {
      g.by_key.erase(k);
      --g.open;
      g.conns_open.fetch_sub(1, std::memory_order_relaxed);
      --open_;
    }
  }
  g.conns.erase(it);
}

void VsockHub::SetDeadline(Conn& c, absl::Time t) {
  c.deadline = t;
  if (t == absl::InfiniteFuture()) return;
  bool first;
  {
    absl::MutexLock l(&watch_mu_);
    first = timed_.insert(c.g->g.cid).second && timed_.size() == 1;
  }
  if (first) Wake();  // the hub thread may be asleep with no timeout
}

void VsockHub::ToGuest(GuestState& g, Packet p) {
  if (g.backlog.size() >= kMaxBacklog) {
    Bump(g.drop_to_guest);
    return;
  }
  g.backlog.push_back(std::move(p));
}

void VsockHub::PushBacklog(GuestState& g) {
  if (g.backlog.empty()) {
    if (g.stalled) SetStalled(g, false);
    return;
  }
  std::vector<Packet>& batch = g.batch;
  batch.assign(std::make_move_iterator(g.backlog.begin()), std::make_move_iterator(g.backlog.end()));
  g.backlog.clear();
  const size_t taken = g.g.inbox->Push(static_cast<uint32_t>(vsock::kCidHost), batch);
  for (size_t i = taken; i < batch.size(); ++i) g.backlog.push_back(std::move(batch[i]));
  batch.clear();
  if (g.stalled != !g.backlog.empty()) SetStalled(g, !g.backlog.empty());
}

void VsockHub::SetStalled(GuestState& g, bool stalled) {
  g.stalled = stalled;
  bool first = false;
  {
    absl::MutexLock l(&watch_mu_);
    if (stalled)
      first = stalled_.insert(g.g.cid).second && stalled_.size() == 1;
    else
      stalled_.erase(g.g.cid);
  }
  for (auto& [id, c] : g.conns) UpdateInterest(*c);
  if (first) Wake();  // the hub thread retries stalled guests every millisecond
}

}  // namespace vioport::vios
