// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for live upgrade's parsers (docs/upgrade.md): what the new
// vios reads from the old one's handover records, against a hostile record.
// The record decoder (HandoverReader: numbers, strings, descriptor indices,
// a controller snapshot) feeds the restores that act on it:
//
//   byte 0 & 1 == 0   a ControllerSnapshot into a DeviceController over a blk
//                     device and 64 KiB of guest RAM (RegionMemory), then
//                     Resume() - the device starts with the queues and
//                     positions the record names and every queue is served,
//                     so the ring locations reach DeviceQueue::Create and
//                     the rings in RAM are walked.
//   byte 0 & 1 == 1   a vhost-user Session::Restore: the record's message
//                     list replayed through Session::Handle (with the fds
//                     the record names: a sealed 1 MiB memfd of guest RAM,
//                     then eventfds), then Resume() and a kick of every
//                     queue.
//   byte 0 == 2       the part of vios's own DEVICE record that follows the
//                     device type (vios/src/upgrade_records.h): options, then
//                     stats for a device of (byte 3 % 4) + 1 queues. What
//                     is read, written again and read back must be the same.
//                     (The record then starts at byte 4.)
//   byte 0 == 3       an shm Session::Restore (its region: the same sealed
//                     1 MiB memfd, registers in its first page; then
//                     eventfds), then Resume() and every queue served.
//   byte 0 == 4       vios's own records around the endpoint's part (from
//                     byte 4, as for 2): byte 1 even, a HELLO (with one
//                     descriptor); odd, a DEVICE record's head, stats for
//                     (byte 3 % 4) + 1 queues and its attachment's head.
//                     Read, written again and read back: the same.
//   byte 0 == 5       a console's host state (ConsoleDevice::RestoreHostState)
//                     from byte 4, with descriptors: a listening socket
//                     (byte 1 bit 1: a connected one instead), and with
//                     byte 1 bit 0 a connected socket too; then its events
//                     handled and (byte 1 bit 2) its host side given back.
//                     No descriptor is leaked either way.
//   other             as byte 0 & 1 (0 or 1 above).
//
// Then: bytes 1-2 (little-endian) are the record's length L; the record is
// the next L bytes; what follows is copied into guest RAM at 0.
// Checked besides ASan/UBSan: nothing crashes, hangs or leaks an fd (the fd
// count is the same after every input).
#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../../transports/shm/src/shm_session.h"
#include "../../transports/vhost_user/src/vhost_user_session.h"
#include "vioport/backends/blk_device.h"
#include "vioport/backends/console_device.h"
#include "vioport/core/device_controller.h"
#include "vioport/core/guest_memory.h"
#include "vioport/core/log.h"
#include "vioport/transports/handover.h"
#ifdef VIOPORT_FUZZ_UPGRADE
#include "upgrade_records.h"
#endif

namespace {

using namespace vioport;

constexpr size_t kRam = 1 << 20;
constexpr size_t kSmallRam = 64 << 10;

int Memfd(const char* name, size_t size) {
  const int fd = ::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) __builtin_trap();
  if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) __builtin_trap();
  return fd;
}

// The descriptors of the kinds a record hands over (eventfds, memfds); the
// blk device's io_uring rings, made at its first start, and the sanitizers'
// pipes are not a restore's.
int CountFds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) __builtin_trap();
  while (dirent* e = ::readdir(d)) {
    char link[256] = {};
    const std::string path = std::string("/proc/self/fd/") + e->d_name;
    if (::readlink(path.c_str(), link, sizeof link - 1) <= 0) continue;
    const std::string l(link);
    if (l.find("eventfd") != std::string::npos || l.find("memfd:") != std::string::npos) n++;
  }
  ::closedir(d);
  return n;
}

struct World {
  int ram_fd = Memfd("fuzz-ram", kRam);
  uint8_t* ram = static_cast<uint8_t*>(::mmap(nullptr, kRam, PROT_READ | PROT_WRITE, MAP_SHARED, ram_fd, 0));
  int disk_fd = Memfd("fuzz-disk", 64 << 10);
  std::shared_ptr<BlkDevice> blk;
  int baseline = -1;

  World() {
    if (ram == MAP_FAILED) __builtin_trap();
    SetLogLevel(std::getenv("VIOPORT_FUZZ_LOG") ? LogLevel::kDebug : LogLevel::kError);
    BlkOptions bo;
    bo.path = "/proc/self/fd/" + std::to_string(disk_fd);
    bo.num_queues = 2;
    bo.queue_size = 64;
    bo.io = BlkOptions::Io::kInline;
    auto d = BlkDevice::Open(bo);
    if (!d.ok()) __builtin_trap();
    blk = *d;
    if (blk->event_fd() < 0) __builtin_trap();  // made now, so the fd baseline has it
  }
};

World& W() {
  static World* w = new World;
  return *w;
}

struct NullSink final : InterruptSink {
  void QueueInterrupt(uint16_t) override {}
  void ConfigInterrupt() override {}
};

struct FakeHost final : vhost_user::Session::Host {
  std::deque<std::function<void()>> deferred;
  void WatchKick(uint16_t, int fd) override {
    if (fd < 0 || ::fcntl(fd, F_GETFD) < 0) __builtin_trap();
  }
  void UnwatchKick(uint16_t) override {}
  absl::Status Reply(uint32_t, std::span<const uint8_t>, std::span<const int>) override {
    __builtin_trap();  // a restore never answers: nothing it replays asks for a reply
  }
  void Defer(std::function<void()> f) override { deferred.push_back(std::move(f)); }
  void RunDeferred() {
    for (int i = 0; i < 64 && !deferred.empty(); ++i) {
      auto f = std::move(deferred.front());
      deferred.pop_front();
      f();
    }
  }
};

void RestoreController(World& w, HandoverReader& in) {
  ControllerSnapshot snap;
  if (!in.Snapshot(&snap, 8).ok()) return;
  auto mem = std::make_shared<RegionMemory>();
  if (!mem->AddRegion({0, kSmallRam, w.ram, Access::kReadWrite}).ok()) __builtin_trap();
  DeviceController ctl(w.blk, mem, std::make_shared<NullSink>());
  if (!ctl.Restore(snap).ok()) return;
  ctl.Resume();
  for (int round = 0; round < 4; ++round) {
    for (uint16_t q = 0; q < ctl.num_queues(); ++q) ctl.NotifyQueue(q);
    w.blk->ProcessEvents();
    ctl.FlushInterrupts(true);
  }
}

void RestoreVhostUser(World& w, HandoverReader& in) {
  FakeHost host;
  vhost_user::SessionOptions so;
  so.name = "fuzz";
  so.transport_features = feature::kCoreSupported;
  so.inflight = true;
  auto session = std::make_unique<vhost_user::Session>(w.blk, &host, so);
  if (!session->Restore(in).ok()) return;
  if (!session->Resume().ok()) return;
  host.RunDeferred();
  for (uint16_t q = 0; q < 2; ++q) {
    session->OnKick(q);
    session->Serve(0);
    host.RunDeferred();
  }
}

struct ShmHost final : shm::Session::Host {
  DeviceController* ctl = nullptr;
  absl::Status Send(const shm::MsgHeader&, std::span<const int>) override { return absl::OkStatus(); }
  void Attached(DeviceController& c, std::span<const int> kicks) override {
    for (int fd : kicks)
      if (fd < 0 || ::fcntl(fd, F_GETFD) < 0) __builtin_trap();
    ctl = &c;
  }
};

void RestoreShm(World& w, HandoverReader& in) {
  ShmHost host;
  shm::Session session(w.blk, &host, "fuzz", true);
  if (absl::Status s = session.Restore(in); !s.ok()) {
    if (std::getenv("VIOPORT_FUZZ_LOG")) std::fprintf(stderr, "shm restore: %s\n", std::string(s.message()).c_str());
    return;
  }
  if (!host.ctl || host.ctl != session.controller()) __builtin_trap();  // restored, so attached
  DeviceController& ctl = *host.ctl;
  ctl.Resume();
  for (int round = 0; round < 4; ++round) {
    for (uint16_t q = 0; q < ctl.num_queues(); ++q) ctl.NotifyQueue(q);
    w.blk->ProcessEvents();
    ctl.FlushInterrupts(true);
  }
}

int AllFds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) __builtin_trap();
  while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
  ::closedir(d);
  return n - 1;  // the directory's own
}

void RestoreConsole(const uint8_t* data, size_t size) {
  if (size < 4) return;
  const int before = AllFds();
  {
    ConsoleOptions o;
    o.socket_path = "/nonexistent/vioport-fuzz-console";  // never a file: nothing to unlink
    o.adopt = true;
    auto dev = ConsoleDevice::Create(o);
    if (!dev.ok()) __builtin_trap();
    std::vector<int> fds;
    if (data[1] & 2) {
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) __builtin_trap();
      ::close(sv[1]);
      fds.push_back(sv[0]);
    } else {
      const int l = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un sa{};
      sa.sun_family = AF_UNIX;  // autobind: an abstract address, no file
      if (l < 0 || ::bind(l, reinterpret_cast<sockaddr*>(&sa), sizeof(sa_family_t)) != 0 || ::listen(l, 1) != 0)
        __builtin_trap();
      fds.push_back(l);
    }
    int peer = -1;
    if (data[1] & 1) {
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) __builtin_trap();
      fds.push_back(sv[0]);
      peer = sv[1];
      (void)::send(peer, "typed on the host", 17, MSG_DONTWAIT);
    }
    const std::string bytes(reinterpret_cast<const char*>(data + 4), size - 4);
    const absl::Status s = (*dev)->RestoreHostState(bytes, fds);
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
    if (s.ok()) {
      (*dev)->ProcessEvents();
      if (data[1] & 4) (*dev)->ReleaseHostState();
    }
    if (peer >= 0) ::close(peer);
  }
  if (AllFds() != before) __builtin_trap();  // the console kept or lost a descriptor
}

}  // namespace

#ifdef VIOPORT_FUZZ_UPGRADE
// Sums of everything GetStats adds, to compare a round trip.
std::vector<uint64_t> Flatten(const DeviceStats& ds) {
  std::vector<uint64_t> v;
  for (uint16_t q = 0; q < ds.num_queues(); ++q)
    v.insert(v.end(), {ds.queue(q)->requests.load(), ds.queue(q)->bytes_in.load(), ds.queue(q)->bytes_out.load()});
  for (size_t b = 0; b < LatencyHistogram::kBuckets; ++b) v.push_back(ds.latency().bucket(b));
  v.insert(v.end(), {ds.latency().sum_ns(), ds.spin_us.load(), ds.busy_polls.load(), ds.busy_poll_ns.load(),
                     ds.busy_poll_found.load(), ds.coalesce_delay_us.load(), ds.coalesce_iops_threshold.load(),
                     ds.interrupts_sent.load(), ds.interrupts_coalesced.load()});
  return v;
}

void UpgradeRecord(const uint8_t* data, size_t size) {
  if (size < 4) return;
  const uint16_t nq = static_cast<uint16_t>(data[3] % 4 + 1);
  HandoverReader in(std::string(reinterpret_cast<const char*>(data + 4), size - 4), {});
  std::map<std::string, std::string> kv;
  DeviceStats ds(nq);
  if (!vios::GetOptions(in, &kv).ok()) return;
  const bool stats = vios::GetStats(in, ds).ok();
  HandoverWriter out;
  vios::PutOptions(out, kv);
  vios::PutStats(out, stats ? &ds : nullptr);
  HandoverReader back(out.bytes(), {});
  std::map<std::string, std::string> kv2;
  DeviceStats ds2(nq);
  if (!vios::GetOptions(back, &kv2).ok() || kv2 != kv) __builtin_trap();
  if (!vios::GetStats(back, ds2).ok() || !back.Done().ok()) __builtin_trap();
  if (stats && Flatten(ds2) != Flatten(ds)) __builtin_trap();
}

void UpgradeHeads(const uint8_t* data, size_t size) {
  if (size < 4) return;
  const std::string record(reinterpret_cast<const char*>(data + 4), size - 4);
  if (!(data[1] & 1)) {
    std::vector<UniqueFd> fds;
    fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
    HandoverReader in(record, std::move(fds));
    vios::HelloRecord h;
    if (!vios::GetHello(in, &h).ok()) return;
    if (!h.control.valid()) __builtin_trap();
    HandoverWriter out;
    vios::PutHello(out, h.pid, h.devices, h.control.get());
    std::vector<UniqueFd> again;
    again.emplace_back(::fcntl(h.control.get(), F_DUPFD_CLOEXEC, 0));
    HandoverReader back(out.bytes(), std::move(again));
    vios::HelloRecord h2;
    if (!vios::GetHello(back, &h2).ok() || h2.pid != h.pid || h2.devices != h.devices ||
        h2.version != vios::kHandoverVersion || !h2.control.valid())
      __builtin_trap();
    return;
  }
  const uint16_t nq = static_cast<uint16_t>(data[3] % 4 + 1);
  HandoverReader in(record, {});
  vios::DeviceHead d;
  vios::AttachHead a;
  DeviceStats ds(nq);
  std::string host;
  std::vector<int> host_fds;
  if (!vios::GetDeviceHead(in, &d).ok() || !vios::GetStats(in, ds).ok() || !vios::GetAttachHead(in, &a).ok() ||
      !vios::GetHostState(in, &host, &host_fds).ok())
    return;
  if (!host_fds.empty()) __builtin_trap();  // the record had none to give
  HandoverWriter out;
  vios::PutDeviceHead(out, d);
  vios::PutStats(out, &ds);
  vios::PutAttachHead(out, a);
  vios::PutHostState(out, host, host_fds);
  HandoverReader back(out.bytes(), {});
  vios::DeviceHead d2;
  vios::AttachHead a2;
  DeviceStats ds2(nq);
  std::string host2;
  std::vector<int> host_fds2;
  if (!vios::GetDeviceHead(back, &d2).ok() || !vios::GetStats(back, ds2).ok() || !vios::GetAttachHead(back, &a2).ok() ||
      !vios::GetHostState(back, &host2, &host_fds2).ok() || !back.Done().ok() || host2 != host)
    __builtin_trap();
  if (d2.id != d.id || d2.type != d.type || d2.options != d.options || Flatten(ds2) != Flatten(ds) ||
      a2.attached != a.attached || a2.transport != a.transport || a2.options != a.options || a2.frozen_ns != a.frozen_ns)
    __builtin_trap();
}
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = W();
  if (w.baseline < 0) w.baseline = CountFds();
  if (size && data[0] == 5) {
    RestoreConsole(data, size);
    return 0;
  }
  if (size && (data[0] == 2 || data[0] == 4)) {
#ifdef VIOPORT_FUZZ_UPGRADE
    if (data[0] == 2)
      UpgradeRecord(data, size);
    else
      UpgradeHeads(data, size);
#endif
    if (CountFds() != w.baseline) __builtin_trap();
    return 0;
  }
  if (size < 3) return 0;
  const size_t len = std::min<size_t>(data[1] | data[2] << 8, size - 3);
  std::string record(reinterpret_cast<const char*>(data + 3), len);
  std::memset(w.ram, 0, kSmallRam);
  std::memcpy(w.ram, data + 3 + len, std::min(size - 3 - len, kSmallRam));
  std::vector<UniqueFd> fds;
  if (data[0] & 1) {  // vhost-user and shm (3) take the memfd and eventfds
    fds.emplace_back(::fcntl(w.ram_fd, F_DUPFD_CLOEXEC, 0));
    for (int i = 0; i < 7; ++i) fds.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  }
  {
    HandoverReader in(std::move(record), std::move(fds));
    if (data[0] == 3) {
      RestoreShm(w, in);
    } else if (data[0] & 1) {
      RestoreVhostUser(w, in);
    } else {
      RestoreController(w, in);
    }
  }
  if (CountFds() != w.baseline) __builtin_trap();  // a restore leaked (or closed) a descriptor
  return 0;
}
