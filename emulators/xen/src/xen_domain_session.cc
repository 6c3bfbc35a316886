// SPDX-License-Identifier: Apache-2.0
// xen::Domains, DomainSession and EventRingProducer: xenemud's decoding of
// what domains send, without sockets; see xen_domain_session.h.
#include "xen_domain_session.h"

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "vioport/emulators/hcall_mailbox.h"

namespace vioport::xen {

void EventRingProducer::Deliver(EventChannels& ev, DomId dom) {
  {
    std::lock_guard<std::mutex> l(mu_);
    auto* r = reinterpret_cast<wire::EventRing*>(map_ + wire::kEventRingOffset);
    for (;;) {
      // The domain's index is untrusted: anything but 0..slots in flight is "full".
      const uint32_t used = prod_ - r->cons.load(std::memory_order_acquire);
      if (used >= wire::kEventRingSlots) {
        r->overflow.store(1, std::memory_order_release);
        break;
      }
      const std::optional<EvtchnPort> p = ev.Pending(dom);
      if (!p) break;
      r->ports[prod_ % wire::kEventRingSlots].store(*p, std::memory_order_relaxed);
      r->prod.store(++prod_, std::memory_order_release);
    }
  }
  if (signal_) signal_();
}

// ---- Domains ---------------------------------------------------------------

Domains::Domains(DomainLimits limits, std::function<void(const std::string&)> log)
    : limits_(std::move(limits)),
      log_(std::move(log)),
      grants_(GrantTablesConfig{limits_.max_grant_frames, limits_.max_maptrack}) {}

Domains::~Domains() { FreeAll(); }

void Domains::FreeAll() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, d] : domains_) FreeMemory(*d);
  domains_.clear();
  pool_in_use_ = 0;
}

uint64_t Domains::pool_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pool_in_use_;
}

size_t Domains::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return domains_.size();
}

bool Domains::Known(DomId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return domains_.count(id) != 0;
}

bool Domains::Zombie(DomId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = domains_.find(id);
  return it != domains_.end() && it->second->zombie;
}

Domains::Claim Domains::TryClaim(const std::shared_ptr<Domain>& d, uint64_t* left, bool* zombie) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = domains_.find(d->id); it != domains_.end()) {
    *zombie = it->second->zombie;
    return Claim::kTaken;
  }
  if (pool_in_use_ + d->pool_pages > limits_.max_grant_pages) {
    *left = limits_.max_grant_pages - pool_in_use_;
    return Claim::kPoolFull;
  }
  pool_in_use_ += d->pool_pages;
  domains_[d->id] = d;
  return Claim::kClaimed;
}

std::shared_ptr<Domains::Domain> Domains::Find(DomId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = domains_.find(id);
  return it == domains_.end() ? nullptr : it->second;
}

void Domains::Bury(const std::shared_ptr<Domain>& d, bool log) {
  const DomId id = d->id;
  // Nobody can map its pages any more (it left the grant model first), so
  // a count of 0 stays 0; one above 0 drops through others' unmaps, whose
  // Reap frees the memory once this marks it a zombie.
  const uint64_t mapped = d->in_grants ? grants_.ForeignMappingsOf(id) : 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (mapped == 0) {
      FreeMemory(*d);
      if (auto it = domains_.find(id); it != domains_.end() && it->second == d) {
        pool_in_use_ -= d->pool_pages;
        domains_.erase(it);
      }
    } else {
      d->zombie = true;
    }
  }
  if (log) {
    Log(mapped == 0 ? absl::StrCat("domain ", id, " died")
                    : absl::StrCat("domain ", id, " died; its memory stays until ", mapped,
                                   " foreign mapping(s) are unmapped"));
  }
  // Its own unmaps may have released the last hold on a zombie.
  Reap();
}

void Domains::Reap() {
  std::vector<DomId> released;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = domains_.begin(); it != domains_.end();) {
      Domain& d = *it->second;
      if (d.zombie && grants_.ForeignMappingsOf(d.id) == 0) {
        FreeMemory(d);
        pool_in_use_ -= d.pool_pages;
        released.push_back(d.id);
        it = domains_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (DomId id : released) Log(absl::StrCat("domain ", id, "'s memory released (no foreign mapping left)"));
}

// ---- DomainSession ---------------------------------------------------------

DomainSession::HelloResult DomainSession::Hello(std::span<const uint8_t> bytes, bool memfd_passed) {
  // One HELLO per connection: the identity it names is the caller of every
  // later hypercall and map, so it cannot be swapped midway.
  if (said_hello_) return Refuse("HELLO already said on this connection");
  said_hello_ = true;
  wire::Hello hello;
  if (bytes.size() != sizeof hello) return Refuse("bad HELLO (size)");
  std::memcpy(&hello, bytes.data(), sizeof hello);
  if (hello.magic != wire::kHelloMagic || hello.version != wire::kWireVersion)
    return Refuse("bad HELLO (magic or version)");
  if (hello.domid >= kDomidSelf) return Refuse(absl::StrCat("domid ", hello.domid, " is reserved (0..32751)"));
  const DomainLimits& lim = domains_.limits();
  const DomId id = static_cast<DomId>(hello.domid);
  const uint64_t ram = hello.memory_bytes;
  const uint32_t frames = hello.grant_frames;
  const uint32_t pages = hello.grant_pages;
  if (!memfd_passed) return Refuse("no memfd passed with HELLO");
  if (frames == 0 || frames > lim.max_grant_frames)
    return Refuse(absl::StrCat(frames, " grant frames (1..", lim.max_grant_frames, ")"));
  if (ram % kXenPageSize != 0 || ram < (uint64_t{frames} + 2) * kXenPageSize || ram > lim.max_memory_bytes) {
    return Refuse(absl::StrCat("memory of ", ram, " bytes: whole 4 KiB pages, at least the grant table, the argument ",
                               "page and one more, at most ", lim.max_memory_bytes));
  }
  if (std::string why = host_->CheckMemory(ram); !why.empty()) return Refuse(std::move(why));
  std::string xs_path = id == 0 ? lim.xenstore_path : absl::StrCat(lim.xenstore_path, ".d", id);
  if (xs_path.size() >= sizeof(wire::HelloReply::xenstore_path))
    return Refuse(absl::StrCat("xenstore socket path too long: ", xs_path));

  auto d = std::make_shared<Domains::Domain>();
  d->id = id;
  d->xs_path = xs_path;
  d->ram_bytes = ram;
  d->ram_pages = static_cast<uint32_t>(ram / kXenPageSize);
  d->grant_frames = frames;
  d->pool_pages = pages;
  // A domain that just exited may still hold its id until its thread reads
  // the EOF: the host decides how long a restarted one waits. A dead domain
  // whose pages others still map (a zombie) keeps its id longer, as on Xen.
  for (;;) {
    uint64_t left = 0;
    bool zombie = false;
    const Domains::Claim c = domains_.TryClaim(d, &left, &zombie);
    if (c == Domains::Claim::kClaimed) break;
    if (c == Domains::Claim::kPoolFull) {
      return Refuse(absl::StrCat(pages, " grant pages asked, ", left, " left of the pool cap ", lim.max_grant_pages));
    }
    if (!host_->RetryClaim()) {
      return Refuse(zombie ? absl::StrCat("domain ", id, " is still dying (others map its pages)")
                           : absl::StrCat("domain ", id, " is already connected"));
    }
  }
  // From here on a failure is a death: Fail undoes whatever was done.
  absl::StatusOr<std::unique_ptr<DomainMemory>> mem = host_->MapMemory(id, ram, pages);
  if (!mem.ok()) return Fail(d, std::string(mem.status().message()));
  {
    std::lock_guard<std::mutex> lock(domains_.mu_);
    d->base = (*mem)->base();
    d->memory = std::move(*mem);
  }
  GrantTables& grants = domains_.grants_;
  EventChannels& evtchn = domains_.evtchn_;
  if (absl::Status s = grants.AddDomain(id, d->base, ram + uint64_t{pages} * kXenPageSize); !s.ok())
    return Fail(d, std::string(s.message()));
  d->in_grants = true;
  if (const int16_t st = grants.SetupTable(id, 0, frames); st != gntst::kOkay)
    return Fail(d, absl::StrCat("GNTTABOP_setup_table: GNTST ", st));
  if (absl::Status s = evtchn.AddDomain(id); !s.ok()) return Fail(d, std::string(s.message()));
  d->in_evtchn = true;
  absl::StatusOr<std::shared_ptr<EventRingProducer>> ring = host_->OpenChannels(id);
  if (!ring.ok()) return Fail(d, std::string(ring.status().message()));
  d->ring = *ring;
  (void)evtchn.SetNotifyCallback(id, [&evtchn, r = *ring](DomId dom) { r->Deliver(evtchn, dom); });
  if (absl::Status s = host_->Introduce(id, xs_path); !s.ok())
    return Fail(d, absl::StrCat("xenstore: ", s.message()));
  d->in_xenstore = true;
  d_ = std::move(d);
  xs_path_ = std::move(xs_path);
  return HelloResult{true, ""};
}

DomainSession::HelloResult DomainSession::Fail(const std::shared_ptr<Domains::Domain>& d, std::string why) {
  Die(d, false);
  return Refuse(std::move(why));
}

int64_t DomainSession::Call(uint64_t opcode, std::span<const uint64_t> in) {
  if (!d_) return -ENOSYS;
  uint64_t args[emu::kMailboxArgs] = {};
  std::copy_n(in.begin(), std::min(in.size(), emu::kMailboxArgs), args);
  Domains::Domain& d = *d_;
  GrantTables& grants = domains_.grants_;
  EventChannels& evtchn = domains_.evtchn_;
  auto port = [](uint64_t v) { return v <= 0xFFFFFFFFu; };
  switch (opcode) {
    case wire::kSetupTable:
      return args[1] > 0xFFFFFFFFu ? gntst::kGeneralError
                                   : grants.SetupTable(d.id, args[0], static_cast<uint32_t>(args[1]));
    case wire::kGrantCopy: {
      // Guest handles: the segments sit in the caller's argument page. Read
      // once into our copy, validated by the model, statuses written back.
      const uint64_t n = args[0];
      if (n > wire::kCopySegmentsPerCall) return -EINVAL;
      // Nothing to copy (and no buffer to memcpy into: a null pointer there
      // is undefined even for 0 bytes).
      if (n == 0) return 0;
      std::vector<wire::CopySegmentWire> w(n);
      std::memcpy(w.data(), d.arg_page(), n * sizeof(wire::CopySegmentWire));
      std::vector<CopySegment> segs(n);
      for (size_t i = 0; i < n; ++i) {
        segs[i].source = CopyPtr{w[i].source_ref_or_gmfn, w[i].source_domid, w[i].source_offset};
        segs[i].dest = CopyPtr{w[i].dest_ref_or_gmfn, w[i].dest_domid, w[i].dest_offset};
        segs[i].len = w[i].len;
        segs[i].flags = w[i].flags;
      }
      grants.Copy(d.id, segs);
      uint8_t* out = d.arg_page();
      for (size_t i = 0; i < n; ++i) {
        std::memcpy(out + i * sizeof(wire::CopySegmentWire) + offsetof(wire::CopySegmentWire, status),
                    &segs[i].status, sizeof(int16_t));
      }
      return 0;
    }
    case wire::kGrantUnmap: {
      const int64_t rc =
          args[0] > 0xFFFFFFFFu ? gntst::kBadHandle : grants.Unmap(d.id, static_cast<GrantHandle>(args[0]));
      // A backend's unmap may be the last hold on a dead granter's memory.
      domains_.Reap();
      return rc;
    }
    case wire::kEvtchnAllocUnbound:
      return args[0] > 0xFFFF ? -EINVAL : evtchn.AllocUnbound(d.id, static_cast<DomId>(args[0]));
    case wire::kEvtchnBindInterdomain:
      return args[0] > 0xFFFF || !port(args[1])
                 ? -EINVAL
                 : evtchn.BindInterdomain(d.id, static_cast<DomId>(args[0]), static_cast<EvtchnPort>(args[1]));
    case wire::kEvtchnSend:
      return port(args[0]) ? evtchn.Send(d.id, static_cast<EvtchnPort>(args[0])) : -EINVAL;
    case wire::kEvtchnClose:
      return port(args[0]) ? evtchn.Close(d.id, static_cast<EvtchnPort>(args[0])) : -EINVAL;
    case wire::kEvtchnUnmask:
      return port(args[0]) ? evtchn.Unmask(d.id, static_cast<EvtchnPort>(args[0])) : -EINVAL;
    case wire::kEvtchnPending: {
      const uint64_t max = std::min<uint64_t>(args[0], wire::kPendingPortsPerCall);
      uint8_t* out = d.arg_page();
      uint64_t n = 0;
      while (n < max) {
        const std::optional<EvtchnPort> p = evtchn.Pending(d.id);
        if (!p) break;
        const uint32_t v = *p;
        std::memcpy(out + n * sizeof v, &v, sizeof v);
        ++n;
      }
      return static_cast<int64_t>(n);
    }
    default:
      return -ENOSYS;
  }
}

DomainSession::MapAnswer DomainSession::Map(std::span<const uint8_t> bytes) {
  MapAnswer a;
  wire::MapReply& rep = a.reply;
  wire::MapRequest req;
  if (!d_ || bytes.size() != sizeof req) {
    rep.status = gntst::kGeneralError;
    return a;
  }
  std::memcpy(&req, bytes.data(), sizeof req);
  GrantTables& grants = domains_.grants_;
  const DomId self = d_->id;
  if (req.magic != wire::kHelloMagic) {
    rep.status = gntst::kGeneralError;
  } else if (req.granter > 0xFFFF) {
    rep.status = gntst::kBadDomain;
  } else {
    const bool readonly = req.readonly != 0;
    const MapResult r = grants.Map(self, static_cast<DomId>(req.granter), req.ref, readonly);
    rep.status = r.status;
    if (r.status == gntst::kOkay) {
      // The mapping just made keeps the granter's record and memory alive
      // (a zombie is freed only once no one maps it).
      std::shared_ptr<Domains::Domain> g = domains_.Find(static_cast<DomId>(req.granter));
      DomainMemory* gm = nullptr;
      if (g) {
        std::lock_guard<std::mutex> lock(domains_.mu_);
        gm = g->memory.get();
      }
      // Only pool pages can be handed out: a RAM frame's fd would be the
      // granter's whole RAM. Xen's gntdev has no such limit; the granter
      // must share from the pool (as xengntshr does).
      if (!g || gm == nullptr || r.frame < g->ram_pages || r.frame - g->ram_pages >= g->pool_pages) {
        (void)grants.Unmap(self, r.handle);
        rep.status = gntst::kBadPage;
      } else {
        a.fd = gm->PageFd(r.frame - g->ram_pages, readonly, &a.close_fd);
        if (a.fd < 0) {
          (void)grants.Unmap(self, r.handle);
          rep.status = gntst::kGeneralError;
          a.close_fd = false;
        } else {
          rep.handle = r.handle;
        }
      }
    }
  }
  // A refused map may have undone the last hold on a zombie (bad page).
  if (rep.status != gntst::kOkay) domains_.Reap();
  return a;
}

void DomainSession::MapNotDelivered(const MapAnswer& a) {
  if (!d_ || a.reply.status != gntst::kOkay) return;
  (void)domains_.grants_.Unmap(d_->id, a.reply.handle);
  domains_.Reap();
}

void DomainSession::Close(bool log) {
  if (!d_) return;
  std::shared_ptr<Domains::Domain> d = std::move(d_);
  d_.reset();
  Die(d, log);
}

void DomainSession::Die(const std::shared_ptr<Domains::Domain>& d, bool log) {
  const DomId id = d->id;
  GrantTables& grants = domains_.grants_;
  if (d->in_grants) {
    // Its own mappings of others go (gnttab_release_mappings); mappings of
    // its pages by others stay valid until they unmap.
    grants.UnmapAll(id);
    (void)grants.RemoveDomain(id);
  }
  if (d->in_evtchn) (void)domains_.evtchn_.RemoveDomain(id);  // peers return to unbound
  d->ring.reset();
  if (d->in_xenstore) host_->Release(id, d->xs_path);
  domains_.Bury(d, log);
}

}  // namespace vioport::xen
