// SPDX-License-Identifier: Apache-2.0
// vioguest: a guest in a process. Drives a vioport device over a transport
// with the same drivers every transport uses, over any transport this build
// registered. See UsageText().
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <cerrno>
#include <cinttypes>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "vioport/core/log.h"
#include "vioport/guest/blk_driver.h"
#include "vioport/guest/console_driver.h"
#include "vioport/guest/net_driver.h"
#include "vioport/guest/pattern.h"
#include "vioport/guest/rng_driver.h"
#include "vioport/transports/registry.h"
#include "vioguest.h"

namespace vioport::vioguest {

std::string UsageText() {
  RegisterBuiltinTransports();
  return absl::StrCat(R"(vioguest: a guest in a process, driving a vioport device over a transport.

usage: vioguest --transport NAME:CHANNEL[,KEY=VALUE...] [common options] DEVICE COMMAND [options]

  blk info                          capacity, block size, queues, features, id
  blk write  --seed N [--offset B] [--length B] [--passes P]
                                    write seeded data (default: the whole disk);
                                    --passes: P rounds, each with the next seed,
                                    each read back and verified before the next
                                    (0: rounds until --time SECONDS, default
                                    10, or SIGUSR1; at least 2)
  blk read   [--offset B] [--length B] [--out FILE]
                                    read; print a 64-bit checksum (pattern.h)
  blk verify --seed N [--offset B] [--length B]
                                    read and compare with the seeded data
             read, write, verify: [--reconnect-timeout SECONDS]
                                    if the device needs a reset or the
                                    transport loses its partner (a restarted
                                    server, a migration), re-initialise and
                                    retry the failed 1 MiB chunk for up to
                                    SECONDS (default 0: fail at once)
  blk flush                         FLUSH (data durable when it returns)
  blk bench  [--pattern randread|randwrite|read|write] [--bs B] [--qd N]
             [--queues N] [--time SECONDS] [--baseline FILE]
                                    IOPS, MB/s and latency percentiles; with
                                    --baseline, the same pattern with pread /
                                    pwrite on FILE in this process (QD 1)
  net info                          MAC, MTU, link, queue pairs, features
  net send   --seed N [--count N] [--size B] [--dst MAC] [--src MAC] [--pairs N] [--rate PPS]
                                    send N seeded test frames (EtherType
                                    0x88b5) of B bytes (64..9216; default 64)
                                    to MAC (default broadcast), at most PPS
                                    frames a second (default: as fast as the
                                    device takes them; a switch drops what a
                                    slower receiver cannot take); --src sets
                                    the source MAC (default the device's)
  net recv   --seed N [--count N] [--timeout SECONDS] [--pairs N]
                                    receive until N frames of that seed
                                    arrived, checking every byte and that
                                    none is missing or repeated
  net echo   [--time SECONDS]       send every frame received back, MACs swapped
  net pingpong --dst MAC --seed N [--count N] [--size B]
                                    one test frame at a time to MAC, which
                                    echoes it; every answer checked; round-trip
                                    latency percentiles
  net tap    --ifname NAME [--time SECONDS]
                                    join the device to tap NAME (created if
                                    missing): ping, iperf3 and any tool run over
                                    it; until SIGINT (or SECONDS)
  net bench  --mode tx|rx [--size B] [--time SECONDS] [--pairs N] [--rate PPS] [--tso]
                                    generate (tx) or sink (rx) frames; prints
                                    pps and Gbit/s, and (rx) one-way latency
                                    percentiles of the frames a tx bench on
                                    this machine stamped; --tso sends IPv4/TCP
                                    frames of B payload bytes (default 63000)
                                    for the device to segment at the MTU
  net options: [--no-offloads] [--no-mrg-rxbuf] [--queue-size N]
)", kVsockUsage, R"(  rng [--length B] [--out FILE]     read random bytes
  console [--send TEXT] [--expect TEXT] [--timeout SECONDS]
                                    send TEXT, then read until TEXT is seen; without
                                    options: copy stdin to the port, the port to stdout

common options:
  --transport NAME:CHANNEL[,KEY=VALUE...]
                          the transport and how to reach the device; this build speaks
                          (numbers take 0x and K, M, G):
)", GuestTransportsHelp(4), R"(  --memory MIB            guest memory to share (default: the transport's)
  --packed                use packed rings (default split)
  --no-event-idx / --no-indirect
  --spin-us N             poll a used ring N us before sleeping (default 30; a vsock
                          reader waiting for data adapts it, up to 200)
  --quiet                 no progress line
  --log-level LEVEL       error, warning (default), info, debug

Sizes take K, M, G suffixes (powers of 2). Exit status: 0 ok, 1 failure
(I/O error, mismatch), 2 bad usage or unreachable device.
)");
}


// The program's flags and whether each takes a value; the transports' own
// flags (GuestFlagSpecs) are added at start.
std::map<std::string, bool> TakesValue() {
  std::map<std::string, bool> m = {
      {"transport", true}, {"memory", true}, {"spin-us", true}, {"log-level", true}, {"seed", true},
      {"offset", true},    {"length", true}, {"out", true},     {"pattern", true},   {"bs", true},
      {"qd", true},        {"queues", true}, {"time", true},    {"baseline", true},  {"send", true},
      {"expect", true},    {"timeout", true}, {"reconnect-timeout", true}, {"packed", false},
      {"no-event-idx", false}, {"no-indirect", false}, {"quiet", false}, {"help", false},
      {"count", true}, {"size", true}, {"dst", true}, {"src", true}, {"pairs", true}, {"mode", true}, {"queue-size", true},
      {"rate", true}, {"ifname", true}, {"no-offloads", false}, {"no-mrg-rxbuf", false}, {"tso", false},
      {"cid", true}, {"port", true}, {"expect-seed", true}, {"expect-length", true}, {"echo", false},
      {"connections", true}, {"seqpacket", false}, {"rx-buffers", true}, {"buf-alloc", true}, {"passes", true}};
  for (const OptionSpec& f : GuestFlagSpecs()) m[f.key] = f.kind != OptionSpec::Kind::kBool;
  return m;
}

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr, "vioguest: %s (see vioguest --help)\n", why.c_str());
  std::exit(2);
}

[[noreturn]] void Fail(const absl::Status& s, const std::string& what) {
  std::fprintf(stderr, "vioguest: %s%s%s\n", what.c_str(), what.empty() ? "" : ": ", std::string(s.message()).c_str());
  std::exit(absl::IsInvalidArgument(s) || absl::IsUnavailable(s) || absl::IsFailedPrecondition(s) ? 2 : 1);
}

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) != 0) {
      a.positional.push_back(s);
      continue;
    }
    std::string key = s.substr(2), value;
    const size_t eq = key.find('=');
    const bool has_inline = eq != std::string::npos;
    if (has_inline) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    }
    static const std::map<std::string, bool> takes_value = TakesValue();
    auto it = takes_value.find(key);
    if (it == takes_value.end()) Usage(absl::StrCat("unknown option --", key));
    if (!it->second) {
      if (has_inline) Usage(absl::StrCat("--", key, " takes no value"));
      a.flags[key] = true;
      continue;
    }
    if (!has_inline) {
      if (i + 1 >= argc) Usage(absl::StrCat("--", key, " needs a value"));
      value = argv[++i];
    }
    a.opts[key] = value;
  }
  return a;
}

uint64_t Size(const Args& a, const std::string& key, uint64_t dflt) {
  auto it = a.opts.find(key);
  if (it == a.opts.end()) return dflt;
  std::string v = it->second;
  uint64_t mult = 1;
  if (!v.empty()) {
    switch (v.back()) {
      case 'k': case 'K': mult = 1ull << 10; break;
      case 'm': case 'M': mult = 1ull << 20; break;
      case 'g': case 'G': mult = 1ull << 30; break;
      default: break;
    }
    if (mult != 1) v.pop_back();
  }
  uint64_t n;
  if (!absl::SimpleAtoi(v, &n)) Usage(absl::StrCat("--", key, " ", it->second, ": not a size"));
  return n * mult;
}


Guest Connect(const Args& a, const std::string& device) {
  auto it = a.opts.find("transport");
  if (it == a.opts.end()) Usage("--transport is required");
  GuestContext ctx;
  ctx.device = device == "blk"       ? DeviceId::kBlock
               : device == "console" ? DeviceId::kConsole
               : device == "net"     ? DeviceId::kNet
               : device == "vsock"   ? DeviceId::kVsock
                                     : DeviceId::kEntropy;
  if (a.opts.count("memory")) ctx.memory_bytes = Size(a, "memory", 0) << 20;
  // The transports' own flags, checked as they declared them.
  std::map<std::string, std::string> given;
  for (const OptionSpec& f : GuestFlagSpecs())
    if (a.opts.count(f.key)) given[f.key] = a.opts.at(f.key);
  Options flag_options("vioguest flags", std::move(given));
  const std::vector<OptionSpec> flag_specs = GuestFlagSpecs();
  auto flags = OptionValues::Check(flag_options, flag_specs);
  if (!flags.ok()) Usage(std::string(flags.status().message()));
  ctx.flags = &*flags;
  auto link = ConnectGuest(it->second, ctx);
  if (!link.ok()) Fail(link.status(), "");  // the message names the --transport
  Guest g;
  g.link = std::move(*link);
  g.transport = g.link.transport.get();
  g.ring_features = feature::Bit(feature::kVersion1);
  if (!a.flags.count("no-event-idx")) g.ring_features |= feature::Bit(feature::kEventIdx);
  if (!a.flags.count("no-indirect")) g.ring_features |= feature::Bit(feature::kIndirectDesc);
  if (a.flags.count("packed")) g.ring_features |= feature::Bit(feature::kRingPacked);
  g.wait.spin = absl::Microseconds(static_cast<int64_t>(Size(a, "spin-us", 30)));
  g.quiet = a.flags.count("quiet") > 0;
  return g;
}

double Seconds(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

// ---- blk -------------------------------------------------------------------

struct Range {
  uint64_t offset, length;
};

Range GetRange(const Args& a, const BlkInfo& info) {
  const uint64_t cap = info.capacity_sectors * 512;
  Range r{Size(a, "offset", 0), 0};
  r.length = Size(a, "length", r.offset <= cap ? cap - r.offset : 0);
  if (r.offset % 512 || r.length % 512) Usage("--offset and --length must be multiples of 512");
  if (r.offset > cap || r.length > cap - r.offset)
    Usage(absl::StrFormat("range %u+%u is past the disk's end (%u bytes)", r.offset, r.length, cap));
  return r;
}

void Progress(const Guest& g, const char* what, uint64_t done, uint64_t total, absl::Time start) {
  if (g.quiet) return;
  const double s = Seconds(start);
  std::fprintf(stderr, "\r%s %6.1f%%  %8.1f MB/s  %5.1fs ", what, total ? 100.0 * done / total : 100.0,
               s > 0 ? done / s / 1e6 : 0.0, s);
}

// --reconnect-timeout: a transfer that fails because the device needs a reset
// or the transport lost its partner (a restarted server, a migration)
// re-initialises the driver (the transport reconnects on the reset) and
// retries the failed chunk, which is idempotent, until the deadline. I/O
// errors the device reported (DataLoss, Unimplemented) are never retried.
class Recovery {
 public:
  Recovery(const Guest& g, BlkDriver& blk, const BlkDriverOptions& o, absl::Duration budget)
      : g_(g), blk_(blk), o_(o), budget_(budget) {}
  void Run(const std::function<absl::Status()>& op, const std::string& what) {
    absl::Time give_up = absl::InfiniteFuture();
    for (absl::Status s = op(); !s.ok(); s = op()) {
      if (budget_ <= absl::ZeroDuration() || absl::IsDataLoss(s) || absl::IsUnimplemented(s) ||
          absl::IsInvalidArgument(s))
        Fail(s, what);
      if (give_up == absl::InfiniteFuture()) give_up = absl::Now() + budget_;
      for (;;) {
        if (absl::Now() > give_up) Fail(s, absl::StrCat(what, " (no recovery within --reconnect-timeout)"));
        if (!g_.quiet) std::fprintf(stderr, "\nvioguest: %s: %s; re-initialising the device\n", what.c_str(),
                                    std::string(s.message()).c_str());
        absl::SleepFor(absl::Milliseconds(50));
        if (absl::Status i = blk_.Init(o_); i.ok()) break;
        else s = i;
      }
      reconnects_++;
    }
  }
  uint64_t reconnects() const { return reconnects_; }

 private:
  const Guest& g_;
  BlkDriver& blk_;
  const BlkDriverOptions& o_;
  absl::Duration budget_;
  uint64_t reconnects_ = 0;
};

// --passes 0 ends after the pass under way when this is set (SIGUSR1).
std::atomic<bool> g_stop_passes{false};

int BlkTransfer(Guest& g, BlkDriver& blk, const BlkDriverOptions& o, const Args& a, const std::string& cmd) {
  const BlkInfo& info = blk.info();
  Recovery recover(g, blk, o, absl::Seconds(static_cast<int64_t>(Size(a, "reconnect-timeout", 0))));
  const Range r = GetRange(a, info);
  const bool has_seed = a.opts.count("seed");
  if ((cmd == "write" || cmd == "verify") && !has_seed) Usage(absl::StrCat("blk ", cmd, " needs --seed"));
  const uint64_t seed = Size(a, "seed", 0);
  int out_fd = -1;
  if (a.opts.count("out")) {
    out_fd = ::open(a.opts.at("out").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0) Usage(absl::StrCat("--out ", a.opts.at("out"), ": ", std::strerror(errno)));
  }
  const size_t chunk = 1 << 20;
  std::vector<uint8_t> buf(chunk);
  pattern::Checksum64 sum;
  const absl::Time start = absl::Now();
  absl::Time last = start;
  // --passes P (write): P rounds of writing the range with seed, seed+1, ...
  // each read back and verified before the next (the range ends with the
  // last seed); --passes 0: rounds until --time SECONDS passed.
  const uint64_t asked = cmd == "write" ? Size(a, "passes", 1) : 1;
  const absl::Duration until = absl::Seconds(static_cast<int64_t>(Size(a, "time", 10)));
  const uint64_t passes = asked == 0 ? UINT64_MAX / 4 : asked;
  if (asked == 0) ::signal(SIGUSR1, [](int) { g_stop_passes.store(true); });
  uint64_t rounds = 0;
  for (uint64_t pass = 0; pass < passes * (passes > 1 ? 2 : 1); ++pass) {
    if (asked == 0 && pass % 2 == 0 && pass > 2 && (absl::Now() - start >= until || g_stop_passes.load())) break;
    rounds = pass / 2 + 1;
    const std::string op = passes > 1 && pass % 2 ? "verify" : cmd;
    const uint64_t pseed = seed + (passes > 1 ? pass / 2 : 0);
    sum = pattern::Checksum64();
    for (uint64_t done = 0; done < r.length;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, r.length - done));
      std::span<uint8_t> b(buf.data(), n);
      const uint64_t off = r.offset + done;
      if (op == "write") {
        pattern::Fill(pseed, off, b);
        recover.Run([&] { return blk.Write(off / 512, b); }, absl::StrCat("write at ", off));
      } else {
        recover.Run([&] { return blk.Read(off / 512, b); }, absl::StrCat("read at ", off));
        if (op == "verify") {
          const int64_t bad = pattern::FirstMismatch(pseed, off, b);
          if (bad >= 0) {
            std::fprintf(stderr, "\nvioguest: MISMATCH at byte %" PRId64 " (seed %" PRIu64 ")\n", bad, pseed);
            std::printf("result device=blk op=verify bytes=%" PRIu64 " verified=no\n", done);
            return 1;
          }
        }
        if (out_fd >= 0 && ::write(out_fd, b.data(), n) != static_cast<ssize_t>(n)) Usage("--out: short write");
      }
      sum.Add(b);
      done += n;
      if (absl::Now() - last > absl::Milliseconds(500)) {
        Progress(g, op.c_str(), done, r.length, start);
        last = absl::Now();
      }
    }
    if (op == "write") {
      recover.Run(
          [&] {
            absl::Status s = blk.Flush();
            return absl::IsUnimplemented(s) ? absl::OkStatus() : s;
          },
          "flush");
    }
  }
  if (out_fd >= 0) ::close(out_fd);
  const double secs = Seconds(start);
  if (!g.quiet) std::fprintf(stderr, "\r%60s\r", "");
  std::printf("%s %" PRIu64 " bytes at offset %" PRIu64 " in %.2f s (%.1f MB/s), checksum %016" PRIx64 "%s\n", cmd.c_str(),
              r.length, r.offset, secs, r.length / std::max(secs, 1e-9) / 1e6, sum.Value(),
              cmd == "verify" ? ", verified" : "");
  std::printf("result device=blk op=%s bytes=%" PRIu64 " seconds=%.3f mbps=%.1f checksum=%016" PRIx64
              " verified=%s reconnects=%" PRIu64 "\n",
              cmd.c_str(), r.length, secs, r.length / std::max(secs, 1e-9) / 1e6, sum.Value(),
              cmd == "verify" || passes > 1 ? "yes" : "n/a", recover.reconnects());
  if (passes > 1) std::printf("result device=blk op=passes passes=%" PRIu64 " last_seed=%" PRIu64 "\n", rounds, seed + rounds - 1);
  return 0;
}

struct BenchResult {
  uint64_t ops = 0, bytes = 0;
  double seconds = 0;
  std::vector<double> lat_us;  // one per op (sampled up to a cap)
};

void Report(const char* label, BenchResult& r) {
  std::sort(r.lat_us.begin(), r.lat_us.end());
  auto pct = [&](double p) {
    if (r.lat_us.empty()) return 0.0;
    return r.lat_us[std::min(r.lat_us.size() - 1, static_cast<size_t>(p * r.lat_us.size()))];
  };
  std::printf("%-9s %10.0f IOPS %9.1f MB/s  lat us: p50 %7.1f  p99 %7.1f  p99.9 %7.1f  (%" PRIu64 " ops, %.1f s)\n",
              label, r.ops / r.seconds, r.bytes / r.seconds / 1e6, pct(0.5), pct(0.99), pct(0.999), r.ops, r.seconds);
}

int BlkBench(Guest& g, BlkDriver& blk, const Args& a) {
  const BlkInfo& info = blk.info();
  const std::string pat = a.opts.count("pattern") ? a.opts.at("pattern") : "randread";
  const bool rnd = pat == "randread" || pat == "randwrite";
  const bool write = pat == "randwrite" || pat == "write";
  if (!rnd && pat != "read" && pat != "write") Usage(absl::StrCat("--pattern ", pat, ": randread, randwrite, read or write"));
  const uint64_t bs = Size(a, "bs", 4096);
  const uint32_t qd = static_cast<uint32_t>(Size(a, "qd", 1));
  const uint16_t queues = static_cast<uint16_t>(std::min<uint64_t>(Size(a, "queues", 1), info.num_queues));
  const double secs = static_cast<double>(Size(a, "time", 5));
  if (bs == 0 || bs % 512 || bs > (64u << 20)) Usage("--bs must be a multiple of 512 up to 64M");
  if (write && info.read_only) Usage("the device is read-only");
  const uint64_t cap = info.capacity_sectors * 512;
  if (cap < bs) Usage("the disk is smaller than --bs");
  const uint64_t blocks = cap / bs;
  const uint32_t per_queue = std::max<uint32_t>(1, qd / queues);
  if (qd == 0 || per_queue > blk.driver().queue(0).size()) Usage(absl::StrCat("--qd ", qd, " exceeds the queue size"));

  std::mt19937_64 rng(42);
  uint64_t seq_next = 0;
  auto next_offset = [&]() {
    if (rnd) return (rng() % blocks) * bs;
    const uint64_t o = seq_next;
    seq_next = (seq_next + bs) % (blocks * bs);
    return o;
  };

  // The same workload straight on the file, in this process.
  if (a.opts.count("baseline")) {
    const std::string& path = a.opts.at("baseline");
    const int fd = ::open(path.c_str(), (write ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) Usage(absl::StrCat("--baseline ", path, ": ", std::strerror(errno)));
    std::vector<uint8_t> b(bs, 0x5a);
    BenchResult base;
    const absl::Time start = absl::Now();
    const uint64_t fblocks = std::max<uint64_t>(1, std::min<uint64_t>(blocks, ::lseek(fd, 0, SEEK_END) / bs));
    while (Seconds(start) < secs) {
      for (int i = 0; i < 256; ++i) {
        const uint64_t off = (rnd ? rng() % fblocks : (seq_next++ % fblocks)) * bs;
        const absl::Time t0 = absl::Now();
        const ssize_t n = write ? ::pwrite(fd, b.data(), bs, off) : ::pread(fd, b.data(), bs, off);
        if (n != static_cast<ssize_t>(bs)) Fail(absl::DataLossError(std::strerror(errno)), "baseline I/O");
        if (base.lat_us.size() < 4'000'000) base.lat_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
        base.ops++;
        base.bytes += bs;
      }
    }
    base.seconds = Seconds(start);
    ::close(fd);
    std::printf("baseline: %s bs=%" PRIu64 " on %s with p%s, queue depth 1\n", pat.c_str(), bs, path.c_str(),
                write ? "write" : "read");
    Report("baseline", base);
    std::printf("result device=file op=%s bs=%" PRIu64 " qd=1 iops=%.0f mbps=%.1f\n", pat.c_str(), bs, base.ops / base.seconds,
                base.bytes / base.seconds / 1e6);
    seq_next = 0;
  }

  struct Slot {
    DmaBuffer buf;
    absl::Time issued;
  };
  std::vector<std::vector<Slot>> slots(queues);
  for (uint16_t q = 0; q < queues; ++q) {
    for (uint32_t i = 0; i < per_queue; ++i) {
      auto b = blk.AllocBuffer(bs);
      if (!b.ok()) Fail(b.status(), "allocate I/O buffers (raise --memory)");
      std::memset(b->host, 0x5a, bs);
      slots[q].push_back({*b, absl::Time()});
    }
  }
  const BlkOp op = write ? BlkOp::kWrite : BlkOp::kRead;
  auto submit = [&](uint16_t q, uint32_t i) {
    Slot& s = slots[q][i];
    s.issued = absl::Now();
    if (absl::Status st = blk.Submit(q, op, next_offset() / 512, &s.buf, static_cast<uint32_t>(bs), i); !st.ok())
      Fail(st, "submit");
  };
  BenchResult r;
  const absl::Time start = absl::Now();
  absl::Time last = start;
  for (uint16_t q = 0; q < queues; ++q) {
    for (uint32_t i = 0; i < per_queue; ++i) submit(q, i);
    blk.Kick(q);
  }
  std::vector<BlkCompletion> done(per_queue);
  bool stopping = false;
  uint64_t in_flight = uint64_t{per_queue} * queues;
  while (in_flight > 0) {
    for (uint16_t q = 0; q < queues; ++q) {
      auto n = blk.Reap(q, {done.data(), done.size()}, /*wait=*/queues == 1);
      if (!n.ok()) Fail(n.status(), "reap");
      const absl::Time now = absl::Now();
      for (size_t k = 0; k < *n; ++k) {
        const BlkCompletion& c = done[k];
        if (c.status != 0) Fail(absl::DataLossError(absl::StrCat("virtio status ", c.status)), "bench I/O");
        Slot& s = slots[q][c.token];
        if (r.lat_us.size() < 4'000'000) r.lat_us.push_back(absl::ToDoubleMicroseconds(now - s.issued));
        r.ops++;
        r.bytes += bs;
        in_flight--;
        if (!stopping) {
          submit(q, static_cast<uint32_t>(c.token));
          in_flight++;
        }
      }
      if (*n && !stopping) blk.Kick(q);
    }
    const absl::Time now = absl::Now();
    if (!stopping && absl::ToDoubleSeconds(now - start) >= secs) stopping = true;
    if (!g.quiet && now - last > absl::Seconds(1)) {
      const double s = absl::ToDoubleSeconds(now - start);
      std::fprintf(stderr, "\r%s %5.1fs  %9.0f IOPS  %8.1f MB/s ", pat.c_str(), s, r.ops / s, r.bytes / s / 1e6);
      last = now;
    }
  }
  r.seconds = Seconds(start);
  if (!g.quiet) std::fprintf(stderr, "\r%70s\r", "");
  std::printf("vioguest: %s bs=%" PRIu64 " qd=%u queues=%u over %s (%s rings)\n", pat.c_str(), bs, per_queue * queues, queues,
              a.opts.at("transport").c_str(), feature::Has(g.ring_features, feature::kRingPacked) ? "packed" : "split");
  Report("vioguest", r);
  std::printf("result device=blk op=%s bs=%" PRIu64 " qd=%u iops=%.0f mbps=%.1f\n", pat.c_str(), bs, per_queue * queues,
              r.ops / r.seconds, r.bytes / r.seconds / 1e6);
  for (auto& v : slots)
    for (auto& s : v) blk.FreeBuffer(s.buf);
  return 0;
}

int Blk(Guest& g, const Args& a) {
  if (a.positional.size() < 2) Usage("blk needs a command: info, read, write, verify, flush, bench");
  const std::string& cmd = a.positional[1];
  BlkDriver blk(*g.transport);
  BlkDriverOptions o;
  o.ring_features = g.ring_features;
  o.num_queues = static_cast<uint16_t>(Size(a, "queues", 1));
  o.wait = g.wait;
  if (absl::Status s = blk.Init(o); !s.ok()) Fail(s, "blk init");
  const BlkInfo& info = blk.info();
  if (cmd == "info") {
    auto id = blk.GetId();
    std::printf("capacity   %" PRIu64 " sectors (%" PRIu64 " bytes)\n", info.capacity_sectors, info.capacity_sectors * 512);
    std::printf("block size %u\nqueues     %u\nseg_max    %u\nsize_max   %u\n", info.blk_size, info.num_queues,
                info.seg_max, info.size_max);
    std::printf("read-only  %s\nflush      %s\ndiscard    %s\nwrite-zero %s\n", info.read_only ? "yes" : "no",
                info.flush ? "yes" : "no", info.discard ? "yes" : "no", info.write_zeroes ? "yes" : "no");
    std::printf("features   0x%016" PRIx64 "\nid         %s\n", info.features, id.ok() ? id->c_str() : "(none)");
    return 0;
  }
  if (cmd == "flush") {
    if (absl::Status s = blk.Flush(); !s.ok()) Fail(s, "flush");
    std::printf("flushed\n");
    return 0;
  }
  if (cmd == "read" || cmd == "write" || cmd == "verify") return BlkTransfer(g, blk, o, a, cmd);
  if (cmd == "bench") return BlkBench(g, blk, a);
  Usage(absl::StrCat("unknown blk command '", cmd, "'"));
}


// ---- net -------------------------------------------------------------------

// A test frame: Ethernet (EtherType 0x88b5, local experimental), then
// seed (8 bytes), sequence number (4), frame size (4) and pattern bytes
// from (seed, sequence) for the rest. `net bench` stamps its frames with
// the sending time (BenchStamp), and with --tso sends IPv4/TCP frames for
// the device to segment (BenchTsoFrame).
constexpr uint16_t kTestEtherType = 0x88b5;
constexpr size_t kTestHeader = 14 + 16;

void PutBe(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * (bytes - 1 - i)));
}
uint64_t GetBe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | p[i];
  return v;
}

net::Frame TestFrame(net::Mac dst, net::Mac src, uint64_t seed, uint32_t seq, size_t size) {
  net::Frame f;
  f.data.resize(size);
  uint8_t* d = f.data.data();
  net::MacToBytes(dst, d);
  net::MacToBytes(src, d + 6);
  PutBe(d + 12, kTestEtherType, 2);
  PutBe(d + 14, seed, 8);
  PutBe(d + 22, seq, 4);
  PutBe(d + 26, size, 4);
  pattern::Fill(seed ^ (uint64_t{seq} << 32), 0, {d + kTestHeader, size - kTestHeader});
  return f;
}

// Checks a received test frame; returns its sequence number, or -1 if it
// is not one of ours (another seed, another protocol), or -2 if it is ours
// and damaged.
int64_t CheckTestFrame(const net::Frame& f, uint64_t seed) {
  const auto& d = f.data;
  if (d.size() < kTestHeader || GetBe(&d[12], 2) != kTestEtherType || GetBe(&d[14], 8) != seed) return -1;
  const uint32_t seq = static_cast<uint32_t>(GetBe(&d[22], 4));
  if (GetBe(&d[26], 4) != d.size()) return -2;
  if (pattern::FirstMismatch(seed ^ (uint64_t{seq} << 32), 0, {d.data() + kTestHeader, d.size() - kTestHeader}) >= 0) return -2;
  return seq;
}


// ---- net bench frames --------------------------------------------------------

// CLOCK_MONOTONIC in ns: one clock for every process on this machine, so a
// receiver can time a frame a sender stamped.
uint64_t MonoNs() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Where a bench frame carries its send time: after the test header of a
// test frame; at the start of every MSS-sized piece of a TSO frame's TCP
// payload, so each segment a port cuts from it is stamped too.
constexpr size_t kStampAt = kTestHeader;
constexpr size_t kTsoHeaders = 14 + 20 + 20;  // Ethernet, IPv4, TCP (no options)

uint16_t Fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}
uint32_t Sum16(const uint8_t* p, size_t n, uint32_t sum = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += (uint32_t{p[i]} << 8) | p[i + 1];
  if (n & 1) sum += uint32_t{p[n - 1]} << 8;
  return sum;
}

// An IPv4/TCP frame of `payload` bytes for the device to cut into `mss`
// segments (§5.1.6.2: NEEDS_CSUM with the pseudo-header sum in place,
// GSO_TCPV4, gso_size, hdr_len).
net::Frame BenchTsoFrame(net::Mac dst, net::Mac src, size_t payload, uint16_t mss, uint32_t seq) {
  net::Frame f;
  f.data.assign(kTsoHeaders + payload, 0);
  uint8_t* d = f.data.data();
  net::MacToBytes(dst, d);
  net::MacToBytes(src, d + 6);
  PutBe(d + 12, 0x0800, 2);
  uint8_t* ip = d + 14;
  ip[0] = 0x45;
  PutBe(ip + 2, 20 + 20 + payload, 2);
  PutBe(ip + 6, 0x4000, 2);  // DF
  ip[8] = 64;
  ip[9] = 6;
  PutBe(ip + 12, 0x0a590001, 4);  // 10.89.0.1 -> 10.89.0.2: never routed, the switch only looks at MACs
  PutBe(ip + 16, 0x0a590002, 4);
  PutBe(ip + 10, static_cast<uint16_t>(~Fold(Sum16(ip, 20))), 2);
  uint8_t* tcp = ip + 20;
  PutBe(tcp, 40001, 2);
  PutBe(tcp + 2, 5201, 2);
  PutBe(tcp + 4, seq, 4);
  tcp[12] = 5 << 4;
  tcp[13] = 0x18;  // PSH, ACK
  PutBe(tcp + 14, 0xffff, 2);
  pattern::Fill(seq, 0, {tcp + 20, payload});
  // The pseudo-header sum, not complemented: the device completes it.
  uint32_t ph = Sum16(ip + 12, 8);
  ph += 6 + 20 + static_cast<uint32_t>(payload);
  PutBe(tcp + 16, Fold(ph), 2);
  f.hdr.flags = net::kHdrFlagNeedsCsum;
  f.hdr.gso_type = net::kGsoTcpV4;
  f.hdr.gso_size = mss;
  f.hdr.hdr_len = kTsoHeaders;
  f.hdr.csum_start = 14 + 20;
  f.hdr.csum_offset = 16;
  return f;
}

void BenchStamp(net::Frame& f, uint64_t now, uint16_t mss) {
  if (f.hdr.gso_type == net::kGsoNone) {
    PutBe(f.data.data() + kStampAt, now, 8);
    return;
  }
  for (size_t at = kTsoHeaders; at + 8 <= f.data.size(); at += mss) PutBe(f.data.data() + at, now, 8);
}

// The send time of a frame a bench sender stamped; 0 if it is not one.
uint64_t BenchStampOf(const net::Frame& f) {
  const auto& d = f.data;
  if (d.size() >= kStampAt + 8 && GetBe(&d[12], 2) == kTestEtherType) return GetBe(&d[kStampAt], 8);
  if (d.size() >= kTsoHeaders + 8 && GetBe(&d[12], 2) == 0x0800 && d[14 + 9] == 6) return GetBe(&d[kTsoHeaders], 8);
  return 0;
}

int Net(Guest& g, const Args& a) {
  if (a.positional.size() < 2) Usage("net needs a command: info, send, recv, echo, pingpong, tap, bench");
  const std::string& cmd = a.positional[1];
  NetDriver nd(*g.transport);
  NetDriverOptions o;
  o.pairs = static_cast<uint16_t>(Size(a, "pairs", 1));
  o.offloads = !a.flags.count("no-offloads");
  o.mrg_rxbuf = !a.flags.count("no-mrg-rxbuf");
  o.queue_size = static_cast<uint32_t>(Size(a, "queue-size", 256));
  o.wait = g.wait;
  if (absl::Status s = nd.Init(g.ring_features, o); !s.ok()) Fail(s, "net init");
  const uint16_t pairs = nd.pairs();
  if (cmd == "info") {
    auto link = nd.LinkUp();
    if (!link.ok()) Fail(link.status(), "net config");
    std::printf("mac %s\nmtu %u\nlink %s\nqueue pairs %u of %u\nfeatures 0x%" PRIx64 "\n", net::MacString(nd.mac()).c_str(),
                nd.mtu(), *link ? "up" : "down", pairs, nd.max_pairs(), nd.driver().features());
    return 0;
  }
  const uint64_t seed = Size(a, "seed", 1);
  const uint64_t count = Size(a, "count", 1000);
  const bool tso = cmd == "bench" && a.flags.count("tso");
  const size_t size = Size(a, "size", tso ? 63000 : 64);
  if (tso && (size < 64 || size > 65535 - 40)) Usage("--size with --tso is the TCP payload: 64..65495");
  if (!tso && (size < 64 || size > 9216)) Usage("--size must be 64..9216");
  const absl::Duration timeout = absl::Seconds(static_cast<int64_t>(Size(a, "timeout", 30)));
  if (cmd == "send") {
    net::Mac dst = net::kBroadcast;
    if (a.opts.count("dst") && !net::ParseMac(a.opts.at("dst"), &dst)) Usage("--dst: not a MAC address");
    net::Mac src = nd.mac();
    if (a.opts.count("src") && !net::ParseMac(a.opts.at("src"), &src)) Usage("--src: not a MAC address");
    const absl::Time start = absl::Now();
    const uint64_t rate = Size(a, "rate", 0);
    uint64_t sent = 0, bytes = 0;
    std::vector<net::Frame> batch;
    while (sent < count) {
      if (rate > 0) {
        // Pace: no further ahead than the rate allows.
        const absl::Time due = start + absl::Seconds(static_cast<double>(sent) / rate);
        while (absl::Now() < due) absl::SleepFor(std::min(due - absl::Now(), absl::Milliseconds(1)));
      }
      batch.clear();
      for (uint64_t i = sent; i < count && batch.size() < 32; ++i)
        batch.push_back(TestFrame(dst, src, seed, static_cast<uint32_t>(i), size));
      // Spread over the pairs by sequence blocks (a receiver's order per pair is kept).
      const uint16_t pair = static_cast<uint16_t>((sent / 32) % pairs);
      auto n = nd.Send(pair, batch);
      if (!n.ok()) Fail(n.status(), "net send");
      sent += *n;
      bytes += *n * size;
    }
    for (uint16_t p = 0; p < pairs; ++p)
      if (absl::Status s = nd.FlushTx(p); !s.ok()) Fail(s, "net send");
    const double secs = Seconds(start);
    std::printf("result device=net op=send frames=%" PRIu64 " bytes=%" PRIu64 " seconds=%.3f pps=%.0f\n", sent, bytes, secs,
                sent / std::max(secs, 1e-9));
    return 0;
  }
  if (cmd == "recv") {
    std::vector<bool> seen(count, false);
    uint64_t got = 0, damaged = 0, repeated = 0, beyond = 0, other = 0, bytes = 0;
    const absl::Time start = absl::Now();
    const absl::Time deadline = start + timeout;
    std::vector<net::Frame> frames;
    uint16_t pair = 0;
    while (got < count && absl::Now() < deadline) {
      frames.clear();
      // Every pair without waiting; wait (briefly, with several pairs) only
      // when none had anything.
      for (uint16_t p = 0; p < pairs; ++p) {
        auto n = nd.Recv(p, &frames, 256, absl::ZeroDuration());
        if (!n.ok()) Fail(n.status(), "net recv");
      }
      if (frames.empty()) {
        auto n = nd.Recv(pair, &frames, 256, pairs > 1 ? absl::Milliseconds(1) : deadline - absl::Now());
        if (!n.ok()) Fail(n.status(), "net recv");
        pair = static_cast<uint16_t>((pair + 1) % pairs);
      }
      for (const net::Frame& f : frames) {
        const int64_t seq = CheckTestFrame(f, seed);
        if (seq == -1) { ++other; continue; }
        if (seq == -2) { ++damaged; continue; }
        if (static_cast<uint64_t>(seq) >= count) { ++beyond; continue; }
        if (seen[seq]) { ++repeated; continue; }
        seen[seq] = true;
        ++got;
        bytes += f.data.size();
      }
    }
    const double secs = Seconds(start);
    const bool ok = got == count && damaged == 0 && repeated == 0 && beyond == 0;
    std::printf("net received %" PRIu64 " of %" PRIu64 " test frames (%" PRIu64 " damaged, %" PRIu64 " repeated, %" PRIu64
                " out of range), %" PRIu64 " other frames, %" PRIu64 " driver rx errors\n",
                got, count, damaged, repeated, beyond, other, nd.rx_errors());
    std::printf("result device=net op=recv frames=%" PRIu64 " bytes=%" PRIu64 " seconds=%.3f verified=%s\n", got, bytes, secs,
                ok ? "yes" : "no");
    return ok ? 0 : 1;
  }
  if (cmd == "echo") {
    // A reflector, like testpmd's macswap: every frame goes back out with
    // its MAC addresses swapped.
    const double secs_wanted = static_cast<double>(Size(a, "time", 10));
    const absl::Time end = absl::Now() + absl::Seconds(secs_wanted);
    std::vector<net::Frame> frames;
    uint64_t echoed = 0;
    uint16_t pair = 0;
    while (absl::Now() < end) {
      frames.clear();
      auto n = nd.Recv(pair, &frames, 64, absl::Milliseconds(20));
      if (!n.ok()) Fail(n.status(), "net echo");
      for (net::Frame& f : frames) {
        if (f.data.size() < 12) continue;
        uint8_t tmp[6];
        std::memcpy(tmp, f.data.data(), 6);
        std::memcpy(f.data.data(), f.data.data() + 6, 6);
        std::memcpy(f.data.data() + 6, tmp, 6);
        f.hdr = net::Hdr{};  // whole, checksummed frames: no offload asked
      }
      size_t done = 0;
      while (done < frames.size()) {
        auto s = nd.Send(pair, std::span<const net::Frame>(frames).subspan(done));
        if (!s.ok()) Fail(s.status(), "net echo");
        done += *s;
      }
      echoed += frames.size();
      pair = static_cast<uint16_t>((pair + 1) % pairs);
    }
    std::printf("result device=net op=echo frames=%" PRIu64 "\n", echoed);
    return 0;
  }
  if (cmd == "pingpong") {
    // One test frame at a time to --dst, which sends it back (vioguest net
    // echo, testpmd macswap); each answer checked, round trips timed.
    net::Mac dst = net::kBroadcast;
    if (!a.opts.count("dst") || !net::ParseMac(a.opts.at("dst"), &dst)) Usage("net pingpong needs --dst MAC");
    std::vector<double> rtt_us;
    uint64_t damaged = 0, lost = 0;
    std::vector<net::Frame> frames;
    const absl::Time start = absl::Now();
    for (uint64_t i = 0; i < count; ++i) {
      net::Frame f = TestFrame(dst, nd.mac(), seed, static_cast<uint32_t>(i), size);
      const absl::Time t0 = absl::Now();
      auto s = nd.Send(0, std::span<const net::Frame>(&f, 1));
      if (!s.ok()) Fail(s.status(), "net pingpong");
      bool back = false;
      const absl::Time deadline = t0 + absl::Seconds(1);
      while (!back && absl::Now() < deadline) {
        frames.clear();
        auto n = nd.Recv(0, &frames, 16, deadline - absl::Now());
        if (!n.ok()) Fail(n.status(), "net pingpong");
        for (const net::Frame& r : frames) {
          const int64_t seq = CheckTestFrame(r, seed);
          if (seq == -2) ++damaged;
          if (seq == static_cast<int64_t>(i)) back = true;
        }
      }
      if (!back) {
        ++lost;
        continue;
      }
      rtt_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
    }
    const double secs = Seconds(start);
    std::sort(rtt_us.begin(), rtt_us.end());
    auto pct = [&](double p) { return rtt_us.empty() ? 0.0 : rtt_us[std::min(rtt_us.size() - 1, static_cast<size_t>(p * rtt_us.size()))]; };
    const bool ok = lost == 0 && damaged == 0;
    std::printf("result device=net op=pingpong frames=%zu lost=%" PRIu64 " damaged=%" PRIu64
                " seconds=%.3f p50_us=%.1f p99_us=%.1f max_us=%.1f verified=%s\n",
                rtt_us.size(), lost, damaged, secs, pct(0.5), pct(0.99), rtt_us.empty() ? 0.0 : rtt_us.back(),
                ok ? "yes" : "no");
    return ok ? 0 : 1;
  }
  if (cmd == "tap") {
    // The driver joined to a local tap interface: frames the host sends
    // into the tap go out through the device, frames from the device come
    // out of the tap, offload headers included, so real tools (ping,
    // iperf3) run over vioport's virtio-net on any transport.
    if (!a.opts.count("ifname")) Usage("net tap needs --ifname NAME");
    const std::string ifname = a.opts.at("ifname");
    const int fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) Fail(absl::UnavailableError(absl::StrCat("/dev/net/tun: ", std::strerror(errno))), "net tap");
    struct ifreq ifr {};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    std::snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname.c_str());
    int hdr = net::kHdrSize;
    if (::ioctl(fd, TUNSETIFF, &ifr) < 0 || ::ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0)
      Fail(absl::UnavailableError(absl::StrCat("tap ", ifname, ": ", std::strerror(errno))), "net tap");
    // What the host may hand us whole: what the device takes from us.
    namespace nf = net::feature;
    unsigned off = 0;
    if (nd.has(nf::kCsum)) {
      off |= TUN_F_CSUM;
      if (nd.has(nf::kHostTso4)) off |= TUN_F_TSO4;
      if (nd.has(nf::kHostTso6)) off |= TUN_F_TSO6;
      if (nd.has(nf::kHostEcn) && (nd.has(nf::kHostTso4) || nd.has(nf::kHostTso6))) off |= TUN_F_TSO_ECN;
    }
    if (::ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(off)) < 0)
      Fail(absl::UnavailableError(absl::StrCat("tap ", ifname, ": TUNSETOFFLOAD: ", std::strerror(errno))), "net tap");
    std::fprintf(stderr, "vioguest: tap %s joined to the device (mac %s), offloads 0x%x; SIGINT ends\n", ifname.c_str(),
                 net::MacString(nd.mac()).c_str(), off);
    static volatile sig_atomic_t stop = 0;
    ::signal(SIGINT, [](int) { stop = 1; });
    ::signal(SIGTERM, [](int) { stop = 1; });
    const double secs_wanted = static_cast<double>(Size(a, "time", 0));
    const absl::Time end = secs_wanted > 0 ? absl::Now() + absl::Seconds(secs_wanted) : absl::InfiniteFuture();
    std::vector<uint8_t> buf(net::kHdrSize + net::kMaxGsoFrame + 64);
    std::vector<net::Frame> out, in;
    uint64_t to_dev = 0, from_dev = 0, bad = 0;
    while (!stop && absl::Now() < end) {
      out.clear();
      while (out.size() < 32) {
        const ssize_t r = ::read(fd, buf.data(), buf.size());
        if (r < static_cast<ssize_t>(net::kHdrSize + net::kEthHeader)) break;
        net::Frame f;
        std::memcpy(&f.hdr, buf.data(), net::kHdrSize);
        f.hdr.flags &= static_cast<uint8_t>(~net::kHdrFlagDataValid);  // not a transmit flag
        f.hdr.num_buffers = 0;
        f.data.assign(buf.data() + net::kHdrSize, buf.data() + r);
        out.push_back(std::move(f));
      }
      size_t sent = 0;
      while (sent < out.size()) {
        auto n = nd.Send(0, std::span<const net::Frame>(out).subspan(sent));
        if (!n.ok()) Fail(n.status(), "net tap");
        sent += *n;
      }
      to_dev += sent;
      in.clear();
      auto n = nd.Recv(0, &in, 64, absl::ZeroDuration());
      if (!n.ok()) Fail(n.status(), "net tap");
      for (net::Frame& f : in) {
        f.hdr.num_buffers = 0;
        iovec iov[2] = {{&f.hdr, net::kHdrSize}, {f.data.data(), f.data.size()}};
        if (::writev(fd, iov, 2) < 0) ++bad;
        else ++from_dev;
      }
      if (out.empty() && in.empty()) {
        pollfd p{fd, POLLIN, 0};
        ::poll(&p, 1, 1);
      }
    }
    ::close(fd);
    std::printf("result device=net op=tap to_device=%" PRIu64 " from_device=%" PRIu64 " write_errors=%" PRIu64 "\n", to_dev,
                from_dev, bad);
    return 0;
  }
  if (cmd == "bench") {
    const std::string mode = a.opts.count("mode") ? a.opts.at("mode") : "tx";
    const double secs_wanted = static_cast<double>(Size(a, "time", 5));
    const uint64_t rate = Size(a, "rate", 0);
    uint64_t frames_done = 0, bytes = 0;
    // One-way latency of stamped frames (rx): every 8th frame, bounded.
    std::vector<float> lat_us;
    constexpr size_t kMaxSamples = 1 << 21;
    double rx_secs = 0;
    const absl::Time start = absl::Now();
    const absl::Time end = start + absl::Seconds(secs_wanted);
    if (mode == "tx") {
      const uint16_t mss = static_cast<uint16_t>(nd.mtu() - 40);
      if (tso && !nd.has(net::feature::kHostTso4)) Usage("--tso: the device did not offer HOST_TSO4 (or --no-offloads)");
      std::vector<net::Frame> batch;
      const size_t per_batch = tso ? 8 : 64;
      for (size_t i = 0; i < per_batch; ++i)
        batch.push_back(tso ? BenchTsoFrame(net::kBroadcast - 1, nd.mac(), size, mss, static_cast<uint32_t>(i * size))
                            : TestFrame(net::kBroadcast - 1, nd.mac(), seed, static_cast<uint32_t>(i), size));
      const size_t frame_bytes = batch[0].data.size();
      uint16_t pair = 0;
      while (absl::Now() < end) {
        if (rate > 0) {
          const absl::Time due = start + absl::Seconds(static_cast<double>(frames_done) / rate);
          while (absl::Now() < due) absl::SleepFor(std::min(due - absl::Now(), absl::Microseconds(200)));
        }
        const uint64_t now = MonoNs();
        for (net::Frame& f : batch) BenchStamp(f, now, mss);
        size_t done = 0;
        while (done < batch.size()) {
          auto n = nd.Send(pair, std::span<const net::Frame>(batch).subspan(done));
          if (!n.ok()) Fail(n.status(), "net bench");
          done += *n;
        }
        frames_done += batch.size();
        if (rate > 0 || frames_done % 1024 == 0) pair = static_cast<uint16_t>((pair + 1) % pairs);
      }
      for (uint16_t p = 0; p < pairs; ++p)
        if (absl::Status s = nd.FlushTx(p); !s.ok()) Fail(s, "net bench");
      bytes = frames_done * frame_bytes;
    } else if (mode == "rx") {
      std::vector<net::Frame> frames;
      uint16_t pair = 0;
      uint64_t n_seen = 0;
      // The sink's rate is over the time frames arrived (from the first
      // batch to the last), not the time it waited for a sender.
      uint64_t first_ns = 0, last_ns = 0;
      while (absl::Now() < end) {
        frames.clear();
        for (uint16_t p = 0; p < pairs; ++p) {
          auto n = nd.Recv(p, &frames, 256, absl::ZeroDuration());
          if (!n.ok()) Fail(n.status(), "net bench");
        }
        if (frames.empty()) {
          auto n = nd.Recv(pair, &frames, 256, absl::Milliseconds(pairs > 1 ? 1 : 50));
          if (!n.ok()) Fail(n.status(), "net bench");
          pair = static_cast<uint16_t>((pair + 1) % pairs);
        }
        if (frames.empty()) continue;
        const uint64_t now = MonoNs();
        if (frames_done == 0) first_ns = now;
        last_ns = now;
        for (const auto& f : frames) {
          bytes += f.data.size();
          if ((n_seen++ & 7) != 0 || lat_us.size() >= kMaxSamples) continue;
          const uint64_t sent = BenchStampOf(f);
          if (sent != 0 && sent <= now) lat_us.push_back(static_cast<float>((now - sent) / 1e3));
        }
        frames_done += frames.size();
      }
      if (frames_done > 1 && last_ns > first_ns) rx_secs = static_cast<double>(last_ns - first_ns) / 1e9;
    } else {
      Usage("--mode must be tx or rx");
    }
    const double secs = rx_secs > 0 ? rx_secs : Seconds(start);
    std::string lat;
    if (!lat_us.empty()) {
      std::sort(lat_us.begin(), lat_us.end());
      auto pct = [&](double p) { return lat_us[std::min(lat_us.size() - 1, static_cast<size_t>(p * lat_us.size()))]; };
      lat = absl::StrFormat(" lat_samples=%zu p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f", lat_us.size(), pct(0.5),
                            pct(0.99), pct(0.999), lat_us.back());
    }
    std::printf("result device=net op=bench-%s frames=%" PRIu64 " bytes=%" PRIu64 " seconds=%.3f pps=%.0f gbps=%.3f%s\n",
                mode.c_str(), frames_done, bytes, secs, frames_done / std::max(secs, 1e-9),
                bytes * 8 / std::max(secs, 1e-9) / 1e9, lat.c_str());
    return 0;
  }
  Usage(absl::StrCat("unknown net command '", cmd, "'"));
}

// ---- rng, console ------------------------------------------------------------

int Rng(Guest& g, const Args& a) {
  RngDriver rng(*g.transport);
  if (absl::Status s = rng.Init(g.ring_features, g.wait); !s.ok()) Fail(s, "rng init");
  const uint64_t len = Size(a, "length", 4096);
  std::vector<uint8_t> buf(len);
  const absl::Time start = absl::Now();
  if (absl::Status s = rng.Read({buf.data(), buf.size()}); !s.ok()) Fail(s, "rng read");
  const double secs = Seconds(start);
  if (a.opts.count("out")) {
    FILE* f = std::fopen(a.opts.at("out").c_str(), "wb");
    if (!f || std::fwrite(buf.data(), 1, buf.size(), f) != buf.size()) Usage(absl::StrCat("--out ", a.opts.at("out")));
    std::fclose(f);
  }
  // A sanity look at the bytes: all 256 values should appear in a long read.
  bool seen[256] = {};
  for (uint8_t b : buf) seen[b] = true;
  const int distinct = static_cast<int>(std::count(std::begin(seen), std::end(seen), true));
  const bool plausible = len < 4096 || distinct == 256;
  std::printf("rng %" PRIu64 " bytes in %.3f s (%.1f MB/s), %d distinct byte values\n", len, secs, len / std::max(secs, 1e-9) / 1e6,
              distinct);
  std::printf("result device=rng op=read bytes=%" PRIu64 " seconds=%.3f mbps=%.1f verified=%s\n", len, secs,
              len / std::max(secs, 1e-9) / 1e6, plausible ? "yes" : "no");
  return plausible ? 0 : 1;
}

int Console(Guest& g, const Args& a) {
  ConsoleDriver con(*g.transport);
  if (absl::Status s = con.Init(g.ring_features, g.wait); !s.ok()) Fail(s, "console init");
  const absl::Duration timeout = absl::Seconds(static_cast<int64_t>(Size(a, "timeout", 10)));
  if (a.opts.count("send") || a.opts.count("expect")) {
    const absl::Time start = absl::Now();
    uint64_t bytes = 0;
    if (a.opts.count("send")) {
      const std::string& t = a.opts.at("send");
      if (absl::Status s = con.Write({reinterpret_cast<const uint8_t*>(t.data()), t.size()}); !s.ok()) Fail(s, "console write");
      bytes += t.size();
    }
    bool matched = true;
    if (a.opts.count("expect")) {
      const std::string& want = a.opts.at("expect");
      std::string got;
      const absl::Time deadline = absl::Now() + timeout;
      uint8_t buf[4096];
      while (got.find(want) == std::string::npos) {
        const absl::Duration left = deadline - absl::Now();
        if (left <= absl::ZeroDuration()) break;
        auto n = con.Read(buf, left);
        if (!n.ok()) {
          if (absl::IsDeadlineExceeded(n.status())) break;
          Fail(n.status(), "console read");
        }
        got.append(reinterpret_cast<char*>(buf), *n);
        bytes += *n;
      }
      matched = got.find(want) != std::string::npos;
      std::printf("console received %zu bytes%s\n", got.size(), matched ? ", expected text seen" : ", expected text NOT seen");
    }
    const double secs = Seconds(start);
    std::printf("result device=console op=echo bytes=%" PRIu64 " seconds=%.3f mbps=%.3f verified=%s\n", bytes, secs,
                bytes / std::max(secs, 1e-9) / 1e6, matched ? "yes" : "no");
    return matched ? 0 : 1;
  }
  // Interactive: stdin -> port, port -> stdout, until stdin closes.
  ::fcntl(STDIN_FILENO, F_SETFL, ::fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);
  uint8_t buf[4096];
  for (;;) {
    const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n == 0) break;
    if (n > 0) {
      if (absl::Status s = con.Write({buf, static_cast<size_t>(n)}); !s.ok()) Fail(s, "console write");
    }
    auto got = con.Read(buf, absl::Milliseconds(20));
    if (got.ok()) {
      if (::write(STDOUT_FILENO, buf, *got) < 0) break;
    } else if (!absl::IsDeadlineExceeded(got.status())) {
      Fail(got.status(), "console read");
    }
  }
  return 0;
}

int Main(int argc, char** argv) {
  RegisterBuiltinTransports();
  Args a = Parse(argc, argv);
  if (a.flags.count("help") || a.positional.empty()) {
    std::fputs(UsageText().c_str(), a.positional.empty() && !a.flags.count("help") ? stderr : stdout);
    return a.flags.count("help") ? 0 : 2;
  }
  LogLevel level = LogLevel::kWarning;
  if (a.opts.count("log-level") && !ParseLogLevel(a.opts.at("log-level"), &level))
    Usage(absl::StrCat("--log-level ", a.opts.at("log-level")));
  SetLogLevel(level);
  const std::string& dev = a.positional[0];
  if (dev != "blk" && dev != "rng" && dev != "console" && dev != "net" && dev != "vsock")
    Usage(absl::StrCat("unknown device '", dev, "' (blk, net, vsock, rng, console)"));
  Guest g = Connect(a, dev);
  if (dev == "blk") return Blk(g, a);
  if (dev == "net") return Net(g, a);
  if (dev == "vsock") return Vsock(g, a);
  if (dev == "rng") return Rng(g, a);
  return Console(g, a);
}

}  // namespace vioport::vioguest

int main(int argc, char** argv) { return vioport::vioguest::Main(argc, argv); }
