// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: the Xen grant-table model (xen::GrantTables) against a
// hostile granter and a hostile grantee. The granter scribbles on its own
// table (raw entries, the end-access protocol, read-only flips) while the
// grantee maps, unmaps and copies with any refs, offsets, lengths and flags,
// and either side may re-set-up its table.
//
// Input: a sequence of 8-byte ops {kind u8, a u8, b u16, c u32}:
//   kind % 8 == 0  granter WriteRaw(ref = b % 1100, {flags = a | (c >> 16) << 8, domid = c & 0xff, frame = c >> 8 & 0xff})
//   kind % 8 == 1  grantee Map(granter, ref = b, readonly = a & 1)   (handles kept)
//   kind % 8 == 2  grantee Unmap(handle #b of those kept, or raw c)
//   kind % 8 == 3  grantee Copy: up to 4 segments from the next bytes
//   kind % 8 == 4  granter GrantAccess(ref = b, grantee or c & 3, frame = c >> 2, readonly = a & 1)
//   kind % 8 == 5  granter EndAccess(b) / MakeReadonly(b) (a & 1)
//   kind % 8 == 6  SetupTable(granter or grantee (a & 1), first = c % 70, frames = b % 4)
//   kind % 8 == 7  injected map failures / UnmapAll(grantee)
// Checked besides ASan/UBSan: bytes outside both domains' memory (guard
// pages) never change, a successful Map points inside the granter's
// memory, every status is a GNTST code, and once the grantee has unmapped
// everything no pin and no foreign mapping remains.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vioport/emulators/xen_grants.h"

using namespace vioport::xen;

namespace {

constexpr DomId kGranter = 1, kGrantee = 2;
constexpr uint64_t kGranterPages = 64, kGranteePages = 8, kGuard = 4096;

void Check(bool ok) {
  if (!ok) std::abort();
}
bool IsGntst(int16_t s) { return s <= 0 && s >= gntst::kNoSpace; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // [guard][granter][guard][grantee][guard], 8-byte aligned.
  const size_t granter_bytes = kGranterPages * kXenPageSize, grantee_bytes = kGranteePages * kXenPageSize;
  std::vector<uint64_t> backing((3 * kGuard + granter_bytes + grantee_bytes) / 8, 0xEEEEEEEEEEEEEEEEull);
  uint8_t* base = reinterpret_cast<uint8_t*>(backing.data());
  uint8_t* granter = base + kGuard;
  uint8_t* grantee = granter + granter_bytes + kGuard;
  std::memset(granter, 0, granter_bytes);
  std::memset(grantee, 0, grantee_bytes);
  {
    GrantTables gt(GrantTablesConfig{4, 16});
    Check(gt.AddDomain(kGranter, granter, granter_bytes).ok());
    Check(gt.AddDomain(kGrantee, grantee, grantee_bytes).ok());
    Check(gt.SetupTable(kGranter, 0, 2) == gntst::kOkay);
    std::vector<GrantHandle> handles;
    for (size_t i = 0; i + 8 <= size; i += 8) {
      const uint8_t kind = data[i], a = data[i + 1];
      uint16_t b;
      uint32_t c;
      std::memcpy(&b, data + i + 2, 2);
      std::memcpy(&c, data + i + 4, 4);
      GrantTableWriter w = gt.Writer(kGranter);
      switch (kind % 8) {
        case 0:
          if (w.size()) w.WriteRaw(b % w.size(), {static_cast<uint16_t>(a | ((c >> 16) << 8)),
                                                  static_cast<DomId>(c & 0xff), (c >> 8) & 0xff});
          break;
        case 1: {
          const MapResult m = gt.Map(kGrantee, kGranter, b, a & 1);
          Check(IsGntst(m.status));
          if (m.status == gntst::kOkay) {
            Check(m.addr >= granter && m.addr + kXenPageSize <= granter + granter_bytes);
            handles.push_back(m.handle);
          }
          break;
        }
        case 2:
          if (!handles.empty() && !(a & 1)) {
            const size_t k = b % handles.size();
            Check(IsGntst(gt.Unmap(kGrantee, handles[k])));
            handles.erase(handles.begin() + static_cast<long>(k));
          } else {
            Check(IsGntst(gt.Unmap(kGrantee, c)));  // any handle, stale or never issued
          }
          break;
        case 3: {
          std::vector<CopySegment> segs;
          for (size_t j = i + 8; j + 8 <= size && segs.size() < 4 && segs.size() <= (a & 3u); j += 8) {
            CopySegment s;
            uint16_t ref, off;
            std::memcpy(&ref, data + j, 2);
            std::memcpy(&off, data + j + 2, 2);
            s.flags = data[j + 4] & 3;
            s.len = static_cast<uint16_t>(data[j + 5] * 17);
            const bool to_granter = data[j + 6] & 1;
            CopyPtr remote{ref, kGranter, static_cast<uint16_t>(off % 4200)};
            CopyPtr local{static_cast<uint32_t>(data[j + 7] % 12), (data[j + 6] & 2) ? kGrantee : kDomidSelf,
                          static_cast<uint16_t>(off >> 4)};
            s.source = to_granter ? local : remote;
            s.dest = to_granter ? remote : local;
            segs.push_back(s);
          }
          gt.Copy(kGrantee, segs);
          for (const CopySegment& s : segs) Check(IsGntst(s.status));
          break;
        }
        case 4:
          if (w.size()) (void)w.GrantAccess(b % w.size(), (c & 4) ? kGrantee : static_cast<DomId>(c & 3), c >> 2, a & 1);
          break;
        case 5:
          if (w.size()) (void)((a & 1) ? w.MakeReadonly(b % w.size()) : w.EndAccess(b % w.size()));
          break;
        case 6:
          Check(IsGntst(gt.SetupTable((a & 1) ? kGrantee : kGranter, c % 70, b % 4)));
          break;
        default:
          if (a & 1) {
            gt.InjectMapFailures(b % 3, gntst::kEagain);
          } else {
            gt.UnmapAll(kGrantee);
            handles.clear();
          }
          break;
      }
    }
    gt.UnmapAll(kGrantee);
    Check(gt.LiveHandles(kGrantee) == 0);
    Check(gt.ForeignMappingsOf(kGranter) == 0);
    for (GrantRef r = 0; r < gt.TableEntries(kGranter); ++r) Check(gt.Pins(kGranter, r) == PinCounts{});
  }
  // Nothing outside the two domains' memory was touched.
  const uint8_t* guards[3] = {base, granter + granter_bytes, grantee + grantee_bytes};
  for (const uint8_t* g : guards)
    for (size_t k = 0; k < kGuard; ++k) Check(g[k] == 0xEE);
  return 0;
}
