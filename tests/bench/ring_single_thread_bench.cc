// SPDX-License-Identifier: Apache-2.0
// Device-side pop+push on one thread: the real driver-side queue and the real
// device-side queue on one ring, taking turns in batches. Each iteration the
// driver adds a batch of chains and publishes them (KickPrepare), the device
// pops until the ring is empty, returns every chain (AddUsed) and publishes
// once (Publish), and the driver reaps the batch (GetUsed).
//
// Two measurements of the same loop:
//  - device_only: only the device's Pop/AddUsed/Publish part is timed (two
//    clock reads per batch, manual time) — the "pop+push" figure;
//  - with_driver: the whole loop, driver work included.
// The device does not touch the payload: this is the ring's own cost.
#include <algorithm>
#include <string>

#include "bench_support.h"

namespace vioport::bench {
namespace {

constexpr uint32_t kMaxBatch = 64;
constexpr int kTargetSingleThreadMChains = 50;

void BM_PopPush(benchmark::State& state, RigOptions o, bool device_only, std::string name) {
  Rig rig(o);
  DriverQueue& dq = rig.driver();
  DeviceQueue& q = rig.device();
  const uint32_t batch = std::min<uint32_t>(kMaxBatch, o.queue_size / rig.descs_per_chain());
  uint64_t token = 0;
  DescriptorChain chain;
  double device_seconds = 0;
  const uint64_t copies0 = rig.copies(), bytes0 = rig.copy_bytes();

  const Clock::time_point t0 = Clock::now();
  for (auto _ : state) {
    for (uint32_t i = 0; i < batch; ++i, ++token)
      if (dq.Add(rig.Buffers(token), token) != AddStatus::kOk) Die("%s: Add failed", name.c_str());
    dq.KickPrepare();

    Clock::time_point d0;
    if (device_only) d0 = Clock::now();
    uint32_t popped = 0;
    PopStatus s;
    while ((s = q.Pop(chain)) == PopStatus::kChain) {
      const uint32_t written = chain.writable_bytes();
      q.AddUsed(std::move(chain), written);
      ++popped;
    }
    q.Publish();
    if (device_only) {
      const double dt = Seconds(Clock::now() - d0);
      state.SetIterationTime(dt);
      device_seconds += dt;
    }
    if (s != PopStatus::kEmpty || popped != batch) Die("%s: popped %u of %u", name.c_str(), popped, batch);

    uint64_t tok;
    uint32_t len;
    uint32_t reaped = 0;
    UsedStatus u;
    while ((u = dq.GetUsed(&tok, &len)) == UsedStatus::kUsed) ++reaped;
    if (u != UsedStatus::kNone || reaped != batch) Die("%s: reaped %u of %u", name.c_str(), reaped, batch);
  }
  const double total = device_only ? device_seconds : Seconds(Clock::now() - t0);
  const double chains = static_cast<double>(state.iterations()) * batch;
  state.SetItemsProcessed(static_cast<int64_t>(chains));
  state.SetLabel("batch " + std::to_string(batch));

  RingResult r;
  r.name = name;
  r.chains_per_sec = chains / total;
  r.ns_per_chain = total * 1e9 / chains;
  if (o.mem == Mem::kCopyOnly) {
    r.copies_per_chain = static_cast<double>(rig.copies() - copies0) / chains;
    r.bytes_per_chain = static_cast<double>(rig.copy_bytes() - bytes0) / chains;
  }
  if (device_only && o.mem == Mem::kMapped) r.target_mchains = kTargetSingleThreadMChains;
  ReportRing(state, std::move(r));
}

}  // namespace

void RegisterSingleThreadBenchmarks() {
  for (bool device_only : {true, false}) {
    for (Mem mem : {Mem::kMapped, Mem::kCopyOnly}) {
      for (Chain chain : {Chain::k1, Chain::k4, Chain::k4Indirect}) {
        for (Ring ring : {Ring::kSplit, Ring::kPacked}) {
          RigOptions o;
          o.ring = ring;
          o.mem = mem;
          o.chain = chain;
          std::string name = std::string("pop_push/") + Name(ring) + "/" + Name(chain) + "/" + Name(mem) + "/" +
                             (device_only ? "device_only" : "with_driver");
          auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_PopPush, o, device_only, name);
          if (device_only)
            b->UseManualTime();
          else
            b->UseRealTime();
        }
      }
    }
  }
  // The in-flight log's cost (vhost-user with INFLIGHT_SHMFD, vios's
  // default): the same device-only rows on mapped memory with the log kept.
  for (Chain chain : {Chain::k1, Chain::k4}) {
    for (Ring ring : {Ring::kSplit, Ring::kPacked}) {
      RigOptions o;
      o.ring = ring;
      o.chain = chain;
      o.inflight_log = true;
      std::string name = std::string("pop_push/") + Name(ring) + "/" + Name(chain) + "/mapped/device_only+inflight_log";
      benchmark::RegisterBenchmark(name.c_str(), BM_PopPush, o, true, name)->UseManualTime();
    }
  }
}

}  // namespace vioport::bench
