// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/shm_server.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <chrono>
#include <future>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio/basic_socket_acceptor.hpp"
#include "boost/asio/generic/seq_packet_protocol.hpp"
#include "boost/asio/local/stream_protocol.hpp"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/posix/stream_descriptor.hpp"
#include "vioport/core/device_controller.h"
#include "vioport/core/log.h"
#include "vioport/core/mmio.h"
#include "vioport/transports/shm_guest.h"
#include "vioport/transports/shm_protocol.h"

namespace vioport {

namespace asio = boost::asio;
// Boost 1.74 has no local::seq_packet_protocol: the generic protocol with a
// Unix-domain endpoint is the same socket.
using SeqProtocol = asio::generic::seq_packet_protocol;
using SeqSocket = SeqProtocol::socket;
using SeqAcceptor = asio::basic_socket_acceptor<SeqProtocol>;
using shm::MsgHeader;
using shm::MsgType;

namespace {

struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd = std::exchange(o.fd, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

void Signal(int fd) {
  const uint64_t one = 1;
  ssize_t r;
  do {
    r = ::write(fd, &one, sizeof one);
  } while (r < 0 && errno == EINTR);
  // EAGAIN: the counter is saturated, the guest will wake anyway.
}

void Drain(int fd) {
  uint64_t v;
  while (::read(fd, &v, sizeof v) == sizeof v) {
  }
}

std::atomic_ref<uint32_t> Reg32(uint8_t* page, uint32_t off) {
  return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(page + off));
}

// Device-to-guest interrupts: the InterruptStatus word in the shared page
// and one eventfd a queue plus one for config (docs/transports/shm.md).
struct ShmInterrupts final : InterruptSink {
  uint8_t* page = nullptr;
  std::vector<Fd> call;
  Fd config_call;
  std::function<void()> on_config;  // refresh the mirror before the guest looks
  bool dead = false;

  void QueueInterrupt(uint16_t q) override {
    if (dead || q >= call.size()) return;
    Reg32(page, shm::reg::kInterruptStatus).fetch_or(shm::kIntUsedBuffer, std::memory_order_release);
    Signal(call[q].fd);
  }
  void ConfigInterrupt() override {
    if (dead) return;
    if (on_config) on_config();
    Reg32(page, shm::reg::kInterruptStatus).fetch_or(shm::kIntConfig, std::memory_order_release);
    Signal(config_call.fd);
  }
};

}  // namespace

// One guest connection. Lives on the device thread; handlers hold it by
// shared_ptr, Close() makes them all return.
struct ShmConnection : std::enable_shared_from_this<ShmConnection> {
  ShmServer::Impl* srv;
  SeqSocket sock;
  bool hello_done = false;
  bool closed = false;
  uint8_t* map = nullptr;
  size_t map_size = 0;
  std::shared_ptr<ShmInterrupts> irq;
  std::vector<Fd> kick;
  std::vector<std::unique_ptr<asio::posix::stream_descriptor>> kick_watch;
  std::unique_ptr<asio::posix::stream_descriptor> event_watch;
  std::unique_ptr<DeviceController> ctl;
  std::unique_ptr<mmio::MmioMirror> mirror;

  ShmConnection(ShmServer::Impl* s, SeqSocket so) : srv(s), sock(std::move(so)) {}
  ~ShmConnection() { Teardown(); }
  void Start();
  void ReadMessages();
  void OnMessage(shm::ReceivedMsg& m);
  absl::Status Hello(shm::ReceivedMsg& m);
  void WatchKick(uint16_t q);
  void WatchEvents();
  void SpinWhileBusy();
  void PublishMirror();
  void Close(const std::string& why, bool tell_guest);
  void Teardown();
};

struct ShmServer::Impl {
  ShmServer* self;
  std::shared_ptr<VirtioDevice> device;
  asio::io_context* io;
  std::unique_ptr<asio::io_context> own_io;  // poll mode
  // Poll mode: keeps own_io from running out of work (and stopping, after
  // which posted tasks would never run) once the acceptor is closed.
  std::unique_ptr<asio::executor_work_guard<asio::io_context::executor_type>> own_work;
  std::thread poller;
  std::thread::id poller_id;
  std::atomic<bool> stop{false};
  std::unique_ptr<SeqAcceptor> acceptor;
  bool accepting = true;
  std::shared_ptr<ShmConnection> conn;

  // Counters (atomics: read from other threads in poll mode).
  std::atomic<uint64_t> connections{0}, refused{0}, protocol_errors{0}, register_writes{0},
      register_writes_ignored{0};
  TransportCounters past;  // connections that ended (device thread)
  mutable absl::Mutex mu;
  std::string last_error ABSL_GUARDED_BY(mu);

  void Accept();
  void PollLoop();
  void SetError(const std::string& e) {
    absl::MutexLock l(&mu);
    last_error = e;
  }
  template <typename F>
  auto OnDeviceThread(F&& f) -> decltype(f()) {
    if (!own_io || std::this_thread::get_id() == poller_id) return f();
    std::packaged_task<decltype(f())()> task(std::forward<F>(f));
    auto fut = task.get_future();
    asio::post(*own_io, [&task] { task(); });
    return fut.get();
  }
};

ShmServer::ShmServer(ShmServerOptions o) : opts_(std::move(o)) {}

absl::StatusOr<std::unique_ptr<ShmServer>> ShmServer::Create(asio::io_context& io, std::shared_ptr<VirtioDevice> device,
                                                           ShmServerOptions options) {
  if (!device) return absl::InvalidArgumentError("no device");
  if (device->num_queues() == 0 || device->num_queues() > shm::kMaxQueues)
    return absl::InvalidArgumentError(absl::StrCat("shm carries 1 to ", shm::kMaxQueues, " queues, the device has ",
                                                   device->num_queues()));
  if (device->config_size() > shm::kMaxConfigSize)
    return absl::InvalidArgumentError("device config space does not fit the register page");
  if (options.socket_path.empty()) return absl::InvalidArgumentError("shm: no socket path");
  std::unique_ptr<ShmServer> s(new ShmServer(std::move(options)));
  auto impl = std::make_unique<Impl>();
  impl->self = s.get();
  impl->device = std::move(device);
  if (s->opts_.poll) {
    impl->own_io = std::make_unique<asio::io_context>(1);
    impl->own_work = std::make_unique<asio::executor_work_guard<asio::io_context::executor_type>>(
        impl->own_io->get_executor());
    impl->io = impl->own_io.get();
  } else {
    impl->io = &io;
  }
  struct stat st;
  if (::lstat(s->opts_.socket_path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return absl::AlreadyExistsError(absl::StrCat(s->opts_.socket_path, " exists and is not a socket"));
    ::unlink(s->opts_.socket_path.c_str());
  }
  boost::system::error_code ec;
  impl->acceptor = std::make_unique<SeqAcceptor>(*impl->io);
  impl->acceptor->open(SeqProtocol(AF_UNIX, 0), ec);
  if (!ec) impl->acceptor->bind(SeqProtocol::endpoint(asio::local::stream_protocol::endpoint(s->opts_.socket_path)), ec);
  if (!ec) impl->acceptor->listen(4, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("shm: listen on ", s->opts_.socket_path, ": ", ec.message()));
  s->impl_ = std::move(impl);
  s->impl_->Accept();
  if (s->opts_.poll) {
    Impl* im = s->impl_.get();
    im->poller = std::thread([im] { im->PollLoop(); });
    im->poller_id = im->poller.get_id();
  }
  VIOPORT_LOG(kInfo, s->opts_.name, ": listening on ", s->opts_.socket_path, s->opts_.poll ? " (polling)" : "");
  return s;
}

ShmServer::~ShmServer() {
  if (!impl_) return;
  Impl* im = impl_.get();
  auto shutdown = [im] {
    if (im->conn) im->conn->Close("server stopping", true);
    im->conn.reset();
    if (im->acceptor) {
      boost::system::error_code ec;
      im->acceptor->close(ec);
    }
  };
  if (im->own_io) {
    im->OnDeviceThread(shutdown);
    im->stop = true;
    im->poller.join();
    im->own_work.reset();
    im->acceptor.reset();
    im->own_io.reset();  // runs pending handlers' destructors
  } else {
    shutdown();
    // Handlers still queued on `io` hold the connection; its teardown has run.
  }
  ::unlink(opts_.socket_path.c_str());
}

void ShmServer::StopAccepting() {
  impl_->OnDeviceThread([im = impl_.get()] {
    im->accepting = false;
    boost::system::error_code ec;
    im->acceptor->close(ec);
  });
}

absl::Status ShmServer::Quiesce() {
  return impl_->OnDeviceThread([im = impl_.get()]() -> absl::Status {
    return im->device->Quiesce();
  });
}

std::string ShmServer::last_error() const {
  return impl_->OnDeviceThread([im = impl_.get()] {
    if (im->conn && im->conn->ctl && !im->conn->ctl->last_error().empty()) return im->conn->ctl->last_error();
    absl::MutexLock l(&im->mu);
    return im->last_error;
  });
}

void ShmServer::AppendCounters(CounterList* out) const {
  Impl* im = impl_.get();
  im->OnDeviceThread([&] {
    TransportCounters t = im->past;
    if (im->conn && im->conn->ctl) t += im->conn->ctl->transport_counters();
    t.reconnects = im->connections.load() > 0 ? im->connections.load() - 1 : 0;
    t.AppendTo(out);
  });
  out->insert(out->end(), {{"connections", im->connections.load()},
                           {"connections_refused", im->refused.load()},
                           {"protocol_errors", im->protocol_errors.load()},
                           {"register_writes", im->register_writes.load()},
                           {"register_writes_ignored", im->register_writes_ignored.load()}});
}

void ShmServer::Impl::Accept() {
  if (!accepting || !acceptor->is_open()) return;
  acceptor->async_accept([this](const boost::system::error_code& ec, SeqSocket sock) {
    if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
    if (!ec) {
      if (conn && !conn->closed) {
        // One guest at a time: the device has one driver.
        refused++;
        const std::string why = "device busy: another guest is attached";
        MsgHeader h{};
        h.type = static_cast<uint32_t>(MsgType::kError);
        (void)shm::SendMsg(sock.native_handle(), h, {reinterpret_cast<const uint8_t*>(why.data()), why.size()});
        VIOPORT_LOG(kWarning, self->opts_.name, ": refused a second guest");
      } else {
        conn = std::make_shared<ShmConnection>(this, std::move(sock));
        conn->Start();
      }
    } else {
      VIOPORT_LOG(kWarning, self->opts_.name, ": accept: ", ec.message());
    }
    Accept();
  });
}

void ShmServer::Impl::PollLoop() {
  uint32_t spins = 0;
  while (!stop.load(std::memory_order_acquire)) {
    ShmConnection* c = conn.get();
    const bool running = c && c->ctl && c->ctl->running() && !(c->ctl->status() & status::kDeviceNeedsReset);
    if (!running) {
      own_io->run_one_for(std::chrono::milliseconds(5));
      continue;
    }
    if ((++spins & 63) == 0) own_io->poll();
    if (conn.get() != c || !c->ctl || !c->ctl->running()) continue;
    for (uint16_t q = 0; q < c->ctl->num_queues(); ++q) {
      const QueueSetup* s = c->ctl->queue_setup(q);
      if (s && s->ready) device->QueueNotify(q);
    }
    device->ProcessEvents();
  }
}

void ShmConnection::Start() {
  srv->connections++;
  boost::system::error_code ec;
  sock.non_blocking(true, ec);
  ReadMessages();
}

void ShmConnection::ReadMessages() {
  sock.async_wait(SeqSocket::wait_read, [self = shared_from_this()](const boost::system::error_code& ec) {
    if (self->closed) return;
    if (ec) return self->Close(ec.message(), false);
    for (;;) {
      auto m = shm::RecvMsg(self->sock.native_handle(), self->hello_done ? 0 : 1);
      if (!m.ok()) {
        if (absl::IsResourceExhausted(m.status())) break;  // drained
        if (absl::IsUnavailable(m.status())) return self->Close(std::string(m.status().message()), false);
        self->srv->protocol_errors++;
        return self->Close(absl::StrCat("bad message: ", m.status().message()), true);
      }
      self->OnMessage(*m);
      if (self->closed) return;
    }
    self->ReadMessages();
  });
}

void ShmConnection::OnMessage(shm::ReceivedMsg& m) {
  const auto type = static_cast<MsgType>(static_cast<uint32_t>(m.header.type));
  if (!hello_done) {
    absl::Status s = type == MsgType::kHello ? Hello(m) : absl::InvalidArgumentError("first message is not HELLO");
    for (int fd : m.fds) ::close(fd);
    if (!s.ok()) {
      srv->protocol_errors++;
      return Close(std::string(s.message()), true);
    }
    hello_done = true;
    return;
  }
  if (type != MsgType::kRegWrite) {
    srv->protocol_errors++;
    return Close(absl::StrCat("unexpected message type ", static_cast<uint32_t>(m.header.type)), true);
  }
  const uint32_t off = m.header.offset, size = m.header.size;
  const uint32_t value = static_cast<uint32_t>(static_cast<uint64_t>(m.header.value));
  srv->register_writes++;
  const absl::Status s = mirror->Write(off, size, value);
  if (!s.ok()) {
    srv->register_writes_ignored++;
    VIOPORT_LOG(kInfo, srv->self->opts_.name, ": register write ignored: ", s.message());
  }
  srv->self->status_.store(ctl->status(), std::memory_order_release);
  MsgHeader ack{};
  ack.type = static_cast<uint32_t>(MsgType::kRegAck);
  ack.seq = static_cast<uint32_t>(m.header.seq);
  ack.value = s.ok() ? 0 : 1;
  if (absl::Status w = shm::SendMsg(sock.native_handle(), ack); !w.ok()) {
    // The guest waits for one ack at a time, so the socket is never full
    // unless the guest floods us with writes without reading: drop it.
    srv->protocol_errors++;
    Close(absl::StrCat("cannot answer: ", w.message()), false);
  }
}

absl::Status ShmConnection::Hello(shm::ReceivedMsg& m) {
  const MsgHeader& h = m.header;
  if (static_cast<uint64_t>(h.aux) != shm::kProtocolVersion)
    return absl::InvalidArgumentError(absl::StrCat("protocol version ", static_cast<uint64_t>(h.aux), " (this vios speaks ",
                                                   shm::kProtocolVersion, ")"));
  const uint32_t version = h.offset;
  if (version != 1 && version != 2) return absl::InvalidArgumentError(absl::StrCat("virtio-mmio version ", version));
  const uint64_t size = h.value;
  if (size < shm::kMinRegionSize || size > shm::kMaxRegionSize || size % shm::kRegisterPageSize)
    return absl::InvalidArgumentError(absl::StrCat("region size ", size, " (64 KiB to 64 GiB, whole pages)"));
  if (m.fds.size() != 1) return absl::InvalidArgumentError("HELLO must carry exactly one memfd");
  const int memfd = m.fds[0];
  // A region the guest could shrink would SIGBUS us: demand the seal.
  const int seals = ::fcntl(memfd, F_GET_SEALS);
  if (seals < 0) return absl::InvalidArgumentError("shared memory is not a memfd");
  if (!(seals & F_SEAL_SHRINK)) return absl::InvalidArgumentError("memfd is not sealed against shrinking (F_SEAL_SHRINK)");
  struct stat st;
  if (::fstat(memfd, &st) != 0 || static_cast<uint64_t>(st.st_size) < size)
    return absl::InvalidArgumentError("memfd is smaller than the region size");
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (p == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap: ", std::strerror(errno)));
  map = static_cast<uint8_t*>(p);
  map_size = size;

  VirtioDevice& dev = *srv->device;
  const uint16_t nq = dev.num_queues();
  irq = std::make_shared<ShmInterrupts>();
  irq->page = map;
  std::vector<int> send_fds;
  auto make_efd = [&]() -> Fd { return Fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)); };
  irq->config_call = make_efd();
  send_fds.push_back(irq->config_call.fd);
  for (uint16_t q = 0; q < nq; ++q) {
    kick.push_back(make_efd());
    irq->call.push_back(make_efd());
  }
  for (auto& k : kick) send_fds.push_back(k.fd);
  for (auto& c : irq->call) send_fds.push_back(c.fd);
  for (int fd : send_fds)
    if (fd < 0) return absl::ResourceExhaustedError(absl::StrCat("eventfd: ", std::strerror(errno)));

  auto mem = std::make_shared<RegionMemory>();
  if (absl::Status s = mem->AddRegion({shm::kRegisterPageSize, size - shm::kRegisterPageSize, map + shm::kRegisterPageSize,
                                       Access::kReadWrite});
      !s.ok())
    return s;
  ctl = std::make_unique<DeviceController>(srv->device, mem, irq, srv->self->opts_.transport_features);
  ctl->SetPolled(srv->self->opts_.poll);
  std::memset(map, 0, shm::kRegisterPageSize);
  mirror = std::make_unique<mmio::MmioMirror>(*ctl, version, map);
  irq->on_config = [this] { PublishMirror(); };
  PublishMirror();

  MsgHeader w{};
  w.type = static_cast<uint32_t>(MsgType::kWelcome);
  w.size = nq;
  w.aux = static_cast<uint64_t>(dev.device_id());
  if (absl::Status s = shm::SendMsg(sock.native_handle(), w, {}, send_fds); !s.ok()) return s;
  if (!srv->self->opts_.poll) {
    for (uint16_t q = 0; q < nq; ++q) WatchKick(q);
    WatchEvents();
  }
  srv->self->connected_.store(true, std::memory_order_release);
  VIOPORT_LOG(kInfo, srv->self->opts_.name, ": guest attached (mmio v", version, ", ", size >> 20, " MiB shared)");
  return absl::OkStatus();
}

void ShmConnection::WatchKick(uint16_t q) {
  if (!kick_watch.size()) kick_watch.resize(kick.size());
  if (!kick_watch[q]) kick_watch[q] = std::make_unique<asio::posix::stream_descriptor>(*srv->io, ::dup(kick[q].fd));
  kick_watch[q]->async_wait(asio::posix::stream_descriptor::wait_read,
                            [self = shared_from_this(), q](const boost::system::error_code& ec) {
                              if (ec || self->closed) return;
                              Drain(self->kick[q].fd);
                              self->ctl->NotifyQueue(q);
                              self->SpinWhileBusy();
                              self->srv->self->status_.store(self->ctl->status(), std::memory_order_release);
                              if (!self->closed) self->WatchKick(q);
                            });
}

void ShmConnection::SpinWhileBusy() {
  if (ctl) ctl->ServeWhileBusy(srv->self->opts_.spin_us);
}

void ShmConnection::WatchEvents() {
  const int fd = srv->device->event_fd();
  if (fd < 0) return;
  if (!event_watch) event_watch = std::make_unique<asio::posix::stream_descriptor>(*srv->io, ::dup(fd));
  event_watch->async_wait(asio::posix::stream_descriptor::wait_read,
                          [self = shared_from_this()](const boost::system::error_code& ec) {
                            if (ec || self->closed) return;
                            if (self->srv->device->ProcessEvents()) self->SpinWhileBusy();
                            if (!self->closed) self->WatchEvents();
                          });
}

void ShmConnection::PublishMirror() {
  if (!mirror) return;
  mirror->Publish();
  srv->self->status_.store(ctl->status(), std::memory_order_release);
}

void ShmConnection::Close(const std::string& why, bool tell_guest) {
  if (closed) return;
  if (tell_guest) {
    MsgHeader h{};
    h.type = static_cast<uint32_t>(MsgType::kError);
    (void)shm::SendMsg(sock.native_handle(), h, {reinterpret_cast<const uint8_t*>(why.data()), why.size()});
  }
  if (hello_done) {
    VIOPORT_LOG(kInfo, srv->self->opts_.name, ": guest detached: ", why);
  } else {
    VIOPORT_LOG(kWarning, srv->self->opts_.name, ": connection refused: ", why);
  }
  srv->SetError(why);
  Teardown();
}

void ShmConnection::Teardown() {
  if (closed) return;
  closed = true;
  if (ctl) {
    srv->past += ctl->transport_counters();
    if (!ctl->last_error().empty()) srv->SetError(ctl->last_error());
  }
  // Device first: Reset waits for its in-flight requests, then nothing
  // touches the region any more and it can go.
  mirror.reset();
  ctl.reset();
  if (irq) {
    irq->dead = true;
    irq->on_config = nullptr;
  }
  boost::system::error_code ec;
  for (auto& w : kick_watch)
    if (w) w->close(ec);
  if (event_watch) event_watch->close(ec);
  sock.close(ec);
  if (map) ::munmap(map, map_size);
  map = nullptr;
  kick.clear();
  srv->self->connected_.store(false, std::memory_order_release);
  srv->self->status_.store(0, std::memory_order_release);
}

void RegisterShmTransport() {
  RegisterDeviceTransport(
      {"shm",
       "hypervisor-less virtio-mmio over shared memory (docs/transports/shm.md): the\n"
       "guest brings a sealed memfd, vios maps it and mirrors the registers in it",
       {OptionSpec::String("path", "SOCKET", "the Unix socket guests connect to").Required(),
        OptionSpec::Bool("poll", false, "busy-poll the rings on a dedicated thread (costs a core)"),
        OptionSpec::Uint("spin-us", "N", 0, 1000, "keep serving N us past the last request before sleeping")
            .Default(20)},
       [](EndpointContext& ctx, const OptionValues& o) -> absl::StatusOr<std::unique_ptr<DeviceEndpoint>> {
         ShmServerOptions so;
         so.socket_path = o.str("path");
         so.poll = o.flag("poll");
         so.spin_us = static_cast<uint32_t>(o.num("spin-us"));
         so.name = ctx.name;
         auto s = ShmServer::Create(ctx.io, ctx.device, so);
         if (!s.ok()) return s.status();
         return std::unique_ptr<DeviceEndpoint>(std::move(*s));
       }});
  RegisterGuestTransport({"shm", "SOCKET",
                          "hypervisor-less shared memory: this process's memory is a sealed memfd the\n"
                          "device maps (vios --attach ...,transport=shm)",
                          {},
                          {},
                          64 << 20,
                          [](const GuestContext& ctx, const std::string& socket,
                             const OptionValues&) -> absl::StatusOr<GuestLink> {
                            ShmGuestOptions o;
                            o.socket_path = socket;
                            o.memory_bytes = *ctx.memory_bytes;
                            auto t = ShmDriverTransport::Connect(o);
                            if (!t.ok()) return t.status();
                            GuestLink link;
                            link.transport = std::move(*t);
                            return link;
                          }});
}

}  // namespace vioport
