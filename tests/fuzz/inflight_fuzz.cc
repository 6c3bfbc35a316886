// SPDX-License-Identifier: Apache-2.0
// The in-flight log mode of fuzz_split_ring / fuzz_packed_ring (ring_fuzzer.cc
// hands an input over when its flags byte has 0x80): a device queue keeps a
// SplitInflightLog / PackedInflightLog while a real driver (core's
// DriverQueue) offers requests, and the device "crashes" (its queue and every
// chain it holds are dropped uncompleted) and recovers from the log, any
// number of times. The input may also overwrite the log or the ring, as a
// hostile VMM or driver would.
//
// ============================== INPUT FORMAT ==============================
// Bytes past the end read as 0.
//   [0]      flags: 0x80 this mode; 0x04 copy-only memory; 0x01 INDIRECT_DESC
//   [1]      queue size: split 1 << (v % 7), i.e. 1..64; packed v % 64 + 1
//   [2..3]   L: bytes of a log image (clamped to the log's size) written over
//            the log before the first start (0: a fresh log)
//   then L bytes, then ops (one byte, low nibble = opcode, high nibble = h):
//   0  ADD         the driver adds a request of h % 3 + 1 buffers (an 8-byte
//                  token, then writable 8-byte buffers)
//   1  POP         the device pops one chain and holds it (at most 64)
//   2  COMPLETE i:u8  the device writes the token into the held chain i and
//                  returns it (AddUsed)
//   3  PUBLISH
//   4  COLLECT     the driver takes every used entry
//   5  CRASH b:u32 the device dies and restarts at SET_VRING_BASE b (what a
//                  VMM re-sends after a crash is a guess), recovering the log
//   6  POKE_LOG off:u16 v:u8     the log's byte off % size = v
//   7  POKE_RING off:u16 v:u8    the ring's byte off % size = v
//   8+ nothing
// At most 2048 ops and 64 crashes. After them: pop, complete, publish and
// collect until nothing moves.
//
// Checked (a violation traps):
//  - every token the driver collects was added, is collected once, and its
//    writable buffer holds the token (the device completed that request);
//  - while neither the log nor the ring was poked and the queue is not
//    broken, every token added is collected in the end (nothing lost), and a
//    recovery resubmits exactly the chains held at the crash;
//  - guard zones intact; ASan/UBSan do the rest (a poked log or ring may
//    break the queue, never the process).
// ===========================================================================
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "vioport/core/buffer_dma.h"
#include "vioport/core/driver_queue.h"
#include "vioport/core/inflight_log.h"
#include "vioport/core/packed_device_queue.h"
#include "vioport/core/split_device_queue.h"
#include "vioport/testing/raw_ring.h"

namespace vioport {
namespace {

class Bytes {
 public:
  Bytes(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  uint8_t U8() { return pos_ < n_ ? d_[pos_++] : 0; }
  uint16_t U16() { return static_cast<uint16_t>(U8() | U8() << 8); }
  uint32_t U32() { return U16() | uint32_t{U16()} << 16; }
  bool done() const { return pos_ >= n_; }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0;
};

[[noreturn]] void Fail(const char* what, uint64_t a = 0, uint64_t b = 0) {
  std::fprintf(stderr, "inflight fuzz: %s (%llu, %llu)\n", what, static_cast<unsigned long long>(a),
               static_cast<unsigned long long>(b));
  std::abort();
}

class InflightRun {
 public:
  InflightRun(Bytes& in, bool packed) : in_(in), packed_(packed) {}

  void Go() {
    const uint8_t flags = in_.U8();
    const uint8_t sz = in_.U8();
    n_ = packed_ ? sz % 64 + 1 : 1u << (sz % 7);
    features_ = feature::Bit(feature::kVersion1) | (packed_ ? feature::Bit(feature::kRingPacked) : 0) |
                ((flags & 0x01) ? feature::Bit(feature::kIndirectDesc) : 0);
    dma_ = std::make_unique<BufferDmaAllocator>(guest_.host(guest_.base()), guest_.base(), guest_.size());
    DriverQueueOptions o;
    o.size = n_;
    o.features = features_;
    auto vq = DriverQueue::Create(o, *dma_);
    if (!vq.ok()) Fail("driver queue not created", n_);
    vq_ = std::move(*vq);
    cfg_ = QueueConfig{0, n_, vq_->desc_addr(), vq_->driver_addr(), vq_->device_addr(), features_,
                       RingByteOrder::kLittle};
    if (flags & 0x04) copy_ = std::make_shared<CopyOnlyMemory>(guest_.memory());
    log_size_ = packed_ ? PackedInflightLog::RegionBytes(n_) : SplitInflightLog::RegionBytes(n_);
    log_.assign(log_size_, 0);
    const uint16_t l = std::min<uint16_t>(in_.U16(), static_cast<uint16_t>(log_size_));
    for (uint16_t i = 0; i < l; ++i) log_[i] = in_.U8();
    if (l) poked_ = true;  // not a log this device wrote
    Start(packed_ ? 0x80008000u : 0);

    for (int ops = 0; ops < 2048 && !in_.done(); ++ops) {
      const uint8_t op = in_.U8();
      const uint8_t h = op >> 4;
      switch (op & 15) {
        case 0: Add(h % 3 + 1); break;
        case 1: Pop(); break;
        case 2: Complete(in_.U8()); break;
        case 3: Publish(); break;
        case 4: Collect(); break;
        case 5: {
          const uint32_t base = in_.U32();
          if (crashes_++ < 64) Crash(base);
          break;
        }
        case 6: {
          const uint16_t off = in_.U16();
          log_[off % log_size_] = in_.U8();
          poked_ = true;
          break;
        }
        case 7: {
          const uint16_t off = in_.U16();
          guest_.host(cfg_.desc_addr)[off % (16ull * n_)] = in_.U8();  // the descriptor area
          poked_ = true;
          break;
        }
        default: break;
      }
    }
    // Drain: everything moves until nothing does.
    for (int round = 0; round < 4 * static_cast<int>(n_) + 8; ++round) {
      const size_t before = collected_.size();
      while (Pop()) {
      }
      while (!held_.empty()) Complete(0);
      Publish();
      Collect();
      if (collected_.size() == before && held_.empty()) break;
    }
    if (Checking()) {
      for (auto& [token, req] : outstanding_)
        if (!collected_.count(token)) Fail("a request the driver added was never completed", token);
    }
    if (!guest_.GuardsIntact()) Fail("guard zone overwritten");
    for (auto& [token, req] : outstanding_) Free(req);
  }

 private:
  struct Request {
    std::vector<DmaBuffer> bufs;
  };

  GuestMemory* mem() { return copy_ ? static_cast<GuestMemory*>(copy_.get()) : guest_.memory().get(); }

  void Start(uint32_t base) {
    errors_ = 0;
    if (packed_) {
      auto q = std::make_unique<PackedDeviceQueue>(cfg_, mem(), [this](uint16_t, RingError) { errors_++; });
      if (q->Init() != RingError::kNone) Fail("packed queue init");
      q->SetBase(base);
      plog_ = std::make_unique<PackedInflightLog>(log_.data(), static_cast<uint16_t>(n_));
      (void)q->UseInflightLog(plog_.get());
      q_ = std::move(q);
    } else {
      auto q = std::make_unique<SplitDeviceQueue>(cfg_, mem(), [this](uint16_t, RingError) { errors_++; });
      if (q->Init() != RingError::kNone) Fail("split queue init");
      q->SetBase(base);
      slog_ = std::make_unique<SplitInflightLog>(log_.data(), static_cast<uint16_t>(n_));
      (void)q->UseInflightLog(slog_.get());
      q_ = std::move(q);
    }
  }

  void Free(Request& r) {
    for (auto& b : r.bufs) dma_->Free(b);
    r.bufs.clear();
  }

  void Add(unsigned nbufs) {
    Request r;
    std::vector<DriverBuffer> bufs;
    for (unsigned i = 0; i < nbufs; ++i) {
      auto b = dma_->Allocate(8, 8, i ? Access::kReadWrite : Access::kRead);
      if (!b.ok()) {
        Free(r);
        return;
      }
      r.bufs.push_back(*b);
      bufs.push_back({b->device_addr, 8, i > 0});
    }
    const uint64_t token = next_token_;
    std::memcpy(r.bufs[0].host, &token, 8);
    if (vq_->Add(bufs, token) != AddStatus::kOk) {
      Free(r);
      return;
    }
    vq_->KickPrepare();
    next_token_++;
    outstanding_[token] = std::move(r);
  }

  bool Pop() {
    if (held_.size() >= 64) return false;
    DescriptorChain c;
    if (q_->Pop(c) != PopStatus::kChain) return false;
    uint64_t token = ~uint64_t{0};
    if (c.Read(0, &token, 8) != RingError::kNone) token = ~uint64_t{0};
    if (Checking() && resubmit_left_ > 0) {
      // The first pops after a recovery are the chains in flight at the crash, each once.
      resubmit_left_--;
      if (!expect_resubmit_.erase(token)) Fail("resubmitted a chain that was not in flight", token);
      if (resubmit_left_ == 0 && !expect_resubmit_.empty())
        Fail("a chain in flight at the crash was not resubmitted", *expect_resubmit_.begin());
    }
    in_flight_.insert(token);
    held_.push_back({token, std::move(c)});
    return true;
  }

  void Complete(uint8_t i) {
    if (held_.empty()) return;
    auto it = held_.begin() + i % held_.size();
    DescriptorChain c = std::move(it->second);
    const uint64_t token = it->first;
    held_.erase(it);
    uint32_t written = 0;
    if (c.writable_bytes() >= 8 && c.Write(0, &token, 8) == RingError::kNone) written = 8;
    q_->AddUsed(std::move(c), written);
    unpublished_.push_back(token);
  }

  void Publish() {
    q_->Publish();
    if (q_->broken()) return;
    for (uint64_t t : unpublished_) in_flight_.erase(t);
    unpublished_.clear();
  }

  // Whether the run is still one where the log must be exact.
  bool Checking() {
    if (q_->broken()) lost_track_ = true;
    return !poked_ && !lost_track_;
  }

  void Collect() {
    uint64_t token;
    uint32_t len;
    UsedStatus st;
    while ((st = vq_->GetUsed(&token, &len)) == UsedStatus::kUsed) {
      auto it = outstanding_.find(token);
      if (it == outstanding_.end()) Fail("the driver got a token it never added", token);
      if (!collected_.insert(token).second) Fail("a request completed twice", token);
      if (Checking() && it->second.bufs.size() > 1) {
        uint64_t seen;
        std::memcpy(&seen, it->second.bufs[1].host, 8);
        if (seen != token || len != 8) Fail("a completed request's buffer does not hold its token", token, seen);
      }
    }
    if (st == UsedStatus::kBroken && Checking()) Fail("the driver's queue broke on an honest run");
  }

  void Crash(uint32_t base) {
    // In flight at the crash: popped and not published (held, or returned
    // but not yet visible), and recovered chains not popped again yet.
    const bool check = Checking();
    held_.clear();
    unpublished_.clear();
    q_.reset();
    plog_.reset();
    slog_.reset();
    Start(base);
    if (check && !Checking()) Fail("an honest log did not recover");
    if (!check) return;
    if (q_->resubmit_pending() != in_flight_.size())
      Fail("resubmitted count differs from the chains in flight", q_->resubmit_pending(), in_flight_.size());
    expect_resubmit_ = in_flight_;
    resubmit_left_ = q_->resubmit_pending();
  }

  Bytes& in_;
  const bool packed_;
  uint32_t n_ = 0;
  uint64_t features_ = 0;
  testing::FlatGuest guest_{1 << 16};
  std::unique_ptr<BufferDmaAllocator> dma_;
  std::unique_ptr<DriverQueue> vq_;
  std::shared_ptr<CopyOnlyMemory> copy_;
  QueueConfig cfg_;
  std::vector<uint8_t> log_;
  size_t log_size_ = 0;
  std::unique_ptr<PackedInflightLog> plog_;
  std::unique_ptr<SplitInflightLog> slog_;
  std::unique_ptr<DeviceQueue> q_;
  std::vector<std::pair<uint64_t, DescriptorChain>> held_;
  std::map<uint64_t, Request> outstanding_;
  std::set<uint64_t> collected_;
  std::set<uint64_t> in_flight_;        // tokens popped and not published
  std::vector<uint64_t> unpublished_;  // returned since the last Publish
  std::set<uint64_t> expect_resubmit_;
  size_t resubmit_left_ = 0;
  bool lost_track_ = false;
  uint64_t next_token_ = 1;
  int crashes_ = 0;
  int errors_ = 0;
  bool poked_ = false;
};

}  // namespace

int FuzzInflight(const uint8_t* data, size_t size, bool packed) {
  Bytes in(data, size);
  InflightRun run(in, packed);
  run.Go();
  return 0;
}

}  // namespace vioport
