// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: crqd's request decoding (crq::DaemonSession, the part of
// crqd that has no socket) against hostile partitions. Up to four
// connections, interleaved, say HELLOs (garbage or plausible, with or
// without a memfd, sealed or not, of any size, for ids already connected),
// make hypercalls with any opcode and arguments (units, LIOBNs, IOBAs, TCEs,
// lengths and counts in and out of range), write their own memory (queues,
// H_PUT_TCE_INDIRECT lists), die and reconnect; the control socket's fault
// injections are mixed in. Three partitions are configured in two adapter
// pairs (1 <-> 2, 3 <-> 2); a HELLO may name any id. No socket, thread or
// poll: the Host is a fake whose "memfd" is a size and a seal flag and whose
// mappings are heap pages between guard pages.
//
// Checked besides ASan/UBSan (a partition's memory is freed when it dies, so
// any later touch is a use-after-free):
//   * every HELLO is accepted exactly when the protocol says (size, magic,
//     version, memfd, whole pages, seal and size of the memfd, id not
//     connected, host resources), a refusal says why and leaves nothing
//     mapped or claimed; the registry holds exactly the attached ids;
//   * every answer is a PAPR return code; without a HELLO, H_HARDWARE;
//   * guard bytes around every partition's memory stay intact;
//   * a partition's memory changes, besides its own writes, only in pages
//     that one of its windows has mapped (a TCE) at some time: nothing
//     outside what the partition exposed is touched;
//   * a dying partition leaves no registered queue, its memory is unmapped
//     and each partner with a queue gets a transport event (FF 01);
//   * the hypervisor's per-opcode statistics stay bounded whatever opcodes
//     come, and count every call that reached it.
//
// Input: a sequence of ops; each starts with a byte `kind`, then its own
// bytes (missing bytes read as 0):
//   kind % 8 == 0  connect slot (u8 % 4): flags u8, memfd pages u8 % 17,
//                  then Hello (24 bytes); unless flags & 0x10 the magic and
//                  version are made valid, the id becomes {1,2,3,9}[id % 4]
//                  and memory_bytes (memory_bytes % 20) pages. flags: 1 memfd
//                  passed, 2 sealed, 4 mmap fails, 8 eventfd fails, 0x20
//                  one byte short, 0x40 a second HELLO on the live connection
//   kind % 8 == 1  the slot's partition dies (connection closed)
//   kind % 8 == 2  hypercall: slot, opcode selector u8, 8 argument
//                  selectors (see Arg)
//   kind % 8 == 3  the partition writes its memory: slot, offset u16 * 8,
//                  length u8 % 65, bytes
//   kind % 8 == 4  the partition writes a BE64 TCE list: slot, page u8,
//                  count u8 % 17, then count x {page u8, perms u8}
//   kind % 8 == 5  control: fault u8 % 6, endpoint u8 % 4, n u8
//   kind % 8 == 6  the partition consumes its queue: slot, page u8, count u8
//   kind % 8 == 7  no-op (a separator for the mutator)
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

#include "../../emulators/crq/src/crqd_session.h"

using namespace vioport::crq;

namespace {

constexpr size_t kSlots = 4;
constexpr uint64_t kPage = kTcePageSize;
constexpr uint64_t kGuard = 4096;
constexpr uint32_t kMaxMemfdPages = 16;
constexpr uint64_t kWindowPages = 16;

// A broken invariant names its line before aborting, so a crash file tells
// which check it broke.
void CheckAt(bool ok, int line) {
  if (ok) return;
  std::fprintf(stderr, "invariant broken at %s:%d\n", __FILE__, line);
  std::abort();
}
#define Check(ok) CheckAt((ok), __LINE__)

struct Endpoint {
  PartitionId pid;
  UnitAddress unit;
  Liobn liobn;
  int partner;  // index in kEndpoints
};
// Pair A: 1:0x10 (client) <-> 2:0x20 (server); pair B: 3:0x30 <-> 2:0x21.
constexpr Endpoint kEndpoints[4] = {
    {1, 0x10, 0x1001, 1}, {2, 0x20, 0x2001, 0}, {3, 0x30, 0x3001, 3}, {2, 0x21, 0x2002, 2}};
constexpr PartitionId kIds[4] = {1, 2, 3, 9};
constexpr uint64_t kOpcodes[] = {kHRegCrq,   kHFreeCrq,   kHSendCrq,   kHEnableCrq,      kHVioSignal, kHPutTce,
                                 kHGetTce,   kHStuffTce,  kHCopyRdma,  kHPutTceIndirect, 0x2A8};

bool IsPaprCode(int64_t rc) {
  switch (rc) {
    case kHSuccess: case kHBusy: case kHClosed: case kHNotAvailable: case kHConstrained: case kHPartial:
    case kHInProgress: case kHHardware: case kHFunction: case kHPrivilege: case kHParameter: case kHNotFound:
    case kHAuthority: case kHPermission: case kHDropped: case kHSourceParm: case kHDestParm: case kHRemoteParm:
    case kHResource: case kHRescinded:
      return true;
    default:
      return IsLongBusy(rc);
  }
}

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

// One connection's kernel side, faked: the memfd is a size and a seal
// flag, the mapping a heap range between guard pages.
class FakeHost final : public DaemonSession::Host {
 public:
  uint64_t memfd_bytes = 0;
  bool sealed = true, map_fails = false, irq_fails = false;
  int retries = 0;
  uint8_t* region = nullptr;  // [guard][memory][guard]
  uint64_t mapped = 0;

  ~FakeHost() override { Check(region == nullptr); }  // the session unmaps before its host goes
  std::string CheckMemory(uint64_t bytes) override {
    if (!sealed) return "memory fd is not a memfd sealed F_SEAL_SHRINK";
    if (memfd_bytes < bytes) return "memfd smaller than announced";
    return "";
  }
  absl::StatusOr<uint8_t*> MapMemory(uint64_t bytes) override {
    Check(region == nullptr && bytes <= memfd_bytes && bytes % kPage == 0 && bytes > 0);
    if (map_fails) return absl::ResourceExhaustedError("mmap: injected");
    region = static_cast<uint8_t*>(std::aligned_alloc(kPage, bytes + 2 * kGuard));
    std::memset(region, 0xEE, kGuard);
    std::memset(region + kGuard, 0, bytes);
    std::memset(region + kGuard + bytes, 0xEE, kGuard);
    mapped = bytes;
    return region + kGuard;
  }
  void UnmapMemory(uint8_t* memory, uint64_t bytes) override {
    Check(region != nullptr && memory == region + kGuard && bytes == mapped);
    CheckGuards();
    std::free(region);
    region = nullptr;
    mapped = 0;
  }
  absl::StatusOr<int> InterruptFd() override {
    if (irq_fails) return absl::ResourceExhaustedError("eventfd: injected");
    return -1;
  }
  bool RetryClaim() override { return ++retries < 3; }
  void CheckGuards() const {
    if (!region) return;
    for (uint64_t k = 0; k < kGuard; ++k) Check(region[k] == 0xEE && region[kGuard + mapped + k] == 0xEE);
  }
};

struct Slot {
  std::unique_ptr<FakeHost> host;
  std::unique_ptr<DaemonSession> session;
  std::vector<uint8_t> shadow;   // the memory as of the last check
  std::vector<bool> exposed;     // pages a TCE of one of its windows has named
  bool tces_dirty = true;        // a hypercall since the last TCE scan
};

class Harness {
 public:
  Harness() {
    for (int pair = 0; pair < 2; ++pair) {
      const Endpoint& c = kEndpoints[pair * 2];
      const Endpoint& s = kEndpoints[pair * 2 + 1];
      AdapterPairConfig cfg;
      cfg.client_partition = c.pid, cfg.client_unit = c.unit, cfg.client_liobn = c.liobn;
      cfg.client_window_bytes = kWindowPages * kPage;
      cfg.server_partition = s.pid, cfg.server_unit = s.unit, cfg.server_liobn = s.liobn;
      cfg.server_window_bytes = kWindowPages * kPage;
      Check(hv_.AddAdapterPair(cfg).ok());
    }
  }
  ~Harness() {
    for (size_t i = 0; i < kSlots; ++i) Die(i);
    Check(registry_.size() == 0);
  }

  void Run(Reader& r) {
    while (!r.done()) {
      const uint8_t kind = r.U8();
      const size_t slot = r.U8() % kSlots;
      switch (kind % 8) {
        case 0: Connect(slot, r); break;
        case 1: Die(slot); break;
        case 2: Hcall(slot, r); break;
        case 3: WriteMemory(slot, r); break;
        case 4: WriteTceList(slot, r); break;
        case 5: Control(slot, r); break;
        case 6: Consume(slot, r); break;
        default: break;
      }
      Verify();
    }
  }

 private:
  bool Attached(size_t i) const { return slots_[i].session && slots_[i].session->attached(); }

  void Connect(size_t i, Reader& r) {
    const uint8_t flags = r.U8();
    const uint32_t memfd_pages = r.U8() % (kMaxMemfdPages + 1);
    uint8_t raw[sizeof(wire::Hello)];
    r.Bytes(raw, sizeof raw);
    wire::Hello h;
    std::memcpy(&h, raw, sizeof h);
    if (!(flags & 0x10)) {
      h.magic = wire::kHelloMagic;
      h.version = wire::kWireVersion;
      h.partition = kIds[h.partition % 4];
      h.memory_bytes = (h.memory_bytes % 20) * kPage;
    }
    std::memcpy(raw, &h, sizeof h);
    const size_t len = flags & 0x20 ? sizeof raw - 1 : sizeof raw;
    const bool memfd = flags & 1;
    if ((flags & 0x40) && Attached(i)) {
      // A second HELLO on a live connection changes nothing.
      const PartitionId before = slots_[i].session->id();
      const DaemonSession::HelloResult res = slots_[i].session->Hello(std::span<const uint8_t>(raw, len), memfd);
      Check(!res.accepted && !res.error.empty() && slots_[i].session->attached() &&
            slots_[i].session->id() == before);
      return;
    }
    Die(i);
    Slot& s = slots_[i];
    s.host = std::make_unique<FakeHost>();
    s.host->memfd_bytes = uint64_t{memfd_pages} * kPage;
    s.host->sealed = flags & 2;
    s.host->map_fails = flags & 4;
    s.host->irq_fails = flags & 8;
    s.session = std::make_unique<DaemonSession>(hv_, registry_, s.host.get());
    bool taken = false;
    for (size_t j = 0; j < kSlots; ++j) taken |= j != i && Attached(j) && slots_[j].session->id() == h.partition;
    const bool expect = len == sizeof raw && h.magic == wire::kHelloMagic && h.version == wire::kWireVersion &&
                        memfd && h.memory_bytes != 0 && h.memory_bytes % kPage == 0 && s.host->sealed &&
                        h.memory_bytes <= s.host->memfd_bytes && !taken && !s.host->map_fails &&
                        !s.host->irq_fails;
    const size_t before = registry_.size();
    const DaemonSession::HelloResult res = s.session->Hello(std::span<const uint8_t>(raw, len), memfd);
    Check(res.accepted == expect && res.accepted == s.session->attached());
    if (!res.accepted) {
      Check(!res.error.empty() && s.host->region == nullptr && registry_.size() == before);
      return;
    }
    Check(s.session->id() == h.partition && s.session->memory_bytes() == h.memory_bytes &&
          registry_.size() == before + 1);
    s.shadow.assign(h.memory_bytes, 0);
    s.exposed.assign(h.memory_bytes / kPage, false);
    s.tces_dirty = true;
  }

  void Die(size_t i) {
    Slot& s = slots_[i];
    if (!s.session) return;
    if (s.session->attached()) {
      const PartitionId id = s.session->id();
      // Each partner of one of its queues that has a queue is owed FF 01
      // (posted, or lost on a full queue).
      uint64_t owed = 0;
      for (const Endpoint& e : kEndpoints) {
        const Endpoint& p = kEndpoints[e.partner];
        if (e.pid == id && p.pid != id && hv_.QueueRegistered(e.pid, e.unit) && hv_.QueueRegistered(p.pid, p.unit))
          ++owed;
      }
      const HypervisorStats before = hv_.Stats();
      s.session->Close();
      const HypervisorStats after = hv_.Stats();
      Check(after.events_posted + after.events_lost >= before.events_posted + before.events_lost + owed);
      for (const Endpoint& e : kEndpoints)
        if (e.pid == id) Check(!hv_.QueueRegistered(e.pid, e.unit));
      Check(s.host->region == nullptr);
      for (PartitionId left : registry_.Ids()) Check(left != id);
      // Dead: every hypercall is refused without reaching the hypervisor.
      const uint64_t args[wire::kMaxArgs] = {};
      Check(s.session->Call(kHGetTce, args).rc == kHHardware);
    }
    s.session.reset();
    s.host.reset();
    s.shadow.clear();
    s.exposed.clear();
  }

  uint64_t Arg(Reader& r, const Slot& s) {
    const uint8_t sel = r.U8();
    const uint8_t v = r.U8();
    switch (sel % 10) {
      case 0: return v;
      case 1: return kEndpoints[v % 4].unit;
      case 2: return kEndpoints[v % 4].liobn;
      case 3: return uint64_t{v % (kWindowPages + 4)} * kPage + (sel & 0x80 ? v : 0);  // IOBA
      case 4: return MakeTce(uint64_t{v % (kMaxMemfdPages + 4)} * kPage, sel >> 6);   // TCE
      case 5: return kPage << (v % 8);                                               // a length
      case 6: return r.U64();
      case 7: return s.host ? (v % (s.host->mapped / kPage + 2)) * kPage : 0;          // a real address
      case 8: return ~uint64_t{0} - v;
      default: return 0;
    }
  }

  void Hcall(size_t i, Reader& r) {
    Slot& s = slots_[i];
    const uint8_t sel = r.U8();
    uint64_t opcode = kOpcodes[sel % std::size(kOpcodes)];
    if (sel >= 0xF0) opcode = r.U64();  // anything at all
    uint64_t args[wire::kMaxArgs];
    for (uint64_t& a : args) a = Arg(r, s);
    if (!s.session) return;
    const bool attached = s.session->attached();
    s.tces_dirty = true;
    const HcallResult res = s.session->Call(opcode, args);
    Check(IsPaprCode(res.rc));
    if (!attached) {
      Check(res.rc == kHHardware);
      return;
    }
    ++calls_;
    if (opcode != kHGetTce) Check(res.r4 == 0);
    bool known = false;
    for (uint64_t o : kOpcodes) known |= o == opcode && o != 0x2A8;
    if (!known) Check(res.rc == kHFunction);
  }

  void WriteMemory(size_t i, Reader& r) {
    Slot& s = slots_[i];
    const uint64_t off = uint64_t{r.U16()} * 8;
    const size_t len = r.U8() % 65;
    uint8_t buf[64];
    r.Bytes(buf, len);
    if (!Attached(i)) return;
    for (size_t k = 0; k < len && off + k < s.shadow.size(); ++k) {
      s.session->memory()[off + k] = buf[k];
      s.shadow[off + k] = buf[k];
    }
  }

  void WriteTceList(size_t i, Reader& r) {
    Slot& s = slots_[i];
    const uint64_t page = r.U8();
    const size_t n = r.U8() % 17;
    for (size_t k = 0; k < n; ++k) {
      const uint64_t tce = MakeTce(uint64_t{r.U8() % (kMaxMemfdPages + 4)} * kPage, r.U8() & 3);
      if (!Attached(i) || s.shadow.empty()) continue;
      const uint64_t at = (page % (s.shadow.size() / kPage)) * kPage + 8 * k;
      for (int b = 0; b < 8; ++b) {
        const uint8_t v = static_cast<uint8_t>(tce >> (56 - 8 * b));
        s.session->memory()[at + b] = v;
        s.shadow[at + b] = v;
      }
    }
  }

  void Consume(size_t i, Reader& r) {
    Slot& s = slots_[i];
    const uint64_t page = r.U8();
    const size_t n = r.U8();
    if (!Attached(i) || s.shadow.empty()) return;
    const uint64_t base = (page % (s.shadow.size() / kPage)) * kPage;
    for (size_t k = 0; k < n % 257 && base + 16 * k < s.shadow.size(); ++k) {
      s.session->memory()[base + 16 * k] = 0;
      s.shadow[base + 16 * k] = 0;
    }
  }

  void Control(size_t, Reader& r) {
    const uint8_t fault = r.U8();
    const Endpoint& e = kEndpoints[r.U8() % 4];
    const uint32_t n = r.U8() % 4;
    switch (fault % 6) {
      case 0: (void)hv_.InjectPartnerFailed(e.pid, e.unit); break;
      case 1: (void)hv_.InjectMigration(e.pid, e.unit, n); break;
      case 2: (void)hv_.InjectFreeBusy(e.pid, e.unit, n); break;
      case 3: (void)hv_.InjectDropMessages(e.pid, e.unit, n); break;
      case 4: (void)hv_.InjectFullQueue(e.pid, e.unit, n); break;
      default: (void)hv_.PostTransportEvent(e.pid, e.unit, static_cast<uint8_t>(n + 1)); break;
    }
  }

  // After every op: guards, the registry, what changed in each memory, and
  // the statistics.
  void Verify() {
    std::set<PartitionId> attached;
    for (size_t i = 0; i < kSlots; ++i) {
      Slot& s = slots_[i];
      if (!Attached(i)) continue;
      attached.insert(s.session->id());
      s.host->CheckGuards();
      // Pages named by a TCE of this partition's windows now (the scan's
      // own H_GET_TCE calls go through the hypervisor and are counted).
      // Only the partition's own hypercalls set TCEs: after anything else
      // the last scan still holds.
      for (const Endpoint& e : kEndpoints) {
        if (e.pid != s.session->id() || !s.tces_dirty) continue;
        for (uint64_t p = 0; p < kWindowPages; ++p) {
          uint64_t tce = 0;
          ++calls_;
          if (hv_.GetTce(e.pid, e.liobn, p * kPage, &tce) == kHSuccess && (tce & kTcePermMask) != 0) {
            const uint64_t page = (tce & kTceRpnMask) / kPage;
            Check(page < s.exposed.size());  // the hypervisor took a TCE outside the memory
            s.exposed[page] = true;
          }
        }
      }
      s.tces_dirty = false;
      const uint8_t* mem = s.session->memory();
      for (uint64_t p = 0; p < s.exposed.size(); ++p) {
        if (std::memcmp(mem + p * kPage, s.shadow.data() + p * kPage, kPage) == 0) continue;
        Check(s.exposed[p]);
        std::memcpy(s.shadow.data() + p * kPage, mem + p * kPage, kPage);
      }
    }
    const std::vector<PartitionId> ids = registry_.Ids();
    Check(std::set<PartitionId>(ids.begin(), ids.end()) == attached && ids.size() == attached.size());
    const HypervisorStats st = hv_.Stats();
    Check(st.per_hcall.size() <= Hypervisor::kMaxTrackedOpcodes);
    uint64_t counted = st.untracked_hcalls.calls;
    for (const auto& [op, c] : st.per_hcall) counted += c.calls;
    Check(counted == calls_);
  }

  Hypervisor hv_;
  PartitionRegistry registry_;
  Slot slots_[kSlots];
  uint64_t calls_ = 0;  // calls that reached the hypervisor
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r(data, size);
  Harness h;
  h.Run(r);
  return 0;
}
