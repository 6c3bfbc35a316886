// SPDX-License-Identifier: Apache-2.0
#include "bench_support.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstring>
#include <mutex>

#include "vioport/core/inflight_log.h"
#include "vioport/core/packed_device_queue.h"
#include "vioport/core/spec.h"
#include "vioport/core/split_device_queue.h"

namespace vioport::bench {

// ---------------------------------------------------------------------------
// Samples

void Samples::Record(int64_t iterations, double x) {
  if (!v_.empty() && iterations > last_iterations_)
    v_.back() = x;
  else
    v_.push_back(x);
  last_iterations_ = iterations;
}

double Samples::Median() const {
  if (v_.empty()) return 0;
  std::vector<double> s = v_;
  std::sort(s.begin(), s.end());
  const size_t n = s.size();
  return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

double Samples::Min() const { return v_.empty() ? 0 : *std::min_element(v_.begin(), v_.end()); }
double Samples::Max() const { return v_.empty() ? 0 : *std::max_element(v_.begin(), v_.end()); }

// ---------------------------------------------------------------------------
// Machine limits

MachineLimits& Limits() {
  static MachineLimits limits;
  return limits;
}

const MachineLimits& EnsureLimits() {
  MachineLimits& m = Limits();
  auto quick = [&](Samples& v, auto measure) {
    if (!v.empty()) return;
    v.Record(0, measure());
    m.quick = true;
  };
  quick(m.memcpy_gbps_4k, [] { return MemcpyBytesPerSec(4 << 10, 0.05) / 1e9; });
  quick(m.memcpy_gbps_64k, [] { return MemcpyBytesPerSec(64 << 10, 0.05) / 1e9; });
  quick(m.memcpy_gbps_1m, [] { return MemcpyBytesPerSec(1 << 20, 0.05) / 1e9; });
  quick(m.cacheline_rt_ns, [] { return CachelineRoundTripNs(200000); });
  quick(m.eventfd_rt_us, [] { return EventfdRoundTripUs(2000, /*blocking=*/true); });
  quick(m.eventfd_spin_rt_us, [] { return EventfdRoundTripUs(20000, /*blocking=*/false); });
  quick(m.eventfd_local_us, [] { return EventfdLocalUs(100000); });
  return m;
}

// ---------------------------------------------------------------------------
// Threads

namespace {
struct CpuPlan {
  bool pin = false;
  int cpu[2] = {0, 0};
};

const CpuPlan& Plan() {
  static const CpuPlan plan = [] {
    CpuPlan p;
    const char* env = std::getenv("VIOPORT_BENCH_PIN");
    if (env && std::strcmp(env, "0") == 0) return p;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return p;
    int found = 0;
    for (int c = 0; c < CPU_SETSIZE && found < 2; ++c)
      if (CPU_ISSET(c, &set)) p.cpu[found++] = c;
    p.pin = found == 2;
    return p;
  }();
  return plan;
}
}  // namespace

bool PinningEnabled() { return Plan().pin; }

bool PauseInPolls() {
  static const bool pause = [] {
    const char* env = std::getenv("VIOPORT_BENCH_PAUSE");
    return env && std::strcmp(env, "1") == 0;
  }();
  return pause;
}

void PinThisThread(int which) {
  const CpuPlan& p = Plan();
  if (!p.pin) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(p.cpu[which & 1], &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

void Die(const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  std::fputs("vioport_bench: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
  std::abort();
}

// ---------------------------------------------------------------------------
// Rig

const char* Name(Ring r) { return r == Ring::kSplit ? "split" : "packed"; }
const char* Name(Mem m) { return m == Mem::kMapped ? "mapped" : "copyonly"; }
const char* Name(Chain c) {
  switch (c) {
    case Chain::k1: return "1desc";
    case Chain::k4: return "4desc";
    case Chain::k4Indirect: return "4desc_indirect";
  }
  return "?";
}

namespace {
constexpr uint64_t kGuestBase = 0x40000000;
constexpr size_t kHostBytes = 8 << 20;
constexpr size_t kSlotBytes = 2048;  // data buffers of one chain
}  // namespace

Rig::Rig(const RigOptions& o) : opts_(o) {
  host_size_ = kHostBytes;
  host_ = static_cast<uint8_t*>(std::aligned_alloc(4096, host_size_));
  if (!host_) Die("out of memory");
  std::memset(host_, 0, host_size_);
  dma_ = std::make_unique<BufferDmaAllocator>(host_, kGuestBase, host_size_);

  uint64_t features = feature::Bit(feature::kVersion1) | feature::Bit(feature::kEventIdx);
  if (o.ring == Ring::kPacked) features |= feature::Bit(feature::kRingPacked);
  if (o.chain == Chain::k4Indirect) features |= feature::Bit(feature::kIndirectDesc);

  DriverQueueOptions dopts;
  dopts.size = o.queue_size;
  dopts.features = features;
  auto dq = DriverQueue::Create(dopts, *dma_);
  if (!dq.ok()) Die("DriverQueue::Create: %s", dq.status().ToString().c_str());
  driver_ = std::move(*dq);

  region_ = std::make_shared<RegionMemory>();
  if (absl::Status s = region_->AddRegion({kGuestBase, host_size_, host_, Access::kReadWrite}); !s.ok())
    Die("AddRegion: %s", s.ToString().c_str());
  GuestMemory* mem = region_.get();
  if (o.mem == Mem::kCopyOnly) {
    counting_ = std::make_shared<CountingMemory>(region_);
    copy_ = std::make_shared<CopyOnlyMemory>(counting_);
    mem = copy_.get();
  }
  QueueConfig cfg;
  cfg.size = o.queue_size;
  cfg.desc_addr = driver_->desc_addr();
  cfg.driver_addr = driver_->driver_addr();
  cfg.device_addr = driver_->device_addr();
  cfg.features = features;
  RingError e = DeviceQueue::Create(cfg, mem, [](uint16_t q, RingError err) {
    Die("device queue %u broke: %s", q, RingErrorName(err));
  }, &device_);
  if (e != RingError::kNone) Die("DeviceQueue::Create: %s", RingErrorName(e));
  if (o.inflight_log) {
    const uint16_t n = static_cast<uint16_t>(o.queue_size);
    absl::Status s;
    if (auto* split = dynamic_cast<SplitDeviceQueue*>(device_.get())) {
      log_mem_.assign(SplitInflightLog::RegionBytes(n), 0);
      auto log = std::make_shared<SplitInflightLog>(log_mem_.data(), n);
      s = split->UseInflightLog(log.get());
      log_ = log;
    } else if (auto* packed = dynamic_cast<PackedDeviceQueue*>(device_.get())) {
      log_mem_.assign(PackedInflightLog::RegionBytes(n), 0);
      auto log = std::make_shared<PackedInflightLog>(log_mem_.data(), n);
      s = packed->UseInflightLog(log.get());
      log_ = log;
    }
    if (!s.ok()) Die("in-flight log: %s", s.ToString().c_str());
  }

  // Data buffers. The device does not touch them (the suite measures the
  // rings), but every chain names its own, as a real driver's would.
  bufs_per_chain_ = o.chain == Chain::k1 ? 1 : 4;
  descs_per_chain_ = o.chain == Chain::k4 ? 4 : 1;
  bufs_.reserve(kPool * bufs_per_chain_);
  for (size_t i = 0; i < kPool; ++i) {
    auto b = dma_->Allocate(kSlotBytes, 64, Access::kReadWrite);
    if (!b.ok()) Die("data buffer: %s", b.status().ToString().c_str());
    const uint64_t a = b->device_addr;
    if (o.chain == Chain::k1) {
      bufs_.push_back({a, 1536, true});  // one device-writable buffer (a net rx buffer)
    } else {
      // blk-like: header and data out, data and status in.
      bufs_.push_back({a, 16, false});
      bufs_.push_back({a + 64, 512, false});
      bufs_.push_back({a + 640, 512, true});
      bufs_.push_back({a + 1216, 1, true});
    }
  }
}

Rig::~Rig() {
  device_.reset();
  driver_.reset();
  dma_.reset();
  std::free(host_);
}

// ---------------------------------------------------------------------------
// CPU accounting

namespace {
struct CpuSnapshot {
  bool ok = false;
  double busy_s = 0, steal_s = 0, self_s = 0;
  Clock::time_point when;
};

CpuSnapshot TakeCpuSnapshot() {
  CpuSnapshot c;
  c.when = Clock::now();
  FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return c;
  unsigned long long v[8] = {};  // user nice system idle iowait irq softirq steal
  const int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                            &v[5], &v[6], &v[7]);
  std::fclose(f);
  if (n < 7) return c;
  const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
  c.busy_s = static_cast<double>(v[0] + v[1] + v[2] + v[5] + v[6]) / hz;
  c.steal_s = static_cast<double>(v[7]) / hz;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  c.self_s = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
             static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  c.ok = true;
  return c;
}

CpuSnapshot g_cpu_start;
}  // namespace

void StartCpuAccounting() { g_cpu_start = TakeCpuSnapshot(); }

// ---------------------------------------------------------------------------
// Ratios and summary

namespace {
struct Row {
  std::string name;
  Samples chains_per_sec, copies_per_chain, bytes_per_chain, local_clrt_ns;
  bool copy_only = false;
  int target_mchains = 0;
};
std::mutex g_rows_mu;
std::vector<Row>& Rows() {
  static std::vector<Row> rows;
  return rows;
}
}  // namespace

void ReportRing(benchmark::State& state, RingResult r) {
  const MachineLimits& m = EnsureLimits();
  const double ns = r.ns_per_chain;
  const double gbps = m.memcpy_gbps_4k.Median(), efd = m.eventfd_rt_us.Median();
  const double cl = r.local_clrt_ns > 0 ? r.local_clrt_ns : m.cacheline_rt_ns.Median();
  state.counters["ns_chain"] = ns;
  // Chain cost in units of one cross-core cache-line round trip.
  state.counters["x_clrt"] = ns / cl;
  // Chain cost in units of one hot 4 KiB memcpy.
  state.counters["x_cp4k"] = ns / (4096.0 / gbps);
  // Chains handled in the time of one blocking eventfd round trip.
  state.counters["per_efd_rt"] = efd * 1000.0 / ns;
  if (r.copies_per_chain >= 0) {
    state.counters["copies"] = r.copies_per_chain;
    state.counters["cp_bytes"] = r.bytes_per_chain;
    // Chain cost in units of a memcpy of the bytes it copied (4 KiB bandwidth).
    if (r.bytes_per_chain > 0) state.counters["x_memcpy"] = ns / (r.bytes_per_chain / gbps);
  }
  std::lock_guard<std::mutex> l(g_rows_mu);
  Row* row = nullptr;
  for (Row& x : Rows())
    if (x.name == r.name) row = &x;
  if (!row) {
    Rows().push_back(Row{});
    row = &Rows().back();
    row->name = r.name;
  }
  row->target_mchains = r.target_mchains;
  row->copy_only = r.copies_per_chain >= 0;
  const int64_t iters = state.iterations();
  row->chains_per_sec.Record(iters, r.chains_per_sec);
  if (r.local_clrt_ns > 0) row->local_clrt_ns.Record(iters, r.local_clrt_ns);
  if (row->copy_only) {
    row->copies_per_chain.Record(iters, r.copies_per_chain);
    row->bytes_per_chain.Record(iters, r.bytes_per_chain);
  }
}

void PrintSummary(FILE* out) {
  const MachineLimits& m = Limits();
  std::lock_guard<std::mutex> l(g_rows_mu);
  if (Rows().empty()) return;
  const double cl = m.cacheline_rt_ns.Median(), gbps = m.memcpy_gbps_4k.Median(), efd = m.eventfd_rt_us.Median();
  const size_t reps = Rows().front().chains_per_sec.size();
  const CpuSnapshot end = TakeCpuSnapshot();
  if (g_cpu_start.ok && end.ok) {
    const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    const double cpu_s = Seconds(end.when - g_cpu_start.when) * static_cast<double>(ncpu);
    const double others = (end.busy_s - g_cpu_start.busy_s) - (end.self_s - g_cpu_start.self_s);
    std::fprintf(out, "\nCPU time taken by other processes during the run: %.1f%% of %ld CPUs (steal %.1f%%)%s\n",
                 100.0 * std::max(0.0, others) / cpu_s, ncpu, 100.0 * (end.steal_s - g_cpu_start.steal_s) / cpu_s,
                 others / cpu_s > 0.05 ? " -- the run shared its CPUs; do not use its numbers" : "");
  }
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    char load[128] = "";
    if (std::fgets(load, sizeof load, f)) std::fprintf(out, "\nLoad average at the end of the run: %s", load);
    std::fclose(f);
  }
  std::fprintf(out, "\nMachine limits used for the ratios (this run, median of %zu%s; pinned threads: %s):\n",
               m.cacheline_rt_ns.size(), m.quick ? ", some from the quick inline measurement" : "",
               PinningEnabled() ? "yes" : "no");
  std::fprintf(out, "  memcpy 4 KiB / 64 KiB / 1 MiB : %.1f / %.1f / %.1f GB/s\n", gbps,
               m.memcpy_gbps_64k.Median(), m.memcpy_gbps_1m.Median());
  std::fprintf(out, "  cache-line round trip         : %.1f ns (min %.1f, max %.1f)\n", cl, m.cacheline_rt_ns.Min(),
               m.cacheline_rt_ns.Max());
  std::fprintf(out, "  eventfd round trip, blocking  : %.2f us\n", efd);
  std::fprintf(out, "  eventfd round trip, spinning  : %.2f us\n", m.eventfd_spin_rt_us.Median());
  std::fprintf(out, "  eventfd write+read, 1 thread  : %.2f us\n", m.eventfd_local_us.Median());
  std::fprintf(out, "\nRing results, median of %zu run(s) each; range = min..max Mchains/s over the runs.\n", reps);
  std::fprintf(out, "x_clrt divides by the cache-line round trip in column clrt: for two-thread rows the one\n"
               "measured just before and after that benchmark's own runs, else the limits median.\n");
  std::fprintf(out, "%-50s %9s %13s %8s %6s %6s %6s %7s %6s %8s  %s\n", "ring benchmark", "Mchains/s", "range",
               "ns/chain", "clrt", "x_clrt", "x_cp4k", "per_efd", "copies", "cp_bytes", "target");
  for (const Row& r : Rows()) {
    const double cps = r.chains_per_sec.Median();
    const double ns = 1e9 / cps;
    const double rcl = r.local_clrt_ns.empty() ? cl : r.local_clrt_ns.Median();
    char copies[16] = "-", bytes[16] = "-", target[48] = "", range[32];
    std::snprintf(range, sizeof range, "%.1f..%.1f", r.chains_per_sec.Min() / 1e6, r.chains_per_sec.Max() / 1e6);
    if (r.copy_only) {
      std::snprintf(copies, sizeof copies, "%.3f", r.copies_per_chain.Median());
      std::snprintf(bytes, sizeof bytes, "%.1f", r.bytes_per_chain.Median());
    }
    if (r.target_mchains > 0)
      std::snprintf(target, sizeof target, ">= %d M/s: %s", r.target_mchains,
                    cps >= r.target_mchains * 1e6 ? "met" : "NOT met");
    std::fprintf(out, "%-50s %9.2f %13s %8.1f %6.0f %6.2f %6.2f %7.0f %6s %8s  %s\n", r.name.c_str(), cps / 1e6, range,
                 ns, rcl, ns / rcl, ns / (4096.0 / gbps), efd * 1000.0 / ns, copies, bytes, target);
  }
}

}  // namespace vioport::bench
