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

// The event ring's mapping (a second one of the mailbox memfd) and the
// eventfd, kept alive by the EventRingProducer while a delivery may run.
struct RingMapping {
  uint8_t* map = nullptr;
  std::shared_ptr<OwnedFd> efd;
  ~RingMapping() {
    if (map) ::munmap(map, emu::kMailboxBytes);
  }
};

// A domain's memory in xenemud: one reserved range, its RAM memfd mapped
// at the start, then each pool page, its own sealed one-page memfd (the fd
// a map reply hands out).
class PoolMemory final : public DomainMemory {
 public:
  ~PoolMemory() override {
    if (base_) ::munmap(base_, total_);
    for (int fd : fds_) ::close(fd);
  }
  uint8_t* base() const override { return base_; }
  int PageFd(uint32_t index, bool readonly, bool* owned) override {
    if (index >= fds_.size()) return -1;
    if (!readonly) {
      *owned = false;
      return fds_[index];
    }
    // A read-only file description: the backend cannot mmap it writable
    // (nor mprotect its mapping to writable).
    *owned = true;
    return ::open(absl::StrCat("/proc/self/fd/", fds_[index]).c_str(), O_RDONLY | O_CLOEXEC);
  }
  const std::vector<int>& fds() const { return fds_; }

  static absl::StatusOr<std::unique_ptr<PoolMemory>> Make(DomId id, int memfd, uint64_t ram, uint32_t pages) {
    auto m = std::make_unique<PoolMemory>();
    m->total_ = ram + uint64_t{pages} * kXenPageSize;
    // One range [RAM][pool], so GrantTables' frame numbers index it.
    void* r = ::mmap(nullptr, m->total_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap: ", std::strerror(errno)));
    m->base_ = static_cast<uint8_t*>(r);
    if (::mmap(m->base_, ram, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, memfd, 0) == MAP_FAILED)
      return absl::ResourceExhaustedError(absl::StrCat("mmap RAM: ", std::strerror(errno)));
    for (uint32_t i = 0; i < pages; ++i) {
      const int pfd =
          ::memfd_create(absl::StrCat("xen-d", id, "-grant-", i).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
      if (pfd < 0)
        return absl::ResourceExhaustedError(absl::StrCat("grant pool page: memfd_create: ", std::strerror(errno)));
      m->fds_.push_back(pfd);
      // Sealed, so no holder can shrink it under the others' mappings. Mode
      // 0400: a backend holding a read-only description cannot reopen it
      // writable through /proc (as root it still could: the emulator
      // isolates against mistakes, not against root).
      if (::ftruncate(pfd, kXenPageSize) != 0 ||
          ::fcntl(pfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0 || ::fchmod(pfd, 0400) != 0 ||
          ::mmap(m->base_ + ram + uint64_t{i} * kXenPageSize, kXenPageSize, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_FIXED, pfd, 0) == MAP_FAILED)
        return absl::ResourceExhaustedError(absl::StrCat("grant pool page: ", std::strerror(errno)));
    }
    return m;
  }

 private:
  uint8_t* base_ = nullptr;
  uint64_t total_ = 0;
  std::vector<int> fds_;
};

}  // namespace

// The kernel's and the xenstore thread's part of one domain's session: the
// RAM memfd that came with HELLO, the memory, the mailbox, eventfd and map
// socketpair sent back with the reply.
class DomainService::ConnectionHost final : public DomainSession::Host {
 public:
  ConnectionHost(DomainService& service, int memfd) : s_(service), memfd_(memfd) {}
  ~ConnectionHost() override {
    emu::UnmapMailbox(mailbox_);
    if (mbfd_ >= 0) ::close(mbfd_);
    for (int fd : pair_)
      if (fd >= 0) ::close(fd);
  }
  std::string CheckMemory(uint64_t bytes) override { return emu::CheckSealedMemfd(memfd_, bytes); }
  // A restarted domain waits up to a second for its predecessor's thread
  // to read the EOF; none waits once xenemud is stopping.
  bool RetryClaim() override {
    const auto now = std::chrono::steady_clock::now();
    if (!waiting_) {
      waiting_ = true;
      until_ = now + std::chrono::seconds(1);
    }
    if (now >= until_ || s_.stopping()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return true;
  }
  absl::StatusOr<std::unique_ptr<DomainMemory>> MapMemory(DomId id, uint64_t ram, uint32_t pages) override {
    absl::StatusOr<std::unique_ptr<PoolMemory>> m = PoolMemory::Make(id, memfd_, ram, pages);
    if (!m.ok()) return m.status();
    memory_ = m->get();
    return std::unique_ptr<DomainMemory>(std::move(*m));
  }
  absl::StatusOr<std::shared_ptr<EventRingProducer>> OpenChannels(DomId id) override {
    const int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) return absl::ResourceExhaustedError(absl::StrCat("eventfd: ", std::strerror(errno)));
    event_fd_ = std::make_shared<OwnedFd>(efd);
    mailbox_ = emu::CreateMailbox(absl::StrCat("xenemud-mailbox-", id), &mbfd_);
    if (mailbox_ == nullptr) return absl::ResourceExhaustedError("cannot create the hypercall mailbox");
    // Deliveries go into the mailbox's event ring (its own mapping, alive as
    // long as the producer is), then the eventfd is signalled.
    auto ring = std::make_shared<RingMapping>();
    ring->efd = event_fd_;
    void* m = ::mmap(nullptr, emu::kMailboxBytes, PROT_READ | PROT_WRITE, MAP_SHARED, mbfd_, 0);
    if (m == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("event ring: ", std::strerror(errno)));
    ring->map = static_cast<uint8_t*>(m);
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair_) != 0)
      return absl::ResourceExhaustedError(absl::StrCat("socketpair: ", std::strerror(errno)));
    const int signal_fd = efd;  // alive while `ring` holds it
    return std::make_shared<EventRingProducer>(
        ring->map,
        [signal_fd] {
          const uint64_t one = 1;
          (void)!::write(signal_fd, &one, sizeof one);  // a saturated counter still reads as readable
        },
        ring);
  }
  absl::Status Introduce(DomId id, const std::string& xs_path) override {
    std::string error;
    s_.OnIo([&] {
      if (id == 0) return;  // dom0 has the main socket and no introduction
      if (absl::Status st = s_.xs_server_.Listen(xs_path, id); !st.ok()) {
        error = std::string(st.message());
        return;
      }
      s_.store_.IntroduceDomain(id);
    });
    return error.empty() ? absl::OkStatus() : absl::UnavailableError(error);
  }
  void Release(DomId id, const std::string& xs_path) override {
    s_.OnIo([&] {
      if (id != 0) {
        (void)s_.xs_server_.StopListening(xs_path);
        s_.xs_server_.CloseConnectionsOf(id);
      }
      s_.CloseBackendsOf(id);
      s_.store_.ReleaseDomain(id);  // removes /local/domain/ID, fires @releaseDomain (not for dom0)
    });
  }

  PoolMemory* memory() const { return memory_; }
  emu::Mailbox* mailbox() const { return mailbox_; }
  int mailbox_fd() const { return mbfd_; }
  int event_fd() const { return event_fd_ ? event_fd_->fd : -1; }
  int* pair() { return pair_; }

 private:
  DomainService& s_;
  int memfd_;
  bool waiting_ = false;
  std::chrono::steady_clock::time_point until_;
  PoolMemory* memory_ = nullptr;  // owned by the session's domain
  std::shared_ptr<OwnedFd> event_fd_;
  emu::Mailbox* mailbox_ = nullptr;
  int mbfd_ = -1;
  int pair_[2] = {-1, -1};
};

DomainService::DomainService(boost::asio::io_context& io, XenStore& store, XenStoreServer& xs_server,
                             DomainServiceOptions options)
    : io_(io),
      store_(store),
      xs_server_(xs_server),
      options_(std::move(options)),
      domains_(DomainLimits{options_.max_grant_pages, options_.max_grant_frames, options_.max_maptrack,
                            options_.max_memory_bytes, options_.xenstore_path},
               [](const std::string& line) { std::fprintf(stderr, "xenemud: %s\n", line.c_str()); }) {}

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
  domains_.FreeAll();
}

bool DomainService::stopping() {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
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
  // Declared before the session: its mailbox, eventfd and map socket
  // outlive the domain.
  ConnectionHost host(*this, memfd);
  DomainSession session(domains_, &host);
  const DomainSession::HelloResult hr =
      session.Hello(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&hello), sizeof hello), memfd >= 0);
  if (!hr.accepted) {
    Refuse(fd, hr.error);
    return;
  }
  const DomId id = session.id();
  const uint32_t pages = session.pool_pages();
  int* sv = host.pair();
  wire::HelloReply reply;
  reply.mailbox_bytes = emu::kMailboxBytes;
  std::snprintf(reply.xenstore_path, sizeof reply.xenstore_path, "%s", session.xs_path().c_str());
  const int fds[3] = {host.event_fd(), host.mailbox_fd(), sv[1]};
  bool alive = emu::wire::SendWithFds(fd, &reply, sizeof reply, fds);
  ::close(sv[1]);
  sv[1] = -1;
  const std::vector<int>& pool_fds = host.memory()->fds();
  for (uint32_t next = 0; alive && next < pages;) {
    wire::PoolPages pp;
    pp.first_index = next;
    pp.count = std::min(pages - next, wire::kPoolFdsPerMsg);
    alive = emu::wire::SendWithFds(fd, &pp, sizeof pp, std::span<const int>(pool_fds).subspan(next, pp.count));
    next += pp.count;
  }
  if (alive) {
    std::fprintf(stderr, "xenemud: domain %u connected (%llu bytes RAM, %u grant frames, %u pool pages, xenstore %s)\n",
                 id, static_cast<unsigned long long>(hello.memory_bytes), hello.grant_frames, pages,
                 session.xs_path().c_str());
  }
  std::thread maps;
  if (alive) {
    const int map_fd = sv[0];
    maps = std::thread([this, &session, map_fd] { ServeMaps(session, map_fd); });
  }
  // Each call: poll the mailbox for `spin`, then sleep on the socket (a
  // kick, or EOF: the domain died); see hcall_mailbox.h.
  emu::MailboxServer server(host.mailbox(), fd, options_.spin);
  emu::MailboxServer::Request req;
  while (alive && server.Next(&req)) {
    const int64_t rc = session.Call(req.opcode, std::span<const uint64_t>(req.args, emu::kMailboxArgs));
    server.Answer(req, rc, 0);
  }
  if (maps.joinable()) {
    ::shutdown(sv[0], SHUT_RDWR);
    maps.join();
  }
  session.Close(alive);
}

void DomainService::ServeMaps(DomainSession& session, int fd) {
  for (;;) {
    wire::MapRequest req;
    if (!emu::wire::RecvWithFd(fd, &req, sizeof req, nullptr)) return;
    const DomainSession::MapAnswer a =
        session.Map(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&req), sizeof req));
    const bool sent =
        emu::wire::SendWithFd(fd, &a.reply, sizeof a.reply, a.reply.status == gntst::kOkay ? a.fd : -1);
    if (a.close_fd && a.fd >= 0) ::close(a.fd);
    if (!sent) {
      session.MapNotDelivered(a);
      return;
    }
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

}  // namespace vioport::xen
