// SPDX-License-Identifier: Apache-2.0
// A device behind the loopback transport and a driver that writes each
// chain by hand: the tests of a backend at the ring (net, vsock) send what
// a well-behaved driver never does and watch what the device gives back.
// Header-only: users link vioport::guest and vioport::transport_loopback.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "vioport/core/device.h"
#include "vioport/core/driver.h"
#include "vioport/guest/wait.h"
#include "vioport/transports/loopback.h"

namespace vioport::testing {

// One buffer of a chain: its bytes and whether the device writes it.
struct RawBuf {
  std::vector<uint8_t> bytes;
  bool writable;
};

class RawLoopback {
 public:
  struct Used {
    bool used = false;
    uint64_t token = 0;
    uint32_t len = 0;
  };

  // `dev` behind the loopback (copy-only or mapped); Init() negotiates
  // `opts` (ring features included).
  RawLoopback(std::shared_ptr<VirtioDevice> dev, bool copy_only, DriverOptions opts) : opts_(std::move(opts)), dev_(dev) {
    LoopbackOptions lo;
    lo.copy_only = copy_only;
    t = std::make_unique<LoopbackTransport>(std::move(dev), lo);
    drv = std::make_unique<VirtioDriver>(*t);
  }
  ~RawLoopback() {
    drv.reset();
    for (auto& m : dma_) t->dma().Free(m);
  }
  void Init() {
    const absl::Status s = drv->Init(opts_);
    ASSERT_TRUE(s.ok()) << s;
  }

  // Adds a chain of `bufs` to queue `q` with `token` and kicks. Returns the
  // DMA buffers, in order (freed with this object).
  std::vector<DmaBuffer> Add(uint16_t q, const std::vector<RawBuf>& bufs, uint64_t token) {
    std::vector<DmaBuffer> dma;
    std::vector<DriverBuffer> ring;
    for (const RawBuf& b : bufs) {
      DmaBuffer m = *t->dma().Allocate(std::max<size_t>(b.bytes.size(), 1), 8, b.writable ? Access::kWrite : Access::kRead);
      std::memcpy(m.host, b.bytes.data(), b.bytes.size());
      dma.push_back(m);
      dma_.push_back(m);
      ring.push_back({m.device_addr, static_cast<uint32_t>(b.bytes.size()), b.writable});
    }
    EXPECT_EQ(drv->queue(q).Add(ring, token), AddStatus::kOk);
    drv->Kick(q);
    return dma;
  }
  // The next used buffer of queue `q`.
  Used Wait(uint16_t q, absl::Duration timeout = absl::Seconds(5)) {
    Used u;
    u.used = WaitFor(q, timeout, &u) == WaitResult::kUsed;
    return u;
  }
  // What the wait for queue `q`'s next used buffer ended in.
  WaitResult WaitFor(uint16_t q, absl::Duration timeout = absl::Seconds(5), Used* u = nullptr) {
    Used ignored;
    if (!u) u = &ignored;
    WaitPolicy p;
    p.timeout = timeout;
    return WaitUsed(*drv, drv->queue(q), p, &u->token, &u->len);
  }
  bool NeedsReset() { return t->GetStatus() & status::kDeviceNeedsReset; }
  // The device's counter `name` (a missing one fails the test).
  uint64_t Counter(const std::string& name) const {
    std::vector<std::pair<std::string, uint64_t>> c;
    dev_->AppendCounters(&c);
    for (auto& [n, v] : c)
      if (n == name) return v;
    ADD_FAILURE() << "no counter " << name;
    return 0;
  }

  std::unique_ptr<LoopbackTransport> t;
  std::unique_ptr<VirtioDriver> drv;

 private:
  DriverOptions opts_;
  std::shared_ptr<VirtioDevice> dev_;
  std::vector<DmaBuffer> dma_;
};

}  // namespace vioport::testing
