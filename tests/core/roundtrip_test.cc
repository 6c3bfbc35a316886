// SPDX-License-Identifier: Apache-2.0
// Driver <-> device round trips through the real driver model, the loopback
// transport and the echo device: split and packed, with and without indirect
// and event idx, on mapped and copy-only memory. Every byte is checked.
#include <gtest/gtest.h>

#include <deque>
#include <random>

#include "vioport/core/driver.h"
#include "vioport/testing/echo_device.h"
#include "vioport/transports/loopback.h"

namespace vioport {
namespace {

using testing::EchoDevice;
using testing::EchoKey;
using testing::EchoOptions;

struct Mode {
  bool packed, indirect, event_idx, copy_only;
};

std::string ModeName(const ::testing::TestParamInfo<Mode>& i) {
  return std::string(i.param.packed ? "Packed" : "Split") + (i.param.indirect ? "Indirect" : "") +
         (i.param.event_idx ? "EventIdx" : "") + (i.param.copy_only ? "CopyOnly" : "Mapped");
}

uint64_t Features(const Mode& m) {
  uint64_t f = feature::Bit(feature::kVersion1);
  if (m.packed) f |= feature::Bit(feature::kRingPacked);
  if (m.indirect) f |= feature::Bit(feature::kIndirectDesc);
  if (m.event_idx) f |= feature::Bit(feature::kEventIdx);
  return f;
}

// A driver that keeps its chains' data so every completion can be verified.
class Verifier {
 public:
  Verifier(LoopbackTransport& t, VirtioDriver& d, uint16_t q, uint32_t seed)
      : t_(t), d_(d), q_(q), rng_(seed) {}

  struct Pending {
    std::vector<DmaBuffer> out, in;
    std::vector<uint8_t> payload;  // concatenated readable bytes
  };

  // Adds a random chain; false if the queue is full.
  bool AddRandom(int max_out = 4, int max_in = 4, uint32_t max_len = 3000) {
    Pending p;
    std::uniform_int_distribution<int> nout(1, max_out), nin(0, max_in);
    std::uniform_int_distribution<uint32_t> len(1, max_len);
    std::vector<DriverBuffer> bufs;
    for (int i = 0, n = nout(rng_); i < n; ++i) {
      uint32_t l = len(rng_);
      DmaBuffer b = *t_.dma().Allocate(l, 8, Access::kRead);
      for (uint32_t k = 0; k < l; ++k) b.host[k] = static_cast<uint8_t>(rng_());
      p.payload.insert(p.payload.end(), b.host, b.host + l);
      p.out.push_back(b);
      bufs.push_back({b.device_addr, l, false});
    }
    for (int i = 0, n = nin(rng_); i < n; ++i) {
      uint32_t l = len(rng_);
      DmaBuffer b = *t_.dma().Allocate(l, 8, Access::kWrite);
      std::memset(b.host, 0xEE, l);
      p.in.push_back(b);
      bufs.push_back({b.device_addr, l, true});
    }
    AddStatus st = d_.queue(q_).Add(bufs, next_token_);
    if (st == AddStatus::kFull) {
      Release(p);
      return false;
    }
    EXPECT_EQ(st, AddStatus::kOk);
    pending_.emplace(next_token_++, std::move(p));
    return true;
  }

  // Collects every used buffer and checks its bytes; returns how many.
  int Reap() {
    int n = 0;
    uint64_t token;
    uint32_t len;
    UsedStatus st;
    while ((st = d_.queue(q_).GetUsed(&token, &len)) == UsedStatus::kUsed) {
      auto it = pending_.find(token);
      EXPECT_NE(it, pending_.end()) << "unknown token " << token;
      if (it == pending_.end()) return n;
      Check(it->second, len);
      Release(it->second);
      pending_.erase(it);
      n++;
      completed_++;
    }
    EXPECT_NE(st, UsedStatus::kBroken) << RingErrorName(d_.queue(q_).error());
    return n;
  }

  void Check(const Pending& p, uint32_t len) {
    uint32_t writable = 0;
    for (const auto& b : p.in) writable += b.size;
    const uint32_t want = std::min<uint32_t>(p.payload.size(), writable);
    ASSERT_EQ(len, want);
    const uint8_t key = EchoKey(q_);
    uint32_t at = 0;
    for (const auto& b : p.in) {
      for (uint32_t k = 0; k < b.size; ++k, ++at) {
        uint8_t expect = at < want ? static_cast<uint8_t>(p.payload[at] ^ key) : 0xEE;
        ASSERT_EQ(b.host[k], expect) << "byte " << at << " of " << want;
      }
    }
  }

  void Release(Pending& p) {
    for (auto& b : p.out) t_.dma().Free(b);
    for (auto& b : p.in) t_.dma().Free(b);
  }

  size_t outstanding() const { return pending_.size(); }
  uint64_t completed() const { return completed_; }
  std::mt19937& rng() { return rng_; }

 private:
  LoopbackTransport& t_;
  VirtioDriver& d_;
  uint16_t q_;
  std::mt19937 rng_;
  uint64_t next_token_ = 0;
  uint64_t completed_ = 0;
  std::map<uint64_t, Pending> pending_;
};

class RoundTrip : public ::testing::TestWithParam<Mode> {
 protected:
  void Boot(uint32_t queue_size, uint16_t queues = 1, uint32_t indirect_max = 32) {
    EchoOptions eo;
    eo.num_queues = queues;
    eo.max_queue_size = 32768;
    dev_ = std::make_shared<EchoDevice>(eo);
    LoopbackOptions lo;
    lo.copy_only = GetParam().copy_only;
    lo.memory_bytes = 96 << 20;
    t_ = std::make_unique<LoopbackTransport>(dev_, lo);
    drv_ = std::make_unique<VirtioDriver>(*t_);
    DriverOptions o;
    o.wanted_features = Features(GetParam());
    o.num_queues = queues;
    o.queue_size = queue_size;
    o.indirect_max = indirect_max;
    ASSERT_TRUE(drv_->Init(o).ok());
    ASSERT_EQ(drv_->features() & Features(GetParam()), Features(GetParam()));
    ASSERT_TRUE(dev_->active());
  }

  // Pushes `count` random chains through queue q in random batches.
  void Run(uint16_t q, int count, uint32_t seed, int max_out = 4, int max_in = 4, uint32_t max_len = 3000) {
    Verifier v(*t_, *drv_, q, seed);
    int added = 0;
    while (added < count) {
      int batch = std::uniform_int_distribution<int>(1, 8)(v.rng());
      for (int i = 0; i < batch && added < count; ++i) {
        if (!v.AddRandom(max_out, max_in, max_len)) break;
        added++;
      }
      drv_->Kick(q);
      v.Reap();
      if (HasFatalFailure()) return;
    }
    drv_->Kick(q);
    v.Reap();
    EXPECT_EQ(v.outstanding(), 0u);
    EXPECT_EQ(v.completed(), static_cast<uint64_t>(count));
    EXPECT_FALSE(t_->controller().status() & status::kDeviceNeedsReset) << t_->controller().last_error();
  }

  std::shared_ptr<EchoDevice> dev_;
  std::unique_ptr<LoopbackTransport> t_;
  std::unique_ptr<VirtioDriver> drv_;
};

TEST_P(RoundTrip, ThousandsOfMixedChains) {
  Boot(64);
  Run(0, 3000, 1234);
}

TEST_P(RoundTrip, IndexWrapsPast65535) {
  // 70000 one-in/one-out requests through a 4-entry queue: the split ring's
  // 16-bit indices (and the packed ring's wrap counters) wrap many times.
  // Buffers are preallocated per slot so the loop costs only ring work.
  Boot(4);
  DriverQueue& q = drv_->queue(0);
  std::vector<DmaBuffer> slot(4);
  for (auto& b : slot) b = *t_->dma().Allocate(16, 8, Access::kReadWrite);
  const uint8_t key = EchoKey(0);
  uint64_t done = 0, sent = 0;
  while (done < 70000) {
    while (sent - done < 2 && sent < 70000) {  // two 2-descriptor chains fill 4 slots
      DmaBuffer& b = slot[sent % 4];
      std::memcpy(b.host, &sent, 8);
      std::memset(b.host + 8, 0, 8);
      DriverBuffer bufs[2] = {{b.device_addr, 8, false}, {b.device_addr + 8, 8, true}};
      ASSERT_EQ(q.Add(bufs, sent), AddStatus::kOk);
      sent++;
    }
    drv_->Kick(0);
    uint64_t tok;
    uint32_t len;
    while (q.GetUsed(&tok, &len) == UsedStatus::kUsed) {
      ASSERT_EQ(tok, done) << "echo completes in order";
      ASSERT_EQ(len, 8u);
      uint64_t echoed;
      std::memcpy(&echoed, slot[tok % 4].host + 8, 8);
      uint64_t want = tok;
      for (int i = 0; i < 8; ++i) reinterpret_cast<uint8_t*>(&want)[i] ^= key;
      ASSERT_EQ(echoed, want);
      done++;
    }
    ASSERT_FALSE(q.broken());
  }
  EXPECT_FALSE(t_->controller().status() & status::kDeviceNeedsReset);
}

TEST_P(RoundTrip, ManyQueueSizes) {
  const bool packed = GetParam().packed;
  std::vector<uint32_t> sizes = packed ? std::vector<uint32_t>{1, 3, 100, 255, 256, 1000, 32768}
                                       : std::vector<uint32_t>{1, 2, 4, 16, 256, 1024, 32768};
  for (uint32_t s : sizes) {
    SCOPED_TRACE(s);
    drv_.reset();
    t_.reset();
    Boot(s, 1, s > 4096 ? 4 : 32);
    if (HasFatalFailure()) return;
    ASSERT_EQ(drv_->queue(0).size(), s);
    Run(0, s > 4096 ? static_cast<int>(s) + 10 : 600, s, 3, 2, 512);  // past one full lap
    if (HasFatalFailure()) return;
  }
}

TEST_P(RoundTrip, MultipleQueuesKeepTheirOwnData) {
  Boot(32, 3);
  for (uint16_t q = 0; q < 3; ++q) Run(q, 500, 7 + q);
}

TEST_P(RoundTrip, InterruptSuppressionAndReenable) {
  Boot(16);
  Verifier v(*t_, *drv_, 0, 5);
  DriverQueue& q = drv_->queue(0);
  q.DisableInterrupts();
  const uint64_t before = t_->queue_interrupts();
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(v.AddRandom(1, 1, 64));
  drv_->Kick(0);
  EXPECT_EQ(v.Reap(), 8);
  EXPECT_EQ(t_->queue_interrupts(), before) << "interrupts while disabled";
  EXPECT_FALSE(q.EnableInterrupts()) << "nothing pending";
  ASSERT_TRUE(v.AddRandom(1, 1, 64));
  drv_->Kick(0);
  EXPECT_GT(t_->queue_interrupts(), before);
  EXPECT_EQ(v.Reap(), 1);
}

TEST_P(RoundTrip, NotificationSuppressionFromTheDevice) {
  Boot(16);
  dev_->set_hold(true);  // device pops and keeps chains: it is "busy"
  Verifier v(*t_, *drv_, 0, 11);
  ASSERT_TRUE(v.AddRandom(1, 1, 32));
  EXPECT_TRUE(drv_->Kick(0));  // device idle: it wants a notification
  ASSERT_EQ(dev_->held(), 1u);
  dev_->ReleaseHeld();
  EXPECT_EQ(v.Reap(), 1);
  dev_->set_hold(false);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(v.AddRandom(1, 1, 32));
  drv_->Kick(0);
  EXPECT_EQ(v.Reap(), 5);
}

std::vector<Mode> AllModes() {
  std::vector<Mode> m;
  for (int bits = 0; bits < 16; ++bits) m.push_back({bool(bits & 1), bool(bits & 2), bool(bits & 4), bool(bits & 8)});
  return m;
}

INSTANTIATE_TEST_SUITE_P(All, RoundTrip, ::testing::ValuesIn(AllModes()), ModeName);

}  // namespace
}  // namespace vioport
