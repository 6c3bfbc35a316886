// SPDX-License-Identifier: Apache-2.0
#include "vioport/backends/rng_device.h"

#include <sys/random.h>

#include <cerrno>

#include "vioport/core/log.h"

namespace vioport {

absl::Status RngDevice::Activate(ActivateContext ctx) {
  if (ctx.queues.empty() || !ctx.queues[0]) return absl::FailedPreconditionError("rng: request queue not enabled");
  absl::MutexLock l(&mu_);
  ctx_ = std::move(ctx);
  return absl::OkStatus();
}

ActivateContext RngDevice::Reset() {
  absl::MutexLock l(&mu_);
  return std::move(ctx_);
}

void RngDevice::QueueNotify(uint16_t queue) {
  absl::MutexLock l(&mu_);
  if (queue != 0 || ctx_.queues.empty() || !ctx_.queues[0]) return;
  DeviceQueue& q = *ctx_.queues[0];
  uint8_t buf[4096];
  // Suppress further kicks while draining; re-enable and re-check at the end.
  q.DisableNotifications();
  for (;;) {
    DescriptorChain chain;
    PopStatus st;
    while ((st = q.Pop(chain)) == PopStatus::kChain) {
      // §5.4.6: only the device-writable part carries entropy.
      uint32_t done = 0;
      while (done < chain.writable_bytes()) {
        size_t want = std::min<size_t>(sizeof buf, chain.writable_bytes() - done);
        ssize_t got = getrandom(buf, want, 0);
        if (got <= 0) {
          if (got < 0 && errno == EINTR) continue;
          break;
        }
        if (chain.Write(done, buf, static_cast<uint64_t>(got)) != RingError::kNone) break;
        done += static_cast<uint32_t>(got);
      }
      bytes_.fetch_add(done, std::memory_order_relaxed);
      q.AddUsed(std::move(chain), done);
    }
    ctx_.Publish(q);
    if (st == PopStatus::kError || !q.EnableNotifications()) break;
    q.DisableNotifications();
  }
}

}  // namespace vioport
