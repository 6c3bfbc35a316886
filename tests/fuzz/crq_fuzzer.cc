// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for virtio over CRQ, server side: the message decoder
// (Message::FromBytes via CrqQueue) and CrqServer's control state machine
// (INIT / VERSION / generations / device and queue set-up / NOTIFY) against a
// hostile client partition, on a fresh in-process crq::Hypervisor per input
// (one adapter pair, two 1 MiB LocalPartitions, a CrqServer serving an
// RngDevice), so queues set up by the input reach real client memory through
// H_COPY_RDMA and NOTIFY walks them.
//
// Input: byte 0 is flags: bit 0 set maps the client's whole window
// (IOBA n * 4 KiB -> client real address n * 4 KiB, read/write) before the
// stream starts; page 0 (the client's own receive queue) is always mapped.
// Then 16-byte records, bytes as in a queue slot (byte 0 valid, 1 opcode,
// 2 status, 3 generation, 4-5 a BE16, 6-7 b BE16, 8-15 value BE64):
//   valid 0x01   harness: poke client memory: bytes 8-15 written at offset
//                BE32(2..5) & (1 MiB - 8) (descriptors, avail rings, ...)
//   valid 0x02   harness: H_PUT_TCE on the client window: IOBA
//                BE16(4..5) * 4 KiB, TCE = value (the hypervisor checks it)
//   valid 0x03   harness: a live upgrade: the server's state (Save) is read
//                by a new server over a new device (Create with the
//                record), byte BE32(4..7) % size xor'ed with byte 1 first;
//                taken, the old one is abandoned (it never frees the CRQ)
//                and the new one serves on; refused, the old one serves on
//   otherwise    the client sends the entry with H_SEND_CRQ (entries the
//                hypervisor refuses are skipped)
// After each record the server is polled with a zero timeout and the client
// drains its own receive queue (so the server never waits on a full queue).
// Checked besides ASan/UBSan: no eventfd/memfd leaks across inputs.
#include <dirent.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "vioport/backends/rng_device.h"
#include "vioport/core/log.h"
#include "vioport/emulators/crq_hypervisor.h"
#include "vioport/emulators/crq_partition.h"
#include "vioport/transports/crq_protocol.h"
#include "vioport/transports/crq_server.h"
#include "vioport/transports/handover.h"

namespace {

using namespace vioport;
using namespace vioport::crq;

constexpr PartitionId kClient = 1, kServer = 2;
constexpr uint64_t kClientUnit = 0x1000, kServerUnit = 0x2000;
constexpr uint64_t kMem = 1 << 20;  // each partition; also the client's window

// Open eventfds and memfds (each input makes and must close its own; the
// sanitizers' symbolizer may add pipes, which are not ours).
int CountOurFds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) __builtin_trap();
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char link[256];
    const std::string path = std::string("/proc/self/fd/") + e->d_name;
    const ssize_t len = ::readlink(path.c_str(), link, sizeof link - 1);
    if (len <= 0) continue;
    link[len] = 0;
    if (std::strstr(link, "[eventfd]") || std::strncmp(link, "/memfd:", 7) == 0) n++;
  }
  ::closedir(d);
  return n;
}

uint32_t Be32(const uint8_t* p) { return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3]; }
uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

void RunOne(const uint8_t* data, size_t size) {
  Hypervisor hv;  // destroyed last
  auto client = LocalPartition::Create(hv, kClient, kMem);
  auto server_p = LocalPartition::Create(hv, kServer, kMem);
  if (!client.ok() || !server_p.ok()) __builtin_trap();
  if (!hv.AddAdapterPair({kClient, kClientUnit, kClientUnit, kMem, kServer, kServerUnit, kServerUnit, kMem}).ok())
    __builtin_trap();
  Partition& c = **client;

  // The client's receive queue: page 0, registered before the server comes up.
  if (c.PutTce(kClientUnit, 0, MakeTce(0, kTceRead | kTceWrite)) != kHSuccess) __builtin_trap();
  CrqQueue q(c.memory(), kTcePageSize);
  q.Reset();
  c.RegCrq(kClientUnit, 0, kTcePageSize);
  if (data[0] & 1)
    for (uint64_t off = kTcePageSize; off < kMem; off += kTcePageSize)
      c.PutTce(kClientUnit, off, MakeTce(off, kTceRead | kTceWrite));

  CrqServerOptions o;
  o.unit = kServerUnit;
  o.liobn = kServerUnit;
  o.remote_liobn = kClientUnit;
  o.remote_window_bytes = kMem;
  o.name = "fuzz";
  std::shared_ptr<RngDevice> rng = std::make_shared<RngDevice>();
  auto server = CrqServer::Create(**server_p, rng, o);
  if (!server.ok()) {
    std::fprintf(stderr, "fuzz_crq: %s\n", std::string(server.status().message()).c_str());
    __builtin_trap();
  }
  auto drain = [&] {
    Message m;
    while (q.Pop(&m)) {
    }
  };
  drain();

  for (size_t i = 1; i + 16 <= size; i += 16) {
    const uint8_t* r = data + i;
    if (r[0] == 0x01) {
      const uint64_t off = Be32(r + 2) & (kMem - 8);
      std::memcpy(c.memory() + off, r + 8, 8);
      continue;
    }
    if (r[0] == 0x02) {
      const Message m = Message::FromBytes(r);
      c.PutTce(kClientUnit, uint64_t{Be16(r + 4)} * kTcePageSize, m.value);
      continue;
    }
    if (r[0] == 0x03) {
      HandoverWriter out;
      if (!(*server)->Save(&out).ok()) continue;  // requests in flight: vios would wait
      std::string bytes = out.bytes();
      if (r[1] && !bytes.empty()) bytes[Be32(r + 4) % bytes.size()] ^= static_cast<char>(r[1]);
      HandoverReader in(std::move(bytes), {});
      auto fresh = std::make_shared<RngDevice>();  // the new vios's own device
      auto next = CrqServer::Create(**server_p, fresh, o, &in);
      if (!next.ok()) continue;
      (*server)->Abandon();
      server->reset();
      *server = std::move(*next);
      rng = fresh;
      (*server)->controller().Resume();  // the new vios's thaw
      (*server)->Poll(absl::ZeroDuration());
      drain();
      continue;
    }
    const Message m = Message::FromBytes(r);
    if (c.SendCrq(kClientUnit, m.hi(), m.lo()) != kHSuccess) continue;
    (*server)->Poll(absl::ZeroDuration());
    drain();
  }
  // Let completions (used notifications, retries) go out.
  (*server)->Poll(absl::ZeroDuration());
  drain();
  if (GetLogLevel() >= LogLevel::kDebug) {
    const CrqServerCounters& k = (*server)->counters();
    std::fprintf(stderr, "fuzz_crq: messages %lu requests %lu notifies %lu used_sent %lu connections %lu closes %lu "
                 "rng bytes %lu\n", (unsigned long)k.messages.load(), (unsigned long)k.requests.load(),
                 (unsigned long)k.notifies.load(), (unsigned long)k.used_sent.load(),
                 (unsigned long)k.connections.load(), (unsigned long)k.closes.load(),
                 (unsigned long)rng->bytes_served());
  }
  server->reset();  // before the partitions and the hypervisor
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int baseline = [] {
    // Hostile input makes the server log a lot; VIOPORT_FUZZ_LOG=1 shows it.
    SetLogLevel(std::getenv("VIOPORT_FUZZ_LOG") ? LogLevel::kDebug : LogLevel::kError);
    return CountOurFds();
  }();
  if (size == 0) return 0;
  RunOne(data, size);
  if (const int now = CountOurFds(); now != baseline) {
    std::fprintf(stderr, "fuzz_crq: %d eventfds and memfds open after the input, %d before: a leak\n", now,
                 baseline);
    __builtin_trap();
  }
  return 0;
}
