// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the device side of a virtqueue: fuzz_split_ring
// (VIOPORT_FUZZ_PACKED=0) and fuzz_packed_ring (VIOPORT_FUZZ_PACKED=1) are
// this one source built twice. The input plays a hostile driver: it lays out
// the rings in a 64 KiB flat guest memory, then interleaves device operations
// (Pop, Read/Write into chains, AddUsed, Publish, notifications, Get/SetBase)
// with driver writes to ring memory.
//
// Every Pop is checked against a reference walk (an independent decoder of
// the ring formats that reads the flat memory directly and mirrors the
// device's copy-only caches), and every chain, copy, used entry and
// notification answer against invariants; a violation prints what differed
// and traps.
//
// ============================== INPUT FORMAT ==============================
// All multi-byte fields little-endian. Bytes past the end of the input read
// as 0, so any input is valid.
//
// Header, 24 bytes:
//   [0]      flags (0x80: the input is for the in-flight log mode instead,
//            whose format inflight_fuzz.cc describes)
//              0x01  VIRTIO_F_INDIRECT_DESC negotiated
//              0x02  VIRTIO_F_EVENT_IDX negotiated
//              0x04  copy-only memory (vioport::CopyOnlyMemory over the RegionMemory)
//              0x08  custom ring addresses (bytes 4..15) instead of the default layout
//              0x10  split only: legacy big-endian ring fields (RingByteOrder::kBig)
//              0x20  raw queue size from bytes 2..3 (may be 0, not a power of 2, too big)
//              0x40  custom ring addresses get 0xFFFFFFFF in their upper 32 bits
//   [1]      queue size: split 1 << (v % 9), i.e. 1..256; packed v + 1, i.e. 1..256
//   [2..3]   raw queue size (flag 0x20)
//   [4..7]   desc area address   \   custom ring addresses (flag 0x08):
//   [8..11]  driver area address  }  guest address = 0x10000 + (int32)v, which
//   [12..15] device area address /   may be misaligned or outside memory
//   [16..17] D = length of the desc image      (clamped to 4096)
//   [18..19] A = length of the driver image    (clamped to 1024)
//   [20..21] U = length of the device image    (clamped to 3072)
//   [22..23] X = length of the data image      (clamped to 57344)
// Then D + A + U + X bytes of images, copied to the fixed areas below
// (where the default ring addresses point), then the op stream.
//
// Guest memory [0x10000, 0x20000), zero-filled, guard zones around it:
//   0x10000  desc area     4096 B  split descriptor table / packed ring
//   0x11000  driver area   1024 B  split avail ring / packed driver event suppression
//   0x11400  device area   3072 B  split used ring / packed device event suppression
//   0x12000  data area    57344 B  buffers and indirect tables
// Descriptor addresses are raw: whatever the images and ops put there.
//
// Op stream: one op byte, low nibble = opcode, high nibble = argument h;
// operands follow. "c" is a held chain, picked as h % (number held).
//   0   POP                 Pop one chain and hold it (at most 8 held; the
//                           oldest is completed to make room)
//   1   DRAIN               Pop and complete until empty/error/bound, Publish every 4
//   2   READ c  off:u16 len:u16          chain.Read of the readable part
//   3   WRITE c off:u16 len:u16 pat:u8   chain.Write of the writable part
//   4   ADD_USED c mode:u8 val:u32       AddUsed(written = [val, writable_bytes,
//                                        writable_bytes + (val & 0xff), 0][mode % 4])
//   5   COMPLETE c          read all readable, write all writable, AddUsed(all)
//   6   PUBLISH
//   7   ENABLE_NOTIFICATIONS
//   8   DISABLE_NOTIFICATIONS
//   9   MUTATE  area=h%4 off:u16 len:u8 bytes[len % 65]
//                           the driver overwrites memory of the desc/driver/
//                           device ring area (as configured) or the data area
//   10  BASE_ROUNDTRIP      SetBase(GetBase())
//   11  SET_BASE v:u32      SetBase(v)
//   12  PUSH (driver adds a descriptor; h: 1=WRITE 2=NEXT 4=INDIRECT, 8=variant)
//         split:  head:u8 addr:u16 len:u16 next:u8 -> desc[head % n] =
//                 {0x12000 + addr, len, flags, next}; unless variant, also
//                 avail.ring[avail.idx % n] = head % n and avail.idx++
//         packed: addr:u16 len:u16 id:u16 -> a descriptor {0x12000 + addr,
//                 len, id, flags} at the driver's position, marked available
//                 for its wrap counter (variant: for the other one). The
//                 position follows the previous PUSH if that one had NEXT,
//                 otherwise it is where the device will look next.
//   13  DRIVER_FIELD h%4 v:u16
//         split:  0 avail.idx = v, 1 avail.flags = v, 2 used_event = v,
//                 3 avail.idx += v & 0xff
//         packed: 0 driver off_wrap = v, 1 driver flags = v, 2 flags = v & 3, 3 none
//   14  ARM_FAULT k:u8      copy-only memory: the copy channel fails the k-th
//                           copy from now with Unavailable (0: disarm); the
//                           op it hits must end in kMemoryFault
//   15  h even: RESET       destroy the queue and Create it again (a device
//                           reset); chains still held are stale: AddUsed
//                           must drop them without touching the new queue
//       h odd:  FAIL        DeviceQueue::Fail(RingError(h >> 1)) (0 = kNone: no effect)
// Bounds per input: min(4 * size + 8, 1024) pops, 4096 ops, 64 KiB per
// Read/Write and 1 MiB of copies in all, 64 SetBase, 16 resets (extra ones
// are skipped). After the op stream: DRAIN, complete every held chain,
// Publish. Once the queue is broken the run checks that it stays broken and
// touches no memory, and ends.
//
// What is checked (any violation traps):
//  - Create: accepts or rejects (kBadQueueSize, kRingMisaligned,
//    kAddressOutOfRange on mapped memory) exactly as the spec rules say.
//  - Pop: status, RingError and the chain (id, every segment's addr, len,
//    direction and host pointer) equal the reference walk; Pop never writes
//    through a copy-only memory; an error is reported once to the handler.
//  - Every chain: readable segments before writable ones; byte counts match
//    the segments and readable + writable <= 2^32 - 1; at most size + 65535
//    segments; on mapped memory every non-empty segment has a host pointer,
//    equal to the flat buffer at addr with [host, host + len) inside it; on
//    copy-only memory no host pointers.
//  - Read/Write: succeed iff the range is inside the part and every piece is
//    inside memory; the bytes read equal memory; the bytes written land where
//    the segments say; a failure is remembered (fault()), and AddUsed of a
//    faulted chain breaks the queue with kAddressOutOfRange.
//  - AddUsed/Publish: the used entry (split, read back from the used ring) or
//    used descriptor (packed: id, len, flags incl. WRITE) holds the chain's id
//    and min(written, writable_bytes); split used.idx; Publish's answer
//    follows flags / used_event (split) or the event suppression mode and
//    off_wrap (packed).
//  - EnableNotifications answers "something to pop" exactly (no lost
//    wake-up) and writes used.flags / avail_event / the device event area;
//    DisableNotifications writes them.
//  - GetBase matches the model after every op; SetBase(GetBase()) keeps it;
//    in_flight() and counters() match; stale chains are dropped by AddUsed.
//  - Outside Pop, the queue breaks only on copy-only memory whose rings are
//    partly outside memory, with kAddressOutOfRange, or with kMemoryFault
//    when an injected channel fault hits the op (Pop too must then fail so).
//  - Guard zones around guest memory are intact; ASan/UBSan do the rest.
// ===========================================================================

#include <algorithm>
#include <boost/endian/conversion.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "vioport/core/descriptor_chain.h"
#include "vioport/core/device_queue.h"
#include "vioport/core/guest_memory.h"
#include "vioport/core/ring_error.h"
#include "vioport/core/spec.h"
#include "vioport/testing/raw_ring.h"

#ifndef VIOPORT_FUZZ_PACKED
#error "define VIOPORT_FUZZ_PACKED to 0 (split) or 1 (packed)"
#endif

namespace vioport {
namespace {

namespace be = boost::endian;
using testing::FlatGuest;

constexpr bool kPacked = VIOPORT_FUZZ_PACKED != 0;

constexpr uint64_t kBase = 0x10000;
constexpr uint64_t kMemSize = 0x10000;
constexpr uint64_t kEnd = kBase + kMemSize;
constexpr uint64_t kDescArea = kBase, kDescAreaSize = 0x1000;
constexpr uint64_t kDriverArea = kBase + 0x1000, kDriverAreaSize = 0x400;
constexpr uint64_t kDeviceArea = kBase + 0x1400, kDeviceAreaSize = 0xC00;
constexpr uint64_t kDataArea = kBase + 0x2000, kDataAreaSize = kEnd - kDataArea;
constexpr size_t kMaxHeld = 8;
constexpr size_t kMaxOps = 4096;
constexpr uint64_t kMaxCopy = 1 << 16;        // per Read/Write
constexpr uint64_t kCopyBudget = 1 << 20;     // per input, so big rings stay fast
constexpr uint32_t kMaxSetBase = 64;          // per input (packed SetBase clears a size-n table)
constexpr uint32_t kMaxResets = 16;           // per input
constexpr uint32_t kWindow = 64;  // packed copy-only window, as in packed_device_queue.cc

// Known core behaviour (reported, undecided): AddUsed() drops a chain popped
// before a reset (or from another queue) but leaves it valid(), although
// valid() is documented as "true between Pop() and AddUsed()". Inputs
// corpus/*/regress-stale-chain-* hit this; set to true once core clears it.
constexpr bool kExpectDroppedChainCleared = true;

constexpr uint16_t kNext = desc_flag::kNext, kWrite = desc_flag::kWrite, kIndirect = desc_flag::kIndirect;

[[noreturn]] void Violation(const char* file, int line, const char* what) {
  std::fprintf(stderr, "\n*** vioport fuzz invariant violated at %s:%d: %s\n", file, line, what);
  std::fflush(stderr);
  __builtin_trap();
}
#define FZ_CHECK(c)                                   \
  do {                                                \
    if (!(c)) Violation(__FILE__, __LINE__, #c);      \
  } while (0)
#define FZ_CHECK_EQ(a, b)                                                                              \
  do {                                                                                                 \
    auto va_ = (a);                                                                                    \
    auto vb_ = (b);                                                                                    \
    if (!(va_ == vb_)) {                                                                               \
      std::fprintf(stderr, "\n*** %s = %llu, %s = %llu\n", #a, (unsigned long long)va_, #b,            \
                   (unsigned long long)vb_);                                                           \
      Violation(__FILE__, __LINE__, #a " == " #b);                                                     \
    }                                                                                                  \
  } while (0)

// The copy channel under a CopyOnlyMemory: passes copies to the flat memory,
// except that it can be told to fail the k-th one with Unavailable, as an
// H_COPY_RDMA or grant copy can fail.
class FaultyChannel final : public GuestMemory {
 public:
  explicit FaultyChannel(std::shared_ptr<GuestMemory> inner) : GuestMemory(false), inner_(std::move(inner)) {}
  absl::Status Read(uint64_t addr, void* dst, uint64_t len) override {
    if (Tick()) return absl::UnavailableError("injected channel fault");
    return inner_->Read(addr, dst, len);
  }
  absl::Status Write(uint64_t addr, const void* src, uint64_t len) override {
    if (Tick()) return absl::UnavailableError("injected channel fault");
    return inner_->Write(addr, src, len);
  }
  bool Accessible(uint64_t addr, uint64_t len, Access access) override {
    return inner_->Accessible(addr, len, access);
  }
  void Arm(uint32_t k) { countdown_ = k; }
  uint64_t fired() const { return fired_; }

 private:
  bool Tick() {
    if (countdown_ == 0 || --countdown_ != 0) return false;
    fired_++;
    return true;
  }
  std::shared_ptr<GuestMemory> inner_;
  uint32_t countdown_ = 0;
  uint64_t fired_ = 0;
};

class Reader {
 public:
  Reader(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  bool empty() const { return pos_ >= n_; }
  uint8_t U8() { return pos_ < n_ ? d_[pos_++] : 0; }
  uint16_t U16() {
    uint16_t lo = U8();
    return static_cast<uint16_t>(lo | (uint16_t{U8()} << 8));
  }
  uint32_t U32() {
    uint32_t lo = U16();
    return lo | (uint32_t{U16()} << 16);
  }
  std::span<const uint8_t> Take(size_t len) {
    size_t k = pos_ < n_ ? std::min(len, n_ - pos_) : 0;
    std::span<const uint8_t> s(d_ + std::min(pos_, n_), k);
    pos_ += len;  // a short input still consumes the declared length
    return s;
  }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0;
};

// [a, a+len) lies inside guest memory (RegionMemory::Read would succeed).
bool Reach(uint64_t a, uint64_t len) { return len == 0 || (a >= kBase && a < kEnd && len <= kEnd - a); }

// What the device's view of a Pop should be.
struct Expect {
  PopStatus st = PopStatus::kEmpty;
  RingError err = RingError::kNone;
  uint16_t id = 0;
  uint16_t slots = 0;
  std::vector<Segment> segs;
};

struct Held {
  DescriptorChain c;
  bool faulted = false;  // a copy on it failed (model)
  RingError fault = RingError::kNone;  // the last copy failure
  uint16_t slots = 1;    // packed: ring slots the chain used (model)
  bool stale = false;    // popped from a queue that was reset since
};

struct UsedRec {
  uint64_t addr;  // address of the used entry / used descriptor
  uint32_t slot;
  uint16_t id;
  uint32_t len;
  uint16_t flags;  // packed
  bool clobbered = false;
};

struct MDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;  // split: next, packed: id
};

class Run {
 public:
  explicit Run(Reader& in) : in_(in), g_(kMemSize, kBase) {}

  void Go() {
    if (!Setup()) return;
    size_t ops = 0;
    while (!in_.empty() && ops++ < kMaxOps && !q_->broken()) {
      Op(in_.U8());
      AfterOp();
    }
    if (!q_->broken()) Finish();
    if (q_->broken()) PostMortem();
    FZ_CHECK(GuardsIntact());
    if (Trace())
      std::fprintf(stderr, "[vioport-fuzz] size=%u %s%s%s pops=%u chains=%llu completed=%llu error=%s\n", cfg_.size,
                   copy_only_ ? "copy-only" : "mapped", indirect_ ? " indirect" : "", event_idx_ ? " event-idx" : "",
                   pops_, (unsigned long long)popped_, (unsigned long long)completed_, RingErrorName(q_->error()));
  }

  // FlatGuest::GuardsIntact() with memcmp: its byte loop, instrumented for
  // coverage, took a third of the run time.
  bool GuardsIntact() {
    static const std::vector<uint8_t> pat(FlatGuest::kGuard, FlatGuest::kGuardByte);
    const uint8_t* lo = g_.host_begin() - FlatGuest::kGuard;  // inside FlatGuest's buffer
    const uint8_t* hi = g_.host_begin() + g_.size();
    return std::memcmp(lo, pat.data(), pat.size()) == 0 && std::memcmp(hi, pat.data(), pat.size()) == 0;
  }

  // VIOPORT_FUZZ_TRACE=1: one line per input (for checking what seeds reach).
  static bool Trace() {
    static const bool on = std::getenv("VIOPORT_FUZZ_TRACE") != nullptr;
    return on;
  }

 private:
  // ------------------------------------------------------------------ setup
  bool Setup() {
    const uint8_t flags = in_.U8();
    const uint8_t size_sel = in_.U8();
    const uint16_t raw_size = in_.U16();
    const uint32_t a_desc = in_.U32(), a_driver = in_.U32(), a_device = in_.U32();
    const uint16_t len_desc = in_.U16(), len_driver = in_.U16(), len_device = in_.U16(), len_data = in_.U16();

    indirect_ = flags & 0x01;
    event_idx_ = flags & 0x02;
    copy_only_ = flags & 0x04;
    big_ = !kPacked && (flags & 0x10);
    uint32_t n = kPacked ? uint32_t{size_sel} + 1 : 1u << (size_sel % 9);
    if (flags & 0x20) n = raw_size;

    auto custom = [&](uint32_t v) -> uint64_t {
      if (flags & 0x40) return 0xFFFFFFFF00000000ull | v;
      return kBase + static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(v)));
    };
    cfg_.index = 0;
    cfg_.size = n;
    cfg_.desc_addr = (flags & 0x08) ? custom(a_desc) : kDescArea;
    cfg_.driver_addr = (flags & 0x08) ? custom(a_driver) : kDriverArea;
    cfg_.device_addr = (flags & 0x08) ? custom(a_device) : kDeviceArea;
    cfg_.features = feature::Bit(feature::kVersion1) | (indirect_ ? feature::Bit(feature::kIndirectDesc) : 0) |
                    (event_idx_ ? feature::Bit(feature::kEventIdx) : 0) |
                    (kPacked ? feature::Bit(feature::kRingPacked) : 0);
    cfg_.byte_order = big_ ? RingByteOrder::kBig : RingByteOrder::kLittle;

    auto image = [&](uint64_t area, uint64_t cap, uint16_t len) {
      std::span<const uint8_t> b = in_.Take(len);
      if (!b.empty()) std::memcpy(g_.host(area), b.data(), std::min<uint64_t>(b.size(), cap));
    };
    image(kDescArea, kDescAreaSize, len_desc);
    image(kDriverArea, kDriverAreaSize, len_driver);
    image(kDeviceArea, kDeviceAreaSize, len_device);
    image(kDataArea, kDataAreaSize, len_data);

    if (copy_only_) {
      channel_ = std::make_shared<FaultyChannel>(g_.memory());
      copy_ = std::make_shared<CopyOnlyMemory>(channel_);
      mem_ = copy_.get();
    } else {
      mem_ = g_.memory().get();
    }

    const RingError want = ExpectedCreate();
    RingError got = DeviceQueue::Create(
        cfg_, mem_,
        [this](uint16_t, RingError e) {
          reports_++;
          reported_ = e;
        },
        &q_);
    if (got != want) {
      std::fprintf(stderr, "Create: got %s, want %s\n", RingErrorName(got), RingErrorName(want));
      Violation(__FILE__, __LINE__, "Create result");
    }
    if (got != RingError::kNone) {
      if (Trace()) std::fprintf(stderr, "[vioport-fuzz] size=%u Create: %s\n", n, RingErrorName(got));
      FZ_CHECK(q_ == nullptr);
      FZ_CHECK_EQ(reports_, 0);
      return false;
    }
    FZ_CHECK(q_ != nullptr && !q_->broken() && q_->size() == n);

    pop_bound_ = std::min<uint32_t>(4 * n + 8, 1024);
    rings_reachable_ = kPacked ? Reach(cfg_.desc_addr, 16ull * n) && Reach(cfg_.driver_addr, 4) &&
                                     Reach(cfg_.device_addr, 4)
                               : Reach(cfg_.desc_addr, SplitLayout::DescBytes(n)) &&
                                     Reach(cfg_.driver_addr, SplitLayout::AvailBytes(n)) &&
                                     Reach(cfg_.device_addr, SplitLayout::UsedBytes(n));
    if (kPacked) {
      p_inflight_.assign(n, 0);
    } else {
      m_avail_cache_.assign(n, 0);
    }
    return true;
  }

  RingError ExpectedCreate() const {
    const uint32_t n = cfg_.size;
    if (n == 0 || n > kMaxQueueSize) return RingError::kBadQueueSize;
    if (kPacked) {
      if (cfg_.desc_addr % 16 || cfg_.driver_addr % 4 || cfg_.device_addr % 4) return RingError::kRingMisaligned;
      if (!copy_only_ && (!Reach(cfg_.desc_addr, 16ull * n) || !Reach(cfg_.driver_addr, 4) ||
                          !Reach(cfg_.device_addr, 4)))
        return RingError::kAddressOutOfRange;
    } else {
      if (n & (n - 1)) return RingError::kBadQueueSize;
      if (cfg_.desc_addr % 16 || cfg_.driver_addr % 2 || cfg_.device_addr % 4) return RingError::kRingMisaligned;
      if (!copy_only_ && (!Reach(cfg_.desc_addr, SplitLayout::DescBytes(n)) ||
                          !Reach(cfg_.driver_addr, SplitLayout::AvailBytes(n)) ||
                          !Reach(cfg_.device_addr, SplitLayout::UsedBytes(n))))
        return RingError::kAddressOutOfRange;
    }
    return RingError::kNone;
  }

  // ------------------------------------------------------- memory helpers
  uint8_t* ExpectMap(uint64_t a, uint64_t len) {
    return (a >= kBase && a < kEnd && len <= kEnd - a) ? g_.host(a) : nullptr;
  }
  template <typename T>
  T LdRaw(uint64_t a) {
    T v;
    std::memcpy(&v, g_.host(a), sizeof v);
    return v;
  }
  // Ring fields in the ring's byte order (packed: always little).
  uint16_t Ld16(uint64_t a) {
    uint16_t v = LdRaw<uint16_t>(a);
    return big_ ? be::big_to_native(v) : be::little_to_native(v);
  }
  uint32_t Ld32(uint64_t a) {
    uint32_t v = LdRaw<uint32_t>(a);
    return big_ ? be::big_to_native(v) : be::little_to_native(v);
  }
  uint64_t Ld64(uint64_t a) {
    uint64_t v = LdRaw<uint64_t>(a);
    return big_ ? be::big_to_native(v) : be::little_to_native(v);
  }
  MDesc DecodeAt(const uint8_t* p) const {
    uint64_t a;
    uint32_t l;
    uint16_t x, y;
    std::memcpy(&a, p, 8);
    std::memcpy(&l, p + 8, 4);
    std::memcpy(&x, p + 12, 2);
    std::memcpy(&y, p + 14, 2);
    if (big_) return {be::big_to_native(a), be::big_to_native(l), be::big_to_native(x), be::big_to_native(y)};
    a = be::little_to_native(a);
    l = be::little_to_native(l);
    x = be::little_to_native(x);
    y = be::little_to_native(y);
    if (kPacked) return {a, l, y, x};  // packed: addr, len, id, flags
    return {a, l, x, y};               // split: addr, len, flags, next
  }
  // Driver-side stores: only the part inside memory is written.
  void Poke(uint64_t a, const void* src, uint64_t len) {
    const uint8_t* s = static_cast<const uint8_t*>(src);
    for (uint64_t i = 0; i < len; ++i) {
      if (a + i < a) break;
      if (Reach(a + i, 1)) *g_.host(a + i) = s[i];
    }
    NoteWrite(a, len);
  }
  void Poke16(uint64_t a, uint16_t v) {
    uint16_t raw = big_ ? be::native_to_big(v) : be::native_to_little(v);
    Poke(a, &raw, 2);
  }
  // Anything written while used entries await Publish may overwrite them.
  void NoteWrite(uint64_t a, uint64_t len) {
    const uint64_t esz = kPacked ? 16 : 8;
    for (UsedRec& r : recs_)
      if (a < r.addr + esz && r.addr < a + len) r.clobbered = true;
  }

  // ---------------------------------------------------- reference model
  RingError MAppend(Expect& e, uint64_t addr, uint32_t len, bool w, uint64_t& total, bool& saw_w) {
    if (!w && saw_w) return RingError::kReadableAfterWritable;
    total += len;
    if (total > UINT32_MAX) return RingError::kLengthOverflow;
    uint8_t* host = nullptr;
    if (!copy_only_) {
      host = ExpectMap(addr, len);
      if (!host && !Reach(addr, len)) return RingError::kAddressOutOfRange;
    }
    e.segs.push_back(Segment{addr, len, w, host});
    saw_w |= w;
    return RingError::kNone;
  }

  static Expect Err(RingError r) {
    Expect e;
    e.st = PopStatus::kError;
    e.err = r;
    return e;
  }

  // Split (§2.7). Mirrors the device's copy-only caches: avail entries are
  // read once per batch, the descriptor table once per batch.
  bool SplitReadDesc(uint16_t i, MDesc* d) {
    const uint32_t n = cfg_.size;
    if (!copy_only_) {
      *d = DecodeAt(g_.host(cfg_.desc_addr + 16ull * i));
      return true;
    }
    if (!m_desc_valid_) {
      if (!Reach(cfg_.desc_addr, 16ull * n)) return false;
      m_desc_cache_.assign(g_.host(cfg_.desc_addr), g_.host(cfg_.desc_addr) + 16ull * n);
      m_desc_valid_ = true;
    }
    *d = DecodeAt(m_desc_cache_.data() + 16ull * i);
    return true;
  }

  RingError SplitIndirect(const MDesc& d, Expect& e, uint64_t& total, bool& saw_w) {
    if (d.len == 0 || d.len % 16 != 0) return RingError::kIndirectBadLength;
    const uint32_t entries = d.len / 16;
    if (entries > 65535) return RingError::kIndirectTooLarge;
    if (!Reach(d.addr, d.len)) return RingError::kAddressOutOfRange;
    const uint8_t* table = g_.host(d.addr);
    uint32_t j = 0;
    for (uint32_t count = 1;; ++count) {
      if (count > entries) return RingError::kChainTooLong;
      MDesc x = DecodeAt(table + 16ull * j);
      if (x.flags & kIndirect) return RingError::kNestedIndirect;
      if (RingError r = MAppend(e, x.addr, x.len, x.flags & kWrite, total, saw_w); r != RingError::kNone) return r;
      if (!(x.flags & kNext)) return RingError::kNone;
      if (x.next >= entries) return RingError::kNextOutOfRange;
      j = x.next;
    }
  }

  Expect SplitModelPop() {
    const uint32_t n = cfg_.size;
    if (m_next_ == m_shadow_) {
      const uint64_t ia = cfg_.driver_addr + SplitLayout::kAvailIdx;
      if (copy_only_ && !Reach(ia, 2)) return Err(RingError::kAddressOutOfRange);
      const uint16_t idx = Ld16(ia);
      const uint16_t pending = static_cast<uint16_t>(idx - m_next_);
      if (pending > n) return Err(RingError::kAvailIndexJump);
      if (pending == 0) return Expect{};
      if (copy_only_) {
        for (uint32_t k = 0; k < pending; ++k) {
          const uint32_t slot = (m_next_ + k) & (n - 1);
          if (!Reach(cfg_.driver_addr + SplitLayout::AvailRing(slot), 2)) return Err(RingError::kAddressOutOfRange);
        }
        for (uint32_t k = 0; k < pending; ++k) {
          const uint32_t slot = (m_next_ + k) & (n - 1);
          m_avail_cache_[slot] = Ld16(cfg_.driver_addr + SplitLayout::AvailRing(slot));
        }
        m_desc_valid_ = false;
      }
      m_shadow_ = idx;
    }
    const uint32_t slot = m_next_ & (n - 1);
    const uint16_t head =
        copy_only_ ? m_avail_cache_[slot] : Ld16(cfg_.driver_addr + SplitLayout::AvailRing(slot));
    if (head >= n) return Err(RingError::kHeadOutOfRange);
    Expect e;
    e.id = head;
    e.slots = 1;
    uint64_t total = 0;
    bool saw_w = false;
    uint16_t i = head;
    for (uint32_t count = 1;; ++count) {
      if (count > n) return Err(RingError::kChainTooLong);
      MDesc d;
      if (!SplitReadDesc(i, &d)) return Err(RingError::kAddressOutOfRange);
      if (d.flags & kIndirect) {
        if (!indirect_) return Err(RingError::kIndirectNotNegotiated);
        if (d.flags & kNext) return Err(RingError::kIndirectWithNext);
        if (RingError r = SplitIndirect(d, e, total, saw_w); r != RingError::kNone) return Err(r);
        break;
      }
      if (RingError r = MAppend(e, d.addr, d.len, d.flags & kWrite, total, saw_w); r != RingError::kNone)
        return Err(r);
      if (!(d.flags & kNext)) break;
      if (d.next >= n) return Err(RingError::kNextOutOfRange);
      i = d.next;
    }
    e.st = PopStatus::kChain;
    m_next_++;
    return e;
  }

  // Packed (§2.8). Mirrors the copy-only window of kWindow slots.
  static bool IsAvail(uint16_t flags, bool wrap) {
    return bool(flags & desc_flag::kAvail) == wrap && bool(flags & desc_flag::kUsed) != wrap;
  }
  uint16_t WinFlags(uint32_t k) const {
    uint16_t f;
    std::memcpy(&f, &w_bytes_[16 * k + 14], 2);
    return be::little_to_native(f);
  }
  RingError PFetchWindow() {
    const uint32_t w = std::min<uint32_t>(kWindow, cfg_.size - p_next_);
    const uint64_t a = cfg_.desc_addr + 16ull * p_next_;
    if (!Reach(a, 16ull * w)) return RingError::kAddressOutOfRange;
    w_bytes_.assign(g_.host(a), g_.host(a) + 16ull * w);
    w_start_ = p_next_;
    w_len_ = w;
    w_wrap_ = p_wrap_;
    return RingError::kNone;
  }
  RingError PHeadFlags(uint16_t* f) {
    if (!copy_only_) {
      *f = be::little_to_native(LdRaw<uint16_t>(cfg_.desc_addr + 16ull * p_next_ + 14));
      return RingError::kNone;
    }
    const bool in = w_len_ && w_wrap_ == p_wrap_ && p_next_ >= w_start_ && p_next_ < w_start_ + w_len_;
    if (!in || !IsAvail(WinFlags(p_next_ - w_start_), p_wrap_)) {
      if (RingError r = PFetchWindow(); r != RingError::kNone) return r;
      if (!IsAvail(WinFlags(0), p_wrap_)) {
        *f = WinFlags(0);
        return RingError::kNone;
      }
    }
    *f = WinFlags(p_next_ - w_start_);
    return RingError::kNone;
  }
  bool PReadDesc(uint32_t slot, MDesc* d) {
    const uint64_t a = cfg_.desc_addr + 16ull * slot;
    if (copy_only_ && w_len_ && w_wrap_ == p_wrap_ && slot >= w_start_ && slot < w_start_ + w_len_) {
      *d = DecodeAt(&w_bytes_[16 * (slot - w_start_)]);
      return true;
    }
    if (!Reach(a, 16)) return false;  // mapped: always reachable (checked at Create)
    *d = DecodeAt(g_.host(a));
    return true;
  }
  RingError PIndirect(const MDesc& d, Expect& e, uint64_t& total, bool& saw_w) {
    if (d.len == 0 || d.len % 16 != 0) return RingError::kIndirectBadLength;
    const uint32_t entries = d.len / 16;
    if (entries > 65535) return RingError::kIndirectTooLarge;
    if (!Reach(d.addr, d.len)) return RingError::kAddressOutOfRange;
    const uint8_t* table = g_.host(d.addr);
    for (uint32_t j = 0; j < entries; ++j) {
      MDesc x = DecodeAt(table + 16ull * j);
      if (x.flags & kIndirect) return RingError::kNestedIndirect;
      if (RingError r = MAppend(e, x.addr, x.len, x.flags & kWrite, total, saw_w); r != RingError::kNone) return r;
    }
    return RingError::kNone;
  }
  Expect PackedModelPop() {
    const uint32_t n = cfg_.size;
    uint16_t head_flags;
    if (RingError r = PHeadFlags(&head_flags); r != RingError::kNone) return Err(r);
    if (!IsAvail(head_flags, p_wrap_)) return Expect{};
    Expect e;
    uint32_t slot = p_next_, slots = 0;
    bool wrap = p_wrap_;
    uint64_t total = 0;
    bool saw_w = false;
    uint16_t id = 0;
    for (;;) {
      if (++slots > n) return Err(RingError::kChainTooLong);
      MDesc d;
      if (!PReadDesc(slot, &d)) return Err(RingError::kAddressOutOfRange);
      if (slots == 1) d.flags = head_flags;
      if (++slot == n) {
        slot = 0;
        wrap = !wrap;
      }
      if (d.flags & kIndirect) {
        if (!indirect_) return Err(RingError::kIndirectNotNegotiated);
        if ((d.flags & kNext) || slots > 1) return Err(RingError::kIndirectWithNext);
        if (RingError r = PIndirect(d, e, total, saw_w); r != RingError::kNone) return Err(r);
        id = d.next;
        break;
      }
      if (RingError r = MAppend(e, d.addr, d.len, d.flags & kWrite, total, saw_w); r != RingError::kNone)
        return Err(r);
      if (!(d.flags & kNext)) {
        id = d.next;
        break;
      }
    }
    if (id >= n || p_inflight_[id]) return Err(RingError::kBadBufferId);
    p_inflight_[id] = 1;
    p_next_ = static_cast<uint16_t>(slot);
    p_wrap_ = wrap;
    e.st = PopStatus::kChain;
    e.id = id;
    e.slots = static_cast<uint16_t>(slots);
    return e;
  }

  uint32_t ModelBase() const {
    if (!kPacked) return m_next_;
    return uint32_t{p_next_} | (p_wrap_ ? 1u << 15 : 0) | (uint32_t{p_pub_} << 16) | (p_pub_wrap_ ? 1u << 31 : 0);
  }

  // ----------------------------------------------------------- device ops
  void Op(uint8_t op) {
    const uint8_t h = op >> 4;
    switch (op & 15) {
      case 0:
        DoPop();
        break;
      case 14: {
        const uint8_t k = in_.U8();
        if (channel_) channel_->Arm(k);
        break;
      }
      case 15:
        if (h & 1)
          DoFail(static_cast<RingError>(h >> 1));
        else
          DoReset();
        break;
      case 1:
        Drain();
        break;
      case 2: {
        const uint16_t off = in_.U16(), len = in_.U16();
        if (Held* c = Pick(h)) DoCopy(*c, false, off, len, 0);
        break;
      }
      case 3: {
        const uint16_t off = in_.U16(), len = in_.U16();
        const uint8_t pat = in_.U8();
        if (Held* c = Pick(h)) DoCopy(*c, true, off, len, pat);
        break;
      }
      case 4: {
        const uint8_t mode = in_.U8();
        const uint32_t val = in_.U32();
        if (held_.empty()) break;
        const size_t k = h % held_.size();
        const uint32_t wb = held_[k].c.writable_bytes();
        uint32_t written = 0;
        switch (mode % 4) {
          case 0: written = val; break;
          case 1: written = wb; break;
          case 2: written = wb + std::min<uint32_t>(val & 0xff, UINT32_MAX - wb); break;
          default: written = 0; break;
        }
        DoAddUsed(k, written);
        break;
      }
      case 5:
        if (!held_.empty()) Complete(h % held_.size());
        break;
      case 6:
        DoPublish();
        break;
      case 7:
        DoEnable();
        break;
      case 8:
        DoDisable();
        break;
      case 9:
        DoMutate(h % 4);
        break;
      case 10: {
        const uint32_t b = q_->GetBase();
        if (!DoSetBase(b)) break;
        // Packed: a base whose used half is 0 (index 0, wrap counter 0) reads
        // as DPDK's avail-only form, so used comes back equal to avail. A
        // front-end never sees that state: the device completes every chain
        // before GET_VRING_BASE answers, so used equals avail there.
        const uint32_t want = kPacked && (b >> 16) == 0 ? (b & 0xffff) | ((b & 0xffff) << 16) : b;
        if (!q_->broken()) FZ_CHECK_EQ(q_->GetBase(), want);
        break;
      }
      case 11:
        DoSetBase(in_.U32());
        break;
      case 12:
        DoPush(h);
        break;
      case 13:
        DoDriverField(h % 4);
        break;
      default:
        break;
    }
    if (!kPacked || (op & 15) != 12) push_cont_ = false;
  }

  uint64_t Faults() const { return channel_ ? channel_->fired() : 0; }

  Held* Pick(uint8_t h) { return held_.empty() ? nullptr : &held_[h % held_.size()]; }

  void DoPop() {
    if (pops_ >= pop_bound_) return;
    if (held_.size() >= kMaxHeld) {
      Complete(0);
      if (q_->broken()) return;
    }
    pops_++;
    const uint64_t w0 = copy_ ? copy_->writes() : 0, f0 = Faults();
    Expect e = kPacked ? PackedModelPop() : SplitModelPop();
    DescriptorChain c;
    const PopStatus st = q_->Pop(c);
    if (copy_) FZ_CHECK_EQ(copy_->writes(), w0);  // Pop never writes guest memory
    if (Faults() != f0) e = Err(RingError::kMemoryFault);  // a failed copy channel
    if (st != e.st) {
      std::fprintf(stderr, "Pop: got status %d (error %s), model %d (error %s)\n", int(st),
                   RingErrorName(q_->error()), int(e.st), RingErrorName(e.err));
      Violation(__FILE__, __LINE__, "Pop status differs from the reference walk");
    }
    switch (st) {
      case PopStatus::kEmpty:
        FZ_CHECK(!c.valid());
        FZ_CHECK(!q_->broken());
        break;
      case PopStatus::kError:
        FZ_CHECK(!c.valid());
        FZ_CHECK(q_->broken());
        if (q_->error() != e.err) {
          std::fprintf(stderr, "Pop error: got %s, model %s\n", RingErrorName(q_->error()), RingErrorName(e.err));
          Violation(__FILE__, __LINE__, "Pop error differs from the reference walk");
        }
        FZ_CHECK_EQ(reports_, 1);
        FZ_CHECK(reported_ == e.err);
        break;
      case PopStatus::kChain:
        CheckChain(c, e);
        popped_++;
        held_.push_back(Held{std::move(c), false, RingError::kNone, e.slots, false});
        break;
    }
  }

  void CheckChain(const DescriptorChain& c, const Expect& e) {
    const uint32_t n = cfg_.size;
    FZ_CHECK(c.valid());
    FZ_CHECK(c.memory() == mem_);
    FZ_CHECK(!q_->broken());
    FZ_CHECK(c.id() < n);
    FZ_CHECK(c.fault() == RingError::kNone);
    const auto segs = c.segments();
    const size_t nr = c.readable().size();
    FZ_CHECK_EQ(nr + c.writable().size(), segs.size());
    FZ_CHECK(segs.size() <= uint64_t{n} + 65535);
    uint64_t rb = 0, wb = 0;
    const uint8_t* hb = g_.host_begin();
    for (size_t i = 0; i < segs.size(); ++i) {
      const Segment& s = segs[i];
      if (i < nr) {
        FZ_CHECK(!s.device_writable);  // readable segments come first
        rb += s.len;
      } else {
        FZ_CHECK(s.device_writable);
        wb += s.len;
      }
      if (copy_only_) {
        FZ_CHECK(s.host == nullptr);
      } else {
        if (s.host) {
          FZ_CHECK(s.host >= hb && s.host <= hb + kMemSize && s.len <= uint64_t(hb + kMemSize - s.host));
          FZ_CHECK(s.host == g_.host(s.addr));
        }
        // Accepted buffers of a mapped memory are inside it.
        FZ_CHECK(s.len == 0 || s.host != nullptr);
      }
    }
    FZ_CHECK_EQ(rb, uint64_t{c.readable_bytes()});
    FZ_CHECK_EQ(wb, uint64_t{c.writable_bytes()});
    FZ_CHECK(rb + wb <= UINT32_MAX);
    // Against the reference walk.
    FZ_CHECK_EQ(c.id(), e.id);
    if (segs.size() != e.segs.size()) {
      std::fprintf(stderr, "chain has %zu segments, model %zu\n", segs.size(), e.segs.size());
      Violation(__FILE__, __LINE__, "segment count differs from the reference walk");
    }
    for (size_t i = 0; i < segs.size(); ++i) {
      const Segment &a = segs[i], &b = e.segs[i];
      if (a.addr != b.addr || a.len != b.len || a.device_writable != b.device_writable || a.host != b.host) {
        std::fprintf(stderr, "segment %zu: got {0x%llx,%u,%d,%p} model {0x%llx,%u,%d,%p}\n", i,
                     (unsigned long long)a.addr, a.len, int(a.device_writable), (void*)a.host,
                     (unsigned long long)b.addr, b.len, int(b.device_writable), (void*)b.host);
        Violation(__FILE__, __LINE__, "segment differs from the reference walk");
      }
    }
  }

  struct Piece {
    uint64_t addr, len, buf_off;
  };
  // Splits [off, off+len) of the readable/writable part into buffer pieces.
  static bool Pieces(std::span<const Segment> part, uint64_t total, uint64_t off, uint64_t len,
                     std::vector<Piece>& out) {
    out.clear();
    if (off > total || len > total - off) return false;
    uint64_t done = 0;
    for (const Segment& s : part) {
      if (done == len) break;
      if (off >= s.len) {
        off -= s.len;
        continue;
      }
      const uint64_t k = std::min<uint64_t>(s.len - off, len - done);
      out.push_back({s.addr + off, k, done});
      done += k;
      off = 0;
    }
    return true;
  }

  void DoCopy(Held& h, bool write, uint64_t off, uint64_t len, uint8_t pat) {
    DescriptorChain& c = h.c;
    static std::vector<uint8_t> rbuf(kMaxCopy);
    static const std::vector<uint8_t> pattern = [] {
      std::vector<uint8_t> p(kMaxCopy + 256);
      for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<uint8_t>(i * 7 + i / 251);
      return p;
    }();
    const uint8_t* buf = write ? pattern.data() + pat : rbuf.data();
    len = std::min({len, kMaxCopy, kCopyBudget - copied_});
    copied_ += len;
    const uint64_t total = write ? c.writable_bytes() : c.readable_bytes();
    std::vector<Piece> pieces;
    bool ok = Pieces(write ? c.writable() : c.readable(), total, off, len, pieces);
    for (const Piece& p : pieces) ok = ok && Reach(p.addr, p.len);
    const uint64_t w0 = copy_ ? copy_->writes() : 0, f0 = Faults();
    const RingError r = write ? c.Write(off, buf, len) : c.Read(off, rbuf.data(), len);
    if (copy_ && !write) FZ_CHECK_EQ(copy_->writes(), w0);
    if (write)
      for (const Piece& p : pieces) NoteWrite(p.addr, p.len);
    if (Faults() != f0) {
      FZ_CHECK(r == RingError::kMemoryFault);
      FZ_CHECK(c.fault() == RingError::kMemoryFault);
      h.faulted = true;
      h.fault = RingError::kMemoryFault;
      return;
    }
    if (!ok) {
      if (r != RingError::kAddressOutOfRange) {
        std::fprintf(stderr, "%s(%llu, %llu) of %llu bytes: got %s, want kAddressOutOfRange\n",
                     write ? "Write" : "Read", (unsigned long long)off, (unsigned long long)len,
                     (unsigned long long)total, RingErrorName(r));
        Violation(__FILE__, __LINE__, "copy outside the chain or memory did not fail");
      }
      FZ_CHECK(c.fault() == RingError::kAddressOutOfRange);
      h.faulted = true;
      h.fault = RingError::kAddressOutOfRange;
      return;
    }
    if (r != RingError::kNone) {
      std::fprintf(stderr, "%s(%llu, %llu) of %llu bytes failed: %s\n", write ? "Write" : "Read",
                   (unsigned long long)off, (unsigned long long)len, (unsigned long long)total, RingErrorName(r));
      Violation(__FILE__, __LINE__, "copy inside the chain and memory failed");
    }
    FZ_CHECK((c.fault() != RingError::kNone) == h.faulted);
    if (!write) {
      for (const Piece& p : pieces)
        FZ_CHECK(std::memcmp(buf + p.buf_off, g_.host(p.addr), p.len) == 0);
      return;
    }
    // Written bytes are where the segments say (unless buffers overlap).
    if (pieces.size() > 64) return;
    for (size_t i = 0; i < pieces.size(); ++i)
      for (size_t j = i + 1; j < pieces.size(); ++j)
        if (pieces[i].addr < pieces[j].addr + pieces[j].len && pieces[j].addr < pieces[i].addr + pieces[i].len)
          return;
    for (const Piece& p : pieces) FZ_CHECK(std::memcmp(buf + p.buf_off, g_.host(p.addr), p.len) == 0);
  }

  void DoAddUsed(size_t k, uint32_t written) {
    Held h = std::move(held_[k]);
    held_.erase(held_.begin() + static_cast<ptrdiff_t>(k));
    if (h.stale) {
      // A chain from before a reset is dropped: no used entry, no state change.
      const uint32_t base = q_->GetBase(), inflight = q_->in_flight();
      const uint64_t w0 = copy_ ? copy_->writes() : 0;
      q_->AddUsed(std::move(h.c), written);
      if (kExpectDroppedChainCleared) FZ_CHECK(!h.c.valid());
      FZ_CHECK(!q_->broken());  // even if its copies faulted
      FZ_CHECK_EQ(q_->GetBase(), base);
      FZ_CHECK_EQ(q_->in_flight(), inflight);
      if (copy_) FZ_CHECK_EQ(copy_->writes(), w0);
      return;
    }
    const uint16_t id = h.c.id();
    const uint32_t wb = h.c.writable_bytes();
    FZ_CHECK((h.c.fault() != RingError::kNone) == h.faulted);
    FZ_CHECK(h.c.fault() == h.fault);
    const uint32_t len = std::min(written, wb);
    UsedRec rec{};
    if (kPacked) {
      rec.slot = p_used_;
      rec.addr = cfg_.desc_addr + 16ull * p_used_;
      rec.flags = static_cast<uint16_t>((p_used_wrap_ ? (desc_flag::kAvail | desc_flag::kUsed) : 0) |
                                        (wb > 0 ? kWrite : 0));
    } else {
      rec.slot = m_used_ & (cfg_.size - 1);
      rec.addr = cfg_.device_addr + SplitLayout::UsedRing(rec.slot);
    }
    rec.id = id;
    rec.len = len;
    q_->AddUsed(std::move(h.c), written);
    FZ_CHECK(!h.c.valid());
    if (kPacked) p_inflight_[id] = 0;
    if (h.faulted) {
      // A chain whose copies faulted breaks the queue when it comes back.
      FZ_CHECK(q_->broken());
      FZ_CHECK(q_->error() == h.fault);
      return;
    }
    FZ_CHECK(!q_->broken());
    completed_++;
    pending_adds_++;
    if (kPacked) {
      uint32_t next = uint32_t{p_used_} + h.slots;
      if (next >= cfg_.size) {
        next -= cfg_.size;
        p_used_wrap_ = !p_used_wrap_;
      }
      p_used_ = static_cast<uint16_t>(next);
      slots_since_publish_ += h.slots;
    } else {
      m_used_++;
    }
    recs_.push_back(rec);
  }

  void Complete(size_t k) {
    Held& h = held_[k];
    const uint64_t rl = std::min<uint64_t>(h.c.readable_bytes(), kMaxCopy);
    const uint64_t wl = std::min<uint64_t>(h.c.writable_bytes(), kMaxCopy);
    if (rl) DoCopy(h, false, 0, rl, 0);
    if (wl) DoCopy(held_[k], true, 0, wl, static_cast<uint8_t>(popped_));
    DoAddUsed(k, static_cast<uint32_t>(wl));
  }

  void Drain() {
    int since = 0;
    while (pops_ < pop_bound_ && !q_->broken()) {
      const uint64_t p0 = popped_;
      DoPop();
      if (q_->broken() || popped_ == p0) break;
      Complete(held_.size() - 1);
      if (q_->broken()) break;
      if (++since % 4 == 0) DoPublish();
    }
    if (!q_->broken()) DoPublish();
  }

  // Outside Pop, a queue breaks only on copy-only memory: with
  // kAddressOutOfRange if its rings are partly outside memory, with
  // kMemoryFault if (and only if) an injected channel fault hit the op.
  void CheckBreakAllowed(const char* what, uint64_t f0) {
    if (Faults() != f0) {
      FZ_CHECK(q_->broken());
      FZ_CHECK(q_->error() == RingError::kMemoryFault);
      return;
    }
    if (!q_->broken()) return;
    if (copy_only_ && !rings_reachable_ && q_->error() == RingError::kAddressOutOfRange) return;
    std::fprintf(stderr, "%s broke the queue: %s\n", what, RingErrorName(q_->error()));
    Violation(__FILE__, __LINE__, "unexpected break outside Pop");
  }

  void DoPublish() {
    const bool any = pending_adds_ > 0;
    const uint64_t f0 = Faults();
    const bool ret = q_->Publish();
    CheckBreakAllowed("Publish", f0);
    if (q_->broken()) return;
    if (!any) {
      FZ_CHECK(!ret);
      return;
    }
    const uint32_t n = cfg_.size;
    // Entries at a slot written twice in one batch are ambiguous; skip them.
    std::vector<uint32_t> slots;
    for (const UsedRec& r : recs_) slots.push_back(r.slot);
    std::sort(slots.begin(), slots.end());
    auto dup = [&](uint32_t s) {
      auto [lo, hi] = std::equal_range(slots.begin(), slots.end(), s);
      return hi - lo > 1;
    };
    bool need;
    if (!kPacked) {
      FZ_CHECK_EQ(Ld16(cfg_.device_addr + SplitLayout::kUsedIdx), m_used_);
      for (const UsedRec& r : recs_) {
        if (r.clobbered || dup(r.slot)) continue;
        FZ_CHECK_EQ(Ld32(r.addr), uint32_t{r.id});
        FZ_CHECK_EQ(Ld32(r.addr + 4), r.len);  // never more than the chain's writable bytes
      }
      const uint16_t old = m_published_, now = m_used_;
      if (event_idx_) {
        const uint16_t ev = Ld16(cfg_.driver_addr + SplitLayout::UsedEvent(n));
        need = static_cast<uint16_t>(ev - old) < static_cast<uint16_t>(now - old);
      } else {
        need = !(Ld16(cfg_.driver_addr + SplitLayout::kAvailFlags) & kAvailFlagNoInterrupt);
      }
      FZ_CHECK_EQ(ret, need);
      m_published_ = m_used_;
    } else {
      for (const UsedRec& r : recs_) {
        if (r.clobbered || dup(r.slot)) continue;
        FZ_CHECK_EQ(be::little_to_native(LdRaw<uint32_t>(r.addr + 8)), r.len);
        FZ_CHECK_EQ(be::little_to_native(LdRaw<uint16_t>(r.addr + 12)), r.id);
        FZ_CHECK_EQ(be::little_to_native(LdRaw<uint16_t>(r.addr + 14)), r.flags);
      }
      const uint16_t ow = be::little_to_native(LdRaw<uint16_t>(cfg_.driver_addr));
      const uint16_t mode = be::little_to_native(LdRaw<uint16_t>(cfg_.driver_addr + 2)) & 3;
      if (mode == packed_event::kDisable) {
        FZ_CHECK(!ret);
      } else if (mode != packed_event::kDesc || !event_idx_) {
        FZ_CHECK(ret);
      } else if (slots_since_publish_ <= n) {
        // Positions relative to the lap of the new used index.
        const int32_t now = p_used_;
        const int32_t old = p_pub_wrap_ == p_used_wrap_ ? int32_t{p_pub_} : int32_t{p_pub_} - int32_t(n);
        const int32_t ev = bool(ow >> 15) == p_used_wrap_ ? int32_t(ow & 0x7fff) : int32_t(ow & 0x7fff) - int32_t(n);
        need = old <= ev && ev < now;
        FZ_CHECK_EQ(ret, need);
      }
      p_pub_ = p_used_;
      p_pub_wrap_ = p_used_wrap_;
      slots_since_publish_ = 0;
    }
    recs_.clear();
    pending_adds_ = 0;
  }

  void DoEnable() {
    const uint64_t f0 = Faults();
    const bool ret = q_->EnableNotifications();
    if (kPacked && copy_only_) {
      w_len_ = 0;  // the device takes a fresh look
    }
    CheckBreakAllowed("EnableNotifications", f0);
    if (q_->broken()) return;
    const uint32_t n = cfg_.size;
    if (!kPacked) {
      if (event_idx_) {
        FZ_CHECK_EQ(Ld16(cfg_.device_addr + SplitLayout::AvailEvent(n)), m_next_);
      } else {
        FZ_CHECK_EQ(Ld16(cfg_.device_addr + SplitLayout::kUsedFlags), 0);
      }
      // No lost wake-up: true iff there is something to pop.
      const bool want = m_next_ != m_shadow_ || Ld16(cfg_.driver_addr + SplitLayout::kAvailIdx) != m_next_;
      FZ_CHECK_EQ(ret, want);
    } else {
      NoteWrite(cfg_.device_addr, 4);
      uint16_t f = 0;
      FZ_CHECK(PHeadFlags(&f) == RingError::kNone);  // it did not break, so the read worked
      FZ_CHECK_EQ(ret, IsAvail(f, p_wrap_));
      const uint16_t ow = be::little_to_native(LdRaw<uint16_t>(cfg_.device_addr));
      const uint16_t fl = be::little_to_native(LdRaw<uint16_t>(cfg_.device_addr + 2));
      if (event_idx_) {
        FZ_CHECK_EQ(ow, static_cast<uint16_t>(p_next_ | (p_wrap_ ? 0x8000 : 0)));
        FZ_CHECK_EQ(fl, packed_event::kDesc);
      } else {
        FZ_CHECK_EQ(fl, packed_event::kEnable);
      }
    }
  }

  void DoDisable() {
    const uint64_t f0 = Faults();
    q_->DisableNotifications();
    CheckBreakAllowed("DisableNotifications", f0);
    if (q_->broken()) return;
    if (!kPacked) {
      if (!event_idx_) FZ_CHECK_EQ(Ld16(cfg_.device_addr + SplitLayout::kUsedFlags), kUsedFlagNoNotify);
    } else {
      NoteWrite(cfg_.device_addr, 4);
      FZ_CHECK_EQ(be::little_to_native(LdRaw<uint16_t>(cfg_.device_addr + 2)), packed_event::kDisable);
    }
  }

  // False when the input's SetBase allowance is used up (nothing done).
  bool DoSetBase(uint32_t b) {
    if (set_bases_++ >= kMaxSetBase) return false;
    const uint64_t f0 = Faults();
    q_->SetBase(b);
    CheckBreakAllowed("SetBase", f0);
    if (q_->broken()) return true;
    const uint32_t n = cfg_.size;
    recs_.clear();
    pending_adds_ = 0;
    if (!kPacked) {
      m_next_ = m_shadow_ = static_cast<uint16_t>(b);
      m_used_ = m_published_ = Ld16(cfg_.device_addr + SplitLayout::kUsedIdx);
      m_desc_valid_ = false;
    } else {
      p_next_ = static_cast<uint16_t>((b & 0x7fff) % n);
      p_wrap_ = b & (1u << 15);
      if ((b >> 16) == 0) {  // only the avail half (DPDK's virtio-user): used follows avail
        p_used_ = p_pub_ = p_next_;
        p_used_wrap_ = p_pub_wrap_ = p_wrap_;
      } else {
        p_used_ = p_pub_ = static_cast<uint16_t>(((b >> 16) & 0x7fff) % n);
        p_used_wrap_ = p_pub_wrap_ = b & (1u << 31);
      }
      slots_since_publish_ = 0;
      w_len_ = 0;
      if (!p_inflight_.empty()) std::memset(p_inflight_.data(), 0, p_inflight_.size());
    }
    return true;
  }

  void DoFail(RingError e) {
    q_->Fail(e);
    if (e == RingError::kNone) {
      FZ_CHECK(!q_->broken());
      return;
    }
    FZ_CHECK(q_->broken());
    FZ_CHECK(q_->error() == e);
    FZ_CHECK_EQ(reports_, 1);
    FZ_CHECK(reported_ == e);
  }

  // Device reset: a new queue object over the same rings. Chains popped from
  // the old one become stale.
  void DoReset() {
    if (resets_++ >= kMaxResets) return;
    for (Held& h : held_) h.stale = true;
    q_.reset();
    const RingError r = DeviceQueue::Create(
        cfg_, mem_,
        [this](uint16_t, RingError e) {
          reports_++;
          reported_ = e;
        },
        &q_);
    FZ_CHECK(r == RingError::kNone && q_ != nullptr);
    FZ_CHECK_EQ(q_->in_flight(), 0u);
    recs_.clear();
    pending_adds_ = 0;
    popped_ = completed_ = 0;
    m_next_ = m_shadow_ = m_used_ = m_published_ = 0;
    std::fill(m_avail_cache_.begin(), m_avail_cache_.end(), 0);
    m_desc_valid_ = false;
    p_next_ = p_used_ = p_pub_ = 0;
    p_wrap_ = p_used_wrap_ = p_pub_wrap_ = true;
    slots_since_publish_ = 0;
    if (!p_inflight_.empty()) std::memset(p_inflight_.data(), 0, p_inflight_.size());
    w_len_ = 0;
    push_cont_ = false;
  }

  // --------------------------------------------------------- driver ops
  void DoMutate(uint8_t area) {
    const uint32_t n = cfg_.size;
    uint64_t base, size;
    switch (area) {
      case 0: base = cfg_.desc_addr, size = 16ull * n; break;
      case 1: base = cfg_.driver_addr, size = kPacked ? 4 : SplitLayout::AvailBytes(n); break;
      case 2: base = cfg_.device_addr, size = kPacked ? 4 : SplitLayout::UsedBytes(n); break;
      default: base = kDataArea, size = kDataAreaSize; break;
    }
    const uint64_t off = in_.U16() % std::max<uint64_t>(size, 1);
    const size_t len = in_.U8() % 65;
    std::span<const uint8_t> b = in_.Take(len);
    Poke(base + off, b.data(), b.size());
  }

  void DoPush(uint8_t h) {
    const uint32_t n = cfg_.size;
    const uint16_t flags = static_cast<uint16_t>(((h & 1) ? kWrite : 0) | ((h & 2) ? kNext : 0) |
                                                 ((h & 4) ? kIndirect : 0));
    if (!kPacked) {
      const uint16_t head = static_cast<uint16_t>(in_.U8() % n);
      const uint64_t addr = kDataArea + in_.U16();
      const uint32_t len = in_.U16();
      const uint16_t next = in_.U8();
      uint8_t d[16];
      const uint64_t a = big_ ? be::native_to_big(addr) : be::native_to_little(addr);
      const uint32_t l = big_ ? be::native_to_big(len) : be::native_to_little(len);
      const uint16_t f = big_ ? be::native_to_big(flags) : be::native_to_little(flags);
      const uint16_t x = big_ ? be::native_to_big(next) : be::native_to_little(next);
      std::memcpy(d, &a, 8);
      std::memcpy(d + 8, &l, 4);
      std::memcpy(d + 12, &f, 2);
      std::memcpy(d + 14, &x, 2);
      Poke(cfg_.desc_addr + 16ull * head, d, 16);
      if (h & 8) return;
      const uint64_t ia = cfg_.driver_addr + SplitLayout::kAvailIdx;
      const uint16_t idx = Reach(ia, 2) ? Ld16(ia) : 0;
      Poke16(cfg_.driver_addr + SplitLayout::AvailRing(idx & (n - 1)), head);
      Poke16(ia, static_cast<uint16_t>(idx + 1));
    } else {
      const uint64_t addr = kDataArea + in_.U16();
      const uint32_t len = in_.U16();
      const uint16_t id = in_.U16();
      if (!push_cont_) {
        drv_slot_ = p_next_;
        drv_wrap_ = p_wrap_;
      }
      bool w = drv_wrap_;
      if (h & 8) w = !w;
      const uint16_t f =
          static_cast<uint16_t>(flags | (w ? desc_flag::kAvail : desc_flag::kUsed));
      uint8_t d[16];
      const uint64_t a = be::native_to_little(addr);
      const uint32_t l = be::native_to_little(len);
      const uint16_t i = be::native_to_little(id);
      const uint16_t fl = be::native_to_little(f);
      std::memcpy(d, &a, 8);
      std::memcpy(d + 8, &l, 4);
      std::memcpy(d + 12, &i, 2);
      std::memcpy(d + 14, &fl, 2);
      Poke(cfg_.desc_addr + 16ull * drv_slot_, d, 16);
      if (++drv_slot_ >= n) {
        drv_slot_ = 0;
        drv_wrap_ = !drv_wrap_;
      }
      push_cont_ = flags & kNext;
    }
  }

  void DoDriverField(uint8_t sel) {
    const uint32_t n = cfg_.size;
    const uint16_t v = in_.U16();
    if (!kPacked) {
      const uint64_t ia = cfg_.driver_addr + SplitLayout::kAvailIdx;
      switch (sel) {
        case 0: Poke16(ia, v); break;
        case 1: Poke16(cfg_.driver_addr + SplitLayout::kAvailFlags, v); break;
        case 2: Poke16(cfg_.driver_addr + SplitLayout::UsedEvent(n), v); break;
        default:
          if (Reach(ia, 2)) Poke16(ia, static_cast<uint16_t>(Ld16(ia) + (v & 0xff)));
          break;
      }
    } else {
      switch (sel) {
        case 0: Poke16(cfg_.driver_addr, v); break;
        case 1: Poke16(cfg_.driver_addr + 2, v); break;
        case 2: Poke16(cfg_.driver_addr + 2, v & 3); break;
        default: break;
      }
    }
  }

  // ------------------------------------------------------------ checks
  void AfterOp() {
    if (q_->broken()) return;
    FZ_CHECK_EQ(q_->in_flight(), static_cast<uint32_t>(std::count_if(
                                     held_.begin(), held_.end(), [](const Held& x) { return !x.stale; })));
    FZ_CHECK_EQ(q_->GetBase(), ModelBase());
    FZ_CHECK_EQ(q_->counters().popped, popped_);
    FZ_CHECK_EQ(q_->counters().completed, completed_);
    FZ_CHECK_EQ(reports_, 0);
  }

  void Finish() {
    Drain();
    while (!held_.empty() && !q_->broken()) Complete(0);
    if (!q_->broken()) DoPublish();
    if (!q_->broken()) AfterOp();
  }

  // A broken queue stays broken and touches no memory.
  void PostMortem() {
    const RingError err = q_->error();
    FZ_CHECK(err != RingError::kNone);
    FZ_CHECK_EQ(reports_, 1);
    FZ_CHECK(reported_ == err);
    std::vector<uint8_t> before(g_.host_begin(), g_.host_begin() + kMemSize);
    const uint64_t r0 = copy_ ? copy_->reads() : 0, w0 = copy_ ? copy_->writes() : 0;
    for (int i = 0; i < 3; ++i) {
      DescriptorChain c;
      FZ_CHECK(q_->Pop(c) == PopStatus::kError);
      FZ_CHECK(!c.valid());
    }
    while (!held_.empty()) {
      q_->AddUsed(std::move(held_.back().c), 1);
      held_.pop_back();
    }
    FZ_CHECK_EQ(q_->in_flight(), 0u);
    FZ_CHECK(!q_->Publish());
    FZ_CHECK(!q_->EnableNotifications());
    q_->DisableNotifications();
    (void)q_->GetBase();
    if (copy_) {
      FZ_CHECK_EQ(copy_->reads(), r0);
      FZ_CHECK_EQ(copy_->writes(), w0);
    }
    FZ_CHECK(std::memcmp(before.data(), g_.host_begin(), kMemSize) == 0);
    q_->SetBase(q_->GetBase());  // may read the used idx; must not un-break
    DescriptorChain c;
    FZ_CHECK(q_->Pop(c) == PopStatus::kError);
    FZ_CHECK(q_->error() == err);
    FZ_CHECK_EQ(reports_, 1);
  }

  Reader& in_;
  FlatGuest g_;
  std::shared_ptr<FaultyChannel> channel_;
  std::shared_ptr<CopyOnlyMemory> copy_;
  GuestMemory* mem_ = nullptr;
  std::unique_ptr<DeviceQueue> q_;
  QueueConfig cfg_;
  bool indirect_ = false, event_idx_ = false, copy_only_ = false, big_ = false;
  bool rings_reachable_ = false;
  int reports_ = 0;
  RingError reported_ = RingError::kNone;

  std::vector<Held> held_;
  std::vector<UsedRec> recs_;  // accepted since the last Publish
  uint32_t pending_adds_ = 0;
  uint32_t pops_ = 0, pop_bound_ = 0, set_bases_ = 0, resets_ = 0;
  uint64_t copied_ = 0;
  uint64_t popped_ = 0, completed_ = 0;

  // Split model.
  uint16_t m_next_ = 0, m_shadow_ = 0, m_used_ = 0, m_published_ = 0;
  std::vector<uint16_t> m_avail_cache_;
  std::vector<uint8_t> m_desc_cache_;
  bool m_desc_valid_ = false;

  // Packed model.
  uint16_t p_next_ = 0, p_used_ = 0, p_pub_ = 0;
  bool p_wrap_ = true, p_used_wrap_ = true, p_pub_wrap_ = true;
  uint32_t slots_since_publish_ = 0;
  std::vector<uint8_t> p_inflight_;
  uint32_t w_start_ = 0, w_len_ = 0;
  bool w_wrap_ = true;
  std::vector<uint8_t> w_bytes_;
  // Packed driver cursor for PUSH.
  bool push_cont_ = false;
  uint32_t drv_slot_ = 0;
  bool drv_wrap_ = true;
};

}  // namespace
}  // namespace vioport

namespace vioport {
int FuzzInflight(const uint8_t* data, size_t size, bool packed);  // inflight_fuzz.cc
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Flags bit 0x80: the in-flight log mode (inflight_fuzz.cc has its format).
  if (size && (data[0] & 0x80)) return vioport::FuzzInflight(data, size, vioport::kPacked);
  vioport::Reader in(data, size);
  vioport::Run run(in);
  run.Go();
  return 0;
}
