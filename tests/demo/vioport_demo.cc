// SPDX-License-Identifier: Apache-2.0
// vioport-demo: drives the core's guest-side driver model against device
// backends over the in-process loopback transport, for both ring formats and
// both kinds of guest memory, and prints what it did.
#include <cstdio>
#include <map>
#include <random>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "vioport/backends/rng_device.h"
#include "vioport/core/driver.h"
#include "vioport/core/log.h"
#include "vioport/guest/rng_driver.h"
#include "vioport/testing/echo_device.h"
#include "vioport/transports/loopback.h"

ABSL_FLAG(int, chains, 20000, "echo requests per configuration");
ABSL_FLAG(int, rng_kib, 1024, "KiB of entropy to read per configuration");
ABSL_FLAG(uint32_t, seed, 1, "seed for request sizes and payloads");
ABSL_FLAG(std::string, log_level, "warning", "error, warning, info or debug");

namespace vioport {
namespace {

struct Row {
  std::string ring, memory, device;
  uint64_t ops = 0, bytes = 0;
  double seconds = 0;
  double copies_per_op = 0;
  bool verified = false;
  std::string note;
};

uint64_t RingFeatures(bool packed) {
  return feature::Bit(feature::kIndirectDesc) | feature::Bit(feature::kEventIdx) |
         (packed ? feature::Bit(feature::kRingPacked) : 0);
}

uint64_t Copies(LoopbackTransport& t) {
  auto* c = dynamic_cast<CopyOnlyMemory*>(&t.device_memory());
  return c ? c->reads() + c->writes() : 0;
}

// Echo: each request carries 1-3 readable buffers of seeded bytes and 1-2
// writable ones; the device writes the bytes back XORed with a key and the
// driver checks every byte it gets.
Row RunEcho(bool packed, bool copy_only, int chains, uint32_t seed) {
  Row row;
  row.ring = packed ? "packed" : "split";
  row.memory = copy_only ? "copy-only" : "mapped";
  row.device = "echo";
  auto dev = std::make_shared<testing::EchoDevice>();
  LoopbackOptions lo;
  lo.copy_only = copy_only;
  LoopbackTransport t(dev, lo);
  VirtioDriver drv(t);
  DriverOptions o;
  o.wanted_features = RingFeatures(packed);
  o.queue_size = 256;
  if (absl::Status s = drv.Init(o); !s.ok()) {
    row.note = std::string(s.message());
    return row;
  }
  std::mt19937 rng(seed);
  struct Req {
    DmaBuffer mem;
    uint32_t out_len, in_len;
  };
  std::map<uint64_t, Req> pending;
  DriverQueue& q = drv.queue(0);
  bool ok = true;
  int sent = 0;
  const uint64_t copies0 = Copies(t);
  const absl::Time start = absl::Now();
  auto reap = [&] {
    uint64_t tok;
    uint32_t len;
    while (q.GetUsed(&tok, &len) == UsedStatus::kUsed) {
      auto it = pending.find(tok);
      if (it == pending.end()) {
        ok = false;
        return;
      }
      Req& r = it->second;
      const uint32_t want = std::min(r.out_len, r.in_len);
      ok &= len == want;
      for (uint32_t i = 0; i < want; ++i)
        ok &= r.mem.host[r.out_len + i] == static_cast<uint8_t>(r.mem.host[i] ^ testing::EchoKey(0));
      row.bytes += r.out_len + len;
      row.ops++;
      t.dma().Free(r.mem);
      pending.erase(it);
    }
  };
  while (sent < chains && ok) {
    for (int b = 0; b < 16 && sent < chains; ++b) {
      const int nout = 1 + rng() % 3, nin = 1 + rng() % 2;
      std::vector<uint32_t> lens;
      uint32_t out_len = 0, in_len = 0;
      for (int i = 0; i < nout + nin; ++i) {
        lens.push_back(64 + rng() % 4032);
        (i < nout ? out_len : in_len) += lens.back();
      }
      DmaBuffer m = *t.dma().Allocate(out_len + in_len, 64, Access::kReadWrite);
      for (uint32_t i = 0; i < out_len; ++i) m.host[i] = static_cast<uint8_t>(rng());
      std::vector<DriverBuffer> bufs;
      uint64_t at = m.device_addr;
      for (int i = 0; i < nout + nin; ++i) {
        bufs.push_back({at, lens[i], i >= nout});
        at += lens[i];
      }
      if (q.Add(bufs, sent) != AddStatus::kOk) {
        t.dma().Free(m);
        break;
      }
      pending[sent++] = {m, out_len, in_len};
    }
    drv.Kick(0);
    reap();
  }
  drv.Kick(0);
  reap();
  row.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  row.verified = ok && pending.empty() && row.ops == static_cast<uint64_t>(chains) && !drv.NeedsReset();
  if (copy_only) row.copies_per_op = double(Copies(t) - copies0) / std::max<uint64_t>(row.ops, 1);
  return row;
}

// Rng: entropy through the rng backend and the guest rng driver; verified
// means every byte was delivered and the byte histogram is not degenerate.
Row RunRng(bool packed, bool copy_only, int kib) {
  Row row;
  row.ring = packed ? "packed" : "split";
  row.memory = copy_only ? "copy-only" : "mapped";
  row.device = "rng";
  auto dev = std::make_shared<RngDevice>();
  LoopbackOptions lo;
  lo.copy_only = copy_only;
  LoopbackTransport t(dev, lo);
  RngDriver drv(t);
  if (absl::Status s = drv.Init(RingFeatures(packed)); !s.ok()) {
    row.note = std::string(s.message());
    return row;
  }
  std::vector<uint8_t> out(size_t(kib) << 10);
  const uint64_t copies0 = Copies(t);
  const absl::Time start = absl::Now();
  absl::Status s = drv.Read(out, 4096);
  row.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  row.ops = out.size() / 4096;
  row.bytes = out.size();
  std::array<uint64_t, 256> hist{};
  for (uint8_t b : out) hist[b]++;
  const uint64_t lo_n = *std::min_element(hist.begin(), hist.end());
  row.verified = s.ok() && dev->bytes_served() == out.size() && lo_n > 0;
  if (!s.ok()) row.note = std::string(s.message());
  if (copy_only) row.copies_per_op = double(Copies(t) - copies0) / std::max<uint64_t>(row.ops, 1);
  return row;
}

}  // namespace
}  // namespace vioport

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "runs vioport's guest-side drivers against its device backends over the\n"
      "in-process loopback transport (split and packed rings; mapped and copy-only guest\n"
      "memory) and prints a table of what it did, with every byte checked.\n"
      "Usage: vioport-demo [--chains=N] [--rng_kib=N] [--seed=N] [--log_level=LEVEL]");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) { return absl::StrContains(file, "vioport_demo"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  vioport::LogLevel level;
  if (!vioport::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    fprintf(stderr, "vioport-demo: --log_level=%s: expected error, warning, info or debug\n",
            absl::GetFlag(FLAGS_log_level).c_str());
    return 2;
  }
  vioport::SetLogLevel(level);
  if (absl::GetFlag(FLAGS_chains) <= 0 || absl::GetFlag(FLAGS_rng_kib) <= 0) {
    fprintf(stderr, "vioport-demo: --chains and --rng_kib must be positive\n");
    return 2;
  }

  printf("vioport demo: guest driver <-> device backend over the loopback transport\n\n");
  printf("%-7s %-10s %-6s %9s %11s %9s %12s %s\n", "ring", "memory", "device", "requests", "bytes", "MB/s",
         "copies/req", "verified");
  bool all = true;
  for (bool packed : {false, true}) {
    for (bool copy : {false, true}) {
      for (int dev = 0; dev < 2; ++dev) {
        vioport::Row r = dev == 0 ? vioport::RunEcho(packed, copy, absl::GetFlag(FLAGS_chains), absl::GetFlag(FLAGS_seed))
                                  : vioport::RunRng(packed, copy, absl::GetFlag(FLAGS_rng_kib));
        all &= r.verified;
        printf("%-7s %-10s %-6s %9llu %11llu %9.1f %12s %s%s\n", r.ring.c_str(), r.memory.c_str(), r.device.c_str(),
               static_cast<unsigned long long>(r.ops), static_cast<unsigned long long>(r.bytes),
               r.seconds > 0 ? r.bytes / r.seconds / 1e6 : 0.0,
               copy ? absl::StrFormat("%.2f", r.copies_per_op).c_str() : "-", r.verified ? "yes" : "NO",
               r.note.empty() ? "" : ("  (" + r.note + ")").c_str());
      }
    }
  }
  printf("\n%s\n", all ? "all data verified" : "VERIFICATION FAILED");
  return all ? 0 : 1;
}
