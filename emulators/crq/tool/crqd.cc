// SPDX-License-Identifier: Apache-2.0
// crqd: the PowerVM CRQ hypervisor emulator as its own process.
//
// Partition processes connect to --socket (Unix SOCK_SEQPACKET), say HELLO
// with their partition id and pass their sealed RAM memfd; crqd maps it,
// registers the partition with its crq::Hypervisor and passes back an
// interrupt eventfd. Each hypercall is then one request and one response
// (wire protocol: vioport/emulators/crq_remote.h). A closed connection is the
// partition's death. --control takes one text command per connection (fault
// injection, statistics); crqctl is its client. What each connection says is
// decoded by a crq::DaemonSession (src/crqd_session.h), which has no socket;
// this file gives it one, a thread and the mailbox loop.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "vioport/transports/crq_hcall.h"
#include "vioport/emulators/crq_hypervisor.h"
#include "vioport/emulators/crq_remote.h"
#include "vioport/emulators/hcall_mailbox.h"
#include "crqd_session.h"

namespace {

using namespace vioport::crq;  // NOLINT

const char kUsage[] = R"(crqd: the PowerVM CRQ hypervisor emulator, as a daemon.

usage: crqd --socket PATH --control PATH --pair PAIR [--pair PAIR ...]
            [--hcall-delay-ns N] [--delay-mode busy|sleep] [--spin-us N]

  --pair client=PID:UNIT:LIOBN:WINDOW_MIB,server=PID:UNIT:LIOBN:WINDOW_MIB
                     one virtual adapter pair (as an HMC would configure it).
                     Numbers are decimal or 0x-hex; the server's REMOTE window
                     is the client's LIOBN.
  --socket PATH      partitions connect here (SOCK_SEQPACKET): HELLO with their
                     id and a memfd sealed F_SEAL_SHRINK; one connection per id.
  --control PATH     fault injection and statistics (SOCK_STREAM, one command
                     per connection; see crqctl --help).
  --hcall-delay-ns N added to every hypercall (default 0).
  --delay-mode M     busy (default) or sleep.
  --spin-us N        after answering a hypercall, poll that partition's
                     hypercall mailbox N microseconds for the next one before
                     sleeping (default 50; 0: sleep at once). A blocking
                     wake-up costs tens of microseconds; a partition's
                     hypercalls come in bursts.

A partition whose connection closes has died: its partners receive FF 01 and
copies naming its window fail. SIGTERM / SIGINT stop crqd.
)";

bool ParseU64(const std::string& s, uint64_t* out) {
  if (s.empty() || s[0] == '-' || s[0] == '+' || s[0] == ' ') return false;
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 0);
  if (errno != 0 || end == s.c_str() || *end != 0) return false;
  *out = v;
  return true;
}
bool ParseU32(const std::string& s, uint32_t* out) {
  uint64_t v;
  if (!ParseU64(s, &v) || v > 0xFFFFFFFFu) return false;
  *out = static_cast<uint32_t>(v);
  return true;
}

// "client=PID:UNIT:LIOBN:MIB,server=PID:UNIT:LIOBN:MIB"
bool ParsePair(const std::string& spec, AdapterPairConfig* c, std::string* err) {
  bool have_client = false, have_server = false;
  for (const std::string& part : std::vector<std::string>(absl::StrSplit(spec, ','))) {
    const size_t eq = part.find('=');
    if (eq == std::string::npos) {
      *err = absl::StrCat("expected client=... or server=..., got '", part, "'");
      return false;
    }
    const std::string role = part.substr(0, eq);
    std::vector<std::string> f = absl::StrSplit(part.substr(eq + 1), ':');
    uint32_t pid, unit, liobn;
    uint64_t mib;
    if (f.size() != 4 || !ParseU32(f[0], &pid) || !ParseU32(f[1], &unit) || !ParseU32(f[2], &liobn) ||
        !ParseU64(f[3], &mib) || mib == 0 || mib > (16u << 10)) {
      *err = absl::StrCat("bad endpoint '", part, "' (PID:UNIT:LIOBN:WINDOW_MIB)");
      return false;
    }
    if (role == "client") {
      c->client_partition = pid, c->client_unit = unit, c->client_liobn = liobn, c->client_window_bytes = mib << 20;
      have_client = true;
    } else if (role == "server") {
      c->server_partition = pid, c->server_unit = unit, c->server_liobn = liobn, c->server_window_bytes = mib << 20;
      have_server = true;
    } else {
      *err = absl::StrCat("unknown role '", role, "'");
      return false;
    }
  }
  if (!have_client || !have_server) {
    *err = "a pair needs both client= and server=";
    return false;
  }
  return true;
}

int Listen(const std::string& path, int type) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    std::fprintf(stderr, "crqd: socket path too long: %s\n", path.c_str());
    return -1;
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  ::unlink(path.c_str());
  const int s = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (s < 0 || ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(s, 64) != 0) {
    std::fprintf(stderr, "crqd: cannot listen on %s: %s\n", path.c_str(), std::strerror(errno));
    if (s >= 0) ::close(s);
    return -1;
  }
  return s;
}

class Daemon {
 public:
  Hypervisor hv;
  std::chrono::microseconds spin{50};  // --spin-us

  // One thread per partition connection.
  void Accept(int fd) {
    conns_.Add(fd, [this](int c) { Serve(c); });
  }

  // Stops serving: every connection is shut down (its partition removed).
  void Shutdown() { conns_.Shutdown(); }

  std::string Control(const std::string& line) {
    std::vector<std::string> t = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    if (t.empty()) return "error: empty command\n";
    const std::string& cmd = t[0];
    auto endpoint_n = [&](size_t want, uint32_t* pid, uint32_t* unit, uint32_t* n) {
      return t.size() == want && ParseU32(t[1], pid) && ParseU32(t[2], unit) && (n == nullptr || ParseU32(t[3], n));
    };
    uint32_t pid = 0, unit = 0, n = 0;
    absl::Status s;
    if (cmd == "fail") {
      if (!endpoint_n(3, &pid, &unit, nullptr)) return "error: usage: fail PID UNIT\n";
      s = hv.InjectPartnerFailed(pid, unit);
    } else if (cmd == "migrate") {
      if (!endpoint_n(4, &pid, &unit, &n)) return "error: usage: migrate PID UNIT N\n";
      s = hv.InjectMigration(pid, unit, n);
    } else if (cmd == "free-busy") {
      if (!endpoint_n(4, &pid, &unit, &n)) return "error: usage: free-busy PID UNIT N\n";
      s = hv.InjectFreeBusy(pid, unit, n);
    } else if (cmd == "full") {
      if (!endpoint_n(4, &pid, &unit, &n)) return "error: usage: full PID UNIT N\n";
      s = hv.InjectFullQueue(pid, unit, n);
    } else if (cmd == "drop") {
      if (!endpoint_n(4, &pid, &unit, &n)) return "error: usage: drop PID UNIT N\n";
      s = hv.InjectDropMessages(pid, unit, n);
    } else if (cmd == "event") {
      if (!endpoint_n(4, &pid, &unit, &n) || n > 0xFF) return "error: usage: event PID UNIT REASON\n";
      s = hv.PostTransportEvent(pid, unit, static_cast<uint8_t>(n));
    } else if (cmd == "delay") {
      uint64_t ns;
      if (t.size() < 2 || t.size() > 3 || !ParseU64(t[1], &ns) || (t.size() == 3 && t[2] != "busy" && t[2] != "sleep"))
        return "error: usage: delay NS [busy|sleep]\n";
      hv.SetHcallDelay(ns, t.size() == 3 && t[2] == "sleep" ? DelayMode::kSleep : DelayMode::kBusyWait);
    } else if (cmd == "stats") {
      if (t.size() != 1) return "error: usage: stats\n";
      return StatsText() + "ok\n";
    } else if (cmd == "partitions") {
      std::string out;
      for (PartitionId id : registry_.Ids()) absl::StrAppend(&out, "partition ", id, "\n");
      return out + "ok\n";
    } else {
      return absl::StrCat("error: unknown command '", cmd,
                          "' (fail, migrate, free-busy, drop, full, event, delay, stats, partitions)\n");
    }
    if (!s.ok()) return absl::StrCat("error: ", s.message(), "\n");
    return "ok\n";
  }

 private:


  std::string StatsText() {
    const HypervisorStats st = hv.Stats();
    std::string out;
    absl::StrAppend(&out, "partitions_connected ", registry_.size(), "\n");
    absl::StrAppend(&out, "hellos_accepted ", accepted_.load(), "\nhellos_refused ", refused_.load(), "\nrequests ",
                    requests_.load(), "\n");
    for (const auto& [op, c] : st.per_hcall) {
      absl::StrAppend(&out, "hcall ", std::string(HcallName(op)), " calls=", c.calls, " errors=", c.errors,
                      " not_success=", c.not_success, " bytes_copied=", c.bytes_copied, "\n");
    }
    if (const HcallCounters& u = st.untracked_hcalls; u.calls != 0) {
      absl::StrAppend(&out, "hcall untracked calls=", u.calls, " errors=", u.errors, " not_success=", u.not_success,
                      "\n");
    }
    absl::StrAppend(&out, "messages_delivered ", st.messages_delivered, "\nmessages_lost ", st.messages_lost,
                    "\nevents_posted ", st.events_posted, "\nevents_lost ", st.events_lost, "\ninterrupts ",
                    st.interrupts, "\n");
    return out;
  }

  bool Refuse(int fd, const std::string& why) {
    wire::HelloReply r;
    r.status = 1;
    std::snprintf(r.error, sizeof r.error, "%s", why.c_str());
    // Counted before the partition hears of it: whoever saw the refusal
    // sees it in `stats` too.
    refused_.fetch_add(1);
    (void)wire::SendWithFd(fd, &r, sizeof r, -1);
    std::fprintf(stderr, "crqd: refused a partition: %s\n", why.c_str());
    return false;
  }

  // The kernel's part of one connection's session: the memfd that came
  // with HELLO, its mapping and the interrupt eventfd (closed with the host,
  // after the session has removed the partition).
  class ConnectionHost final : public DaemonSession::Host {
   public:
    explicit ConnectionHost(int memfd) : memfd_(memfd) {}
    ~ConnectionHost() override {
      if (irq_ >= 0) ::close(irq_);
    }
    std::string CheckMemory(uint64_t bytes) override { return vioport::emu::CheckSealedMemfd(memfd_, bytes); }
    absl::StatusOr<uint8_t*> MapMemory(uint64_t bytes) override {
      void* m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0);
      if (m == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap: ", std::strerror(errno)));
      return static_cast<uint8_t*>(m);
    }
    void UnmapMemory(uint8_t* memory, uint64_t bytes) override { ::munmap(memory, bytes); }
    absl::StatusOr<int> InterruptFd() override {
      irq_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (irq_ < 0) return absl::ResourceExhaustedError(std::strerror(errno));
      return irq_;
    }
    // A restarted partition waits up to a second for its predecessor's
    // thread to read the EOF and release the id.
    bool RetryClaim() override {
      const auto now = std::chrono::steady_clock::now();
      if (!waiting_) {
        waiting_ = true;
        until_ = now + std::chrono::seconds(1);
      }
      if (now >= until_) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return true;
    }
    int irq() const { return irq_; }

   private:
    int memfd_;
    int irq_ = -1;
    bool waiting_ = false;
    std::chrono::steady_clock::time_point until_;
  };

  void Serve(int fd) {
    // However this ends, the peer sees the connection close now; the fd
    // itself is closed when the thread is reaped.
    struct Hangup {
      int fd;
      ~Hangup() { ::shutdown(fd, SHUT_RDWR); }
    } hangup{fd};
    wire::Hello hello;
    int memfd = -1;
    if (!wire::RecvWithFd(fd, &hello, sizeof hello, &memfd)) {
      if (memfd >= 0) ::close(memfd);
      return;
    }
    struct Closer {
      int& fd;
      ~Closer() {
        if (fd >= 0) ::close(fd);
      }
    } close_memfd{memfd};
    // Declared before the session: the eventfd outlives the partition.
    ConnectionHost host(memfd);
    DaemonSession session(hv, registry_, &host);
    const DaemonSession::HelloResult hr =
        session.Hello(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&hello), sizeof hello), memfd >= 0);
    if (!hr.accepted) {
      Refuse(fd, hr.error);
      return;
    }
    const PartitionId id = session.id();
    // The hypercall mailbox: shared memory with the partition (see crq_remote.h).
    int mbfd = -1;
    wire::Mailbox* mb = vioport::emu::CreateMailbox(absl::StrCat("crqd-mailbox-", id), &mbfd);
    wire::HelloReply ok;
    if (mb == nullptr) {
      ok.status = 1;
      std::snprintf(ok.error, sizeof ok.error, "crqd: cannot create the hypercall mailbox");
    }
    bool alive = wire::SendWithFd(fd, &ok, sizeof ok, mb ? host.irq() : -1) && mb != nullptr;
    if (alive) {
      wire::MailboxReply mr;
      mr.bytes = wire::kMailboxBytes;
      alive = wire::SendWithFd(fd, &mr, sizeof mr, mbfd);
    }
    if (mbfd >= 0) ::close(mbfd);
    if (alive) {
      accepted_.fetch_add(1);
      std::fprintf(stderr, "crqd: partition %u connected (%llu bytes)\n", id,
                   static_cast<unsigned long long>(session.memory_bytes()));
    }
    // Each call: poll the mailbox for `spin`, then sleep on the socket (a
    // kick, or EOF: the partition died); see hcall_mailbox.h.
    vioport::emu::MailboxServer server(mb, fd, spin);
    vioport::emu::MailboxServer::Request req;
    while (alive && server.Next(&req)) {
      requests_.fetch_add(1, std::memory_order_relaxed);
      const HcallResult r = session.Call(req.opcode, std::span<const uint64_t>(req.args, wire::kMaxArgs));
      server.Answer(req, r.rc, r.r4);
    }
    vioport::emu::UnmapMailbox(mb);
    // The partition died (or crqd is stopping): partners see FF 01.
    session.Close();
    std::fprintf(stderr, "crqd: partition %u disconnected\n", id);
  }

  PartitionRegistry registry_;
  std::atomic<uint64_t> accepted_{0}, refused_{0}, requests_{0};
  vioport::emu::ConnectionThreads conns_;  // last: its threads use the members above
};

void ServeControl(Daemon& d, int fd) {
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string line;
  char buf[512];
  while (line.find('\n') == std::string::npos && line.size() < 4096) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    line.append(buf, static_cast<size_t>(n));
  }
  if (const size_t nl = line.find('\n'); nl != std::string::npos) line.resize(nl);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const std::string answer = d.Control(line);
  for (size_t off = 0; off < answer.size();) {
    const ssize_t n = ::send(fd, answer.data() + off, answer.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket_path, control_path;
  std::vector<AdapterPairConfig> pairs;
  uint64_t delay_ns = 0;
  uint64_t spin_us = 50;
  DelayMode mode = DelayMode::kBusyWait;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "crqd: %s needs a value\n", name);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--socket") {
      socket_path = value("--socket");
    } else if (a == "--control") {
      control_path = value("--control");
    } else if (a == "--pair") {
      AdapterPairConfig c;
      std::string err;
      if (!ParsePair(value("--pair"), &c, &err)) {
        std::fprintf(stderr, "crqd: --pair: %s\n", err.c_str());
        return 2;
      }
      pairs.push_back(c);
    } else if (a == "--hcall-delay-ns") {
      if (!ParseU64(value("--hcall-delay-ns"), &delay_ns)) {
        std::fprintf(stderr, "crqd: --hcall-delay-ns: not a number\n");
        return 2;
      }
    } else if (a == "--spin-us") {
      if (!ParseU64(value("--spin-us"), &spin_us) || spin_us > 1000000) {
        std::fprintf(stderr, "crqd: --spin-us: a number of microseconds up to 1000000\n");
        return 2;
      }
    } else if (a == "--delay-mode") {
      const std::string m = value("--delay-mode");
      if (m != "busy" && m != "sleep") {
        std::fprintf(stderr, "crqd: --delay-mode: busy or sleep\n");
        return 2;
      }
      mode = m == "sleep" ? DelayMode::kSleep : DelayMode::kBusyWait;
    } else {
      std::fprintf(stderr, "crqd: unknown argument '%s' (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (socket_path.empty() || control_path.empty()) {
    std::fputs("crqd: need --socket and --control (see --help)\n", stderr);
    return 2;
  }

  Daemon d;
  d.spin = std::chrono::microseconds(spin_us);
  for (const AdapterPairConfig& c : pairs) {
    if (absl::Status s = d.hv.AddAdapterPair(c); !s.ok()) {
      std::fprintf(stderr, "crqd: --pair: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  d.hv.SetHcallDelay(delay_ns, mode);

  // Signals are taken through a signalfd; block them before any thread starts.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  const int sfd = ::signalfd(-1, &mask, SFD_CLOEXEC);
  const int ctl = Listen(control_path, SOCK_STREAM);
  const int lst = ctl < 0 ? -1 : Listen(socket_path, SOCK_SEQPACKET);
  if (sfd < 0 || ctl < 0 || lst < 0) return 1;
  std::fprintf(stderr, "crqd: %zu adapter pair(s); partitions at %s, control at %s\n", pairs.size(),
               socket_path.c_str(), control_path.c_str());

  pollfd fds[3] = {{lst, POLLIN, 0}, {ctl, POLLIN, 0}, {sfd, POLLIN, 0}};
  for (;;) {
    if (::poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "crqd: poll: %s\n", std::strerror(errno));
      break;
    }
    if (fds[2].revents) break;
    if (fds[0].revents & POLLIN) {
      const int c = ::accept4(lst, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) d.Accept(c);
    }
    if (fds[1].revents & POLLIN) {
      const int c = ::accept4(ctl, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) {
        ServeControl(d, c);
        ::close(c);
      }
    }
  }
  ::close(lst);
  ::close(ctl);
  ::unlink(socket_path.c_str());
  ::unlink(control_path.c_str());
  d.Shutdown();
  std::fputs("crqd: stopped\n", stderr);
  return 0;
}
