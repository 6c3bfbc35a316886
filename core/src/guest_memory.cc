// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/guest_memory.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "absl/strings/str_format.h"

namespace vioport {

RegionMemory::RegionMemory(std::vector<Region> regions) : GuestMemory(true) {
  for (const auto& r : regions) {
    // Constructor form is for trusted callers (tests); a bad table is a bug.
    absl::Status s = AddRegion(r);
    if (!s.ok()) regions_.clear();
  }
}

absl::Status RegionMemory::AddRegion(const Region& r) {
  if (r.size == 0) return absl::InvalidArgumentError("memory region of size 0");
  if (r.addr + r.size < r.addr)
    return absl::InvalidArgumentError(
        absl::StrFormat("memory region 0x%x+0x%x wraps the address space", r.addr, r.size));
  for (const auto& o : regions_) {
    if (r.addr < o.addr + o.size && o.addr < r.addr + r.size)
      return absl::InvalidArgumentError(absl::StrFormat(
          "memory region 0x%x+0x%x overlaps 0x%x+0x%x", r.addr, r.size, o.addr, o.size));
  }
  regions_.push_back(r);
  std::sort(regions_.begin(), regions_.end(),
            [](const Region& a, const Region& b) { return a.addr < b.addr; });
  // One region: every translation is the inline flat path.
  if (regions_.size() == 1)
    SetFlatMapping(r.addr, r.size, r.host, r.access, /*only=*/true);
  else
    ClearFlatMapping();
  return absl::OkStatus();
}

const RegionMemory::Region* RegionMemory::Find(uint64_t addr) const {
  auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                             [](uint64_t a, const Region& r) { return a < r.addr; });
  if (it == regions_.begin()) return nullptr;
  --it;
  if (addr - it->addr >= it->size) return nullptr;
  return &*it;
}

uint8_t* RegionMemory::DoMap(uint64_t addr, uint64_t len, Access access) {
  const Region* r = Find(addr);
  if (!r || !Allows(r->access, access)) return nullptr;
  uint64_t off = addr - r->addr;
  if (len > r->size - off) return nullptr;
  return r->host + off;
}

template <typename Fn>
absl::Status RegionMemory::Walk(uint64_t addr, uint64_t len, Access access, Fn&& fn) {
  uint64_t done = 0;
  while (done < len) {
    uint64_t a = addr + done;
    if (a < addr) return absl::OutOfRangeError(absl::StrFormat("range 0x%x+0x%x wraps", addr, len));
    const Region* r = Find(a);
    if (!r)
      return absl::OutOfRangeError(
          absl::StrFormat("address 0x%x (in 0x%x+0x%x) is outside guest memory", a, addr, len));
    if (!Allows(r->access, access))
      return absl::PermissionDeniedError(absl::StrFormat("address 0x%x: access not granted", a));
    uint64_t off = a - r->addr;
    uint64_t n = std::min(len - done, r->size - off);
    fn(r->host + off, done, n);
    done += n;
  }
  return absl::OkStatus();
}

namespace {
// A naturally aligned 2-, 4- or 8-byte copy is one access, as a DMA or copy
// engine moves a ring index: memcpy may split it into overlapping loads and
// let a concurrent store from the other side be seen torn.
template <typename T>
bool CopyWord(uint8_t* to, const uint8_t* from, uint64_t n, bool host_is_src) {
  const uint8_t* h = host_is_src ? from : to;
  if (n != sizeof(T) || reinterpret_cast<uintptr_t>(h) % sizeof(T)) return false;
  T v;
  if (host_is_src) {
    v = std::atomic_ref<T>(*reinterpret_cast<T*>(const_cast<uint8_t*>(from))).load(std::memory_order_relaxed);
    std::memcpy(to, &v, sizeof v);
  } else {
    std::memcpy(&v, from, sizeof v);
    std::atomic_ref<T>(*reinterpret_cast<T*>(to)).store(v, std::memory_order_relaxed);
  }
  return true;
}
void CopyOut(uint8_t* dst, const uint8_t* host, uint64_t n) {
  if (!CopyWord<uint16_t>(dst, host, n, true) && !CopyWord<uint32_t>(dst, host, n, true) &&
      !CopyWord<uint64_t>(dst, host, n, true))
    std::memcpy(dst, host, n);
}
void CopyIn(uint8_t* host, const uint8_t* src, uint64_t n) {
  if (!CopyWord<uint16_t>(host, src, n, false) && !CopyWord<uint32_t>(host, src, n, false) &&
      !CopyWord<uint64_t>(host, src, n, false))
    std::memcpy(host, src, n);
}
}  // namespace

absl::Status RegionMemory::Read(uint64_t addr, void* dst, uint64_t len) {
  auto* out = static_cast<uint8_t*>(dst);
  return Walk(addr, len, Access::kRead, [&](uint8_t* h, uint64_t at, uint64_t n) { CopyOut(out + at, h, n); });
}

absl::Status RegionMemory::Write(uint64_t addr, const void* src, uint64_t len) {
  auto* in = static_cast<const uint8_t*>(src);
  return Walk(addr, len, Access::kWrite, [&](uint8_t* h, uint64_t at, uint64_t n) { CopyIn(h, in + at, n); });
}

bool RegionMemory::Accessible(uint64_t addr, uint64_t len, Access access) {
  return Walk(addr, len, access, [](uint8_t*, uint64_t, uint64_t) {}).ok();
}

}  // namespace vioport
