// SPDX-License-Identifier: Apache-2.0
// xen::RemoteDomain: a domain process of xenemud; see xen_remote.h.
#include "vioport/emulators/xen_remote.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "vioport/emulators/hcall_mailbox.h"

namespace vioport::xen {

struct RemoteDomain::Impl {
  DomId id = 0;
  std::string xenstore_path;
  int memfd = -1, event_fd = -1, wake_fd = -1;
  uint8_t* mem = nullptr;
  uint64_t mem_bytes = 0;
  uint32_t grant_frames = 0;
  uint8_t* pool = nullptr;
  uint32_t pool_pages = 0;
  emu::Mailbox* mailbox = nullptr;
  size_t mailbox_bytes = 0;
  int mailbox_fd = -1;  // kept for a live upgrade
  uint32_t seq = 0;
  bool resync_seq = false;  // adopted: read the sequence at the first call
  std::chrono::microseconds spin{0};
  std::unique_ptr<GrantTableWriter> table;
  absl::Mutex ring_mu;  // one consumer of the event ring at a time
  absl::Mutex mu;  // one hypercall at a time (mailbox, argument page); guards the socket's lifetime
  int sock ABSL_GUARDED_BY(mu) = -1;
  absl::Mutex map_mu;  // one map request at a time
  int map_sock ABSL_GUARDED_BY(map_mu) = -1;
  std::atomic<bool> dead{false};
  std::atomic<uint64_t> hypercalls{0};
  std::thread watcher;  // notices xenemud's death without a call in flight

  uint8_t* arg_page() const { return mem + uint64_t{grant_frames} * kXenPageSize; }

  void MarkDead() {
    if (dead.exchange(true, std::memory_order_acq_rel)) return;
    // Waiters on the event fd wake and find every call failing.
    if (event_fd >= 0) {
      const uint64_t one = 1;
      (void)!::write(event_fd, &one, sizeof one);
    }
  }

  // One hypercall; nullopt once xenemud is gone.
  std::optional<emu::MailboxAnswer> Call(uint64_t op, std::span<const uint64_t> args)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (dead.load(std::memory_order_acquire) || sock < 0 || mailbox == nullptr) return std::nullopt;
    if (resync_seq) {  // the old vios called through this mailbox until it committed
      seq = mailbox->request_seq.load();
      resync_seq = false;
    }
    hypercalls.fetch_add(1, std::memory_order_relaxed);
    emu::MailboxAnswer answer;
    switch (emu::MailboxCall(*mailbox, sock, seq, op, args, spin, dead, &answer)) {
      case emu::CallOutcome::kAnswered:
        return answer;
      case emu::CallOutcome::kServerGone:
        MarkDead();
        return std::nullopt;
      case emu::CallOutcome::kAbandoned:
        break;
    }
    return std::nullopt;
  }
  int64_t SimpleCall(uint64_t op, std::initializer_list<uint64_t> args) {
    absl::MutexLock lock(&mu);
    auto a = Call(op, std::span<const uint64_t>(args.begin(), args.size()));
    return a ? a->rc : -ENODEV;
  }

  // Connected (or adopted): the grant table over our memory, and the
  // thread that notices xenemud's death.
  absl::Status Start() {
    table = std::make_unique<GrantTableWriter>(mem, grant_frames * kGrantEntriesPerFrame);
    wake_fd = ::eventfd(0, EFD_CLOEXEC);
    if (wake_fd < 0) return absl::ResourceExhaustedError(absl::StrCat("eventfd: ", std::strerror(errno)));
    watcher = std::thread([this] { Watch(); });
    return absl::OkStatus();
  }

  void Watch() {
    int s;
    {
      absl::MutexLock lock(&mu);
      s = sock;
    }
    // The socket is never closed before this thread is joined, so polling it
    // without the lock is safe.
    if (emu::wire::WaitForHangup(s, wake_fd)) MarkDead();
  }
};

RemoteDomain::RemoteDomain() : impl_(std::make_unique<Impl>()) {}

absl::StatusOr<std::unique_ptr<RemoteDomain>> RemoteDomain::Connect(const RemoteDomainOptions& o) {
  if (o.id >= kDomidSelf) return absl::InvalidArgumentError(absl::StrCat("domid ", o.id, " is reserved"));
  if (o.grant_frames == 0) return absl::InvalidArgumentError("a domain needs at least one grant-table frame");
  if (o.memory_bytes % kXenPageSize != 0 || o.memory_bytes < (uint64_t{o.grant_frames} + 2) * kXenPageSize)
    return absl::InvalidArgumentError(absl::StrCat("domain memory of ", o.memory_bytes,
                                                   " bytes: whole 4 KiB pages, more than the grant table (",
                                                   o.grant_frames, " frames) and the argument page"));
  std::unique_ptr<RemoteDomain> d(new RemoteDomain());
  Impl& im = *d->impl_;
  im.id = o.id;
  im.spin = o.spin;
  im.grant_frames = o.grant_frames;
  std::string err;
  im.memfd = emu::CreateSealedMemfd(absl::StrCat("xen-domain-", o.id), o.memory_bytes, &im.mem, &err);
  if (im.memfd < 0) return absl::ResourceExhaustedError(err);
  im.mem_bytes = o.memory_bytes;
  const int s = emu::ConnectToDaemon(o.socket_path, "xenemud", o.connect_timeout, &err);
  if (s < 0) return absl::UnavailableError(err);
  {
    absl::MutexLock lock(&im.mu);
    im.sock = s;
  }
  wire::Hello hello;
  hello.domid = o.id;
  hello.grant_frames = o.grant_frames;
  hello.memory_bytes = o.memory_bytes;
  hello.grant_pages = o.grant_pages;
  if (!emu::wire::SendWithFd(s, &hello, sizeof hello, im.memfd))
    return absl::UnavailableError(absl::StrCat("HELLO to xenemud: ", std::strerror(errno)));
  wire::HelloReply reply;
  std::vector<int> fds;
  if (!emu::wire::RecvWithFds(s, &reply, sizeof reply, &fds, 3))
    return absl::UnavailableError("xenemud closed during HELLO");
  struct CloseAll {
    std::vector<int>& fds;
    ~CloseAll() {
      for (int fd : fds)
        if (fd >= 0) ::close(fd);
    }
  } close_fds{fds};
  if (reply.magic != wire::kHelloMagic) return absl::InternalError("xenemud: bad HELLO reply");
  if (reply.status != 0) {
    reply.error[sizeof reply.error - 1] = 0;
    return absl::FailedPreconditionError(absl::StrCat("xenemud refused domain ", o.id, ": ", reply.error));
  }
  if (fds.size() != 3) return absl::InternalError("xenemud sent no eventfd, mailbox and map socket with HELLO");
  reply.xenstore_path[sizeof reply.xenstore_path - 1] = 0;
  im.xenstore_path = reply.xenstore_path;
  im.event_fd = std::exchange(fds[0], -1);
  im.mailbox = emu::MapMailbox(fds[1], reply.mailbox_bytes);
  im.mailbox_fd = std::exchange(fds[1], -1);
  if (im.mailbox == nullptr) return absl::ResourceExhaustedError(absl::StrCat("mmap mailbox: ", std::strerror(errno)));
  im.mailbox_bytes = reply.mailbox_bytes;
  im.seq = im.mailbox->request_seq.load();
  {
    absl::MutexLock lock(&im.map_mu);
    im.map_sock = std::exchange(fds[2], -1);
  }

  // The pool: one page memfd each, mapped contiguously here.
  if (o.grant_pages > 0) {
    const uint64_t pool_bytes = uint64_t{o.grant_pages} * kXenPageSize;
    void* r = ::mmap(nullptr, pool_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap pool: ", std::strerror(errno)));
    im.pool = static_cast<uint8_t*>(r);
    im.pool_pages = o.grant_pages;
    uint32_t next = 0;
    while (next < o.grant_pages) {
      wire::PoolPages pp;
      std::vector<int> page_fds;
      if (!emu::wire::RecvWithFds(s, &pp, sizeof pp, &page_fds, wire::kPoolFdsPerMsg))
        return absl::UnavailableError("xenemud closed while sending the grant pool");
      CloseAll close_pages{page_fds};
      if (pp.magic != wire::kHelloMagic || pp.first_index != next || pp.count != page_fds.size() ||
          pp.count == 0 || pp.count > o.grant_pages - next)
        return absl::InternalError("xenemud: bad pool pages message");
      for (uint32_t i = 0; i < pp.count; ++i) {
        void* p = ::mmap(im.pool + uint64_t{next + i} * kXenPageSize, kXenPageSize, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_FIXED, page_fds[i], 0);
        if (p == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap pool page: ", std::strerror(errno)));
      }
      next += pp.count;
    }
  }
  if (absl::Status st = im.Start(); !st.ok()) return st;
  return d;
}

RemoteDomain::~RemoteDomain() {
  Impl& im = *impl_;
  if (im.watcher.joinable()) {
    const uint64_t one = 1;
    (void)!::write(im.wake_fd, &one, sizeof one);
    im.watcher.join();
  }
  {
    absl::MutexLock lock(&im.mu);
    if (im.sock >= 0) ::close(im.sock);
    im.sock = -1;
  }
  {
    absl::MutexLock lock(&im.map_mu);
    if (im.map_sock >= 0) ::close(im.map_sock);
    im.map_sock = -1;
  }
  if (im.mem) ::munmap(im.mem, im.mem_bytes);
  if (im.pool) ::munmap(im.pool, uint64_t{im.pool_pages} * kXenPageSize);
  emu::UnmapMailbox(im.mailbox, im.mailbox_bytes);
  for (int fd : {im.memfd, im.event_fd, im.wake_fd, im.mailbox_fd})
    if (fd >= 0) ::close(fd);
}

absl::Status RemoteDomain::Export(HandoverWriter* out) const {
  Impl& im = *impl_;
  if (im.pool_pages) return absl::FailedPreconditionError("a domain with a grant pool (a frontend) is not handed over");
  absl::MutexLock lock(&im.mu);
  absl::MutexLock map_lock(&im.map_mu);
  if (im.dead.load() || im.sock < 0 || im.map_sock < 0 || im.mailbox_fd < 0)
    return absl::UnavailableError("xenemud connection is gone");
  out->U64(im.id);
  out->U64(im.mem_bytes);
  out->U64(im.grant_frames);
  out->U64(im.mailbox_bytes);
  out->U64(static_cast<uint64_t>(im.spin.count()));
  out->Str(im.xenstore_path);
  out->Fd(im.sock);
  out->Fd(im.map_sock);
  out->Fd(im.memfd);
  out->Fd(im.event_fd);
  out->Fd(im.mailbox_fd);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RemoteDomain>> RemoteDomain::Adopt(HandoverReader& in) {
  std::unique_ptr<RemoteDomain> d(new RemoteDomain());
  Impl& im = *d->impl_;
  uint64_t id = 0, mem_bytes = 0, frames = 0, mbytes = 0, spin = 0;
  std::string xs;
  UniqueFd sock, map_sock, mem, ev, mb;
  if (absl::Status s = in.U64(&id, kDomidSelf - 1, "domain id"); !s.ok()) return s;
  if (absl::Status s = in.U64(&mem_bytes, uint64_t{1} << 40, "domain memory"); !s.ok()) return s;
  if (absl::Status s = in.U64(&frames, 1024, "grant frames"); !s.ok()) return s;
  if (absl::Status s = in.U64(&mbytes, 1 << 20, "mailbox size"); !s.ok()) return s;
  if (absl::Status s = in.U64(&spin, 1000000, "spin"); !s.ok()) return s;
  if (absl::Status s = in.Str(&xs, 107, "xenstore path"); !s.ok()) return s;
  for (auto [fd, what] : {std::pair{&sock, "xenemud socket"}, {&map_sock, "map socket"}, {&mem, "domain memory"},
                          {&ev, "event eventfd"}, {&mb, "mailbox"}})
    if (absl::Status s = in.Fd(fd, what); !s.ok()) return s;
  if (frames == 0 || mem_bytes % kXenPageSize || mem_bytes < (frames + 2) * kXenPageSize ||
      mbytes < sizeof(emu::Mailbox))
    return absl::InvalidArgumentError("handed-over xen domain has a bad memory, grant table or mailbox size");
  struct stat st;
  if (::fstat(mem.get(), &st) != 0 || static_cast<uint64_t>(st.st_size) < mem_bytes)
    return absl::InvalidArgumentError("handed-over xen domain memory is smaller than its size");
  void* m = ::mmap(nullptr, mem_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0);
  if (m == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap domain memory: ", std::strerror(errno)));
  im.mem = static_cast<uint8_t*>(m);
  im.mem_bytes = mem_bytes;
  im.id = static_cast<DomId>(id);
  im.grant_frames = static_cast<uint32_t>(frames);
  im.spin = std::chrono::microseconds(spin);
  im.xenstore_path = xs;
  im.mailbox = emu::MapMailbox(mb.get(), mbytes);
  if (im.mailbox == nullptr) return absl::ResourceExhaustedError(absl::StrCat("mmap mailbox: ", std::strerror(errno)));
  im.mailbox_bytes = mbytes;
  im.resync_seq = true;
  im.memfd = mem.release();
  im.event_fd = ev.release();
  im.mailbox_fd = mb.release();
  {
    absl::MutexLock lock(&im.mu);
    im.sock = sock.release();
  }
  {
    absl::MutexLock lock(&im.map_mu);
    im.map_sock = map_sock.release();
  }
  if (absl::Status st = im.Start(); !st.ok()) return st;
  return d;
}

DomId RemoteDomain::id() const { return impl_->id; }
bool RemoteDomain::connected() const { return !impl_->dead.load(std::memory_order_acquire); }

void RemoteDomain::Disconnect() {
  Impl& im = *impl_;
  {
    absl::MutexLock lock(&im.mu);
    if (im.sock >= 0) ::shutdown(im.sock, SHUT_RDWR);
  }
  {
    absl::MutexLock lock(&im.map_mu);
    if (im.map_sock >= 0) ::shutdown(im.map_sock, SHUT_RDWR);
  }
  im.MarkDead();
}

uint8_t* RemoteDomain::memory() const { return impl_->mem; }
uint64_t RemoteDomain::memory_bytes() const { return impl_->mem_bytes; }
uint8_t* RemoteDomain::buffer_area() const { return impl_->arg_page() + kXenPageSize; }
uint64_t RemoteDomain::buffer_area_bytes() const {
  return impl_->mem_bytes - (uint64_t{impl_->grant_frames} + 1) * kXenPageSize;
}
std::optional<uint32_t> RemoteDomain::RamFrame(const uint8_t* p) const {
  const Impl& im = *impl_;
  if (p < im.mem || p >= im.mem + im.mem_bytes) return std::nullopt;
  return static_cast<uint32_t>(static_cast<uint64_t>(p - im.mem) / kXenPageSize);
}
uint8_t* RemoteDomain::pool() const { return impl_->pool; }
uint32_t RemoteDomain::pool_pages() const { return impl_->pool_pages; }
uint32_t RemoteDomain::pool_first_frame() const { return static_cast<uint32_t>(impl_->mem_bytes / kXenPageSize); }
GrantTableWriter& RemoteDomain::grant_table() { return *impl_->table; }

GrantMapping RemoteDomain::Map(DomId granter, GrantRef ref, bool readonly, uint8_t* at) {
  Impl& im = *impl_;
  GrantMapping out;
  out.readonly = readonly;
  wire::MapReply reply;
  int fd = -1;
  {
    absl::MutexLock lock(&im.map_mu);
    if (im.dead.load(std::memory_order_acquire) || im.map_sock < 0) return out;
    wire::MapRequest req;
    req.granter = granter;
    req.ref = ref;
    req.readonly = readonly ? 1 : 0;
    im.hypercalls.fetch_add(1, std::memory_order_relaxed);
    if (!emu::wire::SendWithFd(im.map_sock, &req, sizeof req, -1) ||
        !emu::wire::RecvWithFd(im.map_sock, &reply, sizeof reply, &fd) || reply.magic != wire::kHelloMagic) {
      if (fd >= 0) ::close(fd);
      im.MarkDead();
      return out;
    }
  }
  if (reply.status != gntst::kOkay) {
    if (fd >= 0) ::close(fd);
    out.status = static_cast<int16_t>(reply.status);
    return out;
  }
  void* p = fd < 0 ? MAP_FAILED
                   : ::mmap(at, kXenPageSize, readonly ? PROT_READ : PROT_READ | PROT_WRITE,
                            MAP_SHARED | (at ? MAP_FIXED : 0), fd, 0);
  // No descriptor came (this process is at its open-file limit) or no room
  // for one more mapping (vm.max_map_count): a limit of this process, not
  // the grant's fault.
  const int err = fd < 0 ? EMFILE : errno;
  if (fd >= 0) ::close(fd);
  if (p == MAP_FAILED) {
    // Granted but not mappable here: give the handle back. Out of room is
    // told as Xen tells a full maptrack (gntdev's ENOMEM), so the caller
    // may reach the page by grant copy instead.
    (void)im.SimpleCall(wire::kGrantUnmap, {reply.handle});
    if (err == ENOMEM || err == EMFILE || err == ENFILE) out.status = gntst::kNoSpace;
    return out;
  }
  out.status = gntst::kOkay;
  out.addr = static_cast<uint8_t*>(p);
  out.handle = reply.handle;
  return out;
}

int16_t RemoteDomain::Unmap(const GrantMapping& m) {
  if (m.status != gntst::kOkay || m.addr == nullptr) return gntst::kBadHandle;
  // The page leaves this process first, as gntdev's unmap removes the PTEs
  // before GNTTABOP_unmap_grant_ref.
  ::munmap(m.addr, kXenPageSize);
  const int64_t rc = impl_->SimpleCall(wire::kGrantUnmap, {m.handle});
  return rc == -ENODEV ? gntst::kGeneralError : static_cast<int16_t>(rc);
}

void RemoteDomain::Copy(std::span<CopySegment> segments) {
  Impl& im = *impl_;
  absl::MutexLock lock(&im.mu);
  wire::CopySegmentWire* arg = reinterpret_cast<wire::CopySegmentWire*>(im.arg_page());
  for (size_t done = 0; done < segments.size();) {
    const size_t n = std::min<size_t>(segments.size() - done, wire::kCopySegmentsPerCall);
    for (size_t i = 0; i < n; ++i) {
      const CopySegment& s = segments[done + i];
      wire::CopySegmentWire w;
      w.source_ref_or_gmfn = s.source.ref_or_gmfn;
      w.source_domid = s.source.domid;
      w.source_offset = s.source.offset;
      w.dest_ref_or_gmfn = s.dest.ref_or_gmfn;
      w.dest_domid = s.dest.domid;
      w.dest_offset = s.dest.offset;
      w.len = s.len;
      w.flags = s.flags;
      w.status = gntst::kGeneralError;
      std::memcpy(&arg[i], &w, sizeof w);
    }
    const uint64_t count = n;
    auto a = im.Call(wire::kGrantCopy, std::span<const uint64_t>(&count, 1));
    for (size_t i = 0; i < n; ++i) {
      int16_t status = gntst::kGeneralError;
      if (a && a->rc == 0) std::memcpy(&status, reinterpret_cast<uint8_t*>(&arg[i]) + offsetof(wire::CopySegmentWire, status), sizeof status);
      segments[done + i].status = status;
    }
    done += n;
  }
}

int RemoteDomain::event_fd() const { return impl_->event_fd; }
int64_t RemoteDomain::AllocUnbound(DomId remote) { return impl_->SimpleCall(wire::kEvtchnAllocUnbound, {remote}); }
int64_t RemoteDomain::BindInterdomain(DomId remote, EvtchnPort remote_port) {
  return impl_->SimpleCall(wire::kEvtchnBindInterdomain, {remote, remote_port});
}
int64_t RemoteDomain::Send(EvtchnPort port) { return impl_->SimpleCall(wire::kEvtchnSend, {port}); }
int64_t RemoteDomain::Unmask(EvtchnPort port) { return impl_->SimpleCall(wire::kEvtchnUnmask, {port}); }
int64_t RemoteDomain::Close(EvtchnPort port) { return impl_->SimpleCall(wire::kEvtchnClose, {port}); }

size_t RemoteDomain::Pending(std::span<EvtchnPort> out) {
  Impl& im = *impl_;
  if (out.empty()) return 0;
  // First the event ring (shared memory, no hypercall); the hypercall only
  // when xenemud found the ring full.
  size_t n = 0;
  if (im.mailbox && im.mailbox_bytes >= wire::kEventRingOffset + sizeof(wire::EventRing)) {
    auto* r = reinterpret_cast<wire::EventRing*>(reinterpret_cast<uint8_t*>(im.mailbox) + wire::kEventRingOffset);
    absl::MutexLock lock(&im.ring_mu);
    uint32_t cons = r->cons.load(std::memory_order_relaxed);
    const uint32_t prod = r->prod.load(std::memory_order_acquire);
    if (prod - cons > wire::kEventRingSlots) cons = prod;  // cannot happen with an honest xenemud
    while (n < out.size() && cons != prod) out[n++] = r->ports[cons++ % wire::kEventRingSlots].load(std::memory_order_relaxed);
    r->cons.store(cons, std::memory_order_release);
    if (n == out.size() || r->overflow.exchange(0, std::memory_order_acq_rel) == 0) return n;
  }
  out = out.subspan(n);
  absl::MutexLock lock(&im.mu);
  const uint64_t max = std::min<size_t>(out.size(), wire::kPendingPortsPerCall);
  auto a = im.Call(wire::kEvtchnPending, std::span<const uint64_t>(&max, 1));
  if (!a || a->rc <= 0) return n;
  const size_t got = std::min<size_t>(static_cast<size_t>(a->rc), max);
  std::memcpy(out.data(), im.arg_page(), got * sizeof(EvtchnPort));
  return n + got;
}

const std::string& RemoteDomain::xenstore_path() const { return impl_->xenstore_path; }
uint64_t RemoteDomain::hypercalls() const { return impl_->hypercalls.load(std::memory_order_relaxed); }

}  // namespace vioport::xen
