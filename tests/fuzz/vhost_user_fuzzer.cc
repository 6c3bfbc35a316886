// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the vhost-user device side: the message parser
// (MessageReader::Parse) and the protocol state machine (vhost_user::Session)
// against a hostile front-end's message stream, with real fds attached
// (eventfds, a sealed memfd of guest RAM, the in-flight area the session
// handed out), so the stream reaches memory tables, ring set-up, activation
// and in-flight recovery; then every queue is kicked, so the rings the input
// wrote into guest RAM are walked by a real device.
//
// Input: byte 0 picks the device: bit 0 clear: a BlkDevice (2 queues, 64
// entries, inline I/O on a 64 KiB memfd); set: an EchoDevice (2 queues) that
// holds every chain it pops, so requests stay in flight across ring stops,
// GET_VRING_BASE and SET_INFLIGHT_FD. Then a sequence of records:
//   op >> 6 == 3   kick queue (op & 0x3f): Session::OnKick + Serve + device events
//   op >> 6 == 2   guest RAM poke: offset u16 (x16), length u8, then that many bytes
//   otherwise      a message: fds per op, then header + payload as on the wire
//                  (MessageReader::Parse; a parse error ends the stream, as the
//                  server closes the connection). fds: op & 3 = 0 none, 1
//                  eventfds, 2 the guest RAM memfd, 3 the in-flight fd from the
//                  last GET_INFLIGHT_FD reply (else a sealed 64 KiB memfd);
//                  ((op >> 2) & 7) + 1 of them; op & 0x20: the last one is an
//                  unsealed memfd instead.
// A message the session refuses ends the stream too (the server would close
// the connection). Then every queue is kicked and the session destroyed.
// Checked besides ASan/UBSan: replies fit a message and carry at most 8 fds,
// kick fds handed to the host are open, and no fd leaks (an input that
// leaked one would soon exhaust the fd table): the fd count is the same
// after every input.
#include <dirent.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

#include "../../transports/vhost_user/src/vhost_user_session.h"
#include "vioport/backends/blk_device.h"
#include "vioport/core/log.h"
#include "vioport/testing/echo_device.h"

namespace {

using namespace vioport;
using vhost_user::Message;
using vhost_user::MessageReader;
using vhost_user::Session;

constexpr size_t kRam = 1 << 20;

int Memfd(const char* name, size_t size, bool seal) {
  const int fd = ::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) __builtin_trap();
  if (seal && ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) __builtin_trap();
  return fd;
}

// Open fds: all of them, and those of the kinds an input makes (eventfds,
// memfds). The sanitizers' symbolizer, started by libFuzzer when it prints a
// new function, adds pipes of its own: only a change in ours is a leak.
struct FdCount {
  int all = 0, ours = 0;
};
FdCount CountFds(bool classify) {
  FdCount c;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) __builtin_trap();
  while (dirent* e = ::readdir(d)) {
    c.all++;
    if (!classify || e->d_name[0] == '.') continue;
    char link[256];
    const std::string path = std::string("/proc/self/fd/") + e->d_name;
    const ssize_t n = ::readlink(path.c_str(), link, sizeof link - 1);
    if (n <= 0) continue;
    link[n] = 0;
    if (std::strstr(link, "[eventfd]") || std::strncmp(link, "/memfd:", 7) == 0) c.ours++;
  }
  ::closedir(d);
  return c;
}

// Lives for the whole run: devices (as a server keeps its device across
// connections), guest RAM, the fallback in-flight memfd.
struct World {
  int ram_fd = Memfd("fuzz-ram", kRam, true);
  uint8_t* ram = static_cast<uint8_t*>(::mmap(nullptr, kRam, PROT_READ | PROT_WRITE, MAP_SHARED, ram_fd, 0));
  int spare_inflight = Memfd("fuzz-inflight", 64 << 10, true);
  int disk_fd = Memfd("fuzz-disk", 64 << 10, true);
  std::shared_ptr<BlkDevice> blk;
  std::shared_ptr<testing::EchoDevice> echo;
  FdCount baseline{-1, -1};

  World() {
    if (ram == MAP_FAILED) __builtin_trap();
    // Hostile input makes the session log a lot; VIOPORT_FUZZ_LOG=1 shows it
    // (to see how far a seed gets).
    SetLogLevel(std::getenv("VIOPORT_FUZZ_LOG") ? LogLevel::kDebug : LogLevel::kError);
    BlkOptions bo;
    bo.path = "/proc/self/fd/" + std::to_string(disk_fd);
    bo.num_queues = 2;
    bo.queue_size = 64;
    bo.io = BlkOptions::Io::kInline;
    auto d = BlkDevice::Open(bo);
    if (!d.ok()) {
      std::fprintf(stderr, "fuzz_vhost_user: %s\n", std::string(d.status().message()).c_str());
      __builtin_trap();
    }
    blk = *d;
    // A blk device makes its eventfd when a driver first needs it: make it
    // now, so the fd baseline below has it and only real leaks show.
    if (blk->event_fd() < 0) __builtin_trap();
    testing::EchoOptions eo;
    eo.num_queues = 2;
    eo.max_queue_size = 64;
    eo.hold = true;
    echo = std::make_shared<testing::EchoDevice>(eo);
  }
};

World& W() {
  static World* w = new World;
  return *w;
}

struct FakeHost final : Session::Host {
  std::deque<std::function<void()>> deferred;
  int inflight_fd = -1;  // a dup of the last GET_INFLIGHT_FD reply's fd

  ~FakeHost() override {
    if (inflight_fd >= 0) ::close(inflight_fd);
  }
  void WatchKick(uint16_t, int fd) override {
    if (fd < 0 || ::fcntl(fd, F_GETFD) < 0) __builtin_trap();  // the session owns an open fd
  }
  void UnwatchKick(uint16_t) override {}
  absl::Status Reply(uint32_t request, std::span<const uint8_t> payload, std::span<const int> fds) override {
    if (payload.size() > vhost_user::kMaxPayload || fds.size() > vhost_user::kMaxFds) __builtin_trap();
    for (int fd : fds)
      if (::fcntl(fd, F_GETFD) < 0) __builtin_trap();
    if (request == static_cast<uint32_t>(vhost_user::Req::kGetInflightFd) && fds.size() == 1) {
      if (inflight_fd >= 0) ::close(inflight_fd);
      inflight_fd = ::fcntl(fds[0], F_DUPFD_CLOEXEC, 0);
    }
    return absl::OkStatus();
  }
  void Defer(std::function<void()> f) override { deferred.push_back(std::move(f)); }
  void RunDeferred() {
    for (int i = 0; i < 64 && !deferred.empty(); ++i) {  // bounded, as a loop turn
      auto f = std::move(deferred.front());
      deferred.pop_front();
      f();
    }
  }
};

void Kick(Session& s, FakeHost& host, uint16_t q) {
  s.OnKick(q);
  s.Serve(0);
  host.RunDeferred();
  if (s.OnDeviceEvents()) s.Serve(0);
  host.RunDeferred();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = W();
  if (w.baseline.all < 0) w.baseline = CountFds(true);
  if (size == 0) return 0;
  std::memset(w.ram, 0, kRam);
  std::shared_ptr<VirtioDevice> dev = (data[0] & 1) ? std::shared_ptr<VirtioDevice>(w.echo) : w.blk;
  {
    FakeHost host;
    vhost_user::SessionOptions so;
    so.name = "fuzz";
    so.transport_features = feature::kCoreSupported;
    so.inflight = true;
    auto session = std::make_unique<Session>(dev, &host, so);
    size_t i = 1;
    bool open = true;
    while (open && i < size) {
      const uint8_t op = data[i++];
      if (op >> 6 == 3) {
        Kick(*session, host, op & 0x3f);
        continue;
      }
      if (op >> 6 == 2) {
        if (size - i < 3) break;
        const size_t off = size_t{static_cast<uint16_t>(data[i] | data[i + 1] << 8)} * 16;
        const size_t len = std::min<size_t>({data[i + 2], size - i - 3, kRam - off});
        std::memcpy(w.ram + off, data + i + 3, len);
        i += 3 + data[i + 2];
        continue;
      }
      size_t used = 0;
      absl::StatusOr<Message> m = MessageReader::Parse({data + i, size - i}, &used);
      if (!m.ok()) {
        VIOPORT_LOG(kDebug, "fuzz: closing the connection: ", m.status().message());
        open = false;
        break;
      }
      i += used;
      const unsigned kind = op & 3, count = kind ? ((op >> 2) & 7) + 1 : 0;
      for (unsigned k = 0; k < count; ++k) {
        int fd;
        if (k + 1 == count && (op & 0x20)) {
          fd = Memfd("fuzz-unsealed", 4096, false);
        } else if (kind == 1) {
          fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        } else if (kind == 2) {
          fd = ::fcntl(w.ram_fd, F_DUPFD_CLOEXEC, 0);
        } else {
          fd = ::fcntl(host.inflight_fd >= 0 ? host.inflight_fd : w.spare_inflight, F_DUPFD_CLOEXEC, 0);
        }
        if (fd < 0) __builtin_trap();
        m->fds.push_back(fd);  // owned by the message from here
      }
      absl::Status s = session->Handle(*m);
      host.RunDeferred();
      if (!s.ok()) {
        open = false;  // the server closes the connection
        VIOPORT_LOG(kDebug, "fuzz: closing the connection: ", s.message());
      }
    }
    if (open)
      for (uint16_t q = 0; q < dev->num_queues(); ++q) Kick(*session, host, q);
    if (GetLogLevel() >= LogLevel::kDebug) {
      const vhost_user::SessionCounters c = session->counters();
      std::vector<std::pair<std::string, uint64_t>> dc;
      dev->AppendCounters(&dc);
      std::string line = absl::StrCat("fuzz: messages ", c.messages, " kicks ", c.kicks, " interrupts ",
                                      c.queue_interrupts, " activations ", c.activations, " ring_errors ",
                                      c.ring_errors, " resubmitted ", c.resubmitted, "; device");
      for (auto& [n, v] : dc) absl::StrAppend(&line, " ", n, " ", v);
      VIOPORT_LOG(kDebug, line);
    }
    session.reset();  // completes or drops what is in flight, resets the device, unmaps
    host.deferred.clear();
  }
  if (CountFds(false).all != w.baseline.all) {
    const FdCount now = CountFds(true);
    if (now.ours != w.baseline.ours) {
      std::fprintf(stderr, "fuzz_vhost_user: %d eventfds and memfds open after the input, %d before: a leak\n",
                   now.ours, w.baseline.ours);
      __builtin_trap();
    }
    w.baseline = now;
  }
  return 0;
}
