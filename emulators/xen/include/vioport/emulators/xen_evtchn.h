// SPDX-License-Identifier: Apache-2.0
// xen::EventChannels: Xen's interdomain event channels as the emulator's
// model (docs/reference/xen.md section 3 and design implication 5). What the
// hypervisor does (EVTCHNOP_alloc_unbound / bind_interdomain / send / close /
// status / unmask) plus what /dev/xen/evtchn adds for a user-space consumer
// (xenevtchn_pending: the next fired port, delivered masked), so a backend
// process sees exactly the behaviour libxenevtchn gives it on Xen:
//  * a port allocated unbound is reserved for one remote domain (recorded,
//    not looked up: it need not exist yet, as on Xen); binding it from any
//    other domain, or binding a port that is not unbound, is -EINVAL;
//    binding to an unknown domain is -ESRCH;
//  * binding marks the new local port pending (it covers sends made before
//    the bind), so the binder gets one event at once;
//  * an event is one pending bit: sends before the consumer looks coalesce;
//  * delivery masks the port: it stays masked (later sends only set pending)
//    until the consumer unmasks it; unmasking a pending port delivers again;
//  * a send on an unbound port is dropped and returns 0; an invalid or
//    closed port is -EINVAL;
//  * closing a port returns its peer to unbound, reserved for the closer's
//    domain, so the same domain may bind it again; a domain that goes away
//    closes all its ports the same way.
// Each domain is told of deliveries through an eventfd it polls (or a
// callback, in-process). Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "vioport/emulators/xen_types.h"

namespace vioport::xen {

using EvtchnPort = uint32_t;


enum class EvtchnState : uint8_t { kClosed = 0, kUnbound = 1, kInterdomain = 2 };

struct EvtchnStatus {
  EvtchnState state = EvtchnState::kClosed;
  DomId remote_dom = 0;        // unbound: who may bind; interdomain: the peer
  EvtchnPort remote_port = 0;  // interdomain only
  bool pending = false;
  bool masked = false;
};

struct EvtchnStats {
  uint64_t sends = 0, delivered = 0, coalesced = 0, dropped_unbound = 0, errors = 0;
};

class EventChannels {
 public:
  // Ports 1..max_ports per domain (port 0 is never allocated, as on Xen).
  explicit EventChannels(uint32_t max_ports = 1023) : max_ports_(max_ports) {}

  absl::Status AddDomain(DomId dom);
  // Closes every port of `dom` (peers return to unbound) and forgets it.
  absl::Status RemoveDomain(DomId dom);
  // Where deliveries to `dom` are signalled: the eventfd gets +1 per newly
  // delivered port (the model never closes it), and/or the callback runs
  // after the model's lock is released.
  absl::Status SetNotifyEventfd(DomId dom, int fd);
  absl::Status SetNotifyCallback(DomId dom, std::function<void(DomId)> callback);

  // The hypercalls. A port (> 0) or -errno.
  int64_t AllocUnbound(DomId caller, DomId remote);
  int64_t BindInterdomain(DomId caller, DomId remote, EvtchnPort remote_port);
  // 0 or -errno.
  int64_t Send(DomId caller, EvtchnPort port);
  int64_t Close(DomId caller, EvtchnPort port);
  int64_t Unmask(DomId caller, EvtchnPort port);
  int64_t Status(DomId caller, EvtchnPort port, EvtchnStatus* out) const;

  // xenevtchn_pending(): the next delivered port of `caller`, its pending bit
  // cleared, left masked; nullopt when none.
  std::optional<EvtchnPort> Pending(DomId caller);

  EvtchnStats Stats() const;

 private:
  struct Port {
    EvtchnState state = EvtchnState::kClosed;
    DomId remote_dom = 0;
    EvtchnPort remote_port = 0;
    bool pending = false;
    bool masked = false;
  };
  struct Domain {
    std::vector<Port> ports;            // index = port; [0] unused
    std::deque<EvtchnPort> delivered;   // fired, not yet taken by Pending()
    int eventfd = -1;
    std::function<void(DomId)> callback;
  };
  // Sets `port` of `dom` pending; delivers it (masking it) unless it was
  // masked. Returns true if it was delivered now.
  bool Raise(Domain& d, EvtchnPort port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Domain* Find(DomId dom) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The lowest closed port of `d` (grown by one if none), or -ENOSPC.
  int64_t NewPort(Domain& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Port* FindPort(Domain& d, EvtchnPort port) const;
  // The caller's open port (d set to its domain), or null with err = -ESRCH
  // (unknown caller) or -EINVAL (no such port, or closed).
  Port* OpenPort(DomId caller, EvtchnPort port, Domain*& d, int64_t& err) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Signals the domains collected while the lock was held.
  void Notify(const std::vector<DomId>& doms);
  // Back to unbound (reserved for `closer`) if `port` of `dom` is bound to it.
  void Unbind(DomId dom, EvtchnPort port, DomId closer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint32_t max_ports_;
  mutable absl::Mutex mu_;
  std::map<DomId, Domain> domains_ ABSL_GUARDED_BY(mu_);
  EvtchnStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vioport::xen
