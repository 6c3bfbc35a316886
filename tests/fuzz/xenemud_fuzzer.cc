// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: xenemud's request decoding (xen::DomainSession over the
// shared xen::Domains, the part of xenemud that has no socket) against
// hostile domains. Up to four connections, interleaved, say HELLOs (garbage
// or plausible: any domid, RAM and table sizes, pool sizes over the cap,
// ids connected or still dying), make mailbox hypercalls with any opcode and
// arguments (grant copies whose segments in the argument page point
// anywhere, counts past the page, stale and forged handles, event channels
// to any domain and port), send map-socket requests (any granter and ref,
// read-only or not, malformed), scribble on their own grant tables and
// memory and on their event ring's consumer index, and die while others map
// their pages. No socket, thread or poll: the Host is a fake whose memfd is
// a size and a seal flag, whose memories and mailbox pages are heap pages
// between guard pages and whose page fds are numbers.
//
// Checked besides ASan/UBSan (a domain's memory is freed when Domains lets
// it go, so a later touch is a use-after-free):
//   * every HELLO is accepted exactly when the protocol says (size, magic,
//     version, domid, memfd, table and RAM sizes, seal and size of the
//     memfd, xenstore path length, id free of live and zombie domains, pool
//     cap, host resources); a refusal leaves no domain, pool page, memory or
//     xenstore identity behind;
//   * every answer is in the protocol's codes: GNTST codes for table, map,
//     unmap and each copy segment, ports or -errno for event channels, a
//     pending count within what was asked, -ENOSYS for unknown opcodes or
//     without a HELLO;
//   * guard bytes around every memory and mailbox page stay intact;
//   * another domain's memory changes only in pages it has granted writable
//     to the caller at some time, and its grant table only in the
//     GTF_reading / GTF_writing bits: nothing outside what was granted;
//   * a successful map hands out the pool page the entry names, for an
//     entry that grants this domain that access;
//   * the registry stays consistent: pool pages in use are those of known
//     domains, a dead domain stays (a zombie) exactly while someone maps its
//     pages and its memory is freed once no one does, its own maps and
//     ports are gone, xenstore knows exactly the live domains, and after
//     every domain has died nothing is left.
//
// Input: a sequence of ops; each is a byte `kind`, a slot byte (% 4), then
// its own bytes (missing bytes read as 0):
//   kind % 8 == 0  connect: flags u8, memfd pages u8 % 21, then Hello (32
//                  bytes); unless flags & 0x10 magic and version are made
//                  valid, the domid is one of kDomids, grant_frames % 6,
//                  memory pages % 20, grant_pages % 12. flags: 1 memfd
//                  passed, 2 sealed, 4 memory fails, 8 channels fail, 0x20
//                  one byte short, 0x40 xenstore fails, 0x80 page fds fail
//   kind % 8 == 1  the slot's domain dies
//   kind % 8 == 2  hypercall: opcode selector u8, 8 argument selectors (Arg)
//   kind % 8 == 3  the domain writes its memory: offset u16 * 8, len u8 % 65
//   kind % 8 == 4  the domain writes a grant entry: ref u16, domid selector,
//                  frame u8, flags selector u8, raw flags u16
//   kind % 8 == 5  the domain writes copy segment (u8 % 8) in its argument
//                  page: source {ref/gmfn, domid, offset}, dest {...}, len,
//                  flags, each from selectors
//   kind % 8 == 6  map request: flags u8 (1 read-only, 2 raw magic, 4 short,
//                  8 reply not delivered), granter selector, ref u16
//   kind % 8 == 7  the domain's event ring: mode u8, value u32
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "../../emulators/xen/src/xen_domain_session.h"
#include "vioport/emulators/hcall_mailbox.h"

using namespace vioport;
using namespace vioport::xen;

namespace {

constexpr size_t kSlots = 4;
constexpr uint64_t kPage = kXenPageSize;
constexpr uint64_t kGuard = 4096;
constexpr uint8_t kGuardByte = 0xEE;
constexpr uint32_t kMaxFrames = 4;
constexpr uint64_t kMaxRamPages = 16;
constexpr uint64_t kPoolCap = 24;
constexpr uint32_t kMaptrack = 16;
constexpr DomId kDomids[8] = {0, 1, 2, 3, 1234, 4, 12345, 0x7FF0};
// 101 characters: ".d" and a domid of 5 digits make the path too long for
// sun_path (108), so that refusal is reachable.
const std::string kXsPath = "/run/xen/" + std::string(92, 'x');

// A broken invariant names its line before aborting, so a crash file tells
// which check it broke.
void CheckAt(bool ok, int line) {
  if (ok) return;
  std::fprintf(stderr, "invariant broken at %s:%d\n", __FILE__, line);
  std::abort();
}
#define Check(ok) CheckAt((ok), __LINE__)
bool IsGntst(int64_t s) { return s <= 0 && s >= gntst::kNoSpace; }

class Reader {
 public:
  Reader(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  bool done() const { return i_ >= n_; }
  uint8_t U8() { return i_ < n_ ? d_[i_++] : 0; }
  uint16_t U16() { return static_cast<uint16_t>(U8() | U8() << 8); }
  uint32_t U32() { return U16() | static_cast<uint32_t>(U16()) << 16; }
  uint64_t U64() { return U32() | static_cast<uint64_t>(U32()) << 32; }
  void Bytes(uint8_t* out, size_t n) {
    for (size_t k = 0; k < n; ++k) out[k] = U8();
  }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t i_ = 0;
};

// [guard][bytes][guard], page-aligned, as a mapping would be.
uint8_t* GuardedAlloc(uint64_t bytes) {
  auto* r = static_cast<uint8_t*>(std::aligned_alloc(kPage, bytes + 2 * kGuard));
  std::memset(r, kGuardByte, kGuard);
  std::memset(r + kGuard, 0, bytes);
  std::memset(r + kGuard + bytes, kGuardByte, kGuard);
  return r + kGuard;
}
void CheckGuards(const uint8_t* p, uint64_t bytes) {
  for (uint64_t k = 1; k <= kGuard; ++k) Check(p[-static_cast<int64_t>(k)] == kGuardByte && p[bytes + k - 1] == kGuardByte);
}
void GuardedFree(uint8_t* p, uint64_t bytes) {
  CheckGuards(p, bytes);
  std::free(p - kGuard);
}

// What the harness knows of one domain's memory while it exists.
struct DomState {
  uint8_t* mem = nullptr;  // null once Domains freed it
  uint64_t bytes = 0;
  uint32_t ram_pages = 0, pool_pages = 0, frames = 0;
  uint64_t table_first = 0, table_nr = 0;  // where its grant table is now
  std::vector<uint8_t> shadow;
  std::map<DomId, std::vector<bool>> writable_for;  // pages ever granted writable, by grantee
  // The last PageFd asked of it.
  int64_t last_index = -1;
  bool last_readonly = false;
  bool page_fds_fail = false;
  // Only the domain itself changes what its table grants (its own writes,
  // a new table): the scan skips tables untouched since the last one.
  bool table_dirty = true;
};

class Harness;

class FakeMemory final : public DomainMemory {
 public:
  FakeMemory(Harness* h, DomId id, uint64_t bytes) : h_(h), id_(id), bytes_(bytes), base_(GuardedAlloc(bytes)) {}
  ~FakeMemory() override;
  uint8_t* base() const override { return base_; }
  int PageFd(uint32_t index, bool readonly, bool* owned) override;

 private:
  Harness* h_;
  DomId id_;
  uint64_t bytes_;
  uint8_t* base_;
};

class FakeHost final : public DomainSession::Host {
 public:
  explicit FakeHost(Harness* h) : h_(h) {}
  uint64_t memfd_bytes = 0;
  bool sealed = true, memory_fails = false, channels_fail = false, xenstore_fails = false, page_fds_fail = false;
  int retries = 0;
  uint8_t* mailbox = nullptr;  // while the ring producer lives
  uint64_t signals = 0;

  std::string CheckMemory(uint64_t bytes) override {
    if (!sealed) return "memory fd is not a memfd sealed F_SEAL_SHRINK";
    if (memfd_bytes < bytes) return "memfd smaller than announced";
    return "";
  }
  bool RetryClaim() override { return ++retries < 3; }
  absl::StatusOr<std::unique_ptr<DomainMemory>> MapMemory(DomId id, uint64_t ram, uint32_t pages) override;
  absl::StatusOr<std::shared_ptr<EventRingProducer>> OpenChannels(DomId) override {
    if (channels_fail) return absl::ResourceExhaustedError("eventfd: injected");
    uint8_t* page = GuardedAlloc(emu::kMailboxBytes);
    mailbox = page;
    // Freed with the producer, which the domain's death must release.
    std::shared_ptr<uint8_t> keep(page, [this](uint8_t* p) {
      GuardedFree(p, emu::kMailboxBytes);
      mailbox = nullptr;
    });
    return std::make_shared<EventRingProducer>(page, [this] { ++signals; }, keep);
  }
  absl::Status Introduce(DomId id, const std::string& xs_path) override;
  void Release(DomId id, const std::string& xs_path) override;

 private:
  Harness* h_;
};

struct Slot {
  std::unique_ptr<FakeHost> host;
  std::unique_ptr<DomainSession> session;
  std::vector<GrantHandle> handles;
};

class Harness {
 public:
  Harness() : domains_(DomainLimits{kPoolCap, kMaxFrames, kMaptrack, kMaxRamPages * kPage, kXsPath}) {}
  ~Harness() {
    for (size_t i = 0; i < kSlots; ++i) Die(i);
    // Every grantee died, so every mapping went and every memory with it.
    Check(domains_.size() == 0 && domains_.pool_in_use() == 0 && doms_.empty() && xenstore_.empty());
  }

  void Run(Reader& r) {
    while (!r.done()) {
      const uint8_t kind = r.U8();
      const size_t slot = r.U8() % kSlots;
      ScanGrants();
      caller_ = Attached(slot) ? static_cast<int>(slots_[slot].session->id()) : -1;
      switch (kind % 8) {
        case 0: Connect(slot, r); break;
        case 1: Die(slot); break;
        case 2: Hcall(slot, r); break;
        case 3: WriteMemory(slot, r); break;
        case 4: WriteGrant(slot, r); break;
        case 5: WriteSegment(slot, r); break;
        case 6: Map(slot, r); break;
        default: Ring(slot, r); break;
      }
      Verify();
    }
  }

  // Called by the fakes.
  DomState& NewDom(DomId id, uint8_t* mem, uint64_t bytes) {
    Check(doms_.count(id) == 0);
    DomState& d = doms_[id];
    d.mem = mem;
    d.bytes = bytes;
    return d;
  }
  void Freed(DomId id, const uint8_t* mem) {
    auto it = doms_.find(id);
    Check(it != doms_.end() && it->second.mem == mem);
    // Freed only once no one maps it (or it never was in the grant model).
    Check(domains_.grants().ForeignMappingsOf(id) == 0);
    doms_.erase(it);
  }
  DomState* Dom(DomId id) {
    auto it = doms_.find(id);
    return it == doms_.end() ? nullptr : &it->second;
  }
  void Introduced(DomId id) { Check(xenstore_.insert(id).second); }
  void Released(DomId id) { Check(xenstore_.erase(id) == 1); }

 private:
  bool Attached(size_t i) const { return slots_[i].session && slots_[i].session->attached(); }

  DomId DomidArg(uint8_t v) { return v >= 0xF8 ? static_cast<DomId>(v * 131) : kDomids[v % 8]; }

  void Connect(size_t i, Reader& r) {
    const uint8_t flags = r.U8();
    const uint64_t memfd_pages = r.U8() % 21;
    uint8_t raw[sizeof(wire::Hello)];
    r.Bytes(raw, sizeof raw);
    wire::Hello h;
    std::memcpy(&h, raw, sizeof h);
    if (!(flags & 0x10)) {
      h.magic = wire::kHelloMagic;
      h.version = wire::kWireVersion;
      h.domid = DomidArg(static_cast<uint8_t>(h.domid));
      h.grant_frames %= 6;
      h.memory_bytes = (h.memory_bytes % 20) * kPage;
      h.grant_pages %= 12;
    }
    std::memcpy(raw, &h, sizeof h);
    const size_t len = flags & 0x20 ? sizeof raw - 1 : sizeof raw;
    Die(i);
    Slot& s = slots_[i];
    s.host = std::make_unique<FakeHost>(this);
    s.host->memfd_bytes = memfd_pages * kPage;
    s.host->sealed = flags & 2;
    s.host->memory_fails = flags & 4;
    s.host->channels_fail = flags & 8;
    s.host->xenstore_fails = flags & 0x40;
    s.host->page_fds_fail = flags & 0x80;
    s.session = std::make_unique<DomainSession>(domains_, s.host.get());
    const bool memfd = flags & 1;
    const std::string path = h.domid == 0 ? kXsPath : kXsPath + ".d" + std::to_string(h.domid);
    const bool expect = len == sizeof raw && h.magic == wire::kHelloMagic && h.version == wire::kWireVersion &&
                        h.domid < kDomidSelf && memfd && h.grant_frames >= 1 && h.grant_frames <= kMaxFrames &&
                        h.memory_bytes % kPage == 0 && h.memory_bytes >= (uint64_t{h.grant_frames} + 2) * kPage &&
                        h.memory_bytes <= kMaxRamPages * kPage && s.host->sealed &&
                        h.memory_bytes <= s.host->memfd_bytes && path.size() < 108 &&
                        !domains_.Known(static_cast<DomId>(h.domid)) &&
                        domains_.pool_in_use() + h.grant_pages <= kPoolCap && !s.host->memory_fails &&
                        !s.host->channels_fail && !s.host->xenstore_fails;
    const size_t known = domains_.size(), doms = doms_.size(), xs = xenstore_.size();
    const uint64_t pool = domains_.pool_in_use();
    const DomainSession::HelloResult res = s.session->Hello(std::span<const uint8_t>(raw, len), memfd);
    Check(res.accepted == expect && res.accepted == s.session->attached());
    if (!res.accepted) {
      Check(!res.error.empty() && domains_.size() == known && doms_.size() == doms && xenstore_.size() == xs &&
            domains_.pool_in_use() == pool && s.host->mailbox == nullptr);
      // A connection says HELLO once.
      Check(!s.session->Hello(std::span<const uint8_t>(raw, len), memfd).accepted);
      return;
    }
    const DomId id = s.session->id();
    Check(id == h.domid && s.session->xs_path() == path && s.session->pool_pages() == h.grant_pages &&
          domains_.pool_in_use() == pool + h.grant_pages && xenstore_.count(id) == 1);
    DomState* d = Dom(id);
    Check(d != nullptr && d->mem == s.session->memory());
    d->ram_pages = static_cast<uint32_t>(h.memory_bytes / kPage);
    d->pool_pages = h.grant_pages;
    d->frames = h.grant_frames;
    d->table_first = 0;
    d->table_nr = h.grant_frames;
    d->page_fds_fail = s.host->page_fds_fail;
    Check(domains_.grants().TableEntries(id) == h.grant_frames * kGrantEntriesPerFrame);
    Check(!s.session->Hello(std::span<const uint8_t>(raw, len), memfd).accepted && s.session->attached());
  }

  void Die(size_t i) {
    Slot& s = slots_[i];
    if (!s.session) return;
    if (s.session->attached()) {
      const DomId id = s.session->id();
      s.session->Close(false);
      GrantTables& gt = domains_.grants();
      Check(gt.LiveHandles(id) == 0 && gt.TableEntries(id) == 0 && xenstore_.count(id) == 0 &&
            s.host->mailbox == nullptr);
      const bool mapped = gt.ForeignMappingsOf(id) > 0;
      Check(domains_.Known(id) == mapped && domains_.Zombie(id) == mapped && (Dom(id) != nullptr) == mapped);
      // No live domain keeps a port bound to it.
      for (size_t j = 0; j < kSlots; ++j) {
        if (!Attached(j)) continue;
        for (EvtchnPort p = 1; p <= 64; ++p) {
          EvtchnStatus st;
          if (domains_.evtchn().Status(slots_[j].session->id(), p, &st) == 0 && st.state == EvtchnState::kInterdomain)
            Check(st.remote_dom != id);
        }
      }
      EvtchnStatus st;
      Check(domains_.evtchn().Status(id, 1, &st) != 0);
      Check(s.session->Call(wire::kEvtchnSend, std::vector<uint64_t>{1}) == -ENOSYS);
      Check(s.session->Map(std::span<const uint8_t>()).reply.status == gntst::kGeneralError);
    }
    s.session.reset();
    s.host.reset();
    s.handles.clear();
  }

  uint64_t Arg(Reader& r, const Slot& s) {
    const uint8_t sel = r.U8();
    const uint8_t v = r.U8();
    switch (sel % 10) {
      case 0: return v;
      case 1: return DomidArg(v);
      case 2: return s.handles.empty() ? v : s.handles[v % s.handles.size()];
      case 3: return v % 40;                               // a port
      case 4: return r.U64();
      case 5: return v % 180;                              // a count
      case 6: return uint64_t{v} << (sel >> 4);            // frames, big or small
      case 7: return ~uint64_t{0} - v;
      case 8: return uint64_t{0xFFFF} + v;
      default: return 0;
    }
  }

  void Hcall(size_t i, Reader& r) {
    Slot& s = slots_[i];
    const uint8_t sel = r.U8();
    uint64_t opcode = sel % 11;  // 0 and 10: unknown
    if (sel >= 0xF0) opcode = r.U64();
    uint64_t args[emu::kMailboxArgs];
    for (uint64_t& a : args) a = Arg(r, s);
    if (!s.session) return;
    const bool attached = s.session->attached();
    const int64_t rc = s.session->Call(opcode, args);
    if (!attached) {
      Check(rc == -ENOSYS);
      return;
    }
    const DomId id = s.session->id();
    DomState* d = Dom(id);
    Check(d != nullptr);
    uint8_t* arg_page = d->mem + uint64_t{d->frames} * kPage;
    switch (opcode) {
      case wire::kSetupTable:
        Check(IsGntst(rc));
        d->table_dirty = true;
        if (rc == gntst::kOkay) {
          d->table_first = args[0];
          d->table_nr = args[1];
          Check(domains_.grants().TableEntries(id) == args[1] * kGrantEntriesPerFrame);
        }
        break;
      case wire::kGrantCopy:
        // A copy may land in a table page someone granted writable.
        for (auto& [other, od] : doms_) od.table_dirty = true;
        if (args[0] > wire::kCopySegmentsPerCall) {
          Check(rc == -EINVAL);
          break;
        }
        Check(rc == 0);
        for (uint64_t k = 0; k < args[0]; ++k) {
          int16_t st;
          std::memcpy(&st, arg_page + k * sizeof(wire::CopySegmentWire) + offsetof(wire::CopySegmentWire, status),
                      sizeof st);
          Check(IsGntst(st));
        }
        break;
      case wire::kGrantUnmap:
        Check(IsGntst(rc));
        break;
      case wire::kEvtchnAllocUnbound:
      case wire::kEvtchnBindInterdomain:
        Check(rc != 0 && rc >= -4095 && rc <= 1023);
        break;
      case wire::kEvtchnSend:
      case wire::kEvtchnClose:
      case wire::kEvtchnUnmask:
        Check(rc <= 0 && rc >= -4095);
        break;
      case wire::kEvtchnPending:
        Check(rc >= 0 && static_cast<uint64_t>(rc) <= std::min<uint64_t>(args[0], wire::kPendingPortsPerCall));
        for (int64_t k = 0; k < rc; ++k) {
          uint32_t port;
          std::memcpy(&port, arg_page + 4 * k, 4);
          Check(port >= 1 && port <= 1023);
        }
        break;
      default:
        Check(rc == -ENOSYS);
    }
    Check(domains_.grants().LiveHandles(id) <= kMaptrack);
  }

  void WriteMemory(size_t i, Reader& r) {
    const uint64_t off = uint64_t{r.U16()} * 8;
    const size_t len = r.U8() % 65;
    uint8_t buf[64];
    r.Bytes(buf, len);
    if (!Attached(i)) return;
    DomState* d = Dom(slots_[i].session->id());
    for (size_t k = 0; k < len && off + k < d->bytes; ++k) d->mem[off + k] = buf[k];
    d->table_dirty = true;
  }

  void WriteGrant(size_t i, Reader& r) {
    const uint16_t ref = r.U16();
    const DomId grantee = DomidArg(r.U8());
    const uint8_t frame = r.U8();
    const uint8_t fsel = r.U8();
    const uint16_t raw = r.U16();
    if (!Attached(i)) return;
    const DomId id = slots_[i].session->id();
    DomState* d = Dom(id);
    d->table_dirty = true;
    GrantTableWriter w = domains_.grants().Writer(id);
    if (w.size() == 0) return;
    static constexpr uint16_t kFlags[4] = {gtf::kPermitAccess, gtf::kPermitAccess | gtf::kReadonly, 0, 0};
    const uint16_t flags = fsel % 4 == 3 ? raw : kFlags[fsel % 4];
    // Mostly pool frames (the mappable ones), sometimes any frame.
    const uint32_t f = fsel & 0x80 ? frame : d->ram_pages + frame % (d->pool_pages + 2);
    w.WriteRaw(ref % w.size(), GrantEntryV1{flags, grantee, f});
  }

  void WriteSegment(size_t i, Reader& r) {
    const uint8_t index = r.U8() % 8;
    wire::CopySegmentWire seg;
    auto ptr = [&](uint32_t* ref, uint16_t* dom, uint16_t* off) {
      const uint8_t sel = r.U8();
      const uint16_t v = r.U16();
      *ref = sel & 1 ? v % 64 : v;   // a gref, or a frame
      *dom = sel & 2 ? kDomidSelf : DomidArg(static_cast<uint8_t>(v >> 8));
      *off = sel & 4 ? r.U16() : static_cast<uint16_t>((sel >> 3) * 128);
    };
    ptr(&seg.source_ref_or_gmfn, &seg.source_domid, &seg.source_offset);
    ptr(&seg.dest_ref_or_gmfn, &seg.dest_domid, &seg.dest_offset);
    const uint8_t lsel = r.U8();
    seg.len = lsel & 0x80 ? r.U16() : static_cast<uint16_t>((lsel & 0x3F) * 64 + 1);
    seg.flags = r.U8();
    seg.status = 77;  // not a GNTST code: the daemon must overwrite it
    if (!Attached(i)) return;
    DomState* d = Dom(slots_[i].session->id());
    std::memcpy(d->mem + uint64_t{d->frames} * kPage + index * sizeof seg, &seg, sizeof seg);
  }

  void Map(size_t i, Reader& r) {
    Slot& s = slots_[i];
    const uint8_t flags = r.U8();
    const uint8_t gsel = r.U8();
    const uint16_t ref = r.U16();
    wire::MapRequest req;
    req.magic = flags & 2 ? r.U32() : wire::kHelloMagic;
    req.granter = gsel >= 0xF0 ? r.U32() : DomidArg(gsel);
    req.ref = ref % 2100;
    req.readonly = flags & 1;
    if (!s.session) return;
    const size_t len = flags & 4 ? sizeof req - 1 : sizeof req;
    const bool attached = s.session->attached();
    const DomId self = s.session->id();
    DomState* g = req.granter <= 0xFFFF ? Dom(static_cast<DomId>(req.granter)) : nullptr;
    const PinCounts before = g ? domains_.grants().Pins(static_cast<DomId>(req.granter), req.ref) : PinCounts{};
    if (g) g->last_index = -1;
    const DomainSession::MapAnswer a =
        s.session->Map(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&req), len));
    Check(IsGntst(a.reply.status));
    if (!attached) Check(a.reply.status == gntst::kGeneralError);
    if (a.reply.status != gntst::kOkay) return;
    Check(attached && len == sizeof req && req.magic == wire::kHelloMagic && g != nullptr);
    // The page handed out is the pool page the grant names, asked for with
    // the access asked.
    Check(g->last_index >= 0 && g->last_index < g->pool_pages && a.fd == 1000 + g->last_index &&
          g->last_readonly == (req.readonly != 0) && a.close_fd == g->last_readonly);
    // A first pin reads the entry: it grants this domain that access to that
    // frame, now marked in use. A pinned entry is not read again (as Xen's
    // map_grant_ref for a read-only map): the granter may have scribbled on
    // it since, which only confuses the granter.
    if (before == PinCounts{}) {
      const GrantEntryV1 e = domains_.grants().Writer(static_cast<DomId>(req.granter)).Read(req.ref);
      Check((e.flags & gtf::kTypeMask) == gtf::kPermitAccess && e.domid == self &&
            (req.readonly || !(e.flags & gtf::kReadonly)) && (e.flags & gtf::kReading) &&
            e.frame == g->ram_pages + g->last_index);
    } else {
      Check(before.holder == self);
    }
    if (flags & 8) {
      s.session->MapNotDelivered(a);
    } else {
      s.handles.push_back(a.reply.handle);
    }
  }

  void Ring(size_t i, Reader& r) {
    const uint8_t mode = r.U8();
    const uint32_t v = r.U32();
    if (!Attached(i) || !slots_[i].host->mailbox) return;
    auto* ring = reinterpret_cast<wire::EventRing*>(slots_[i].host->mailbox + wire::kEventRingOffset);
    const uint32_t prod = ring->prod.load();
    // What the producer published is a port of this domain.
    for (uint32_t k = 0; k < std::min<uint32_t>(prod, wire::kEventRingSlots); ++k) {
      const uint32_t p = ring->ports[k].load();
      Check(p <= 1023);
    }
    switch (mode % 3) {
      case 0: ring->cons.store(v); break;  // hostile
      case 1: ring->cons.store(prod); ring->overflow.store(0); break;
      default: ring->overflow.store(v & 1); break;
    }
  }

  // Before each op: every page each domain's table grants writable to
  // someone, accumulated (a pinned entry keeps its frame when rewritten).
  void ScanGrants() {
    for (auto& [id, d] : doms_) {
      if (!d.table_dirty) continue;
      d.table_dirty = false;
      GrantTableWriter w = domains_.grants().Writer(id);
      const uint64_t frames = d.bytes / kPage;
      for (GrantRef ref = 0; ref < w.size(); ++ref) {
        const GrantEntryV1 e = w.Read(ref);
        if ((e.flags & gtf::kTypeMask) != gtf::kPermitAccess || (e.flags & gtf::kReadonly) || e.frame >= frames)
          continue;
        std::vector<bool>& pages = d.writable_for[e.domid];
        if (pages.empty()) pages.assign(frames, false);
        pages[e.frame] = true;
      }
    }
  }

  // After each op: guards, who changed what in whose memory, and the registry.
  void Verify() {
    uint64_t pool = 0;
    for (auto& [id, d] : doms_) {
      CheckGuards(d.mem, d.bytes);
      pool += d.pool_pages;
      Check(domains_.Known(id));
      if (d.shadow.size() != d.bytes) d.shadow.assign(d.mem, d.mem + d.bytes);
      if (caller_ != static_cast<int>(id)) CheckChanges(id, d);
      std::memcpy(d.shadow.data(), d.mem, d.bytes);
    }
    Check(domains_.size() == doms_.size() && domains_.pool_in_use() == pool && pool <= kPoolCap);
    std::set<DomId> live;
    for (size_t i = 0; i < kSlots; ++i) {
      if (!Attached(i)) continue;
      live.insert(slots_[i].session->id());
      if (slots_[i].host->mailbox) CheckGuards(slots_[i].host->mailbox, emu::kMailboxBytes);
    }
    Check(live == xenstore_);
    for (auto& [id, d] : doms_) {
      const bool dead = live.count(id) == 0;
      Check(domains_.Zombie(id) == dead);
      if (dead) Check(domains_.grants().ForeignMappingsOf(id) > 0);
    }
  }

  void CheckChanges(DomId id, const DomState& d) {
    const std::vector<bool>* granted = nullptr;
    if (caller_ >= 0) {
      auto it = d.writable_for.find(static_cast<DomId>(caller_));
      if (it != d.writable_for.end()) granted = &it->second;
    }
    for (uint64_t p = 0; p < d.bytes / kPage; ++p) {
      const uint8_t* now = d.mem + p * kPage;
      const uint8_t* was = d.shadow.data() + p * kPage;
      if (std::memcmp(now, was, kPage) == 0) continue;
      if (granted && (*granted)[p]) continue;
      // Otherwise only the pin bits of its grant entries may move.
      Check(p >= d.table_first && p < d.table_first + d.table_nr);
      for (uint64_t b = 0; b < kPage; ++b) {
        if (now[b] == was[b]) continue;
        Check(b % kGrantEntryV1Bytes == 0 && ((now[b] ^ was[b]) & ~(gtf::kReading | gtf::kWriting)) == 0);
      }
      (void)id;
    }
  }

  Domains domains_;
  Slot slots_[kSlots];
  std::map<DomId, DomState> doms_;
  std::set<DomId> xenstore_;
  int caller_ = -1;  // the domain whose op this is (its own memory may change anywhere)
};

FakeMemory::~FakeMemory() {
  h_->Freed(id_, base_);
  GuardedFree(base_, bytes_);
}

int FakeMemory::PageFd(uint32_t index, bool readonly, bool* owned) {
  DomState* d = h_->Dom(id_);
  Check(d != nullptr && d->mem == base_);
  if (d->page_fds_fail) return -1;
  d->last_index = index;
  d->last_readonly = readonly;
  *owned = readonly;
  return 1000 + static_cast<int>(index);
}

absl::StatusOr<std::unique_ptr<DomainMemory>> FakeHost::MapMemory(DomId id, uint64_t ram, uint32_t pages) {
  Check(ram <= memfd_bytes && ram % kPage == 0 && pages <= kPoolCap);
  if (memory_fails) return absl::ResourceExhaustedError("mmap: injected");
  const uint64_t bytes = ram + uint64_t{pages} * kPage;
  auto m = std::make_unique<FakeMemory>(h_, id, bytes);
  h_->NewDom(id, m->base(), bytes);
  return std::unique_ptr<DomainMemory>(std::move(m));
}

absl::Status FakeHost::Introduce(DomId id, const std::string&) {
  if (xenstore_fails) return absl::UnavailableError("injected");
  h_->Introduced(id);
  return absl::OkStatus();
}

void FakeHost::Release(DomId id, const std::string&) { h_->Released(id); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r(data, size);
  Harness h;
  h.Run(r);
  return 0;
}
