// SPDX-License-Identifier: Apache-2.0
// Driver and device on two threads (pinned to two CPUs), pure polling: no
// notifications at all. The driver thread adds chains and publishes them
// (KickPrepare) every `batch` chains, and reaps used chains; the device thread
// pops, returns each chain (AddUsed) and publishes (Publish) every `batch`
// chains or when it finds the ring empty. Each queue object is used by its
// own thread only. One iteration moves kChainsPerIteration chains; its time is
// the driver thread's, from the common start to the last chain reaped.
// An empty poll spins without a pause instruction unless VIOPORT_BENCH_PAUSE=1.
#include <string>

#include "bench_support.h"

namespace vioport::bench {
namespace {

constexpr uint64_t kChainsPerIteration = uint64_t{1} << 20;
constexpr int kTargetTwoThreadMChains = 20;

// What each thread hands back, each on a cache line of its own. During an
// iteration a thread touches only its own locals, its own queue object and
// the ring; nothing of the other thread's (no false sharing in the harness).
struct alignas(64) DriverSide {
  uint64_t token = 0;
  uint64_t kicks = 0;
  double seconds = 0;
};
struct alignas(64) DeviceSide {
  uint64_t poll_copies = 0;  // copies made by Pop()s that found nothing
  uint64_t poll_bytes = 0;
};

void DriverThread(Rig& rig, const uint32_t batch, const char* name, DriverSide& out) {
  DriverQueue& dq = rig.driver();
  BoundedSpin spin("two threads: the driver waits for used chains");
  uint64_t token = out.token, kicks = 0, added = 0, reaped = 0;
  uint32_t unkicked = 0;
  const Clock::time_point t0 = Clock::now();
  while (reaped < kChainsPerIteration) {
    bool full = false;
    while (added < kChainsPerIteration && unkicked < batch) {
      const AddStatus a = dq.Add(rig.Buffers(token), token);
      if (a == AddStatus::kFull) {
        full = true;
        break;
      }
      if (a != AddStatus::kOk) Die("%s: Add failed", name);
      ++token;
      ++added;
      ++unkicked;
    }
    if (unkicked > 0 && (unkicked >= batch || full || added == kChainsPerIteration)) {
      dq.KickPrepare();
      unkicked = 0;
      ++kicks;
    }
    uint64_t tok;
    uint32_t len;
    UsedStatus u;
    uint64_t got = 0;
    while ((u = dq.GetUsed(&tok, &len)) == UsedStatus::kUsed) ++got;
    if (u == UsedStatus::kBroken) Die("%s: driver queue broke: %s", name, RingErrorName(dq.error()));
    reaped += got;
    if (got) {
      spin.Progress();
    } else {
      spin.Relax();
      spin.Spin();
    }
  }
  out.seconds = Seconds(Clock::now() - t0);
  out.token = token;
  out.kicks += kicks;
}

void DeviceThread(Rig& rig, const uint32_t batch, const char* name, DeviceSide& out) {
  DeviceQueue& q = rig.device();
  const bool copy_only = rig.options().mem == Mem::kCopyOnly;
  BoundedSpin spin("two threads: the device waits for available chains");
  DescriptorChain chain;
  uint64_t done = 0, poll_copies = 0, poll_bytes = 0;
  uint32_t pending = 0;
  while (done < kChainsPerIteration) {
    const uint64_t c0 = copy_only ? rig.copies() : 0, b0 = copy_only ? rig.copy_bytes() : 0;
    const PopStatus s = q.Pop(chain);
    if (s == PopStatus::kChain) {
      const uint32_t written = chain.writable_bytes();
      q.AddUsed(std::move(chain), written);
      ++done;
      if (++pending >= batch) {
        q.Publish();
        pending = 0;
      }
      spin.Progress();
    } else if (s == PopStatus::kEmpty) {
      if (copy_only) {
        poll_copies += rig.copies() - c0;
        poll_bytes += rig.copy_bytes() - b0;
      }
      if (pending) {
        q.Publish();
        pending = 0;
      }
      spin.Relax();
      spin.Spin();
    } else {
      Die("%s: device queue broke: %s", name, RingErrorName(q.error()));
    }
  }
  if (pending) q.Publish();
  out.poll_copies += poll_copies;
  out.poll_bytes += poll_bytes;
}

void BM_TwoThreads(benchmark::State& state, RigOptions o, uint32_t batch, std::string name) {
  Rig rig(o);
  DriverSide driver;
  DeviceSide device;
  double total = 0;
  const uint64_t copies0 = rig.copies(), bytes0 = rig.copy_bytes();
  const uint64_t publishes0 = rig.device().counters().publishes;
  // The cross-core latency of a VM's two vCPUs drifts with the host's
  // placement; the ratio uses one measured next to these iterations.
  constexpr uint64_t kRoundTrips = 20000;
  const double clrt_before = CachelineRoundTripNs(kRoundTrips);

  for (auto _ : state) {
    RunPair([&] { DriverThread(rig, batch, name.c_str(), driver); },
            [&] { DeviceThread(rig, batch, name.c_str(), device); });
    state.SetIterationTime(driver.seconds);
    total += driver.seconds;
  }
  const double clrt = (clrt_before + CachelineRoundTripNs(kRoundTrips)) / 2;
  const double chains = static_cast<double>(state.iterations()) * kChainsPerIteration;
  state.counters["clrt_ns"] = clrt;
  state.SetItemsProcessed(static_cast<int64_t>(chains));
  // How well the index stores batch in practice (1.0 = one per chain).
  state.counters["kick_chain"] = static_cast<double>(driver.kicks) / chains;
  state.counters["pub_chain"] = static_cast<double>(rig.device().counters().publishes - publishes0) / chains;
  state.SetLabel("batch " + std::to_string(batch));

  RingResult r;
  r.name = name;
  r.chains_per_sec = chains / total;
  r.ns_per_chain = total * 1e9 / chains;
  if (o.mem == Mem::kCopyOnly) {
    // Copies that moved chains; the empty polls' copies are shown apart.
    state.counters["poll_copies"] = static_cast<double>(device.poll_copies) / chains;
    state.counters["poll_bytes"] = static_cast<double>(device.poll_bytes) / chains;
    r.copies_per_chain = static_cast<double>(rig.copies() - copies0 - device.poll_copies) / chains;
    r.bytes_per_chain = static_cast<double>(rig.copy_bytes() - bytes0 - device.poll_bytes) / chains;
  }
  if (o.chain == Chain::k1 && o.mem == Mem::kMapped) r.target_mchains = kTargetTwoThreadMChains;
  r.local_clrt_ns = clrt;
  ReportRing(state, std::move(r));
}

void Register(Ring ring, Chain chain, Mem mem, uint32_t batch) {
  RigOptions o;
  o.ring = ring;
  o.chain = chain;
  o.mem = mem;
  std::string name = std::string("two_threads/") + Name(ring) + "/" + Name(chain) + "/" + Name(mem) +
                     "/batch:" + std::to_string(batch);
  benchmark::RegisterBenchmark(name.c_str(), BM_TwoThreads, o, batch, name)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
}

}  // namespace

void RegisterTwoThreadBenchmarks() {
  for (Mem mem : {Mem::kMapped, Mem::kCopyOnly})
    for (uint32_t batch : {1u, 16u, 64u})
      for (Ring ring : {Ring::kSplit, Ring::kPacked}) Register(ring, Chain::k1, mem, batch);
  // 4-descriptor chains: 64 fit in a 256-entry ring without INDIRECT, so a
  // batch of 64 would run the two threads in lockstep; 16 lets them overlap.
  for (uint32_t batch : {16u, 64u})
    for (Chain chain : {Chain::k4, Chain::k4Indirect})
      for (Ring ring : {Ring::kSplit, Ring::kPacked}) Register(ring, chain, Mem::kMapped, batch);
}

}  // namespace vioport::bench
