// SPDX-License-Identifier: Apache-2.0
#include "grant_memory.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/core/log.h"
#include "vioport/transports/xen_protocol.h"

namespace vioport::xen {
namespace {

// Grant-encoded memory: the copy path both strategies share.
class GrantMemoryBase : public GuestMemory {
 public:
  GrantMemoryBase(bool zero_copy, XenChannel& ch, DomId fe) : GuestMemory(zero_copy), ch_(ch), fe_(fe) {}
  GrantMemoryStats stats() const {
    GrantMemoryStats s;
    s.maps = maps_.load();
    s.map_failures = map_failures_.load();
    s.cached_pages = cached_pages_.load();
    s.copies = copies_.load();
    s.copy_bytes = copy_bytes_.load();
    s.copy_failures = copy_failures_.load();
    s.overflow = overflow_.load();
    return s;
  }

 protected:
  // GNTTABOP_copy of [addr, addr+len) (split at the grant's pages) to or
  // from `local`.
  absl::Status CopyRange(uint64_t addr, uint8_t* local, uint64_t len, bool to_foreign) {
    uint32_t ref, off;
    if (!DecodeGrant(addr, &ref, &off))
      return absl::OutOfRangeError(absl::StrFormat("address %#x is not grant-encoded (bit 63 clear)", addr));
    segs_.clear();
    uint64_t done = 0;
    while (done < len) {
      const uint64_t page = (off + done) / kPageSize;
      if (ref + page > 0xffffffffull) return absl::OutOfRangeError("grant range wraps");
      const uint32_t in_page = static_cast<uint32_t>((off + done) % kPageSize);
      const uint64_t n = std::min<uint64_t>(len - done, kPageSize - in_page);
      GrantCopySegment sg;
      sg.to_foreign = to_foreign;
      sg.domid = fe_;
      sg.ref = static_cast<GrantRef>(ref + page);
      sg.offset = static_cast<uint16_t>(in_page);
      sg.local = local + done;
      sg.len = static_cast<uint16_t>(n);
      segs_.push_back(sg);
      done += n;
    }
    if (segs_.empty()) return absl::OkStatus();
    ch_.GrantCopy(segs_);
    copies_ += segs_.size();
    for (const GrantCopySegment& sg : segs_) {
      if (sg.status == 0) continue;
      copy_failures_++;
      const std::string why = absl::StrCat("grant ", sg.ref, " of domain ", fe_, ": ", GntstName(sg.status), " (",
                                           sg.status, ") on ", to_foreign ? "write" : "read");
      if (sg.status == gntst::kBadGntref) return absl::OutOfRangeError(why);
      return absl::PermissionDeniedError(why);
    }
    copy_bytes_ += len;
    return absl::OkStatus();
  }

  XenChannel& ch_;
  const DomId fe_;
  std::vector<GrantCopySegment> segs_;
  std::atomic<uint64_t> maps_{0}, map_failures_{0}, cached_pages_{0}, copies_{0}, copy_bytes_{0}, copy_failures_{0},
      overflow_{0};
};

// grants=copy: every access is a grant copy; staging buffers are the
// channel's copy buffers (no bounce on the emulator).
class GrantCopyMemory final : public GrantMemoryBase {
 public:
  GrantCopyMemory(XenChannel& ch, DomId fe) : GrantMemoryBase(false, ch, fe) {}
  absl::Status Read(uint64_t addr, void* dst, uint64_t len) override {
    return CopyRange(addr, static_cast<uint8_t*>(dst), len, false);
  }
  absl::Status Write(uint64_t addr, const void* src, uint64_t len) override {
    return CopyRange(addr, const_cast<uint8_t*>(static_cast<const uint8_t*>(src)), len, true);
  }
  bool Accessible(uint64_t addr, uint64_t, Access) override {
    uint32_t ref, off;
    return DecodeGrant(addr, &ref, &off);  // the copies report the rest
  }
  uint8_t* AcquireStaging(size_t bytes) override { return ch_.AllocCopyBuffer(bytes); }
  void ReleaseStaging(uint8_t* b) override { ch_.FreeCopyBuffer(b); }
};

// grants=map: ranges are mapped (consecutive refs contiguously) and kept,
// like blkback's persistent grants, until the memory goes (device reset or
// disconnect). Pointers handed out stay valid that long, as GuestMemory
// promises, so nothing is evicted: past `cache_pages`, buffers go through
// grant copy instead (Map answers nullptr and the queues copy).
class GrantMapMemory final : public GrantMemoryBase {
 public:
  GrantMapMemory(XenChannel& ch, DomId fe, uint32_t cap) : GrantMemoryBase(true, ch, fe), cap_(cap) {}
  ~GrantMapMemory() override {
    for (auto& [ref, e] : cache_) (void)ch_.UnmapGrants(e.addr, e.pages);
    for (auto& e : retired_) (void)ch_.UnmapGrants(e.addr, e.pages);
  }
  absl::Status Read(uint64_t addr, void* dst, uint64_t len) override {
    if (uint8_t* p = DoMap(addr, len, Access::kRead)) {
      std::memcpy(dst, p, len);
      return absl::OkStatus();
    }
    return CopyRange(addr, static_cast<uint8_t*>(dst), len, false);
  }
  absl::Status Write(uint64_t addr, const void* src, uint64_t len) override {
    if (uint8_t* p = DoMap(addr, len, Access::kWrite)) {
      std::memcpy(p, src, len);
      return absl::OkStatus();
    }
    return CopyRange(addr, const_cast<uint8_t*>(static_cast<const uint8_t*>(src)), len, true);
  }
  bool Accessible(uint64_t addr, uint64_t len, Access access) override {
    if (DoMap(addr, len, access)) return true;
    // Not cached (the cache is full) or not mappable: try it once.
    uint32_t ref, off;
    if (!DecodeGrant(addr, &ref, &off)) return false;
    const uint64_t pages = Pages(ref, off, len);
    if (pages == 0) return false;
    const std::vector<GrantRef> refs = Refs(ref, pages);
    auto m = ch_.MapGrants(fe_, refs, Allows(access, Access::kWrite));
    // No room to map (the maptrack table is full, as a busy back-end's can
    // be): the access goes by grant copy, which checks the grant itself.
    if (!m.ok()) return absl::IsResourceExhausted(m.status());
    (void)ch_.UnmapGrants(*m, static_cast<uint32_t>(refs.size()));
    return true;
  }

 protected:
  uint8_t* DoMap(uint64_t addr, uint64_t len, Access access) override {
    uint32_t ref, off;
    if (!DecodeGrant(addr, &ref, &off)) return nullptr;
    const uint64_t pages = Pages(ref, off, len);
    if (pages == 0) return nullptr;
    const bool write = Allows(access, Access::kWrite);
    auto it = cache_.upper_bound(ref);
    if (it != cache_.begin()) {
      --it;
      const Entry& e = it->second;
      if (ref + pages <= uint64_t{it->first} + e.pages && (!write || e.writable))
        return e.addr + uint64_t{ref - it->first} * kPageSize + off;
    }
    if (cached_pages_.load() + pages > cap_) {
      overflow_++;
      return nullptr;
    }
    auto m = ch_.MapGrants(fe_, Refs(ref, pages), write);
    if (!m.ok()) {
      map_failures_++;
      if (map_failures_.load() <= 8 || (map_failures_.load() & 1023) == 0)
        VIOPORT_LOG(kWarning, "xen: domain ", fe_, " grant ", ref, "+", pages, ": ", m.status().message());
      return nullptr;
    }
    maps_++;
    cached_pages_ += pages;
    auto [pos, inserted] = cache_.try_emplace(ref, Entry{*m, static_cast<uint32_t>(pages), write});
    if (!inserted) {  // a narrower or read-only mapping of the same first ref: keep it alive, use the new one
      retired_.push_back(pos->second);
      pos->second = Entry{*m, static_cast<uint32_t>(pages), write};
    }
    return *m + off;
  }

 private:
  struct Entry {
    uint8_t* addr;
    uint32_t pages;
    bool writable;
  };
  // Grant pages [offset, offset + len) spans from `ref` (at least one);
  // 0 when more than 1024 or past the last ref.
  static uint64_t Pages(uint32_t ref, uint32_t off, uint64_t len) {
    const uint64_t pages = (off + std::max<uint64_t>(len, 1) + kPageSize - 1) / kPageSize;
    return pages > 1024 || ref + pages - 1 > 0xffffffffull ? 0 : pages;
  }
  static std::vector<GrantRef> Refs(uint32_t ref, uint64_t pages) {
    std::vector<GrantRef> refs;
    for (uint64_t i = 0; i < pages; ++i) refs.push_back(static_cast<GrantRef>(ref + i));
    return refs;
  }
  const uint32_t cap_;
  std::map<GrantRef, Entry> cache_;
  std::vector<Entry> retired_;
};

}  // namespace

std::shared_ptr<GuestMemory> MakeGrantMapMemory(XenChannel& ch, DomId fe, uint32_t cache_pages) {
  return std::make_shared<GrantMapMemory>(ch, fe, cache_pages);
}
std::shared_ptr<GuestMemory> MakeGrantCopyMemory(XenChannel& ch, DomId fe) {
  return std::make_shared<GrantCopyMemory>(ch, fe);
}
GrantMemoryStats GrantMemoryStatsOf(const GuestMemory& m) {
  const auto* g = dynamic_cast<const GrantMemoryBase*>(&m);
  return g ? g->stats() : GrantMemoryStats{};
}

}  // namespace vioport::xen
