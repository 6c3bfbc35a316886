// SPDX-License-Identifier: Apache-2.0
// The machine's own limits, measured in the same run as the ring benchmarks
// so each ring result can be read as a ratio to them: memcpy bandwidth, a
// cross-core cache-line round trip, eventfd round trips (the notification a
// polling ring avoids). Registered first, so they run first.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "bench_support.h"

namespace vioport::bench {

// ---------------------------------------------------------------------------
// Kernels

namespace {
struct CopyBuffers {
  explicit CopyBuffers(size_t n) : src(n + 64), dst(n + 64) {
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 131);
  }
  std::vector<uint8_t> src, dst;
};

void MustWrite(int fd) {
  const uint64_t one = 1;
  if (write(fd, &one, sizeof one) != sizeof one) Die("eventfd write: %s", std::strerror(errno));
}

// Blocking: one read. Non-blocking: spin on EAGAIN.
void MustRead(int fd, bool blocking) {
  uint64_t v;
  BoundedSpin spin("waiting for an eventfd");
  for (;;) {
    if (read(fd, &v, sizeof v) == sizeof v) return;
    if (blocking || errno != EAGAIN) Die("eventfd read: %s", std::strerror(errno));
    spin.Spin();
  }
}
}  // namespace

double MemcpyBytesPerSec(size_t bytes, double min_seconds) {
  CopyBuffers b(bytes);
  uint64_t n = 0;
  const Clock::time_point t0 = Clock::now();
  Clock::time_point t1;
  do {
    for (int k = 0; k < 64; ++k) {
      std::memcpy(b.dst.data(), b.src.data(), bytes);
      benchmark::ClobberMemory();
    }
    n += 64;
    t1 = Clock::now();
  } while (Seconds(t1 - t0) < min_seconds);
  return static_cast<double>(bytes) * n / Seconds(t1 - t0);
}

double CachelineRoundTripNs(uint64_t round_trips) {
  // One 64-byte-aligned word, written in turn by the two threads: odd values
  // by the first, even by the second. One round trip = two line transfers.
  struct alignas(64) Line {
    std::atomic<uint64_t> v{0};
  };
  Line line;
  double ns = 0;
  RunPair(
      [&] {
        BoundedSpin spin("cache-line ping-pong (first thread)");
        const Clock::time_point t0 = Clock::now();
        for (uint64_t i = 0; i < round_trips; ++i) {
          line.v.store(2 * i + 1, std::memory_order_release);
          while (line.v.load(std::memory_order_acquire) != 2 * i + 2) spin.Spin();
        }
        ns = Seconds(Clock::now() - t0) * 1e9 / static_cast<double>(round_trips);
      },
      [&] {
        BoundedSpin spin("cache-line ping-pong (second thread)");
        for (uint64_t i = 0; i < round_trips; ++i) {
          while (line.v.load(std::memory_order_acquire) != 2 * i + 1) spin.Spin();
          line.v.store(2 * i + 2, std::memory_order_release);
        }
      });
  return ns;
}

double EventfdRoundTripUs(uint64_t round_trips, bool blocking) {
  const int flags = EFD_CLOEXEC | (blocking ? 0 : EFD_NONBLOCK);
  const int ping = eventfd(0, flags), pong = eventfd(0, flags);
  if (ping < 0 || pong < 0) Die("eventfd: %s", std::strerror(errno));
  double us = 0;
  RunPair(
      [&] {
        const Clock::time_point t0 = Clock::now();
        for (uint64_t i = 0; i < round_trips; ++i) {
          MustWrite(ping);
          MustRead(pong, blocking);
        }
        us = Seconds(Clock::now() - t0) * 1e6 / static_cast<double>(round_trips);
      },
      [&] {
        for (uint64_t i = 0; i < round_trips; ++i) {
          MustRead(ping, blocking);
          MustWrite(pong);
        }
      });
  close(ping);
  close(pong);
  return us;
}

double EventfdLocalUs(uint64_t n) {
  const int fd = eventfd(0, EFD_CLOEXEC);
  if (fd < 0) Die("eventfd: %s", std::strerror(errno));
  const Clock::time_point t0 = Clock::now();
  for (uint64_t i = 0; i < n; ++i) {
    MustWrite(fd);
    MustRead(fd, true);
  }
  const double us = Seconds(Clock::now() - t0) * 1e6 / static_cast<double>(n);
  close(fd);
  return us;
}

// ---------------------------------------------------------------------------
// Benchmarks

namespace {
void BM_Memcpy(benchmark::State& state, size_t bytes, Samples* out_gbps) {
  CopyBuffers b(bytes);
  const Clock::time_point t0 = Clock::now();
  for (auto _ : state) {
    std::memcpy(b.dst.data(), b.src.data(), bytes);
    benchmark::ClobberMemory();
  }
  const double s = Seconds(Clock::now() - t0);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  const double gbps = static_cast<double>(bytes) * state.iterations() / s / 1e9;
  state.counters["GBps"] = gbps;
  out_gbps->Record(state.iterations(), gbps);
}

void BM_CachelineRoundTrip(benchmark::State& state) {
  constexpr uint64_t kPerIteration = 50000;
  double total_ns = 0;
  for (auto _ : state) {
    const double ns = CachelineRoundTripNs(kPerIteration);
    state.SetIterationTime(ns * kPerIteration / 1e9);
    total_ns += ns;
  }
  const double ns = total_ns / static_cast<double>(state.iterations());
  state.counters["ns_rt"] = ns;
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kPerIteration));
  Limits().cacheline_rt_ns.Record(state.iterations(), ns);
}

void BM_EventfdRoundTrip(benchmark::State& state, bool blocking) {
  const uint64_t per_iteration = blocking ? 200 : 5000;
  double total_us = 0;
  for (auto _ : state) {
    const double us = EventfdRoundTripUs(per_iteration, blocking);
    state.SetIterationTime(us * static_cast<double>(per_iteration) / 1e6);
    total_us += us;
  }
  const double us = total_us / static_cast<double>(state.iterations());
  state.counters["us_rt"] = us;
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * per_iteration));
  (blocking ? Limits().eventfd_rt_us : Limits().eventfd_spin_rt_us).Record(state.iterations(), us);
}

void BM_EventfdLocal(benchmark::State& state) {
  const int fd = eventfd(0, EFD_CLOEXEC);
  if (fd < 0) Die("eventfd: %s", std::strerror(errno));
  const Clock::time_point t0 = Clock::now();
  for (auto _ : state) {
    MustWrite(fd);
    MustRead(fd, true);
  }
  const double us = Seconds(Clock::now() - t0) * 1e6 / static_cast<double>(state.iterations());
  close(fd);
  state.counters["us_op"] = us;
  Limits().eventfd_local_us.Record(state.iterations(), us);
}
}  // namespace

void RegisterMachineLimitBenchmarks() {
  MachineLimits& m = Limits();
  benchmark::RegisterBenchmark("limits/memcpy/4KiB", BM_Memcpy, size_t{4} << 10, &m.memcpy_gbps_4k);
  benchmark::RegisterBenchmark("limits/memcpy/64KiB", BM_Memcpy, size_t{64} << 10, &m.memcpy_gbps_64k);
  benchmark::RegisterBenchmark("limits/memcpy/1MiB", BM_Memcpy, size_t{1} << 20, &m.memcpy_gbps_1m);
  benchmark::RegisterBenchmark("limits/cacheline_rt", BM_CachelineRoundTrip)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("limits/eventfd_rt/blocking", BM_EventfdRoundTrip, true)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("limits/eventfd_rt/spinning", BM_EventfdRoundTrip, false)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("limits/eventfd_write_read/1thread", BM_EventfdLocal);
}

}  // namespace vioport::bench
