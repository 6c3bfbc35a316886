// SPDX-License-Identifier: Apache-2.0
// The device half of a transport as vios sees it (DeviceEndpoint), and what
// every endpoint keeps about the guests it served (EndpointState).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "vioport/core/counters.h"
#include "vioport/core/device_controller.h"
#include "vioport/transports/handover.h"

namespace vioport {

// One device served to guests over one transport endpoint (a listening
// socket, a server adapter, a backend directory). Called on the thread that
// runs vios's event loop.
class DeviceEndpoint {
 public:
  virtual ~DeviceEndpoint() = default;  // drops the guest (device reset) and stops serving
  // Where guests reach it, for `viosctl list` (a socket path, "crqd.sock p2 u0x2000").
  virtual std::string where() const = 0;
  // The transport's name with its mode where it has one ("shm(poll)"), for `viosctl list`.
  virtual std::string mode() const = 0;
  virtual bool connected() const = 0;
  virtual uint8_t device_status() const = 0;
  // Why the last guest was dropped or the device broke ("" if nothing went wrong).
  virtual std::string last_error() const = 0;
  // The base counters (TransportCounters::AppendTo, over every connection so
  // far), then the transport's own.
  virtual void AppendCounters(CounterList* out) const = 0;
  CounterList Counters() const {
    CounterList c;
    AppendCounters(&c);
    return c;
  }
  // Stop accepting new guests (vios is stopping); the current one stays.
  virtual void StopAccepting() {}
  // Complete every request in flight and make written data durable.
  virtual absl::Status Quiesce() = 0;

  // Live upgrade (docs/upgrade.md). Freeze: stop serving (no more requests
  // popped, no guest message, kick or connection taken), complete what is
  // in flight, and write what the new vios needs to carry on into `out`
  // (the listening socket, the guest's connection, its memory, its
  // eventfds, the device's registers and ring positions). The transport's
  // factory reads it back (EndpointContext::handover) into an endpoint that
  // stays frozen until Thaw(). Thaw: serve again (here: the upgrade failed;
  // there: it committed). Abandon: after a committed upgrade, let go of
  // every descriptor without telling the guest or touching what it sees.
  virtual absl::Status Freeze(HandoverWriter* /*out*/) {
    return absl::UnimplementedError(mode() + " cannot hand a guest over to a new vios yet");
  }
  virtual void Thaw() {}
  virtual void Abandon() {}
};

// Connection bookkeeping an endpoint shares with vios's thread: whether a
// guest is attached, the device status it last saw, why the last guest went,
// and the counters of the connections that ended. Readable from any thread.
class EndpointState {
 public:
  std::atomic<bool> connected{false};
  std::atomic<uint8_t> status{0};
  std::atomic<uint64_t> connections{0}, refused{0}, protocol_errors{0};

  void SetError(std::string e) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    error_ = std::move(e);
  }
  std::string error() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    return error_;
  }
  // A guest's connection ended: keep its controller's counters and error,
  // and the transport's own counters of it (`extras`, summed by name).
  void Ended(const DeviceController& c, const CounterList& extras = {}) ABSL_LOCKS_EXCLUDED(mu_) {
    Ended(c.transport_counters(), c.last_error(), extras);
  }
  // The same for a transport that drives its device without a controller.
  void Ended(const TransportCounters& counters, const std::string& last_error, const CounterList& extras)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    past_ += counters;
    if (!last_error.empty()) error_ = last_error;
    Sum(extras, &past_extras_);
  }
  // The base counters (those of ended connections plus `live`, and
  // reconnects), then connections, connections_refused and protocol_errors,
  // then the extras (ended connections' plus `live_extras`).
  void AppendCounters(const TransportCounters& live, const CounterList& live_extras, CounterList* out) const
      ABSL_LOCKS_EXCLUDED(mu_) {
    TransportCounters t = live;
    CounterList extras;
    {
      absl::MutexLock l(&mu_);
      t += past_;
      extras = past_extras_;
    }
    Sum(live_extras, &extras);
    t.reconnects = connections > 0 ? connections - 1 : 0;
    t.AppendTo(out);
    out->insert(out->end(), {{"connections", connections.load()},
                             {"connections_refused", refused.load()},
                             {"protocol_errors", protocol_errors.load()}});
    out->insert(out->end(), extras.begin(), extras.end());
  }

 private:
  mutable absl::Mutex mu_;
  std::string error_ ABSL_GUARDED_BY(mu_);
  TransportCounters past_ ABSL_GUARDED_BY(mu_);
  CounterList past_extras_ ABSL_GUARDED_BY(mu_);

  static void Sum(const CounterList& add, CounterList* into) {
    for (const auto& counter : add) {
      auto it = std::find_if(into->begin(), into->end(), [&](const auto& c) { return c.first == counter.first; });
      if (it == into->end()) into->push_back(counter);
      else it->second += counter.second;
    }
  }
};

}  // namespace vioport
