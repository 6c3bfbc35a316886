// SPDX-License-Identifier: Apache-2.0
#include "vioport/emulators/xen_evtchn.h"

#include <unistd.h>

#include <cerrno>
#include <iterator>

#include "absl/strings/str_cat.h"

namespace vioport::xen {

absl::Status EventChannels::AddDomain(DomId dom) {
  if (dom == kDomidSelf) return absl::InvalidArgumentError("DOMID_SELF is not a domain");
  absl::MutexLock l(&mu_);
  if (!domains_.emplace(dom, Domain{}).second) return absl::AlreadyExistsError(absl::StrCat("domain ", dom, " exists"));
  domains_[dom].ports.resize(1);  // port 0 is never handed out
  return absl::OkStatus();
}

absl::Status EventChannels::RemoveDomain(DomId dom) {
  absl::MutexLock l(&mu_);
  auto it = domains_.find(dom);
  if (it == domains_.end()) return absl::NotFoundError(absl::StrCat("no domain ", dom));
  Domain& d = it->second;
  for (EvtchnPort p = 1; p < d.ports.size(); ++p) {
    const Port& port = d.ports[p];
    if (port.state == EvtchnState::kInterdomain && port.remote_dom != dom) Unbind(port.remote_dom, port.remote_port, dom);
  }
  domains_.erase(it);
  return absl::OkStatus();
}

absl::Status EventChannels::SetNotifyEventfd(DomId dom, int fd) {
  absl::MutexLock l(&mu_);
  Domain* d = Find(dom);
  if (!d) return absl::NotFoundError(absl::StrCat("no domain ", dom));
  d->eventfd = fd;
  return absl::OkStatus();
}

absl::Status EventChannels::SetNotifyCallback(DomId dom, std::function<void(DomId)> callback) {
  absl::MutexLock l(&mu_);
  Domain* d = Find(dom);
  if (!d) return absl::NotFoundError(absl::StrCat("no domain ", dom));
  d->callback = std::move(callback);
  return absl::OkStatus();
}

EventChannels::Domain* EventChannels::Find(DomId dom) {
  auto it = domains_.find(dom);
  return it == domains_.end() ? nullptr : &it->second;
}

EventChannels::Port* EventChannels::FindPort(Domain& d, EvtchnPort port) const {
  if (port == 0 || port >= d.ports.size()) return nullptr;
  return &d.ports[port];
}

int64_t EventChannels::AllocUnbound(DomId caller, DomId remote) {
  absl::MutexLock l(&mu_);
  Domain* d = Find(caller);
  if (!d) return -ESRCH;
  // As Xen's evtchn_alloc_unbound: the remote domain is recorded, not
  // looked up (a toolstack reserves ports for domains not yet running);
  // binding is what needs it to exist.
  if (remote == kDomidSelf) remote = caller;
  const int64_t p = NewPort(*d);
  if (p < 0) return p;
  d->ports[p] = Port{EvtchnState::kUnbound, remote, 0, false, false};
  return p;
}

int64_t EventChannels::NewPort(Domain& d) {
  // The lowest closed port, else a new one.
  EvtchnPort p = 1;
  while (p < d.ports.size() && d.ports[p].state != EvtchnState::kClosed) ++p;
  if (p > max_ports_) {
    stats_.errors++;
    return -ENOSPC;
  }
  if (p == d.ports.size()) d.ports.emplace_back();
  return p;
}

int64_t EventChannels::BindInterdomain(DomId caller, DomId remote, EvtchnPort remote_port) {
  std::vector<DomId> notify;
  int64_t result;
  {
    absl::MutexLock l(&mu_);
    if (remote == kDomidSelf) remote = caller;
    Domain* d = Find(caller);
    Domain* r = Find(remote);
    if (!d || !r) {
      stats_.errors++;
      return -ESRCH;
    }
    Port* rp = FindPort(*r, remote_port);
    // Only an unbound port reserved for us.
    if (!rp || rp->state != EvtchnState::kUnbound || rp->remote_dom != caller) {
      stats_.errors++;
      return -EINVAL;
    }
    const int64_t np = NewPort(*d);
    if (np < 0) return np;
    const EvtchnPort p = static_cast<EvtchnPort>(np);
    // d may have grown: re-find the remote port (same domain when looping back).
    rp = FindPort(*r, remote_port);
    d->ports[p] = Port{EvtchnState::kInterdomain, remote, remote_port, false, false};
    rp->state = EvtchnState::kInterdomain;
    rp->remote_dom = caller;
    rp->remote_port = p;
    // Xen marks the new local port pending: it covers sends made before.
    if (Raise(*d, p)) notify.push_back(caller);
    result = p;
  }
  Notify(notify);
  return result;
}

bool EventChannels::Raise(Domain& d, EvtchnPort port) {
  Port& p = d.ports[port];
  if (p.pending) {
    stats_.coalesced++;
    return false;
  }
  p.pending = true;
  if (p.masked) return false;  // delivered when unmasked
  p.masked = true;             // delivery masks the port
  d.delivered.push_back(port);
  stats_.delivered++;
  return true;
}

EventChannels::Port* EventChannels::OpenPort(DomId caller, EvtchnPort port, Domain*& d, int64_t& err) {
  d = Find(caller);
  if (!d) {
    err = -ESRCH;
    return nullptr;
  }
  Port* p = FindPort(*d, port);
  if (!p || p->state == EvtchnState::kClosed) {
    stats_.errors++;
    err = -EINVAL;
    return nullptr;
  }
  return p;
}

int64_t EventChannels::Send(DomId caller, EvtchnPort port) {
  std::vector<DomId> notify;
  {
    absl::MutexLock l(&mu_);
    Domain* d = nullptr;
    int64_t err = 0;
    Port* p = OpenPort(caller, port, d, err);
    if (!p) return err;
    stats_.sends++;
    if (p->state == EvtchnState::kUnbound) {  // nobody to tell: dropped, as on Xen
      stats_.dropped_unbound++;
      return 0;
    }
    Domain* r = Find(p->remote_dom);
    if (r && p->remote_port < r->ports.size() && Raise(*r, p->remote_port)) notify.push_back(p->remote_dom);
  }
  Notify(notify);
  return 0;
}

void EventChannels::Unbind(DomId dom, EvtchnPort port, DomId closer) {
  Domain* d = Find(dom);
  if (!d || port == 0 || port >= d->ports.size()) return;
  Port& p = d->ports[port];
  if (p.state != EvtchnState::kInterdomain || p.remote_dom != closer) return;
  p.state = EvtchnState::kUnbound;  // reserved for the closer again
  p.remote_port = 0;
}

int64_t EventChannels::Close(DomId caller, EvtchnPort port) {
  absl::MutexLock l(&mu_);
  Domain* d = nullptr;
  int64_t err = 0;
  Port* p = OpenPort(caller, port, d, err);
  if (!p) return err;
  if (p->state == EvtchnState::kInterdomain) {
    const DomId rd = p->remote_dom;
    const EvtchnPort rp = p->remote_port;
    if (rd == caller && rp < d->ports.size() && rp != port) {
      // Loopback: the other end is ours; unbind it before p changes.
      d->ports[rp].state = EvtchnState::kUnbound;
      d->ports[rp].remote_port = 0;
    } else {
      Unbind(rd, rp, caller);
    }
  }
  // Drop a delivery not yet taken, so a reused port number starts clean.
  d = Find(caller);
  for (auto it = d->delivered.begin(); it != d->delivered.end();)
    it = *it == port ? d->delivered.erase(it) : std::next(it);
  d->ports[port] = Port{};
  return 0;
}

int64_t EventChannels::Unmask(DomId caller, EvtchnPort port) {
  std::vector<DomId> notify;
  {
    absl::MutexLock l(&mu_);
    Domain* d = nullptr;
    int64_t err = 0;
    Port* p = OpenPort(caller, port, d, err);
    if (!p) return err;
    if (!p->masked) return 0;
    p->masked = false;
    if (p->pending) {  // an event came while masked: deliver it now
      p->pending = false;
      if (Raise(*d, port)) notify.push_back(caller);
    }
  }
  Notify(notify);
  return 0;
}

int64_t EventChannels::Status(DomId caller, EvtchnPort port, EvtchnStatus* out) const {
  absl::MutexLock l(&mu_);
  auto it = domains_.find(caller);
  if (it == domains_.end()) return -ESRCH;
  const Domain& d = it->second;
  if (port == 0 || port >= d.ports.size()) return -EINVAL;
  const Port& p = d.ports[port];
  *out = EvtchnStatus{p.state, p.remote_dom, p.remote_port, p.pending, p.masked};
  return 0;
}

std::optional<EvtchnPort> EventChannels::Pending(DomId caller) {
  absl::MutexLock l(&mu_);
  Domain* d = Find(caller);
  if (!d || d->delivered.empty()) return std::nullopt;
  const EvtchnPort port = d->delivered.front();
  d->delivered.pop_front();
  d->ports[port].pending = false;  // taken; stays masked until Unmask
  return port;
}

EvtchnStats EventChannels::Stats() const {
  absl::MutexLock l(&mu_);
  return stats_;
}

void EventChannels::Notify(const std::vector<DomId>& doms) {
  for (DomId dom : doms) {
    int fd = -1;
    std::function<void(DomId)> cb;
    {
      absl::MutexLock l(&mu_);
      Domain* d = Find(dom);
      if (!d) continue;
      fd = d->eventfd;
      cb = d->callback;
    }
    if (fd >= 0) {
      const uint64_t one = 1;
      (void)!::write(fd, &one, sizeof one);  // a saturated counter still reads as readable
    }
    if (cb) cb(dom);
  }
}

}  // namespace vioport::xen
