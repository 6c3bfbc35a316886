// SPDX-License-Identifier: Apache-2.0
// The shared-memory transport end to end in one process: its device endpoint
// (on an Asio loop thread or polling) and a ShmDriverTransport (guest
// side) across threads, with an echo device; the wire protocol's refusals,
// the legacy register map, config changes. Every payload is checked byte by
// byte. Across processes (vios and vioguest), with blk, rng and console and
// partner death: the conformance suite (tests/conformance).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <future>
#include <random>
#include <thread>

#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/post.hpp"
#include "vioport/core/driver.h"
#include "vioport/guest/wait.h"
#include "vioport/testing/echo_device.h"
#include "vioport/transports/shm_guest.h"
#include "vioport/transports/shm_protocol.h"
#include "vioport/transports/registry.h"

namespace vioport {
void RegisterShmTransport();
namespace {

using testing::EchoDevice;
using testing::EchoKey;
using testing::EchoOptions;

std::string TempSocket(const std::string& tag) {
  return absl::StrCat(::testing::TempDir(), "/shm-", tag, "-", ::getpid(), ".sock");
}

// shm's device endpoint running on its own Asio loop thread.
class Server {
 public:
  Server(std::shared_ptr<VirtioDevice> dev, const std::string& path, bool poll = false)
      : dev_(dev), guard_(io_.get_executor()) {
    // As vios makes it: through the registry, with the options --attach takes.
    RegisterShmTransport();
    Options o("test", {{"path", path}, {"poll", poll ? "on" : "off"}});
    EndpointContext ctx{io_, dev, "test"};
    auto s = MakeDeviceEndpoint("shm", ctx, o);
    EXPECT_TRUE(s.ok()) << s.status();
    srv_ = std::move(*s);
    th_ = std::thread([this] { io_.run(); });
  }
  ~Server() {
    guard_.reset();
    io_.stop();
    th_.join();
    srv_.reset();
  }
  template <typename F>
  void Run(F f) {  // on the loop thread, and wait
    std::promise<void> done;
    boost::asio::post(io_, [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }
  DeviceEndpoint& srv() { return *srv_; }

 private:
  std::shared_ptr<VirtioDevice> dev_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::unique_ptr<DeviceEndpoint> srv_;
  std::thread th_;
};

std::unique_ptr<ShmDriverTransport> Guest(const std::string& path, uint32_t version = 2) {
  ShmGuestOptions o;
  o.socket_path = path;
  o.memory_bytes = 8 << 20;
  o.mmio_version = version;
  auto t = ShmDriverTransport::Connect(o);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

// Sends `n` random echo requests through queue 0 and checks every answer.
// Returns the number verified.
int EchoRequests(ShmDriverTransport& t, VirtioDriver& d, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  DriverQueue& q = d.queue(0);
  DmaBuffer out = *t.dma().Allocate(4096, 64, Access::kRead);
  DmaBuffer in = *t.dma().Allocate(4096, 64, Access::kWrite);
  int verified = 0;
  WaitPolicy w;
  w.timeout = absl::Seconds(10);
  for (int i = 0; i < n; ++i) {
    const uint32_t len = 1 + rng() % 4096;
    for (uint32_t k = 0; k < len; ++k) out.host[k] = static_cast<uint8_t>(rng());
    std::memset(in.host, 0, 4096);
    DriverBuffer b[2] = {{out.device_addr, len, false}, {in.device_addr, len, true}};
    if (q.Add(b, i) != AddStatus::kOk) break;
    d.Kick(0);
    uint64_t token;
    uint32_t got;
    if (WaitUsed(d, q, w, &token, &got) != WaitResult::kUsed) break;
    if (token != static_cast<uint64_t>(i) || got != len) break;
    bool ok = true;
    for (uint32_t k = 0; k < len; ++k) ok &= in.host[k] == static_cast<uint8_t>(out.host[k] ^ EchoKey(0));
    if (!ok) break;
    ++verified;
  }
  t.dma().Free(out);
  t.dma().Free(in);
  return verified;
}

uint64_t Ring(bool packed) {
  return feature::Bit(feature::kVersion1) | feature::Bit(feature::kEventIdx) | feature::Bit(feature::kIndirectDesc) |
         (packed ? feature::Bit(feature::kRingPacked) : 0);
}

class ShmRoundTrip : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(ShmRoundTrip, EchoEveryByte) {
  const auto [packed, poll] = GetParam();
  auto dev = std::make_shared<EchoDevice>();
  const std::string path = TempSocket("rt");
  Server s(dev, path, poll);
  auto t = Guest(path);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->GetDeviceId(), 0xFFFFu);
  VirtioDriver d(*t);
  DriverOptions o;
  o.wanted_features = Ring(packed);
  o.queue_size = 64;
  ASSERT_TRUE(d.Init(o).ok());
  EXPECT_EQ(d.has_feature(feature::kRingPacked), packed);
  EXPECT_EQ(EchoRequests(*t, d, 2000, 7), 2000);
  EXPECT_TRUE(s.srv().connected());
}

INSTANTIATE_TEST_SUITE_P(Modes, ShmRoundTrip, ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const auto& i) {
                           return std::string(std::get<0>(i.param) ? "Packed" : "Split") +
                                  (std::get<1>(i.param) ? "Polled" : "Evented");
                         });

TEST(ShmTransport, LegacyVersion1RegisterMap) {
  auto dev = std::make_shared<EchoDevice>();
  const std::string path = TempSocket("v1");
  Server s(dev, path);
  auto t = Guest(path, 1);
  ASSERT_TRUE(t);
  namespace reg = mmio::reg;
  EXPECT_EQ(t->ReadRegister(reg::kMagic), mmio::kMagicValue);
  EXPECT_EQ(t->ReadRegister(reg::kVersion), 1u);
  EXPECT_EQ(t->ReadRegister(reg::kDeviceId), 0xFFFFu);
  ASSERT_TRUE(t->WriteRegister(reg::kStatus, status::kAcknowledge | status::kDriver));
  ASSERT_TRUE(t->WriteRegister(reg::kDeviceFeaturesSel, 0));
  ASSERT_TRUE(t->WriteRegister(reg::kDriverFeaturesSel, 0));
  ASSERT_TRUE(t->WriteRegister(reg::kDriverFeatures, 0));  // legacy: no VERSION_1, no FEATURES_OK
  ASSERT_TRUE(t->WriteRegister(reg::kGuestPageSize, 4096));
  ASSERT_TRUE(t->WriteRegister(reg::kQueueSel, 0));
  EXPECT_GE(t->ReadRegister(reg::kQueueSizeMax), 8u);
  ASSERT_TRUE(t->WriteRegister(reg::kQueueSize, 8));
  ASSERT_TRUE(t->WriteRegister(reg::kQueueAlign, 4096));
  // Legacy ring at 64 KiB: desc, avail right after, used on the next 4 KiB.
  const uint64_t ring = 0x10000, data = 0x20000;
  uint8_t* m = t->region();
  ASSERT_TRUE(t->WriteRegister(reg::kQueuePfn, ring / 4096));
  EXPECT_EQ(t->ReadRegister(reg::kQueuePfn), ring / 4096);
  EXPECT_FALSE(t->WriteRegister(reg::kQueueReady, 1)) << "QueueReady does not exist in version 1";
  ASSERT_TRUE(t->WriteRegister(reg::kStatus, status::kAcknowledge | status::kDriver | status::kDriverOk));
  for (int i = 0; i < 64; ++i) m[data + i] = static_cast<uint8_t>(i * 3);
  auto desc = reinterpret_cast<VirtqDesc*>(m + ring);
  desc[0] = {data, 64, desc_flag::kNext, 1};
  desc[1] = {data + 0x1000, 64, desc_flag::kWrite, 0};
  uint16_t* avail = reinterpret_cast<uint16_t*>(m + ring + SplitLayout::DescBytes(8));
  avail[2] = 0;  // ring[0] = head 0
  std::atomic_thread_fence(std::memory_order_release);
  std::atomic_ref<uint16_t>(avail[1]).store(1, std::memory_order_release);
  t->Notify(0, 0);
  const uint64_t used = ring + SplitLayout::LegacyUsedOffset(8, 4096);
  auto used_idx = [&] { return std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(m + used + 2)).load(); };
  for (int i = 0; i < 100 && used_idx() != 1; ++i) t->WaitForInterrupt(0, absl::Milliseconds(50));
  ASSERT_EQ(used_idx(), 1);
  auto elem = reinterpret_cast<VirtqUsedElem*>(m + used + 4);
  EXPECT_EQ(static_cast<uint32_t>(elem->id), 0u);
  EXPECT_EQ(static_cast<uint32_t>(elem->len), 64u);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(m[data + 0x1000 + i], static_cast<uint8_t>((i * 3) ^ EchoKey(0)));
}

// Speaks the wire protocol by hand; returns the device's answer type and text.
std::pair<uint32_t, std::string> RawHello(const std::string& path, int memfd, uint32_t version, uint64_t size,
                                          bool short_message = false) {
  int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strcpy(a.sun_path, path.c_str());
  EXPECT_EQ(::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  shm::MsgHeader h{};
  h.type = static_cast<uint32_t>(shm::MsgType::kHello);
  h.offset = version;
  h.value = size;
  h.aux = shm::kProtocolVersion;
  if (short_message) {
    EXPECT_EQ(::send(s, &h, 12, 0), 12);
  } else {
    EXPECT_TRUE(shm::SendMsg(s, h, {}, memfd >= 0 ? std::span<const int>(&memfd, 1) : std::span<const int>()).ok());
  }
  auto m = shm::RecvMsg(s, 200);
  ::close(s);
  if (!m.ok()) return {0, std::string(m.status().message())};
  return {static_cast<uint32_t>(m->header.type), m->tail};
}

TEST(ShmTransport, RefusesBadHellos) {
  auto dev = std::make_shared<EchoDevice>();
  const std::string path = TempSocket("hello");
  Server s(dev, path);
  const uint32_t kError = static_cast<uint32_t>(shm::MsgType::kError);
  int unsealed = ::memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_EQ(::ftruncate(unsealed, 1 << 20), 0);
  auto r = RawHello(path, unsealed, 2, 1 << 20);
  EXPECT_EQ(r.first, kError);
  EXPECT_NE(r.second.find("F_SEAL_SHRINK"), std::string::npos) << r.second;
  ASSERT_EQ(::fcntl(unsealed, F_ADD_SEALS, F_SEAL_SHRINK), 0);
  r = RawHello(path, unsealed, 2, 2 << 20);  // claims more than the memfd holds
  EXPECT_EQ(r.first, kError);
  EXPECT_NE(r.second.find("smaller"), std::string::npos) << r.second;
  r = RawHello(path, unsealed, 3, 1 << 20);
  EXPECT_EQ(r.first, kError);
  EXPECT_NE(r.second.find("version 3"), std::string::npos) << r.second;
  r = RawHello(path, -1, 2, 1 << 20);
  EXPECT_EQ(r.first, kError);
  r = RawHello(path, unsealed, 2, 1 << 20, /*short_message=*/true);
  EXPECT_EQ(r.first, kError);
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  r = RawHello(path, pipefd[0], 2, 1 << 20);
  EXPECT_EQ(r.first, kError);
  EXPECT_NE(r.second.find("not a memfd"), std::string::npos) << r.second;
  ::close(pipefd[0]);
  ::close(pipefd[1]);
  // A good guest still gets in, and the device never ran for the bad ones.
  EXPECT_EQ(dev->activations(), 0u);
  auto t = Guest(path);
  ASSERT_TRUE(t);
  VirtioDriver d(*t);
  ASSERT_TRUE(d.Init({.wanted_features = Ring(false)}).ok());
  EXPECT_EQ(EchoRequests(*t, d, 10, 1), 10);
  auto counters = s.srv().Counters();
  uint64_t proto = 0;
  for (auto& [k, v] : counters)
    if (k == "protocol_errors") proto = v;
  EXPECT_EQ(proto, 6u);
  ::close(unsealed);
}

TEST(ShmTransport, OneGuestAtATimeAndReconnect) {
  auto dev = std::make_shared<EchoDevice>();
  const std::string path = TempSocket("busy");
  Server s(dev, path);
  auto t1 = Guest(path);
  ASSERT_TRUE(t1);
  {
    ShmGuestOptions o;
    o.socket_path = path;
    o.memory_bytes = 1 << 20;
    auto t2 = ShmDriverTransport::Connect(o);
    ASSERT_FALSE(t2.ok());
    EXPECT_NE(t2.status().message().find("busy"), std::string::npos) << t2.status();
  }
  {
    VirtioDriver d(*t1);
    ASSERT_TRUE(d.Init({.wanted_features = Ring(true)}).ok());
    dev->set_hold(true);  // the guest dies with requests in flight
    DmaBuffer b = *t1->dma().Allocate(64, 8, Access::kReadWrite);
    DriverBuffer bufs[2] = {{b.device_addr, 32, false}, {b.device_addr + 32, 32, true}};
    ASSERT_EQ(d.queue(0).Add(bufs, 1), AddStatus::kOk);
    d.Kick(0);
    for (int i = 0; i < 200 && dev->held() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    EXPECT_EQ(dev->held(), 1u);
  }
  t1.reset();  // closes the socket and unmaps: the server must reset the device
  for (int i = 0; i < 400 && s.srv().connected(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_FALSE(s.srv().connected());
  EXPECT_FALSE(dev->active());
  dev->set_hold(false);
  auto t3 = Guest(path);
  ASSERT_TRUE(t3);
  VirtioDriver d(*t3);
  ASSERT_TRUE(d.Init({.wanted_features = Ring(false)}).ok());
  EXPECT_EQ(EchoRequests(*t3, d, 50, 3), 50);
}

TEST(ShmTransport, HostileRingNeedsResetAndRegisterPageIsNotMemory) {
  auto dev = std::make_shared<EchoDevice>();
  const std::string path = TempSocket("hostile");
  Server s(dev, path);
  auto t = Guest(path);
  ASSERT_TRUE(t);
  VirtioDriver d(*t);
  ASSERT_TRUE(d.Init({.wanted_features = feature::Bit(feature::kVersion1), .queue_size = 8}).ok());
  // A descriptor pointing into the register page (address 0x100): refused.
  DriverQueue& q = d.queue(0);
  DriverBuffer bufs[2] = {{0x100, 16, false}, {0x200, 16, true}};
  ASSERT_EQ(q.Add(bufs, 1), AddStatus::kOk);
  const uint32_t before = t->ReadRegister(mmio::reg::kConfigGeneration);
  d.Kick(0);
  for (int i = 0; i < 200 && !d.NeedsReset(); ++i) t->WaitForInterrupt(0, absl::Milliseconds(10));
  EXPECT_TRUE(d.NeedsReset());
  EXPECT_EQ(t->ReadRegister(mmio::reg::kConfigGeneration), before);
  EXPECT_NE(s.srv().last_error().find("outside guest memory"), std::string::npos) << s.srv().last_error();
  // The writable buffer the descriptor named (0x200, in the register page)
  // was not written by the device.
  for (uint32_t a = 0x200; a < 0x210; ++a) EXPECT_EQ(t->region()[a], 0) << a;
  // Recovery: reset and run again.
  auto lost = d.Recover();
  ASSERT_TRUE(lost.ok()) << lost.status();
  EXPECT_EQ(EchoRequests(*t, d, 20, 5), 20);
}

TEST(ShmTransport, ConfigChangeReachesTheGuest) {
  auto dev = std::make_shared<EchoDevice>();
  const std::string path = TempSocket("cfg");
  Server s(dev, path);
  auto t = Guest(path);
  ASSERT_TRUE(t);
  VirtioDriver d(*t);
  ASSERT_TRUE(d.Init({.wanted_features = Ring(false)}).ok());
  const uint32_t g0 = t->GetConfigGeneration();
  s.Run([&] { dev->ChangeConfig(0xC0FFEE); });
  EXPECT_TRUE(t->WaitForInterrupt(0, absl::Seconds(5)));
  EXPECT_NE(t->GetConfigGeneration(), g0);
  auto v = d.ReadConfigValue<uint32_t>(0);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, 0xC0FFEEu);
  // Config writes go through the device, too (scratch field at 4).
  const uint32_t scratch = 0x12345678;
  d.WriteConfig(4, {reinterpret_cast<const uint8_t*>(&scratch), 4});
  auto back = d.ReadConfigValue<uint32_t>(4);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, scratch);
  // A write to a read-only register is ignored and reported.
  EXPECT_FALSE(t->WriteRegister(mmio::reg::kMagic, 0));
  EXPECT_EQ(t->ReadRegister(mmio::reg::kMagic), mmio::kMagicValue);
}

TEST(ShmTransport, DeviceDeathLooksLikeNeedsReset) {
  auto dev = std::make_shared<EchoDevice>();
  const std::string path = TempSocket("death");
  auto s = std::make_unique<Server>(dev, path);
  auto t = Guest(path);
  ASSERT_TRUE(t);
  VirtioDriver d(*t);
  ASSERT_TRUE(d.Init({.wanted_features = Ring(false)}).ok());
  s.reset();  // vios goes away
  DriverQueue& q = d.queue(0);
  DmaBuffer b = *t->dma().Allocate(64, 8, Access::kReadWrite);
  DriverBuffer bufs[2] = {{b.device_addr, 32, false}, {b.device_addr + 32, 32, true}};
  ASSERT_EQ(q.Add(bufs, 1), AddStatus::kOk);
  d.Kick(0);
  uint64_t token;
  uint32_t len;
  WaitPolicy w;
  w.timeout = absl::Seconds(5);
  EXPECT_EQ(WaitUsed(d, q, w, &token, &len), WaitResult::kNeedsReset);
  EXPECT_TRUE(t->gone());
  EXPECT_FALSE(t->gone_reason().empty());
}

}  // namespace
}  // namespace vioport
