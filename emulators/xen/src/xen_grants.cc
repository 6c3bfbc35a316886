// SPDX-License-Identifier: Apache-2.0
#include "vioport/emulators/xen_grants.h"

// Checked against the real public header (it needs <cstdint> first).
#include <cstdint>
#include <xen/grant_table.h>

#include <bit>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace vioport::xen {

static_assert(std::endian::native == std::endian::little, "v1 grant entries are modelled little-endian (x86)");
static_assert(sizeof(grant_entry_v1_t) == kGrantEntryV1Bytes);
static_assert(offsetof(grant_entry_v1_t, flags) == 0 && offsetof(grant_entry_v1_t, domid) == 2 &&
              offsetof(grant_entry_v1_t, frame) == 4);
static_assert(GTF_permit_access == gtf::kPermitAccess && GTF_accept_transfer == gtf::kAcceptTransfer &&
              GTF_transitive == gtf::kTransitive && GTF_type_mask == gtf::kTypeMask);
static_assert(GTF_readonly == gtf::kReadonly && GTF_reading == gtf::kReading && GTF_writing == gtf::kWriting &&
              GTF_sub_page == gtf::kSubPage);
static_assert(GNTST_okay == gntst::kOkay && GNTST_general_error == gntst::kGeneralError &&
              GNTST_bad_domain == gntst::kBadDomain && GNTST_bad_gntref == gntst::kBadGntref &&
              GNTST_bad_handle == gntst::kBadHandle && GNTST_bad_virt_addr == gntst::kBadVirtAddr &&
              GNTST_bad_dev_addr == gntst::kBadDevAddr && GNTST_no_device_space == gntst::kNoDeviceSpace &&
              GNTST_permission_denied == gntst::kPermissionDenied && GNTST_bad_page == gntst::kBadPage &&
              GNTST_bad_copy_arg == gntst::kBadCopyArg && GNTST_address_too_big == gntst::kAddressTooBig &&
              GNTST_eagain == gntst::kEagain && GNTST_no_space == gntst::kNoSpace);
static_assert(GNTCOPY_source_gref == kGntcopySourceGref && GNTCOPY_dest_gref == kGntcopyDestGref);
static_assert(DOMID_SELF == kDomidSelf);
static_assert(GNTTAB_NR_RESERVED_ENTRIES == kGrantReservedEntries);

namespace {

constexpr int kSetStatusRetries = 4;  // Xen gives up on an unstable entry after 4 attempts

// The {flags, domid} word (little-endian: flags in the low half) and the frame.
std::atomic_ref<uint32_t> ComboWord(uint8_t* entry) {
  return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(entry));
}
std::atomic_ref<uint32_t> FrameWord(uint8_t* entry) {
  return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(entry + 4));
}
constexpr uint16_t Flags(uint32_t combo) { return static_cast<uint16_t>(combo & 0xFFFFu); }
constexpr DomId Domid(uint32_t combo) { return static_cast<DomId>(combo >> 16); }
constexpr uint32_t Combo(uint16_t flags, DomId domid) {
  return static_cast<uint32_t>(flags) | (static_cast<uint32_t>(domid) << 16);
}

void Delay(uint64_t ns) {
  if (ns != 0) std::this_thread::sleep_for(std::chrono::nanoseconds(ns));
}

}  // namespace

// ---- GrantTableWriter ---------------------------------------------------------

bool GrantTableWriter::GrantAccess(GrantRef ref, DomId grantee, uint32_t frame, bool readonly) {
  if (ref >= nr_entries_) return false;
  uint8_t* e = table_ + static_cast<uint64_t>(ref) * kGrantEntryV1Bytes;
  FrameWord(e).store(frame, std::memory_order_relaxed);
  const uint16_t flags = gtf::kPermitAccess | (readonly ? gtf::kReadonly : 0);
  ComboWord(e).store(Combo(flags, grantee), std::memory_order_release);
  return true;
}

bool GrantTableWriter::EndAccess(GrantRef ref) {
  if (ref >= nr_entries_) return false;
  auto combo = ComboWord(table_ + static_cast<uint64_t>(ref) * kGrantEntryV1Bytes);
  uint32_t old = combo.load(std::memory_order_acquire);
  for (;;) {
    if (Flags(old) & (gtf::kReading | gtf::kWriting)) return false;
    if (combo.compare_exchange_weak(old, old & 0xFFFF0000u, std::memory_order_acq_rel)) return true;
  }
}

bool GrantTableWriter::MakeReadonly(GrantRef ref) {
  if (ref >= nr_entries_) return false;
  auto combo = ComboWord(table_ + static_cast<uint64_t>(ref) * kGrantEntryV1Bytes);
  uint32_t old = combo.load(std::memory_order_acquire);
  for (;;) {
    if (Flags(old) & gtf::kWriting) return false;
    if (combo.compare_exchange_weak(old, old | gtf::kReadonly, std::memory_order_acq_rel)) return true;
  }
}

GrantEntryV1 GrantTableWriter::Read(GrantRef ref) const {
  if (ref >= nr_entries_) return {};
  uint8_t* e = table_ + static_cast<uint64_t>(ref) * kGrantEntryV1Bytes;
  const uint32_t combo = ComboWord(e).load(std::memory_order_acquire);
  return GrantEntryV1{Flags(combo), Domid(combo), FrameWord(e).load(std::memory_order_relaxed)};
}

void GrantTableWriter::WriteRaw(GrantRef ref, GrantEntryV1 entry) {
  if (ref >= nr_entries_) return;
  uint8_t* e = table_ + static_cast<uint64_t>(ref) * kGrantEntryV1Bytes;
  FrameWord(e).store(entry.frame, std::memory_order_relaxed);
  ComboWord(e).store(Combo(entry.flags, entry.domid), std::memory_order_release);
}

// ---- GrantTables ----------------------------------------------------------------

GrantTables::GrantTables(GrantTablesConfig config) : config_(config) {}

GrantTables::~GrantTables() {
  absl::MutexLock lock(&mu_);
  // Break granter references held by maptracks (a domain may map itself).
  for (auto& [id, d] : domains_) d->maptrack.clear();
  domains_.clear();
  dying_.clear();
}

absl::Status GrantTables::AddDomain(DomId id, uint8_t* memory, uint64_t bytes) {
  if (id >= kDomidSelf) return absl::InvalidArgumentError(absl::StrCat("domid ", id, " is reserved"));
  if (memory == nullptr || bytes == 0 || bytes % kXenPageSize != 0 ||
      reinterpret_cast<uintptr_t>(memory) % alignof(uint64_t) != 0)
    return absl::InvalidArgumentError("domain memory must be non-empty, 8-byte aligned and page-granular");
  if (bytes / kXenPageSize > (uint64_t{1} << 32))
    return absl::InvalidArgumentError("domain memory exceeds 32-bit frame numbers");
  absl::MutexLock lock(&mu_);
  if (domains_.count(id)) return absl::AlreadyExistsError(absl::StrCat("domain ", id, " exists"));
  auto d = std::make_shared<Domain>();
  d->id = id;
  d->memory = memory;
  d->bytes = bytes;
  domains_[id] = std::move(d);
  return absl::OkStatus();
}

absl::Status GrantTables::RemoveDomain(DomId id) {
  absl::MutexLock lock(&mu_);
  auto it = domains_.find(id);
  if (it == domains_.end()) return absl::NotFoundError(absl::StrCat("no domain ", id));
  std::shared_ptr<Domain> d = it->second;
  // As grantee: release its mappings of others (and of itself).
  for (GrantHandle h = 0; h < d->maptrack.size(); ++h)
    if (d->maptrack[h].in_use) UnmapLocked(*d, h);
  d->maptrack.clear();
  d->free_handles.clear();
  d->dying = true;
  domains_.erase(it);
  std::erase_if(dying_, [](const std::weak_ptr<Domain>& w) { return w.expired(); });
  if (d->foreign_maps > 0) dying_.push_back(d);
  return absl::OkStatus();
}

std::shared_ptr<GrantTables::Domain> GrantTables::Find(DomId id) const {
  auto it = domains_.find(id);
  return it == domains_.end() ? nullptr : it->second;
}

int16_t GrantTables::SetupTable(DomId domid, uint64_t first_frame, uint32_t nr_frames) {
  absl::MutexLock lock(&mu_);
  int16_t rc = gntst::kOkay;
  std::shared_ptr<Domain> d = Find(domid);
  if (!d) {
    rc = gntst::kBadDomain;
  } else if (nr_frames > config_.max_grant_frames || first_frame > d->pages() ||
             nr_frames > d->pages() - first_frame) {
    rc = gntst::kGeneralError;
  } else {
    for (const auto& [ref, act] : d->active)
      if (act.pins() != 0) rc = gntst::kGeneralError;  // cannot move a table with pinned entries
    if (rc == gntst::kOkay) {
      d->active.clear();
      d->table_frame = first_frame;
      d->nr_frames = nr_frames;
    }
  }
  Count(stats_.setup, rc);
  return rc;
}

int16_t GrantTables::SetStatus(Domain& rd, GrantRef ref, DomId ldom, bool readonly) {
  uint8_t* e = rd.memory + rd.table_frame * kXenPageSize + static_cast<uint64_t>(ref) * kGrantEntryV1Bytes;
  auto combo = ComboWord(e);
  uint32_t seen = combo.load(std::memory_order_acquire);
  for (int attempt = 0; attempt < kSetStatusRetries; ++attempt) {
    const uint16_t flags = Flags(seen);
    if ((flags & gtf::kTypeMask) != gtf::kPermitAccess || Domid(seen) != ldom) return gntst::kGeneralError;
    uint16_t want = flags | gtf::kReading;
    if (!readonly) {
      if (flags & gtf::kReadonly) return gntst::kGeneralError;  // write pin of a r/o grant
      want |= gtf::kWriting;
    }
    if (combo.compare_exchange_strong(seen, Combo(want, ldom), std::memory_order_acq_rel)) return gntst::kOkay;
    ++stats_.cas_retries;  // `seen` now holds what the granter wrote meanwhile
  }
  ++stats_.unstable;
  return gntst::kGeneralError;
}

void GrantTables::ClearFlags(Domain& rd, GrantRef ref, uint16_t mask) {
  uint8_t* e = rd.memory + rd.table_frame * kXenPageSize + static_cast<uint64_t>(ref) * kGrantEntryV1Bytes;
  ComboWord(e).fetch_and(~static_cast<uint32_t>(mask), std::memory_order_acq_rel);
}

int16_t GrantTables::Acquire(Domain& rd, GrantRef ref, DomId ldom, bool readonly, bool copy, uint32_t* frame) {
  if (ref >= rd.entries()) return gntst::kBadGntref;
  auto [it, created] = rd.active.try_emplace(ref);
  Active& act = it->second;
  const bool pinned = act.pins() != 0;
  if (pinned && act.holder != ldom) return gntst::kGeneralError;
  const bool set_status = !pinned || (!readonly && act.writers() == 0);
  if (set_status) {
    const int16_t rc = SetStatus(rd, ref, ldom, readonly);
    if (rc != gntst::kOkay) {
      if (!pinned) rd.active.erase(it);
      return rc;
    }
    if (!pinned) {
      uint8_t* e = rd.memory + rd.table_frame * kXenPageSize + static_cast<uint64_t>(ref) * kGrantEntryV1Bytes;
      const uint32_t f = FrameWord(e).load(std::memory_order_relaxed);  // read once, cached while pinned
      if (f >= rd.pages()) {
        // Undo what this call set (Xen: unlock_out_clear).
        ClearFlags(rd, ref, readonly ? gtf::kReading : (gtf::kReading | gtf::kWriting));
        rd.active.erase(it);
        return gntst::kBadPage;
      }
      act.holder = ldom;
      act.frame = f;
    }
  }
  if (copy) {
    ++(readonly ? act.copy_r : act.copy_w);
  } else {
    ++(readonly ? act.map_r : act.map_w);
  }
  *frame = act.frame;
  return gntst::kOkay;
}

void GrantTables::Release(Domain& rd, GrantRef ref, bool readonly, bool copy) {
  auto it = rd.active.find(ref);
  if (it == rd.active.end()) return;  // cannot happen: every pin has an active entry
  Active& act = it->second;
  uint32_t& counter = copy ? (readonly ? act.copy_r : act.copy_w) : (readonly ? act.map_r : act.map_w);
  if (counter == 0) return;
  --counter;
  uint16_t clear = 0;
  if (!readonly && act.writers() == 0) clear |= gtf::kWriting;
  if (act.pins() == 0) clear |= gtf::kReading;
  if (clear) ClearFlags(rd, ref, clear);
  if (act.pins() == 0) rd.active.erase(it);
}

MapResult GrantTables::Map(DomId grantee, DomId granter, GrantRef ref, bool readonly) {
  Delay(map_delay_ns_.load(std::memory_order_relaxed));
  absl::MutexLock lock(&mu_);
  MapResult r;
  auto finish = [&](int16_t status) {
    r.status = status;
    Count(stats_.map, status);
    return r;
  };
  if (inject_map_n_ > 0) {
    --inject_map_n_;
    ++stats_.injected;
    return finish(inject_map_status_);
  }
  std::shared_ptr<Domain> ld = Find(grantee);
  std::shared_ptr<Domain> rd = Find(granter);
  if (!ld || !rd) return finish(gntst::kBadDomain);
  // A maptrack handle first (Xen takes it before looking at the ref).
  if (ld->free_handles.empty() && ld->maptrack.size() >= config_.max_maptrack_handles)
    return finish(gntst::kNoSpace);
  uint32_t frame = 0;
  const int16_t rc = Acquire(*rd, ref, grantee, readonly, /*copy=*/false, &frame);
  if (rc != gntst::kOkay) return finish(rc);
  GrantHandle h;
  if (!ld->free_handles.empty()) {
    h = ld->free_handles.front();
    ld->free_handles.pop_front();
  } else {
    h = static_cast<GrantHandle>(ld->maptrack.size());
    ld->maptrack.emplace_back();
  }
  ld->maptrack[h] = MapEntry{true, rd, ref, readonly};
  ++ld->live_handles;
  ++rd->foreign_maps;
  r.handle = h;
  r.frame = frame;
  r.addr = rd->memory + static_cast<uint64_t>(frame) * kXenPageSize;
  return finish(gntst::kOkay);
}

int16_t GrantTables::UnmapLocked(Domain& ld, GrantHandle handle) {
  if (handle >= ld.maptrack.size() || !ld.maptrack[handle].in_use) return gntst::kBadHandle;
  MapEntry entry = std::move(ld.maptrack[handle]);
  ld.maptrack[handle] = MapEntry{};
  ld.free_handles.push_back(handle);
  --ld.live_handles;
  Release(*entry.granter, entry.ref, entry.readonly, /*copy=*/false);
  --entry.granter->foreign_maps;
  return gntst::kOkay;
}

int16_t GrantTables::Unmap(DomId grantee, GrantHandle handle) {
  Delay(unmap_delay_ns_.load(std::memory_order_relaxed));
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Domain> ld = Find(grantee);
  const int16_t rc = ld ? UnmapLocked(*ld, handle) : gntst::kBadHandle;
  Count(stats_.unmap, rc);
  return rc;
}

size_t GrantTables::UnmapAll(DomId grantee) {
  Delay(unmap_delay_ns_.load(std::memory_order_relaxed));
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Domain> ld = Find(grantee);
  if (!ld) return 0;
  size_t n = 0;
  for (GrantHandle h = 0; h < ld->maptrack.size(); ++h) {
    if (!ld->maptrack[h].in_use) continue;
    Count(stats_.unmap, UnmapLocked(*ld, h));
    ++n;
  }
  return n;
}

int16_t GrantTables::CopyOne(const std::shared_ptr<Domain>& caller, CopySegment& seg) {
  struct Side {
    const CopyPtr* ptr;
    bool gref;
    bool readonly;
    std::shared_ptr<Domain> dom;
    uint8_t* page = nullptr;
    bool pinned = false;
  };
  Side sides[2] = {{&seg.source, (seg.flags & kGntcopySourceGref) != 0, true, nullptr},
                   {&seg.dest, (seg.flags & kGntcopyDestGref) != 0, false, nullptr}};
  // Domains (source then dest): only DOMID_SELF may name a frame.
  for (Side& s : sides) {
    if (!s.gref && s.ptr->domid != kDomidSelf) return gntst::kPermissionDenied;
    s.dom = s.ptr->domid == kDomidSelf ? caller : Find(s.ptr->domid);
    if (!s.dom) return gntst::kBadDomain;
  }
  auto release = [&] {
    for (Side& s : sides)
      if (s.pinned) Release(*s.dom, s.ptr->ref_or_gmfn, s.readonly, /*copy=*/true);
  };
  for (Side& s : sides) {
    uint32_t frame = s.ptr->ref_or_gmfn;
    if (s.gref) {
      const int16_t rc = Acquire(*s.dom, s.ptr->ref_or_gmfn, caller->id, s.readonly, /*copy=*/true, &frame);
      if (rc != gntst::kOkay) {
        release();
        return rc;
      }
      s.pinned = true;
    } else if (frame >= s.dom->pages()) {
      release();
      return gntst::kBadPage;
    }
    s.page = s.dom->memory + static_cast<uint64_t>(frame) * kXenPageSize;
  }
  int16_t rc = gntst::kOkay;
  if (uint32_t{seg.source.offset} + seg.len > kXenPageSize || uint32_t{seg.dest.offset} + seg.len > kXenPageSize) {
    rc = gntst::kBadCopyArg;
  } else {
    std::memmove(sides[1].page + seg.dest.offset, sides[0].page + seg.source.offset, seg.len);
    stats_.copy_bytes += seg.len;
  }
  release();
  return rc;
}

void GrantTables::Copy(DomId caller, std::span<CopySegment> segments) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Domain> self = Find(caller);
  for (CopySegment& seg : segments) {
    seg.status = self ? CopyOne(self, seg) : gntst::kBadDomain;
    Count(stats_.copy, seg.status);
  }
}

void GrantTables::InjectMapFailures(uint32_t n, int16_t status) {
  absl::MutexLock lock(&mu_);
  inject_map_n_ = n;
  inject_map_status_ = status;
}

void GrantTables::SetMapDelay(uint64_t nanoseconds) { map_delay_ns_.store(nanoseconds, std::memory_order_relaxed); }
void GrantTables::SetUnmapDelay(uint64_t nanoseconds) {
  unmap_delay_ns_.store(nanoseconds, std::memory_order_relaxed);
}

GrantStats GrantTables::Stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

uint32_t GrantTables::TableEntries(DomId domid) const {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Domain> d = Find(domid);
  return d ? d->entries() : 0;
}

GrantTableWriter GrantTables::Writer(DomId domid) const {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Domain> d = Find(domid);
  if (!d || d->nr_frames == 0) return GrantTableWriter(nullptr, 0);
  return GrantTableWriter(d->memory + d->table_frame * kXenPageSize, d->entries());
}

uint32_t GrantTables::LiveHandles(DomId grantee) const {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Domain> d = Find(grantee);
  return d ? d->live_handles : 0;
}

uint64_t GrantTables::ForeignMappingsOf(DomId granter) const {
  absl::MutexLock lock(&mu_);
  uint64_t n = 0;
  if (std::shared_ptr<Domain> d = Find(granter)) n += d->foreign_maps;
  for (const auto& w : dying_)
    if (std::shared_ptr<Domain> d = w.lock(); d && d->id == granter) n += d->foreign_maps;
  return n;
}

PinCounts GrantTables::Pins(DomId granter, GrantRef ref) const {
  absl::MutexLock lock(&mu_);
  const Domain* d = Find(granter).get();
  std::shared_ptr<Domain> hold;
  if (!d) {
    for (const auto& w : dying_)
      if ((hold = w.lock()) && hold->id == granter) d = hold.get();
  }
  if (!d) return {};
  auto it = d->active.find(ref);
  if (it == d->active.end()) return {};
  const Active& a = it->second;
  return PinCounts{a.map_r, a.map_w, a.copy_r, a.copy_w, a.holder};
}

}  // namespace vioport::xen
