// SPDX-License-Identifier: Apache-2.0
// xen::DomainService: xenemud's domains as processes; see
// xen_domain_service.h and, for the wire protocol, xen_remote.h.
#include "xen_domain_service.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <mutex>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <future>
#include <vector>

#include <boost/asio/post.hpp>

#include "absl/strings/str_cat.h"
#include "vioport/emulators/hcall_mailbox.h"
#include "vioport/emulators/xen_remote.h"
#include "vioport/emulators/xenstore_wire.h"

namespace vioport::xen {

namespace {

// An eventfd that outlives every notification in flight: EventChannels
// signals outside its lock with a copy of the callback, which holds this.
struct OwnedFd {
  int fd = -1;
  explicit OwnedFd(int f) : fd(f) {}
  ~OwnedFd() {
    if (fd >= 0) ::close(fd);
  }
};

// xenemud's end of a domain's event ring (wire::EventRing): the only
// producer. Notifications for one domain can come from several threads at
// once (every domain's hypercalls), hence the lock.
class EventRingProducer {
 public:
  EventRingProducer(int mailbox_fd, std::shared_ptr<OwnedFd> efd) : efd_(std::move(efd)) {
    void* m = ::mmap(nullptr, emu::kMailboxBytes, PROT_READ | PROT_WRITE, MAP_SHARED, mailbox_fd, 0);
    if (m != MAP_FAILED) map_ = static_cast<uint8_t*>(m);
  }
  ~EventRingProducer() {
    if (map_) ::munmap(map_, emu::kMailboxBytes);
  }
  bool ok() const { return map_ != nullptr; }
  void Deliver(EventChannels& ev, DomId dom) {
    {
      std::lock_guard<std::mutex> l(mu_);
      auto* r = reinterpret_cast<wire::EventRing*>(map_ + wire::kEventRingOffset);
      for (;;) {
        // The domain's index is untrusted: anything but 0..slots in flight is "full".
        const uint32_t used = prod_ - r->cons.load(std::memory_order_acquire);
        if (used >= wire::kEventRingSlots) {
          r->overflow.store(1, std::memory_order_release);
          break;
        }
        const std::optional<EvtchnPort> p = ev.Pending(dom);
        if (!p) break;
        r->ports[prod_ % wire::kEventRingSlots].store(*p, std::memory_order_relaxed);
        r->prod.store(++prod_, std::memory_order_release);
      }
    }
    const uint64_t one = 1;
    (void)!::write(efd_->fd, &one, sizeof one);  // a saturated counter still reads as readable
  }

 private:
  std::mutex mu_;
  uint8_t* map_ = nullptr;
  uint32_t prod_ = 0;
  std::shared_ptr<OwnedFd> efd_;
};

}  // namespace

struct DomainService::Domain {
  DomId id = 0;
  std::string xs_path;  // the domain's xenstore socket (dom0: the main one)
  uint8_t* base = nullptr;  // [RAM pages][pool pages], one range, as GrantTables sees the domain
  uint64_t ram_bytes = 0;
  uint64_t total_bytes = 0;
  uint32_t ram_pages = 0;
  uint32_t grant_frames = 0;
  uint32_t pool_pages = 0;
  std::vector<int> pool_fds;  // immutable once the domain is in grants_
  std::shared_ptr<OwnedFd> event_fd;
  bool in_grants = false, in_evtchn = false, in_xenstore = false;
  bool zombie = false;  // dead, memory kept while others map its pages (guarded by mu_)
  uint8_t* arg_page() const { return base + uint64_t{grant_frames} * kXenPageSize; }
};

DomainService::DomainService(boost::asio::io_context& io, XenStore& store, XenStoreServer& xs_server,
                             DomainServiceOptions options)
    : io_(io),
      store_(store),
      xs_server_(xs_server),
      options_(std::move(options)),
      grants_(GrantTablesConfig{options_.max_grant_frames, options_.max_maptrack}) {}

DomainService::~DomainService() { Shutdown(); }

absl::Status DomainService::Start() {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (options_.socket_path.empty() || options_.socket_path.size() >= sizeof addr.sun_path)
    return absl::InvalidArgumentError(absl::StrCat("bad domain socket path: ", options_.socket_path));
  std::memcpy(addr.sun_path, options_.socket_path.c_str(), options_.socket_path.size() + 1);
  ::unlink(options_.socket_path.c_str());
  listen_fd_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 64) != 0)
    return absl::UnavailableError(absl::StrCat("listen on ", options_.socket_path, ": ", std::strerror(errno)));
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) return absl::ResourceExhaustedError(absl::StrCat("eventfd: ", std::strerror(errno)));
  acceptor_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void DomainService::AcceptLoop() {
  pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  for (;;) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "xenemud: poll: %s\n", std::strerror(errno));
      return;
    }
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      ::close(c);
      continue;
    }
    conns_.Add(c, [this](int fd) { Serve(fd); });
  }
}

void DomainService::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (acceptor_.joinable()) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
    acceptor_.join();
  }
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    ::unlink(options_.socket_path.c_str());
    listen_fd_ = -1;
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
  wake_fd_ = -1;
  conns_.Shutdown();
  // Zombies nobody will unmap any more: the process is stopping.
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, d] : domains_) FreeMemory(*d);
  domains_.clear();
}

void DomainService::OnIo(std::function<void()> f) {
  std::promise<void> done;
  boost::asio::post(io_, [&] {
    f();
    done.set_value();
  });
  done.get_future().wait();
}

bool DomainService::Refuse(int fd, const std::string& why) {
  wire::HelloReply r;
  r.status = 1;
  std::snprintf(r.error, sizeof r.error, "%s", why.c_str());
  (void)emu::wire::SendWithFd(fd, &r, sizeof r, -1);
  std::fprintf(stderr, "xenemud: refused a domain: %s\n", why.c_str());
  return false;
}

void DomainService::FreeMemory(Domain& d) {
  if (d.base) ::munmap(d.base, d.total_bytes);
  d.base = nullptr;
  for (int fd : d.pool_fds) ::close(fd);
  d.pool_fds.clear();
}

void DomainService::Serve(int fd) {
  // However this ends, the peer sees the connection close now; the fd
  // itself is closed when the thread is reaped.
  struct Hangup {
    int fd;
    ~Hangup() { ::shutdown(fd, SHUT_RDWR); }
  } hangup{fd};
  wire::Hello hello;
  int memfd = -1;
  if (!emu::wire::RecvWithFd(fd, &hello, sizeof hello, &memfd)) return;
  struct Closer {
    int& fd;
    ~Closer() {
      if (fd >= 0) ::close(fd);
    }
  } close_memfd{memfd};
  if (hello.magic != wire::kHelloMagic || hello.version != wire::kWireVersion) {
    Refuse(fd, "bad HELLO (magic or version)");
    return;
  }
  if (hello.domid >= kDomidSelf) {
    Refuse(fd, absl::StrCat("domid ", hello.domid, " is reserved (0..32751)"));
    return;
  }
  const DomId id = static_cast<DomId>(hello.domid);
  const uint64_t ram = hello.memory_bytes;
  const uint32_t frames = hello.grant_frames;
  const uint32_t pages = hello.grant_pages;
  if (memfd < 0) {
    Refuse(fd, "no memfd passed with HELLO");
    return;
  }
  if (frames == 0 || frames > options_.max_grant_frames) {
    Refuse(fd, absl::StrCat(frames, " grant frames (1..", options_.max_grant_frames, ")"));
    return;
  }
  if (ram % kXenPageSize != 0 || ram < (uint64_t{frames} + 2) * kXenPageSize || ram > options_.max_memory_bytes) {
    Refuse(fd, absl::StrCat("memory of ", ram, " bytes: whole 4 KiB pages, at least the grant table, the argument ",
                            "page and one more, at most ", options_.max_memory_bytes));
    return;
  }
  if (const std::string why = emu::CheckSealedMemfd(memfd, ram); !why.empty()) {
    Refuse(fd, why);
    return;
  }
  std::string xs_path = id == 0 ? options_.xenstore_path : absl::StrCat(options_.xenstore_path, ".d", id);
  if (xs_path.size() >= sizeof(wire::HelloReply::xenstore_path)) {
    Refuse(fd, absl::StrCat("xenstore socket path too long: ", xs_path));
    return;
  }

  auto d = std::make_shared<Domain>();
  d->id = id;
  d->xs_path = xs_path;
  d->ram_bytes = ram;
  d->ram_pages = static_cast<uint32_t>(ram / kXenPageSize);
  d->grant_frames = frames;
  d->pool_pages = pages;
  d->total_bytes = ram + uint64_t{pages} * kXenPageSize;
  {
    // A domain that just exited may still hold its id until its thread
    // reads the EOF: a restarted one waits for that, up to a second. A dead
    // domain whose pages others still map (a zombie) keeps its id longer,
    // as on Xen.
    std::unique_lock<std::mutex> lock(mu_);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    while (domains_.count(id) != 0) {
      const bool zombie = domains_[id]->zombie;
      if (std::chrono::steady_clock::now() >= until || stopping_) {
        lock.unlock();
        Refuse(fd, zombie ? absl::StrCat("domain ", id, " is still dying (others map its pages)")
                          : absl::StrCat("domain ", id, " is already connected"));
        return;
      }
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      lock.lock();
    }
    if (pool_in_use_ + pages > options_.max_grant_pages) {
      const uint64_t left = options_.max_grant_pages - pool_in_use_;
      lock.unlock();
      Refuse(fd, absl::StrCat(pages, " grant pages asked, ", left, " left of the pool cap ",
                              options_.max_grant_pages));
      return;
    }
    pool_in_use_ += pages;
    domains_[id] = d;
  }
  // From here on a failure is a death: Die undoes whatever was done.
  auto fail = [&](const std::string& why) {
    Refuse(fd, why);
    Die(d, false);
  };

  // One range [RAM][pool], so GrantTables' frame numbers index it.
  void* r = ::mmap(nullptr, d->total_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return fail(absl::StrCat("mmap: ", std::strerror(errno)));
  d->base = static_cast<uint8_t*>(r);
  if (::mmap(d->base, ram, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, memfd, 0) == MAP_FAILED)
    return fail(absl::StrCat("mmap RAM: ", std::strerror(errno)));
  for (uint32_t i = 0; i < pages; ++i) {
    const int pfd = ::memfd_create(absl::StrCat("xen-d", id, "-grant-", i).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (pfd < 0) return fail(absl::StrCat("grant pool page: memfd_create: ", std::strerror(errno)));
    d->pool_fds.push_back(pfd);
    // Sealed, so no holder can shrink it under the others' mappings. Mode
    // 0400: a backend holding a read-only description cannot reopen it
    // writable through /proc (as root it still could: the emulator
    // isolates against mistakes, not against root).
    if (::ftruncate(pfd, kXenPageSize) != 0 ||
        ::fcntl(pfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0 || ::fchmod(pfd, 0400) != 0 ||
        ::mmap(d->base + ram + uint64_t{i} * kXenPageSize, kXenPageSize, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_FIXED, pfd, 0) == MAP_FAILED)
      return fail(absl::StrCat("grant pool page: ", std::strerror(errno)));
  }
  if (absl::Status s = grants_.AddDomain(id, d->base, d->total_bytes); !s.ok()) return fail(std::string(s.message()));
  d->in_grants = true;
  if (const int16_t st = grants_.SetupTable(id, 0, frames); st != gntst::kOkay)
    return fail(absl::StrCat("GNTTABOP_setup_table: GNTST ", st));
  const int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd < 0) return fail(absl::StrCat("eventfd: ", std::strerror(errno)));
  d->event_fd = std::make_shared<OwnedFd>(efd);
  if (absl::Status s = evtchn_.AddDomain(id); !s.ok()) return fail(std::string(s.message()));
  d->in_evtchn = true;
  int mbfd = -1;
  emu::Mailbox* mb = emu::CreateMailbox(absl::StrCat("xenemud-mailbox-", id), &mbfd);
  if (mb == nullptr) return fail("cannot create the hypercall mailbox");
  // Deliveries go into the mailbox's event ring (its own mapping, alive as
  // long as a copy of the callback is), then the eventfd is signalled.
  auto ring = std::make_shared<EventRingProducer>(mbfd, d->event_fd);
  if (!ring->ok()) return fail(absl::StrCat("event ring: ", std::strerror(errno)));
  (void)evtchn_.SetNotifyCallback(id, [this, ring](DomId dom) { ring->Deliver(evtchn_, dom); });
  struct MailboxCloser {
    emu::Mailbox* mb;
    int& fd;
    ~MailboxCloser() {
      emu::UnmapMailbox(mb);
      if (fd >= 0) ::close(fd);
    }
  } close_mailbox{mb, mbfd};
  int sv[2] = {-1, -1};
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    return fail(absl::StrCat("socketpair: ", std::strerror(errno)));
  struct PairCloser {
    int* sv;
    ~PairCloser() {
      for (int i = 0; i < 2; ++i)
        if (sv[i] >= 0) ::close(sv[i]);
    }
  } close_pair{sv};
  // The domain's xenstore identity: its socket, /local/domain/ID,
  // @introduceDomain (dom0 has the main socket and no introduction).
  std::string xs_error;
  OnIo([&] {
    if (id == 0) return;
    if (absl::Status s = xs_server_.Listen(d->xs_path, id); !s.ok()) {
      xs_error = std::string(s.message());
      return;
    }
    store_.IntroduceDomain(id);
  });
  if (!xs_error.empty()) return fail(absl::StrCat("xenstore: ", xs_error));
  d->in_xenstore = true;

  wire::HelloReply reply;
  reply.mailbox_bytes = emu::kMailboxBytes;
  std::snprintf(reply.xenstore_path, sizeof reply.xenstore_path, "%s", d->xs_path.c_str());
  const int fds[3] = {d->event_fd->fd, mbfd, sv[1]};
  bool alive = emu::wire::SendWithFds(fd, &reply, sizeof reply, fds);
  ::close(sv[1]);
  sv[1] = -1;
  for (uint32_t next = 0; alive && next < pages;) {
    wire::PoolPages pp;
    pp.first_index = next;
    pp.count = std::min(pages - next, wire::kPoolFdsPerMsg);
    alive = emu::wire::SendWithFds(fd, &pp, sizeof pp, std::span<const int>(d->pool_fds).subspan(next, pp.count));
    next += pp.count;
  }
  if (alive) {
    std::fprintf(stderr, "xenemud: domain %u connected (%llu bytes RAM, %u grant frames, %u pool pages, xenstore %s)\n",
                 id, static_cast<unsigned long long>(ram), frames, pages, d->xs_path.c_str());
  }
  std::thread maps;
  if (alive) {
    const int map_fd = sv[0];
    maps = std::thread([this, d, map_fd] { ServeMaps(d, map_fd); });
  }
  // Each call: poll the mailbox for `spin`, then sleep on the socket (a
  // kick, or EOF: the domain died); see hcall_mailbox.h.
  emu::MailboxServer server(mb, fd, options_.spin);
  emu::MailboxServer::Request req;
  while (alive && server.Next(&req)) {
    int64_t rc = -ENOSYS;
    Hypercall(*d, req.args, req.opcode, &rc);
    server.Answer(req, rc, 0);
  }
  if (maps.joinable()) {
    ::shutdown(sv[0], SHUT_RDWR);
    maps.join();
  }
  Die(d, alive);
}

void DomainService::ServeMaps(const std::shared_ptr<Domain>& d, int fd) {
  for (;;) {
    wire::MapRequest req;
    if (!emu::wire::RecvWithFd(fd, &req, sizeof req, nullptr)) return;
    wire::MapReply rep;
    int page_fd = -1;
    bool close_page_fd = false;
    if (req.magic != wire::kHelloMagic) {
      rep.status = gntst::kGeneralError;
    } else if (req.granter > 0xFFFF) {
      rep.status = gntst::kBadDomain;
    } else {
      const bool readonly = req.readonly != 0;
      const MapResult r = grants_.Map(d->id, static_cast<DomId>(req.granter), req.ref, readonly);
      rep.status = r.status;
      if (r.status == gntst::kOkay) {
        std::shared_ptr<Domain> g;
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (auto it = domains_.find(static_cast<DomId>(req.granter)); it != domains_.end()) g = it->second;
        }
        // Only pool pages can be handed out: a RAM frame's fd would be the
        // granter's whole RAM. Xen's gntdev has no such limit; the granter
        // must share from the pool (as xengntshr does).
        if (!g || r.frame < g->ram_pages || r.frame - g->ram_pages >= g->pool_pages) {
          (void)grants_.Unmap(d->id, r.handle);
          rep.status = gntst::kBadPage;
        } else {
          const int pfd = g->pool_fds[r.frame - g->ram_pages];
          if (readonly) {
            // A read-only file description: the backend cannot mmap it
            // writable (nor mprotect its mapping to writable).
            page_fd = ::open(absl::StrCat("/proc/self/fd/", pfd).c_str(), O_RDONLY | O_CLOEXEC);
            close_page_fd = true;
          } else {
            page_fd = pfd;
          }
          if (page_fd < 0) {
            (void)grants_.Unmap(d->id, r.handle);
            rep.status = gntst::kGeneralError;
          } else {
            rep.handle = r.handle;
          }
        }
      }
    }
    const bool sent = emu::wire::SendWithFd(fd, &rep, sizeof rep, rep.status == gntst::kOkay ? page_fd : -1);
    if (close_page_fd && page_fd >= 0) ::close(page_fd);
    if (!sent && rep.status == gntst::kOkay) (void)grants_.Unmap(d->id, rep.handle);
    if (rep.status != gntst::kOkay || !sent) Reap();
    if (!sent) return;
  }
}

void DomainService::Hypercall(Domain& d, const uint64_t* args, uint64_t opcode, int64_t* rc) {
  auto port = [](uint64_t v) { return v <= 0xFFFFFFFFu; };
  switch (opcode) {
    case wire::kSetupTable:
      *rc = args[1] > 0xFFFFFFFFu ? gntst::kGeneralError
                                  : grants_.SetupTable(d.id, args[0], static_cast<uint32_t>(args[1]));
      return;
    case wire::kGrantCopy: {
      // Guest handles: the segments sit in the caller's argument page. Read
      // once into our copy, validated by the model, statuses written back.
      const uint64_t n = args[0];
      if (n > wire::kCopySegmentsPerCall) {
        *rc = -EINVAL;
        return;
      }
      std::vector<wire::CopySegmentWire> w(n);
      std::memcpy(w.data(), d.arg_page(), n * sizeof(wire::CopySegmentWire));
      std::vector<CopySegment> segs(n);
      for (size_t i = 0; i < n; ++i) {
        segs[i].source = CopyPtr{w[i].source_ref_or_gmfn, w[i].source_domid, w[i].source_offset};
        segs[i].dest = CopyPtr{w[i].dest_ref_or_gmfn, w[i].dest_domid, w[i].dest_offset};
        segs[i].len = w[i].len;
        segs[i].flags = w[i].flags;
      }
      grants_.Copy(d.id, segs);
      auto* out = reinterpret_cast<wire::CopySegmentWire*>(d.arg_page());
      for (size_t i = 0; i < n; ++i)
        std::memcpy(reinterpret_cast<uint8_t*>(&out[i]) + offsetof(wire::CopySegmentWire, status), &segs[i].status,
                    sizeof(int16_t));
      *rc = 0;
      return;
    }
    case wire::kGrantUnmap:
      *rc = args[0] > 0xFFFFFFFFu ? gntst::kBadHandle : grants_.Unmap(d.id, static_cast<GrantHandle>(args[0]));
      // A backend's unmap may be the last hold on a dead granter's memory.
      Reap();
      return;
    case wire::kEvtchnAllocUnbound:
      *rc = args[0] > 0xFFFF ? -EINVAL : evtchn_.AllocUnbound(d.id, static_cast<DomId>(args[0]));
      return;
    case wire::kEvtchnBindInterdomain:
      *rc = args[0] > 0xFFFF || !port(args[1])
                ? -EINVAL
                : evtchn_.BindInterdomain(d.id, static_cast<DomId>(args[0]), static_cast<EvtchnPort>(args[1]));
      return;
    case wire::kEvtchnSend:
      *rc = port(args[0]) ? evtchn_.Send(d.id, static_cast<EvtchnPort>(args[0])) : -EINVAL;
      return;
    case wire::kEvtchnClose:
      *rc = port(args[0]) ? evtchn_.Close(d.id, static_cast<EvtchnPort>(args[0])) : -EINVAL;
      return;
    case wire::kEvtchnUnmask:
      *rc = port(args[0]) ? evtchn_.Unmask(d.id, static_cast<EvtchnPort>(args[0])) : -EINVAL;
      return;
    case wire::kEvtchnPending: {
      const uint64_t max = std::min<uint64_t>(args[0], wire::kPendingPortsPerCall);
      auto* out = d.arg_page();
      uint64_t n = 0;
      while (n < max) {
        const std::optional<EvtchnPort> p = evtchn_.Pending(d.id);
        if (!p) break;
        const uint32_t v = *p;
        std::memcpy(out + n * sizeof v, &v, sizeof v);
        ++n;
      }
      *rc = static_cast<int64_t>(n);
      return;
    }
    default:
      *rc = -ENOSYS;
  }
}

void DomainService::CloseBackendsOf(DomId dom) {
  if (!toolstack_open_) {
    toolstack_conn_ = store_.Connect(0, [](const XsHeader&, std::string_view) {});
    toolstack_open_ = true;
  }
  const std::string base = XenStore::DomainPath(dom) + "/backend";
  for (const std::string& type : store_.Children(base).value_or(std::vector<std::string>{})) {
    const std::string tdir = base + "/" + type;
    for (const std::string& fe : store_.Children(tdir).value_or(std::vector<std::string>{})) {
      const std::string fdir = tdir + "/" + fe;
      for (const std::string& dev : store_.Children(fdir).value_or(std::vector<std::string>{})) {
        const std::string dir = fdir + "/" + dev;
        const auto perms = store_.Perms(dir);
        if (!perms || perms->empty() || (*perms)[0].domid != dom) continue;
        // A write through a dom0 connection, so the frontends' watches fire.
        std::string payload = dir + "/state";
        payload.push_back('\0');
        payload += "6";
        XsHeader hdr;
        hdr.type = kXsWrite;
        hdr.len = static_cast<uint32_t>(payload.size());
        store_.HandleMessage(toolstack_conn_, hdr, payload);
      }
    }
  }
}

void DomainService::Die(const std::shared_ptr<Domain>& d, bool log) {
  const DomId id = d->id;
  if (d->in_grants) {
    // Its own mappings of others go (gnttab_release_mappings); mappings of
    // its pages by others stay valid until they unmap.
    grants_.UnmapAll(id);
    (void)grants_.RemoveDomain(id);
  }
  if (d->in_evtchn) (void)evtchn_.RemoveDomain(id);  // peers return to unbound
  d->event_fd.reset();
  if (d->in_xenstore) {
    OnIo([&] {
      if (id != 0) {
        (void)xs_server_.StopListening(d->xs_path);
        xs_server_.CloseConnectionsOf(id);
      }
      CloseBackendsOf(id);
      store_.ReleaseDomain(id);  // removes /local/domain/ID, fires @releaseDomain (not for dom0)
    });
  }
  const uint64_t mapped = d->in_grants ? grants_.ForeignMappingsOf(id) : 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (mapped == 0) {
      FreeMemory(*d);
      pool_in_use_ -= d->pool_pages;
      if (auto it = domains_.find(id); it != domains_.end() && it->second == d) domains_.erase(it);
    } else {
      d->zombie = true;
    }
  }
  if (log) {
    if (mapped == 0) {
      std::fprintf(stderr, "xenemud: domain %u died\n", id);
    } else {
      std::fprintf(stderr, "xenemud: domain %u died; its memory stays until %llu foreign mapping(s) are unmapped\n",
                   id, static_cast<unsigned long long>(mapped));
    }
  }
  // Its own unmaps may have released the last hold on a zombie.
  Reap();
}

void DomainService::Reap() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = domains_.begin(); it != domains_.end();) {
    Domain& d = *it->second;
    if (d.zombie && grants_.ForeignMappingsOf(d.id) == 0) {
      FreeMemory(d);
      pool_in_use_ -= d.pool_pages;
      std::fprintf(stderr, "xenemud: domain %u's memory released (no foreign mapping left)\n", d.id);
      it = domains_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace vioport::xen
