#include "vioport/guest/rng_driver.h"

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"

namespace vioport {

RngDriver::RngDriver(DriverTransport& transport, std::function<void()> poll)
    : drv_(transport), poll_(std::move(poll)) {}

absl::Status RngDriver::Init(uint64_t ring_features) {
  DriverOptions o;
  o.wanted_features = ring_features;
  o.num_queues = 1;
  o.queue_size = 64;
  if (absl::Status s = drv_.Init(o); !s.ok()) return s;
  if (!bounce_.host) {
    auto b = drv_.transport().dma().Allocate(64 * 1024, 64, Access::kWrite);
    if (!b.ok()) return b.status();
    bounce_ = *b;
  }
  return absl::OkStatus();
}

absl::Status RngDriver::Read(std::span<uint8_t> out, size_t chunk, absl::Duration timeout) {
  chunk = std::min(chunk, bounce_.size);
  DriverQueue& q = drv_.queue(0);
  size_t done = 0;
  const absl::Time deadline = absl::Now() + timeout;
  while (done < out.size()) {
    const uint32_t want = static_cast<uint32_t>(std::min(chunk, out.size() - done));
    DriverBuffer b{bounce_.device_addr, want, true};
    if (AddStatus a = q.Add({&b, 1}, done); a != AddStatus::kOk)
      return absl::InternalError(absl::StrCat("rng: add failed (", static_cast<int>(a), ")"));
    drv_.Kick(0);
    uint64_t token;
    uint32_t len;
    UsedStatus u;
    while ((u = q.GetUsed(&token, &len)) == UsedStatus::kNone) {
      if (drv_.NeedsReset()) return absl::UnavailableError("rng: device needs reset");
      if (absl::Now() > deadline) return absl::DeadlineExceededError("rng: no answer from the device");
      if (poll_) poll_(); else std::this_thread::yield();
    }
    if (u == UsedStatus::kBroken) return RingErrorStatus(q.error(), 0);
    if (token != done || len > want) return absl::DataLossError("rng: device returned a buffer it was not given");
    std::memcpy(out.data() + done, bounce_.host, len);
    done += len;  // §5.4.6.1: the driver uses only what the device wrote
  }
  return absl::OkStatus();
}

}  // namespace vioport
