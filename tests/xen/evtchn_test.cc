// SPDX-License-Identifier: Apache-2.0
// Event channel conformance (docs/reference/xen.md section 3, design
// implication 5): reservation, bind, coalescing, masking on delivery,
// dropped sends on unbound ports, close and domain death returning the peer
// to unbound, port exhaustion, the notification eventfd, and no lost event
// under concurrent senders.
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <thread>
#include <vector>

#include "vioport/emulators/xen_evtchn.h"

namespace vioport::xen {
namespace {

constexpr DomId kBack = 0, kFront = 5, kOther = 7;

class EvtchnTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (DomId d : {kBack, kFront, kOther}) ASSERT_TRUE(ev_.AddDomain(d).ok());
  }
  // Frontend allocates for the backend, backend binds: {front port, back port}.
  std::pair<EvtchnPort, EvtchnPort> Connect() {
    const int64_t fp = ev_.AllocUnbound(kFront, kBack);
    EXPECT_GT(fp, 0);
    const int64_t bp = ev_.BindInterdomain(kBack, kFront, static_cast<EvtchnPort>(fp));
    EXPECT_GT(bp, 0);
    // Binding marks the backend's new port pending and delivers it once.
    EXPECT_EQ(ev_.Pending(kBack), static_cast<EvtchnPort>(bp));
    EXPECT_EQ(ev_.Unmask(kBack, static_cast<EvtchnPort>(bp)), 0);
    return {static_cast<EvtchnPort>(fp), static_cast<EvtchnPort>(bp)};
  }
  EventChannels ev_{8};
};

TEST_F(EvtchnTest, UnboundPortIsReservedForOneDomain) {
  const int64_t fp = ev_.AllocUnbound(kFront, kBack);
  ASSERT_EQ(fp, 1);  // port 0 is never handed out
  EvtchnStatus st;
  ASSERT_EQ(ev_.Status(kFront, 1, &st), 0);
  EXPECT_EQ(st.state, EvtchnState::kUnbound);
  EXPECT_EQ(st.remote_dom, kBack);
  EXPECT_EQ(ev_.BindInterdomain(kOther, kFront, 1), -EINVAL);  // reserved for kBack
  EXPECT_EQ(ev_.BindInterdomain(kBack, kFront, 2), -EINVAL);   // no such port
  EXPECT_EQ(ev_.BindInterdomain(kBack, 99, 1), -ESRCH);        // no such domain
  // Xen records the remote domain of an unbound port without looking it up.
  const int64_t for_absent = ev_.AllocUnbound(kFront, 99);
  ASSERT_GT(for_absent, 0);
  ASSERT_EQ(ev_.Status(kFront, static_cast<EvtchnPort>(for_absent), &st), 0);
  EXPECT_EQ(st.state, EvtchnState::kUnbound);
  EXPECT_EQ(st.remote_dom, 99);
  EXPECT_EQ(ev_.Close(kFront, static_cast<EvtchnPort>(for_absent)), 0);
  const int64_t bp = ev_.BindInterdomain(kBack, kFront, 1);
  ASSERT_GT(bp, 0);
  EXPECT_EQ(ev_.BindInterdomain(kBack, kFront, 1), -EINVAL);  // bound already
  ASSERT_EQ(ev_.Status(kFront, 1, &st), 0);
  EXPECT_EQ(st.state, EvtchnState::kInterdomain);
  EXPECT_EQ(st.remote_port, static_cast<EvtchnPort>(bp));
}

TEST_F(EvtchnTest, SendsCoalesceAndDeliveryMasksUntilUnmask) {
  auto [fp, bp] = Connect();
  EXPECT_EQ(ev_.Pending(kBack), std::nullopt);
  // Three sends before the backend looks: one event.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(ev_.Send(kFront, fp), 0);
  EXPECT_EQ(ev_.Pending(kBack), bp);
  EXPECT_EQ(ev_.Pending(kBack), std::nullopt);
  EvtchnStatus st;
  ASSERT_EQ(ev_.Status(kBack, bp, &st), 0);
  EXPECT_TRUE(st.masked);
  EXPECT_FALSE(st.pending);
  // Masked: a send only sets pending.
  EXPECT_EQ(ev_.Send(kFront, fp), 0);
  EXPECT_EQ(ev_.Pending(kBack), std::nullopt);
  ASSERT_EQ(ev_.Status(kBack, bp, &st), 0);
  EXPECT_TRUE(st.pending);
  // Unmask delivers what came meanwhile, masked again.
  EXPECT_EQ(ev_.Unmask(kBack, bp), 0);
  EXPECT_EQ(ev_.Pending(kBack), bp);
  EXPECT_EQ(ev_.Unmask(kBack, bp), 0);
  EXPECT_EQ(ev_.Pending(kBack), std::nullopt);
  // The other direction uses the same channel.
  EXPECT_EQ(ev_.Send(kBack, bp), 0);
  EXPECT_EQ(ev_.Pending(kFront), fp);
  const EvtchnStats s = ev_.Stats();
  EXPECT_EQ(s.sends, 5u);
  EXPECT_GE(s.coalesced, 2u);
}

TEST_F(EvtchnTest, SendOnUnboundIsDroppedInvalidPortsAreEinval) {
  const int64_t fp = ev_.AllocUnbound(kFront, kBack);
  EXPECT_EQ(ev_.Send(kFront, static_cast<EvtchnPort>(fp)), 0);
  EXPECT_EQ(ev_.Stats().dropped_unbound, 1u);
  EXPECT_EQ(ev_.Pending(kBack), std::nullopt);
  EXPECT_EQ(ev_.Send(kFront, 0), -EINVAL);
  EXPECT_EQ(ev_.Send(kFront, 42), -EINVAL);
  EXPECT_EQ(ev_.Unmask(kFront, 42), -EINVAL);
  EXPECT_EQ(ev_.Close(kFront, 42), -EINVAL);
  EXPECT_EQ(ev_.Close(kFront, static_cast<EvtchnPort>(fp)), 0);
  EXPECT_EQ(ev_.Close(kFront, static_cast<EvtchnPort>(fp)), -EINVAL);  // closed already
  EXPECT_EQ(ev_.Send(kFront, static_cast<EvtchnPort>(fp)), -EINVAL);
}

TEST_F(EvtchnTest, CloseReturnsPeerToUnboundAndItCanBeBoundAgain) {
  auto [fp, bp] = Connect();
  ASSERT_EQ(ev_.Close(kBack, bp), 0);
  EvtchnStatus st;
  ASSERT_EQ(ev_.Status(kFront, fp, &st), 0);
  EXPECT_EQ(st.state, EvtchnState::kUnbound);
  EXPECT_EQ(st.remote_dom, kBack);
  EXPECT_EQ(ev_.Send(kFront, fp), 0);  // dropped now
  EXPECT_EQ(ev_.Pending(kBack), std::nullopt);
  // A restarted backend binds the same frontend port again.
  const int64_t bp2 = ev_.BindInterdomain(kBack, kFront, fp);
  ASSERT_GT(bp2, 0);
  EXPECT_EQ(ev_.Pending(kBack), static_cast<EvtchnPort>(bp2));
  ASSERT_EQ(ev_.Unmask(kBack, static_cast<EvtchnPort>(bp2)), 0);
  EXPECT_EQ(ev_.Send(kFront, fp), 0);
  EXPECT_EQ(ev_.Pending(kBack), static_cast<EvtchnPort>(bp2));
}

TEST_F(EvtchnTest, DomainDeathUnbindsItsPeers) {
  auto [fp, bp] = Connect();
  ASSERT_TRUE(ev_.RemoveDomain(kBack).ok());
  EvtchnStatus st;
  ASSERT_EQ(ev_.Status(kFront, fp, &st), 0);
  EXPECT_EQ(st.state, EvtchnState::kUnbound);
  EXPECT_EQ(ev_.Send(kFront, fp), 0);
  EXPECT_EQ(ev_.Send(kBack, bp), -ESRCH);
  EXPECT_FALSE(ev_.RemoveDomain(kBack).ok());
}

TEST_F(EvtchnTest, LoopbackAndPortExhaustion) {
  const int64_t a = ev_.AllocUnbound(kFront, kDomidSelf);
  ASSERT_GT(a, 0);
  const int64_t b = ev_.BindInterdomain(kFront, kDomidSelf, static_cast<EvtchnPort>(a));
  ASSERT_GT(b, 0);
  EXPECT_EQ(ev_.Pending(kFront), static_cast<EvtchnPort>(b));
  ASSERT_EQ(ev_.Send(kFront, static_cast<EvtchnPort>(b)), 0);
  EXPECT_EQ(ev_.Pending(kFront), static_cast<EvtchnPort>(a));
  ASSERT_EQ(ev_.Close(kFront, static_cast<EvtchnPort>(a)), 0);
  EvtchnStatus st;
  ASSERT_EQ(ev_.Status(kFront, static_cast<EvtchnPort>(b), &st), 0);
  EXPECT_EQ(st.state, EvtchnState::kUnbound);
  // 8 ports per domain here: ports 1 and b are taken or reusable.
  std::vector<int64_t> got;
  for (int i = 0; i < 10; ++i) got.push_back(ev_.AllocUnbound(kOther, kBack));
  int ok = 0;
  for (int64_t g : got) ok += g > 0;
  EXPECT_EQ(ok, 8);
  EXPECT_EQ(got.back(), -ENOSPC);
  // A closed port is reused.
  ASSERT_EQ(ev_.Close(kOther, 3), 0);
  EXPECT_EQ(ev_.AllocUnbound(kOther, kBack), 3);
}

TEST_F(EvtchnTest, DeliveryMakesTheEventfdReadable) {
  const int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  ASSERT_TRUE(ev_.SetNotifyEventfd(kBack, efd).ok());
  int calls = 0;
  ASSERT_TRUE(ev_.SetNotifyCallback(kFront, [&](DomId d) { calls += d == kFront; }).ok());
  const int64_t fp = ev_.AllocUnbound(kFront, kBack);
  const int64_t bp = ev_.BindInterdomain(kBack, kFront, static_cast<EvtchnPort>(fp));
  pollfd p{efd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 1000), 1);  // the bind's own event
  uint64_t v = 0;
  ASSERT_EQ(::read(efd, &v, sizeof v), 8);
  EXPECT_EQ(v, 1u);
  EXPECT_EQ(ev_.Pending(kBack), static_cast<EvtchnPort>(bp));
  // Masked: a send signals nothing.
  EXPECT_EQ(ev_.Send(kFront, static_cast<EvtchnPort>(fp)), 0);
  EXPECT_EQ(::poll(&p, 1, 0), 0);
  ASSERT_EQ(ev_.Unmask(kBack, static_cast<EvtchnPort>(bp)), 0);
  ASSERT_EQ(::poll(&p, 1, 1000), 1);
  EXPECT_EQ(ev_.Send(kBack, static_cast<EvtchnPort>(bp)), 0);
  EXPECT_EQ(calls, 1);
  ::close(efd);
}

// Senders on two threads, one consumer taking and unmasking: no event may
// get stuck (pending but never delivered, or delivered and masked with
// nothing to take). Once the senders stop and the consumer has drained, the
// port must be neither pending nor masked.
TEST_F(EvtchnTest, ConcurrentSendersLoseNoEvent) {
  const auto ports = Connect();  // not a structured binding: lambdas capture these
  const EvtchnPort fp = ports.first, bp = ports.second;
  std::atomic<bool> senders_done{false}, stop{false};
  std::atomic<uint64_t> taken{0};
  std::thread consumer([&] {
    while (!stop.load()) {
      if (auto p = ev_.Pending(kBack)) {
        ASSERT_EQ(*p, bp);
        taken++;
        ASSERT_EQ(ev_.Unmask(kBack, bp), 0);
      } else if (senders_done.load()) {
        // Drained after the last send: look once more, then stop.
        if (!ev_.Pending(kBack)) stop = true;
        else taken++, ev_.Unmask(kBack, bp);
      }
    }
  });
  std::vector<std::thread> senders;
  for (int t = 0; t < 2; ++t)
    senders.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) ASSERT_EQ(ev_.Send(kFront, fp), 0);
    });
  for (auto& s : senders) s.join();
  senders_done = true;
  consumer.join();
  EvtchnStatus st;
  ASSERT_EQ(ev_.Status(kBack, bp, &st), 0);
  EXPECT_FALSE(st.pending);
  EXPECT_FALSE(st.masked);
  EXPECT_EQ(ev_.Pending(kBack), std::nullopt);
  EXPECT_GE(taken.load(), 1u);
  const EvtchnStats s = ev_.Stats();
  EXPECT_EQ(s.sends, 40000u);
  // Every delivery was taken: the ones here plus the bind's in Connect().
  EXPECT_EQ(s.delivered, taken.load() + 1);
}

}  // namespace
}  // namespace vioport::xen
