// SPDX-License-Identifier: Apache-2.0
// OpenEmulatorChannel: XenChannel over a domain process of the emulator
// (xen::RemoteDomain, connected to xenemud --domains). What libxen's
// xengntshr / xengnttab / xenevtchn give a user-space program on Xen, done
// with the emulator's grant pool, map socket and hypercalls:
//   * SharePages takes consecutive pages of the domain's grant pool
//     (first fit) and grants them at refs kGrantReservedEntries + page index,
//     so consecutive pages have consecutive refs (Linux's grant DMA
//     encoding can then name a multi-page buffer by its first ref). The
//     grant table is sized for the pool at connect.
//   * UnsharePages ends access; a page the grantee still maps cannot be
//     ended (Xen refuses) and goes to a deferred list retried on every later
//     Share/Unshare call, as Linux's gnttab deferred list; its page returns
//     to the free list only once its access has ended.
//   * GrantCopy's local side must be this domain's RAM on the emulator;
//     a local buffer elsewhere is bounced through scratch pages in RAM.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <cerrno>
#include <cstring>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "vioport/emulators/xen_remote.h"
#include "vioport/emulators/xen_emu_channel.h"

namespace vioport::xen {

namespace {

constexpr uint64_t kPage = kXenPageSize;
// Scratch pages at the start of the buffer area for copies whose local side
// is not in RAM (one page per bounced segment of a batch).
constexpr uint32_t kBouncePages = 16;

absl::Status GntstError(int16_t s, absl::string_view what) {
  const std::string msg = absl::StrCat(what, ": ", GntstName(s), " (", s, ")");
  switch (s) {
    case gntst::kNoSpace:
    case gntst::kNoDeviceSpace:
      return absl::ResourceExhaustedError(msg);
    case gntst::kEagain:
      return absl::UnavailableError(msg);
    case gntst::kBadDomain:
    case gntst::kBadGntref:
    case gntst::kBadHandle:
      return absl::NotFoundError(msg);
    case gntst::kPermissionDenied:
    case gntst::kGeneralError:
      return absl::PermissionDeniedError(msg);
    default:
      return absl::InvalidArgumentError(msg);
  }
}

absl::Status ErrnoError(int64_t rc, absl::string_view what) {
  const int err = static_cast<int>(-rc);
  const std::string msg = absl::StrCat(what, ": ", std::strerror(err), " (", rc, ")");
  if (err == ENODEV) return absl::UnavailableError(absl::StrCat(msg, ", xenemud is gone"));
  if (err == ENOSPC) return absl::ResourceExhaustedError(msg);
  if (err == ESRCH) return absl::NotFoundError(msg);
  return absl::InvalidArgumentError(msg);
}

class EmulatorChannel final : public XenChannel {
 public:
  EmulatorChannel(std::string socket, std::unique_ptr<RemoteDomain> dom)
      : socket_(std::move(socket)), dom_(std::move(dom)), page_used_(dom_->pool_pages(), false) {
    // The buffer area minus the bounce pages is the copy-buffer heap.
    bounce_ = dom_->buffer_area();
    const uint64_t pages = dom_->buffer_area_bytes() / kPage;
    const uint64_t bounce = std::min<uint64_t>(kBouncePages, pages);
    bounce_pages_ = static_cast<uint32_t>(bounce);
    heap_ = bounce_ + bounce * kPage;
    heap_pages_ = pages - bounce;
    if (heap_pages_ > 0) free_[0] = heap_pages_;
  }

  std::string name() const override { return "xenemud:" + socket_; }
  DomId self() const override { return dom_->id(); }

  // ---- Granting ----------------------------------------------------------------
  absl::StatusOr<SharedPages> SharePages(DomId grantee, uint32_t count, bool writable) override {
    absl::MutexLock lock(&mu_);
    RetryDeferredLocked();
    if (count == 0) return absl::InvalidArgumentError("SharePages of 0 pages");
    const uint32_t n = dom_->pool_pages();
    // First fit: `count` consecutive free pool pages.
    uint32_t run = 0, first = 0;
    for (uint32_t i = 0; i < n && run < count; ++i) {
      if (page_used_[i]) {
        run = 0;
        continue;
      }
      if (run++ == 0) first = i;
    }
    if (run < count)
      return absl::ResourceExhaustedError(absl::StrCat("grant pool: no ", count, " consecutive free pages of ", n,
                                                       " (", deferred_.size(), " still mapped by a grantee)"));
    GrantTableWriter& table = dom_->grant_table();
    SharedPages out;
    out.addr = dom_->pool() + uint64_t{first} * kPage;
    out.writable = writable;
    for (uint32_t i = 0; i < count; ++i) {
      const GrantRef ref = RefOf(first + i);
      if (ref >= table.size()) return absl::ResourceExhaustedError("grant table too small for the pool");
      out.refs.push_back(ref);
    }
    std::memset(out.addr, 0, uint64_t{count} * kPage);
    for (uint32_t i = 0; i < count; ++i) {
      page_used_[first + i] = true;
      table.GrantAccess(out.refs[i], grantee, dom_->pool_first_frame() + first + i, !writable);
    }
    return out;
  }

  void UnsharePages(const SharedPages& pages) override {
    absl::MutexLock lock(&mu_);
    GrantTableWriter& table = dom_->grant_table();
    for (GrantRef ref : pages.refs) {
      if (ref < kGrantReservedEntries || ref - kGrantReservedEntries >= page_used_.size()) continue;
      if (table.EndAccess(ref)) {
        page_used_[ref - kGrantReservedEntries] = false;
      } else {
        // Still mapped: Xen refuses to end access; retried later.
        deferred_.push_back(ref);
      }
    }
    RetryDeferredLocked();
  }

  // ---- Reaching grants ---------------------------------------------------------
  absl::StatusOr<uint8_t*> MapGrant(DomId granter, GrantRef ref, bool writable) override {
    const GrantMapping m = dom_->Map(granter, ref, !writable);
    if (m.status != gntst::kOkay)
      return GntstError(m.status, absl::StrCat("map of ref ", ref, " of domain ", granter));
    absl::MutexLock lock(&mu_);
    maps_[m.addr] = m;
    return m.addr;
  }

  absl::Status UnmapGrant(uint8_t* addr) override {
    GrantMapping m;
    {
      absl::MutexLock lock(&mu_);
      auto it = maps_.find(addr);
      if (it == maps_.end()) return absl::NotFoundError("UnmapGrant of an address MapGrant did not return");
      m = it->second;
      maps_.erase(it);
    }
    const int16_t s = dom_->Unmap(m);
    if (s != gntst::kOkay) return GntstError(s, "unmap");
    return absl::OkStatus();
  }

  // Several grants laid out contiguously: a reserved range, each page
  // mapped over its slot (all or nothing, as xengnttab_map_domain_grant_refs).
  absl::StatusOr<uint8_t*> MapGrants(DomId granter, std::span<const GrantRef> refs, bool writable) override {
    if (refs.empty()) return absl::InvalidArgumentError("MapGrants of no refs");
    if (refs.size() == 1) return MapGrant(granter, refs[0], writable);
    const uint64_t bytes = refs.size() * kPage;
    void* r = ::mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap: ", std::strerror(errno)));
    uint8_t* base = static_cast<uint8_t*>(r);
    std::vector<GrantMapping> done;
    for (size_t i = 0; i < refs.size(); ++i) {
      const GrantMapping m = dom_->Map(granter, refs[i], !writable, base + i * kPage);
      if (m.status != gntst::kOkay) {
        for (const GrantMapping& d : done) (void)dom_->Unmap(d);  // releases their pages too
        ::munmap(base + i * kPage, (refs.size() - i) * kPage);
        return GntstError(m.status, absl::StrCat("map of ref ", refs[i], " of domain ", granter));
      }
      done.push_back(m);
    }
    absl::MutexLock lock(&mu_);
    multi_maps_[base] = std::move(done);
    return base;
  }

  absl::Status UnmapGrants(uint8_t* addr, uint32_t count) override {
    std::vector<GrantMapping> maps;
    bool single = false;
    {
      absl::MutexLock lock(&mu_);
      auto it = multi_maps_.find(addr);
      if (it == multi_maps_.end()) {
        single = count == 1 && maps_.count(addr) != 0;  // MapGrants of one ref was a MapGrant
        if (!single) return absl::NotFoundError("UnmapGrants of an address MapGrants did not return");
      }
    }
    if (single) return UnmapGrant(addr);
    {
      absl::MutexLock lock(&mu_);
      auto it = multi_maps_.find(addr);
      if (it == multi_maps_.end()) return absl::NotFoundError("UnmapGrants of an address MapGrants did not return");
      if (it->second.size() != count)
        return absl::InvalidArgumentError(absl::StrCat("UnmapGrants of ", count, " pages of a mapping of ",
                                                       it->second.size()));
      maps = std::move(it->second);
      multi_maps_.erase(it);
    }
    absl::Status first = absl::OkStatus();
    for (const GrantMapping& m : maps) {
      const int16_t s = dom_->Unmap(m);
      if (s != gntst::kOkay && first.ok()) first = GntstError(s, "unmap");
    }
    return first;
  }

  void GrantCopy(std::span<GrantCopySegment> segments) override {
    // Each caller segment becomes one or two model segments (the local side
    // may cross a RAM page); a local buffer outside RAM goes through a
    // bounce page. Batches are cut so the bounce pages suffice.
    struct Part {
      size_t seg;
      uint32_t bounce = UINT32_MAX;  // bounce page index, or none
    };
    size_t i = 0;
    while (i < segments.size()) {
      std::vector<CopySegment> model;
      std::vector<Part> parts;
      uint32_t bounces = 0;
      std::lock_guard<std::mutex> bounce_lock(bounce_mu_);
      for (; i < segments.size(); ++i) {
        GrantCopySegment& s = segments[i];
        s.status = gntst::kOkay;
        if (uint32_t{s.offset} + s.len > kPage) {
          s.status = gntst::kBadCopyArg;  // what Xen answers; never a page crossing on the grant side
          continue;
        }
        if (s.len == 0) continue;
        uint8_t* local = static_cast<uint8_t*>(s.local);
        const bool in_ram = dom_->RamFrame(local).has_value() && dom_->RamFrame(local + s.len - 1).has_value();
        if (!in_ram) {
          if (bounce_pages_ == 0) {
            s.status = gntst::kGeneralError;  // RAM too small for a bounce page
            continue;
          }
          if (bounces == bounce_pages_) break;  // next batch
          const uint32_t b = bounces++;
          uint8_t* page = bounce_ + uint64_t{b} * kPage;
          if (s.to_foreign) std::memcpy(page, local, s.len);
          local = page;
          bounced_.fetch_add(1, std::memory_order_relaxed);
          parts.push_back(Part{i, b});
          model.push_back(ModelSegment(s, local, s.len, 0));
          continue;
        }
        // Split the local side at its page boundary.
        uint16_t done = 0;
        while (done < s.len) {
          const uint8_t* p = local + done;
          const uint64_t room = kPage - (reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(dom_->memory())) % kPage;
          const uint16_t len = static_cast<uint16_t>(std::min<uint64_t>(room, s.len - done));
          parts.push_back(Part{i});
          model.push_back(ModelSegment(s, p, len, done));
          done = static_cast<uint16_t>(done + len);
        }
      }
      if (model.empty()) continue;
      dom_->Copy(model);
      for (size_t k = 0; k < model.size(); ++k) {
        GrantCopySegment& s = segments[parts[k].seg];
        if (s.status == gntst::kOkay) s.status = model[k].status;
        if (parts[k].bounce != UINT32_MAX && !s.to_foreign && model[k].status == gntst::kOkay)
          std::memcpy(s.local, bounce_ + uint64_t{parts[k].bounce} * kPage, s.len);
      }
    }
  }

  uint8_t* AllocCopyBuffer(size_t bytes) override {
    if (bytes == 0) bytes = 1;
    const uint64_t pages = (bytes + kPage - 1) / kPage;
    absl::MutexLock lock(&mu_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < pages) continue;
      const uint64_t first = it->first;
      const uint64_t left = it->second - pages;
      free_.erase(it);
      if (left > 0) free_[first + pages] = left;
      allocated_[first] = pages;
      return heap_ + first * kPage;
    }
    return nullptr;
  }

  void FreeCopyBuffer(uint8_t* buffer) override {
    if (buffer == nullptr) return;
    absl::MutexLock lock(&mu_);
    const uint64_t first = static_cast<uint64_t>(buffer - heap_) / kPage;
    auto it = allocated_.find(first);
    if (it == allocated_.end()) return;
    uint64_t start = first, len = it->second;
    allocated_.erase(it);
    // Coalesce with the neighbours.
    if (auto next = free_.find(start + len); next != free_.end()) {
      len += next->second;
      free_.erase(next);
    }
    if (auto prev = free_.lower_bound(start); prev != free_.begin()) {
      --prev;
      if (prev->first + prev->second == start) {
        start = prev->first;
        len += prev->second;
        free_.erase(prev);
      }
    }
    free_[start] = len;
  }

  // ---- Event channels ----------------------------------------------------------
  int event_fd() override { return dom_->event_fd(); }
  absl::StatusOr<EvtchnPort> BindUnboundPort(DomId remote) override {
    const int64_t rc = dom_->AllocUnbound(remote);
    if (rc < 0) return ErrnoError(rc, absl::StrCat("alloc_unbound for domain ", remote));
    return static_cast<EvtchnPort>(rc);
  }
  absl::StatusOr<EvtchnPort> BindInterdomain(DomId remote, EvtchnPort remote_port) override {
    const int64_t rc = dom_->BindInterdomain(remote, remote_port);
    if (rc < 0) return ErrnoError(rc, absl::StrCat("bind_interdomain to port ", remote_port, " of domain ", remote));
    return static_cast<EvtchnPort>(rc);
  }
  absl::Status Notify(EvtchnPort port) override { return Check(dom_->Send(port), "send", port); }
  absl::Status Unmask(EvtchnPort port) override { return Check(dom_->Unmask(port), "unmask", port); }
  absl::Status Unbind(EvtchnPort port) override { return Check(dom_->Close(port), "close", port); }
  void PendingPorts(std::vector<EvtchnPort>& out) override {
    uint64_t v;
    (void)!::read(dom_->event_fd(), &v, sizeof v);  // non-blocking: clears readiness
    EvtchnPort ports[256];
    for (;;) {
      const size_t n = dom_->Pending(ports);
      out.insert(out.end(), ports, ports + n);
      if (n < std::size(ports)) break;
    }
  }

  std::string xenstore_path() const override { return dom_->xenstore_path(); }

  // The mappings and copy buffers of this process are not carried: each
  // device unmaps and frees its own when it freezes (before the commit), and
  // the new vios maps afresh when it thaws.
  absl::Status Export(HandoverWriter* out) const override {
    out->Str(socket_);
    return dom_->Export(out);
  }

 private:
  static GrantRef RefOf(uint32_t page) { return kGrantReservedEntries + page; }

  CopySegment ModelSegment(const GrantCopySegment& s, const uint8_t* local, uint16_t len, uint16_t grant_skip) const {
    const uint32_t frame = *dom_->RamFrame(local);
    const uint16_t local_off =
        static_cast<uint16_t>(static_cast<uint64_t>(local - dom_->memory()) % kPage);
    CopySegment m;
    const CopyPtr grant{s.ref, s.domid, static_cast<uint16_t>(s.offset + grant_skip)};
    const CopyPtr mine{frame, kDomidSelf, local_off};
    m.len = len;
    if (s.to_foreign) {
      m.source = mine;
      m.dest = grant;
      m.flags = kGntcopyDestGref;
    } else {
      m.source = grant;
      m.dest = mine;
      m.flags = kGntcopySourceGref;
    }
    return m;
  }

  absl::Status Check(int64_t rc, absl::string_view what, EvtchnPort port) {
    if (rc < 0) return ErrnoError(rc, absl::StrCat(what, " on port ", port));
    return absl::OkStatus();
  }

  void RetryDeferredLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    GrantTableWriter& table = dom_->grant_table();
    std::erase_if(deferred_, [&](GrantRef ref) {
      if (!table.EndAccess(ref)) return false;
      page_used_[ref - kGrantReservedEntries] = false;
      return true;
    });
  }

  const std::string socket_;
  std::unique_ptr<RemoteDomain> dom_;
  absl::Mutex mu_;
  std::vector<bool> page_used_ ABSL_GUARDED_BY(mu_);
  std::vector<GrantRef> deferred_ ABSL_GUARDED_BY(mu_);
  std::map<uint8_t*, GrantMapping> maps_ ABSL_GUARDED_BY(mu_);
  std::map<uint8_t*, std::vector<GrantMapping>> multi_maps_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, uint64_t> free_ ABSL_GUARDED_BY(mu_);       // heap page -> pages
  std::map<uint64_t, uint64_t> allocated_ ABSL_GUARDED_BY(mu_);  // heap page -> pages
  uint8_t* heap_ = nullptr;
  uint64_t heap_pages_ = 0;
  std::mutex bounce_mu_;  // one GrantCopy at a time uses the bounce pages
  uint8_t* bounce_ = nullptr;
  uint32_t bounce_pages_ = 0;
  std::atomic<uint64_t> bounced_{0};  // segments copied through a bounce page
};

}  // namespace

absl::StatusOr<std::unique_ptr<XenChannel>> OpenEmulatorChannel(const ChannelOptions& o) {
  RemoteDomainOptions ro;
  ro.socket_path = o.address;
  ro.id = o.self;
  ro.memory_bytes = o.memory_bytes;
  ro.grant_pages = o.grant_pages;
  // Refs kGrantReservedEntries .. + grant_pages - 1 must exist.
  ro.grant_frames = std::max<uint32_t>(
      1, static_cast<uint32_t>((uint64_t{kGrantReservedEntries} + o.grant_pages + kGrantEntriesPerFrame - 1) /
                               kGrantEntriesPerFrame));
  ro.spin = std::chrono::microseconds(o.spin_us);
  auto dom = RemoteDomain::Connect(ro);
  if (!dom.ok()) return dom.status();
  return std::unique_ptr<XenChannel>(new EmulatorChannel(o.address, std::move(*dom)));
}

}  // namespace vioport::xen

namespace vioport {
void RegisterXenEmulatorChannel() {
  xen::XenChannels::Add("emu", xen::OpenEmulatorChannel);
  xen::XenChannelAdopters::Add("emu", [](HandoverReader& in) -> absl::StatusOr<std::unique_ptr<xen::XenChannel>> {
    std::string socket;
    if (absl::Status s = in.Str(&socket, 4096, "xenemud socket"); !s.ok()) return s;
    auto dom = xen::RemoteDomain::Adopt(in);
    if (!dom.ok()) return dom.status();
    return std::unique_ptr<xen::XenChannel>(new xen::EmulatorChannel(socket, std::move(*dom)));
  });
}
}  // namespace vioport
