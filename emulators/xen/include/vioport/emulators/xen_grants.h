// SPDX-License-Identifier: Apache-2.0
#pragma once

// Xen grant tables (v1) as an in-process model: the hypervisor side of
// GNTTABOP_setup_table / map_grant_ref / unmap_grant_ref / copy with Xen's
// checks and GNTST_ codes (docs/reference/xen.md sections 1, 2 and 8), plus
// GrantTableWriter, the granting guest's side (what a frontend writes).
//
// Model
//   * A domain is a span of page-granular memory owned by the caller; a frame
//     number (GFN) is a 4 KiB page index into it.
//   * A domain's v1 grant table lives IN ITS OWN MEMORY, nr_frames pages from
//     first_frame (SetupTable). Entry = {flags u16, domid u16, frame u32},
//     little-endian, 512 per page. Refs 0-7 are ordinary entries (Xen only
//     reserves them by convention for console / xenstore rings).
//   * Everything the granter writes is untrusted. The model reads each entry
//     with atomic loads and sets GTF_reading / GTF_writing with a 32-bit
//     compare-exchange on the {flags, domid} word, re-checking type, grantee
//     and GTF_readonly on every attempt, at most 4 attempts (Xen's retry
//     count; then GNTST_general_error, "shared grant entry is unstable").
//     Flags are cleared with an atomic and-not when the last pin of that kind
//     drops. The frame is read once, when the first pin is taken, and cached
//     in the active entry (as Xen's act->frame): later pins of a pinned entry
//     use the cached frame whatever the granter writes meanwhile.
//   * Pins: map pins live until Unmap; copy pins are taken and released
//     within one Copy segment. An entry with any pin has GTF_reading set; one
//     with a write pin also GTF_writing; so GrantTableWriter::EndAccess fails
//     while it is mapped or being copied.
//   * Maptrack: each grantee has at most max_maptrack_handles live handles
//     (GNTST_no_space beyond). Freed handles are reused oldest-first, as
//     Xen's maptrack free list does, so a stale handle may name a newer
//     mapping of the same grantee; a handle never handed out or currently
//     free answers GNTST_bad_handle.
//   * RemoveDomain(d): d's own mappings of others are unmapped (Xen's
//     gnttab_release_mappings); mappings OTHER domains hold of d's pages stay
//     valid until unmapped (new operations naming d get GNTST_bad_domain).
//     The caller must keep d's memory alive while ForeignMappingsOf(d) > 0:
//     the grantees still use it, and their unmaps clear flags in d's table.
//
// Check order and codes (Xen 4.17 grant_table.c):
//   Map: injected failure; grantee or granter not a live domain (also granter
//   == DOMID_SELF) -> bad_domain; no free maptrack handle -> no_space; ref >=
//   nr_frames*512 -> bad_gntref; entry already pinned by another domain ->
//   general_error; type != permit_access, domid != grantee, write map of a
//   GTF_readonly entry, or entry unstable -> general_error; frame outside the
//   granter's memory -> bad_page (Xen: get_paged_frame).
//   Copy, per segment, independently (each segment gets its own status and a
//   failing one does not stop the others): a frame (non-gref) side whose
//   domid is not DOMID_SELF -> permission_denied (checked source then dest);
//   unknown domain -> bad_domain; source claimed (gref: checks as Map for a
//   read pin; frame: must be inside the caller's memory else bad_page), then
//   dest (gref: write pin, readonly grant -> general_error); then offset+len >
//   4096 on either side -> bad_copy_arg; then memmove.
//   SetupTable: unknown domain -> bad_domain; nr_frames > max_grant_frames,
//   table outside the domain's memory, or any entry of the current table
//   pinned -> general_error.
//
// Thread safety: every GrantTables method may be called from any thread; one
// mutex guards the model. GrantTableWriter takes no lock (it is the guest
// writing its own memory, concurrently with the model).

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "vioport/emulators/xen_types.h"
#include "vioport/transports/xen_channel.h"

namespace vioport::xen {

using GrantRef = uint32_t;
using GrantHandle = uint32_t;

inline constexpr uint64_t kXenPageSize = 4096;
inline constexpr uint32_t kGrantEntryV1Bytes = 8;
inline constexpr uint32_t kGrantEntriesPerFrame = kXenPageSize / kGrantEntryV1Bytes;  // 512
inline constexpr uint32_t kGrantReservedEntries = 8;                                  // GNTTAB_NR_RESERVED_ENTRIES
inline constexpr GrantHandle kInvalidGrantHandle = 0xFFFFFFFFu;

// grant_entry_v1.flags (xen/grant_table.h GTF_*).
namespace gtf {
inline constexpr uint16_t kInvalid = 0;
inline constexpr uint16_t kPermitAccess = 1;
inline constexpr uint16_t kAcceptTransfer = 2;
inline constexpr uint16_t kTransitive = 3;
inline constexpr uint16_t kTypeMask = 3;
inline constexpr uint16_t kReadonly = 1u << 2;
inline constexpr uint16_t kReading = 1u << 3;
inline constexpr uint16_t kWriting = 1u << 4;
inline constexpr uint16_t kSubPage = 1u << 8;
}  // namespace gtf

// GNTST_* codes and GntstName: the transport's (xen_channel.h), used here.

// gnttab_copy.flags.
inline constexpr uint16_t kGntcopySourceGref = 1;
inline constexpr uint16_t kGntcopyDestGref = 2;

struct GrantEntryV1 {
  uint16_t flags = 0;
  DomId domid = 0;
  uint32_t frame = 0;
};

// The granting guest's view of its own table (no lock; atomics on the
// entries, as a guest kernel does). `table` must be 8-byte aligned.
class GrantTableWriter {
 public:
  GrantTableWriter(uint8_t* table, uint32_t nr_entries) : table_(table), nr_entries_(nr_entries) {}
  uint32_t size() const { return nr_entries_; }
  // gnttab_grant_foreign_access: frame, then a release store of {domid,
  // flags} (flags become visible last and together with the domid). Returns
  // false for ref out of range.
  bool GrantAccess(GrantRef ref, DomId grantee, uint32_t frame, bool readonly);
  // The safe end-access protocol: fails (false) while GTF_reading or
  // GTF_writing is set, else compare-exchanges flags to 0 (domid and frame
  // are left as they are).
  bool EndAccess(GrantRef ref);
  // RW -> RO: sets GTF_readonly by compare-exchange while !GTF_writing.
  bool MakeReadonly(GrantRef ref);
  GrantEntryV1 Read(GrantRef ref) const;
  // Raw stores (a hostile or buggy guest): no protocol at all.
  void WriteRaw(GrantRef ref, GrantEntryV1 entry);

 private:
  uint8_t* table_;
  uint32_t nr_entries_;
};

struct GrantTablesConfig {
  uint32_t max_grant_frames = 64;         // Xen gnttab_max_frames default => 32768 refs
  uint32_t max_maptrack_handles = 1024 * 256;  // per grantee (Xen: 1024 maptrack frames, 256 handles each)
};

struct MapResult {
  int16_t status = gntst::kGeneralError;
  GrantHandle handle = kInvalidGrantHandle;
  uint8_t* addr = nullptr;  // the granted page in the granter's memory
  uint32_t frame = 0;
};

// struct gnttab_copy: each side a grant (ref, domid = granter, offset) or,
// without its GNTCOPY_*_gref flag, a frame of the caller (gmfn, domid must be
// DOMID_SELF, offset).
struct CopyPtr {
  uint32_t ref_or_gmfn = 0;
  DomId domid = kDomidSelf;
  uint16_t offset = 0;
};
struct CopySegment {
  CopyPtr source;
  CopyPtr dest;
  uint16_t len = 0;
  uint16_t flags = 0;  // kGntcopySourceGref | kGntcopyDestGref
  int16_t status = 0;  // out
};

struct GrantOpCounters {
  uint64_t calls = 0;
  std::map<int16_t, uint64_t> by_status;  // GNTST code -> count
};

struct GrantStats {
  GrantOpCounters setup;
  GrantOpCounters map;
  GrantOpCounters unmap;
  GrantOpCounters copy;        // per segment
  uint64_t copy_bytes = 0;     // bytes of successful segments
  uint64_t cas_retries = 0;    // flag compare-exchanges lost to the granter
  uint64_t unstable = 0;       // entries given up after 4 lost attempts
  uint64_t injected = 0;       // injected map failures
};

struct PinCounts {
  uint32_t map_readers = 0;  // read-only map pins
  uint32_t map_writers = 0;  // read-write map pins
  uint32_t copy_readers = 0;
  uint32_t copy_writers = 0;
  DomId holder = 0;  // the grantee the active entry belongs to
  bool operator==(const PinCounts&) const = default;
};

class GrantTables {
 public:
  explicit GrantTables(GrantTablesConfig config = {});
  GrantTables(const GrantTables&) = delete;
  GrantTables& operator=(const GrantTables&) = delete;
  ~GrantTables();

  // ---- Domains ---------------------------------------------------------------
  // `memory` (caller-owned, at least 8-byte aligned, `bytes` a multiple of
  // 4 KiB) stays in use while the domain is present and, after RemoveDomain,
  // while ForeignMappingsOf(id) > 0. DOMID_SELF and ids >= 0x7FF0 are refused.
  absl::Status AddDomain(DomId id, uint8_t* memory, uint64_t bytes);
  absl::Status RemoveDomain(DomId id);

  // ---- Hypercalls (GNTST codes) ----------------------------------------------
  int16_t SetupTable(DomId domid, uint64_t first_frame, uint32_t nr_frames);
  MapResult Map(DomId grantee, DomId granter, GrantRef ref, bool readonly);
  int16_t Unmap(DomId grantee, GrantHandle handle);
  // Unmaps every live handle of `grantee` (a dying backend); returns how many.
  size_t UnmapAll(DomId grantee);
  // GNTTABOP_copy: fills each segment's status.
  void Copy(DomId caller, std::span<CopySegment> segments);

  // ---- Fault injection -------------------------------------------------------
  // The next n Map calls fail with `status` (e.g. GNTST_eagain) and do nothing.
  void InjectMapFailures(uint32_t n, int16_t status);
  // Slept before taking the lock in Map / Unmap (models mapping cost and the
  // TLB shootdown after unmap). 0 = none.
  void SetMapDelay(uint64_t nanoseconds);
  void SetUnmapDelay(uint64_t nanoseconds);

  // ---- Observation -----------------------------------------------------------
  GrantStats Stats() const;
  // Entries of the domain's table (0: none / unknown), and its writer.
  uint32_t TableEntries(DomId domid) const;
  GrantTableWriter Writer(DomId domid) const;  // size 0 when no table
  uint32_t LiveHandles(DomId grantee) const;
  // Mappings held by anyone of `granter`'s pages, live or removed granter.
  uint64_t ForeignMappingsOf(DomId granter) const;
  // Pins the model holds on (granter, ref); all zero when none.
  PinCounts Pins(DomId granter, GrantRef ref) const;

 private:
  struct Active {
    uint32_t map_r = 0, map_w = 0, copy_r = 0, copy_w = 0;
    DomId holder = 0;
    uint32_t frame = 0;
    uint32_t pins() const { return map_r + map_w + copy_r + copy_w; }
    uint32_t writers() const { return map_w + copy_w; }
  };
  struct Domain;
  struct MapEntry {
    bool in_use = false;
    std::shared_ptr<Domain> granter;
    GrantRef ref = 0;
    bool readonly = false;
  };
  struct Domain {
    DomId id = 0;
    uint8_t* memory = nullptr;
    uint64_t bytes = 0;
    bool dying = false;
    uint64_t table_frame = 0;
    uint32_t nr_frames = 0;
    std::unordered_map<GrantRef, Active> active;
    uint64_t foreign_maps = 0;  // map pins others hold on this domain
    std::vector<MapEntry> maptrack;
    std::deque<GrantHandle> free_handles;
    uint32_t live_handles = 0;
    uint32_t entries() const { return nr_frames * kGrantEntriesPerFrame; }
    uint64_t pages() const { return bytes / kXenPageSize; }
  };

  std::shared_ptr<Domain> Find(DomId id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes one pin of the given kind; on success stores the page's frame.
  int16_t Acquire(Domain& rd, GrantRef ref, DomId ldom, bool readonly, bool copy, uint32_t* frame)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Release(Domain& rd, GrantRef ref, bool readonly, bool copy) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int16_t SetStatus(Domain& rd, GrantRef ref, DomId ldom, bool readonly) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClearFlags(Domain& rd, GrantRef ref, uint16_t mask) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int16_t UnmapLocked(Domain& ld, GrantHandle handle) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int16_t CopyOne(const std::shared_ptr<Domain>& caller, CopySegment& seg) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void Count(GrantOpCounters& c, int16_t status) {
    ++c.calls;
    ++c.by_status[status];
  }

  const GrantTablesConfig config_;
  std::atomic<uint64_t> map_delay_ns_{0};
  std::atomic<uint64_t> unmap_delay_ns_{0};
  mutable absl::Mutex mu_;
  std::map<DomId, std::shared_ptr<Domain>> domains_ ABSL_GUARDED_BY(mu_);
  // Removed granters still mapped by someone (kept for ForeignMappingsOf).
  std::vector<std::weak_ptr<Domain>> dying_ ABSL_GUARDED_BY(mu_);
  uint32_t inject_map_n_ ABSL_GUARDED_BY(mu_) = 0;
  int16_t inject_map_status_ ABSL_GUARDED_BY(mu_) = 0;
  GrantStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vioport::xen
