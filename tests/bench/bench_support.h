// SPDX-License-Identifier: Apache-2.0
// Shared pieces of the benchmark suite: the machine limits measured in the
// same run (and the ratios computed from them), thread pinning, a bounded
// spin, and a rig that puts a real driver-side queue and a real device-side
// queue on one host buffer.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "benchmark/benchmark.h"
#include "vioport/core/device_queue.h"
#include "vioport/core/driver_queue.h"
#include "vioport/core/guest_memory.h"
#include "vioport/transports/loopback.h"

namespace vioport::bench {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// ---------------------------------------------------------------------------
// Results kept across calls of one benchmark function. Google Benchmark calls
// a function several times with a growing iteration count to find one that
// fills the minimum time, then once per further repetition with that same
// count: a call with more iterations than the previous one replaces its
// sample (it was a trial), a call with as many adds one (a repetition).
class Samples {
 public:
  void Record(int64_t iterations, double x);
  bool empty() const { return v_.empty(); }
  size_t size() const { return v_.size(); }
  double Median() const;  // 0 if empty
  double Min() const;
  double Max() const;

 private:
  std::vector<double> v_;
  int64_t last_iterations_ = -1;
};

// ---------------------------------------------------------------------------
// Machine limits. The limits/* benchmarks run first and record what they
// measured here; ring benchmarks divide by the medians. If the limits
// benchmarks were filtered out, EnsureLimits() measures them quickly inline.
struct MachineLimits {
  Samples memcpy_gbps_4k;      // GB/s (1e9 bytes/s), hot 4 KiB buffers
  Samples memcpy_gbps_64k;
  Samples memcpy_gbps_1m;
  Samples cacheline_rt_ns;     // two pinned threads, one round trip
  Samples eventfd_rt_us;       // two threads, blocking read/write, one round trip
  Samples eventfd_spin_rt_us;  // two threads, non-blocking, spinning on EAGAIN
  Samples eventfd_local_us;    // one thread: write + read
  bool quick = false;          // some value came from the quick inline measurement
};
MachineLimits& Limits();
// Fills whatever is still empty in Limits() with a quick measurement.
const MachineLimits& EnsureLimits();

// Measurement kernels, shared by the limits benchmarks and EnsureLimits().
double MemcpyBytesPerSec(size_t bytes, double min_seconds);
double CachelineRoundTripNs(uint64_t round_trips);
double EventfdRoundTripUs(uint64_t round_trips, bool blocking);
double EventfdLocalUs(uint64_t n);

// ---------------------------------------------------------------------------
// Threads. The suite pins its two busy threads to two different CPUs of the
// process's affinity mask (unless VIOPORT_BENCH_PIN=0 or fewer than 2 CPUs).
// `which` is 0 or 1.
void PinThisThread(int which);
bool PinningEnabled();
bool PauseInPolls();  // VIOPORT_BENCH_PAUSE=1

// A spin that cannot hang: after `limit` without progress it prints what it
// was waiting for and aborts.
class BoundedSpin {
 public:
  explicit BoundedSpin(const char* what, double limit_seconds = 10.0)
      : what_(what), limit_(std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(limit_seconds))) {}
  void Progress() { spins_ = 0; }
  // A pause instruction between empty polls, if VIOPORT_BENCH_PAUSE=1.
  void Relax() {
#if defined(__x86_64__) || defined(__i386__)
    if (PauseInPolls()) __builtin_ia32_pause();
#endif
  }
  void Spin() {
    if ((++spins_ & 0xFFFF) != 0) return;
    Clock::time_point now = Clock::now();
    if (spins_ == 0x10000) {
      since_ = now;
      return;
    }
    if (now - since_ > limit_) {
      std::fprintf(stderr, "vioport_bench: no progress for %.0f s while %s; aborting\n", Seconds(limit_), what_);
      std::abort();
    }
  }

 private:
  const char* what_;
  Clock::duration limit_;
  Clock::time_point since_{};
  uint64_t spins_ = 0;
};

// Runs `a` on a thread pinned to the first CPU and `b` on one pinned to the
// second; both start together, after both are pinned. Returns when both end.
template <typename A, typename B>
void RunPair(A&& a, B&& b) {
  std::atomic<int> ready{0};
  auto start = [&ready](int which) {
    PinThisThread(which);
    ready.fetch_add(1);
    BoundedSpin spin("waiting for the other thread to start");
    while (ready.load() < 2) spin.Spin();
  };
  std::thread tb([&] {
    start(1);
    b();
  });
  std::thread ta([&] {
    start(0);
    a();
  });
  ta.join();
  tb.join();
}

[[noreturn]] void Die(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// ---------------------------------------------------------------------------
// The copy channel under the copy-only runs: counts bytes on their way to a
// RegionMemory, and sits under a CopyOnlyMemory (which counts the copies) so
// a copy-only run reports copies and bytes per chain. Only the device thread
// uses it.
class CountingMemory final : public GuestMemory {
 public:
  explicit CountingMemory(std::shared_ptr<RegionMemory> inner) : GuestMemory(true), inner_(std::move(inner)) {}
  absl::Status Read(uint64_t addr, void* dst, uint64_t len) override {
    bytes_read_ += len;
    return inner_->Read(addr, dst, len);
  }
  absl::Status Write(uint64_t addr, const void* src, uint64_t len) override {
    bytes_written_ += len;
    return inner_->Write(addr, src, len);
  }
  bool Accessible(uint64_t addr, uint64_t len, Access access) override {
    return inner_->Accessible(addr, len, access);
  }
  uint64_t bytes() const { return bytes_read_ + bytes_written_; }

 protected:
  uint8_t* DoMap(uint64_t addr, uint64_t len, Access access) override { return inner_->Map(addr, len, access); }

 private:
  std::shared_ptr<RegionMemory> inner_;
  uint64_t bytes_read_ = 0, bytes_written_ = 0;
};

// ---------------------------------------------------------------------------
// The rig: one host buffer, a BufferDmaAllocator over it for the driver side,
// a RegionMemory over it for the device side (optionally behind a
// CopyOnlyMemory), a DriverQueue and a DeviceQueue on the same ring.
enum class Ring : uint8_t { kSplit, kPacked };
enum class Mem : uint8_t { kMapped, kCopyOnly };
enum class Chain : uint8_t { k1, k4, k4Indirect };

const char* Name(Ring r);
const char* Name(Mem m);
const char* Name(Chain c);

struct RigOptions {
  Ring ring = Ring::kSplit;
  Mem mem = Mem::kMapped;
  Chain chain = Chain::k1;
  uint32_t queue_size = 256;
  bool inflight_log = false;  // the device keeps vhost-user's in-flight log (INFLIGHT_SHMFD)
};

class Rig {
 public:
  explicit Rig(const RigOptions& o);
  ~Rig();
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;

  DriverQueue& driver() { return *driver_; }
  DeviceQueue& device() { return *device_; }
  // Buffers of the chain the driver adds for `token` (slot token % pool).
  std::span<const DriverBuffer> Buffers(uint64_t token) const {
    const size_t k = bufs_per_chain_;
    return {&bufs_[(token % kPool) * k], k};
  }
  uint32_t descs_per_chain() const { return descs_per_chain_; }
  // Copy-only memory: copies and bytes so far (0 on mapped memory).
  uint64_t copies() const { return copy_ ? copy_->reads() + copy_->writes() : 0; }
  uint64_t copy_bytes() const { return counting_ ? counting_->bytes() : 0; }
  const RigOptions& options() const { return opts_; }

  static constexpr size_t kPool = 256;

 private:
  RigOptions opts_;
  uint8_t* host_ = nullptr;
  size_t host_size_ = 0;
  std::unique_ptr<BufferDmaAllocator> dma_;
  std::shared_ptr<RegionMemory> region_;
  std::shared_ptr<CountingMemory> counting_;
  std::shared_ptr<CopyOnlyMemory> copy_;
  std::unique_ptr<DriverQueue> driver_;
  std::unique_ptr<DeviceQueue> device_;
  std::vector<uint8_t> log_mem_;
  std::shared_ptr<void> log_;  // a SplitInflightLog or PackedInflightLog over log_mem_
  std::vector<DriverBuffer> bufs_;
  size_t bufs_per_chain_ = 1;
  uint32_t descs_per_chain_ = 1;
};

// ---------------------------------------------------------------------------
// Ratio counters and the summary printed after the run.
struct RingResult {
  std::string name;
  double chains_per_sec = 0;
  double ns_per_chain = 0;
  double copies_per_chain = -1;  // -1: mapped memory
  double bytes_per_chain = -1;
  int target_mchains = 0;        // 0: no target applies to this row
  // Cache-line round trip measured around this benchmark's own iterations
  // (two-thread rows); 0: use the limits/cacheline_rt median.
  double local_clrt_ns = 0;
};

// Sets ns_chain, x_clrt, x_cp4k, per_efd_rt (and copies/bytes per chain for
// copy-only) on `state`, and records the row for the summary.
void ReportRing(benchmark::State& state, RingResult r);
void PrintSummary(FILE* out);

// How much CPU other processes took while the suite ran (from /proc/stat,
// minus this process's own CPU time): a run sharing its 2 CPUs is not a
// measurement of the rings. Start at the beginning; the summary prints it.
void StartCpuAccounting();

// Registration, in the order the suite runs: limits first.
void RegisterMachineLimitBenchmarks();
void RegisterSingleThreadBenchmarks();
void RegisterTwoThreadBenchmarks();

}  // namespace vioport::bench
