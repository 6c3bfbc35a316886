// SPDX-License-Identifier: Apache-2.0
// A hostile frontend against vios over the Xen transport. xenemud and vios
// run as processes; this test process is frontend domain 9 (through the
// emulator channel and libxenstore, or through XenDriverTransport with hand-
// written rings), while a real vioguest as domain 1 writes and verifies a
// blk disk on the same vios. Each attack must end that device's connection
// or ring cleanly (backend Closed / DEVICE_NEEDS_RESET) with a log line
// naming the culprit; the honest guest's data must verify and vios live.
// A control case (a correct hand-written request) shows the harness itself
// works, so the refusals are not vacuous.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"
#include "vioport/core/mmio.h"
#include "vioport/core/spec.h"
#include "vioport/emulators/xen_emu_channel.h"
#include "vioport/transports/xen_channel.h"
#include "vioport/transports/xen_guest.h"
#include "vioport/transports/xen_protocol.h"
#include "vioport/transports/xs_client.h"

namespace vioport {
namespace {

using testproc::Proc;
using testproc::WaitFor;
using xen::XenbusState;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint32_t kHonest = 1, kHostile = 9, kStranger = 7;

class XenHostile : public testproc::ViosProcessTest {
 protected:
  XenHostile() : ViosProcessTest("vioport-xenhostile", VIOS_BIN, VIOSCTL_BIN, VIOGUEST_BIN) {}

  void SetUp() override {
    ProcessTest::SetUp();
    xenemud_ = &Start({XENEMUD_BIN, "--xenstore", Path("xs.sock"), "--domains", Path("xen.sock")}, "xenemud");
    ASSERT_TRUE(WaitForPaths({Path("xs.sock"), Path("xen.sock")}, *xenemud_)) << xenemud_->err();
    MakeDisk(Path("disk.img"), 64 * kMiB);
    vios_args_ = {"--device", "blk,id=d0,path=" + Path("disk.img"), "--device", "rng,id=bad", "--attach",
                  absl::StrFormat("d0,transport=xen,channel=emu:%s,domid=%u", Path("xen.sock"), kHonest), "--attach",
                  absl::StrFormat("bad,transport=xen,channel=emu:%s,domid=%u", Path("xen.sock"), kHostile)};
    SpawnVios();
    xen::ChannelOptions eo;
    eo.address = Path("xen.sock");
    eo.self = kHostile;
    eo.grant_pages = 256;
    eo.memory_bytes = 1 * kMiB;
    auto ch = xen::OpenEmulatorChannel(eo);
    ASSERT_TRUE(ch.ok()) << ch.status();
    ch_ = std::move(*ch);
    auto xs = xen::XsClient::Open(ch_->xenstore_path());
    ASSERT_TRUE(xs.ok()) << xs.status();
    xs_ = std::move(*xs);
    fe_ = xen::FrontendDir(kHostile, 0);
    be_ = xen::BackendDir(0, kHostile, 0);
  }

  int BackendState() {
    auto v = xs_->Read(be_ + "/state");
    return v.ok() ? std::atoi(v->c_str()) : -1;
  }
  bool WaitBackend(XenbusState s, double seconds = 10) {
    return WaitFor([&] { return BackendState() == static_cast<int>(s); }, seconds);
  }
  void Write(const std::string& key, const std::string& value) {
    ASSERT_TRUE(xs_->Write(fe_ + "/" + key, value).ok()) << key;
  }
  void State(XenbusState s) { Write("state", std::to_string(static_cast<int>(s))); }
  // A well-formed key set (ctrl page granted read-write, ports bound), with
  // `key` overridden by `value` ("" removes it), then Initialised.
  void Offer(const std::string& key, const std::string& value) {
    State(XenbusState::kInitialising);
    ASSERT_TRUE(WaitBackend(XenbusState::kInitWait)) << BackendState() << vios_->err();
    if (!ctrl_.addr) {
      auto p = ch_->SharePages(0, 1, true);
      ASSERT_TRUE(p.ok()) << p.status();
      ctrl_ = *p;
      auto cp = ch_->BindUnboundPort(0);
      auto qp = ch_->BindUnboundPort(0);
      ASSERT_TRUE(cp.ok() && qp.ok());
      ctrl_port_ = *cp;
      queue_port_ = *qp;
    }
    const std::vector<std::pair<std::string, std::string>> keys = {
        {"protocol-version", "1"},
        {"ctrl-ref", std::to_string(ctrl_.refs[0])},
        {"ctrl-evtchn", std::to_string(ctrl_port_)},
        {"num-queues", "1"},
        {"queue-0/evtchn", std::to_string(queue_port_)}};
    for (const auto& [k, v] : keys) {
      if (k == key && value.empty()) {
        ASSERT_TRUE(xs_->Rm(fe_ + "/" + k).ok());
        continue;
      }
      Write(k, k == key ? value : v);
    }
    State(XenbusState::kInitialised);
  }
  // The backend refused: Closed, a log line with `text`, one more refusal.
  void ExpectRefused(const std::string& text) {
    EXPECT_TRUE(WaitBackend(XenbusState::kClosed)) << "backend state " << BackendState();
    EXPECT_TRUE(ViosLogHas(text)) << "no log line with '" << text << "':\n" << vios_->err();
    EXPECT_EQ(Stat("bad", "xen.connections"), 0u);
  }

  Proc* xenemud_ = nullptr;
  std::unique_ptr<xen::XenChannel> ch_;
  std::unique_ptr<xen::XsClient> xs_;
  std::string fe_, be_;
  xen::SharedPages ctrl_;
  xen::EvtchnPort ctrl_port_ = 0, queue_port_ = 0;
};

TEST_F(XenHostile, GarbageInXenstoreIsRefusedNamingTheKey) {
  Proc& honest = Start({VIOGUEST_BIN, "--transport",
                        absl::StrFormat("xen:emu:%s,domid=%u", Path("xen.sock"), kHonest), "blk", "write", "--seed",
                        "5", "--length", "48M"},
                       "honest-writer");
  Offer("ctrl-ref", "abc");
  ExpectRefused("key ctrl-ref = 'abc'");
  Offer("num-queues", "99");
  ExpectRefused("key num-queues = '99'");
  Offer("ctrl-evtchn", "-1");
  ExpectRefused("key ctrl-evtchn = '-1'");
  Offer("queue-0/evtchn", "");
  ExpectRefused("key queue-0/evtchn");
  Offer("protocol-version", "2");
  ExpectRefused("key protocol-version = 2");
  Offer("ctrl-ref", "30000");  // never granted
  ExpectRefused("ctrl-ref 30000");
  // A page granted to another domain, then one granted read-only.
  auto other = ch_->SharePages(kStranger, 1, true);
  ASSERT_TRUE(other.ok()) << other.status();
  Offer("ctrl-ref", std::to_string(other->refs[0]));
  ExpectRefused(absl::StrCat("ctrl-ref ", other->refs[0]));
  auto ro = ch_->SharePages(0, 1, false);
  ASSERT_TRUE(ro.ok()) << ro.status();
  Offer("ctrl-ref", std::to_string(ro->refs[0]));
  ExpectRefused(absl::StrCat("ctrl-ref ", ro->refs[0]));
  // A port not reserved for vios (a loopback port of this domain).
  auto stranger_port = ch_->BindUnboundPort(kHostile);
  ASSERT_TRUE(stranger_port.ok());
  Offer("ctrl-evtchn", std::to_string(*stranger_port));
  ExpectRefused(absl::StrCat("ctrl-evtchn ", *stranger_port));
  EXPECT_GE(Stat("bad", "xen.connections_refused"), 9u);

  // The honest guest was unaffected; then the same frontend, well-formed, connects.
  EXPECT_EQ(honest.Wait(120), 0) << honest.err() << honest.out();
  Proc& verify = Start({VIOGUEST_BIN, "--transport", absl::StrFormat("xen:emu:%s,domid=%u", Path("xen.sock"), kHonest),
                        "blk", "verify", "--seed", "5", "--length", "48M"},
                       "honest-reader");
  EXPECT_EQ(verify.Wait(120), 0) << verify.err() << verify.out();
  ExpectWrittenAndVerified(honest, verify, Path("disk.img"), 5, 0, 48 * kMiB);
  Offer("", "");
  EXPECT_TRUE(WaitBackend(XenbusState::kConnected)) << BackendState() << vios_->err();
  EXPECT_TRUE(vios_->Running()) << vios_->err();
}

// Hand-written split rings (queue size 8) on the rng device: one request of
// one device-writable descriptor. The buffer (or a ring) is named by a bad
// grant; the device must need a reset and log the grant, and the next
// correct request after a reset must be served.
class RawRing {
 public:
  RawRing(xen::XenDriverTransport& t) : t_(t) {}
  // Reset, features, queue 0 with the given ring pages, DRIVER_OK.
  bool Start(const DmaBuffer& desc, const DmaBuffer& avail, const DmaBuffer& used, uint64_t used_addr = 0) {
    t_.SetStatus(0);
    t_.SetStatus(status::kAcknowledge | status::kDriver);
    t_.SetDriverFeatures(feature::Bit(feature::kVersion1));
    t_.SetStatus(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
    std::memset(desc.host, 0, 4096);
    std::memset(avail.host, 0, 4096);
    std::memset(used.host, 0, 4096);
    desc_ = desc.host;
    avail_ = avail.host;
    used_ = used.host;
    if (!t_.EnableQueue(0, 8, desc.device_addr, avail.device_addr, used_addr ? used_addr : used.device_addr).ok())
      return false;
    t_.SetStatus(status::kAcknowledge | status::kDriver | status::kFeaturesOk | status::kDriverOk);
    return true;
  }
  // One device-writable buffer at `addr`, made available and kicked.
  void Submit(uint64_t addr, uint32_t len) {
    std::memcpy(desc_ + 0, &addr, 8);
    std::memcpy(desc_ + 8, &len, 4);
    const uint16_t flags = 2 /* VIRTQ_DESC_F_WRITE */, next = 0;
    std::memcpy(desc_ + 12, &flags, 2);
    std::memcpy(desc_ + 14, &next, 2);
    const uint16_t head = 0;
    std::memcpy(avail_ + 4, &head, 2);
    std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(avail_ + 2)).store(1, std::memory_order_release);
    t_.Notify(0, 0);
  }
  uint16_t UsedIdx() { return std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(used_ + 2)).load(); }
  uint32_t UsedLen() {
    uint32_t len;
    std::memcpy(&len, used_ + 8, 4);
    return len;
  }

 private:
  xen::XenDriverTransport& t_;
  uint8_t *desc_ = nullptr, *avail_ = nullptr, *used_ = nullptr;
};

TEST_F(XenHostile, BadGrantsInRingsAndDescriptorsNeedAResetOthersKeepWorking) {
  Proc& honest = Start({VIOGUEST_BIN, "--transport",
                        absl::StrFormat("xen:emu:%s,domid=%u", Path("xen.sock"), kHonest), "blk", "write", "--seed",
                        "6", "--length", "48M"},
                       "honest-writer");
  xen::XenGuestOptions go;
  auto t = xen::XenDriverTransport::Connect(*ch_, go);
  ASSERT_TRUE(t.ok()) << t.status();
  DmaAllocator& dma = (*t)->dma();
  auto page = [&](Access a) {
    auto b = dma.Allocate(4096, 4096, a);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *b : DmaBuffer{};
  };
  const DmaBuffer desc = page(Access::kRead), avail = page(Access::kRead), used = page(Access::kReadWrite);
  const DmaBuffer buf = page(Access::kWrite), ro_buf = page(Access::kRead);
  auto stranger = ch_->SharePages(kStranger, 1, true);
  ASSERT_TRUE(stranger.ok()) << stranger.status();
  RawRing ring(**t);
  auto needs_reset = [&] {
    return WaitFor([&] { return ((*t)->GetStatus() & status::kDeviceNeedsReset) != 0; }, 10);
  };

  // Control: a correct request is served (64 random bytes written to buf).
  ASSERT_TRUE(ring.Start(desc, avail, used));
  std::memset(buf.host, 0, 64);
  ring.Submit(buf.device_addr, 64);
  ASSERT_TRUE(WaitFor([&] { return ring.UsedIdx() == 1; }, 10)) << vios_->err();
  EXPECT_EQ(ring.UsedLen(), 64u);
  EXPECT_NE(std::vector<uint8_t>(buf.host, buf.host + 64), std::vector<uint8_t>(64, 0));
  const uint64_t errors0 = Stat("bad", "xen.ring_errors");

  struct Case {
    const char* what;
    uint64_t addr;
  };
  const Case cases[] = {
      {"a buffer address without bit 63", buf.device_addr & ~xen::kGrantAddrBit},
      {"a buffer on a grant beyond the table", xen::EncodeGrant(60000)},
      {"a buffer granted to another domain", xen::EncodeGrant(stranger->refs[0])},
      {"a device-writable buffer granted read-only", ro_buf.device_addr},
  };
  uint64_t n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ASSERT_TRUE(ring.Start(desc, avail, used));
    ring.Submit(c.addr, 64);
    EXPECT_TRUE(needs_reset()) << vios_->err();
    EXPECT_EQ(ring.UsedIdx(), 0) << "a bad buffer was completed";
    EXPECT_TRUE(WaitFor([&] { return Stat("bad", "xen.ring_errors") >= errors0 + n + 1; }, 10)) << Viosctl("stats bad");
    ++n;
  }
  // A used ring (device-written) on a page granted read-only: the queue
  // cannot start, and the device says so.
  auto refusals = [&] {
    const std::string log = vios_->err();
    size_t n = 0;
    for (size_t at = 0; (at = log.find("address outside guest memory or not permitted", at)) != std::string::npos; ++at) ++n;
    return n;
  };
  const size_t refused1 = refusals();
  (void)ring.Start(desc, avail, used, ro_buf.device_addr);
  EXPECT_TRUE(needs_reset()) << vios_->err();
  EXPECT_TRUE(WaitFor([&] { return refusals() > refused1; }, 10)) << vios_->err();
  EXPECT_TRUE(ViosLogHas(absl::StrCat("grant ", stranger->refs[0]))) << vios_->err();

  // After a reset, correct requests are served again.
  ASSERT_TRUE(ring.Start(desc, avail, used));
  ring.Submit(buf.device_addr, 32);
  EXPECT_TRUE(WaitFor([&] { return ring.UsedIdx() == 1; }, 10)) << vios_->err();
  EXPECT_EQ(ring.UsedLen(), 32u);

  EXPECT_EQ(honest.Wait(120), 0) << honest.err() << honest.out();
  Proc& verify = Start({VIOGUEST_BIN, "--transport", absl::StrFormat("xen:emu:%s,domid=%u", Path("xen.sock"), kHonest),
                        "blk", "verify", "--seed", "6", "--length", "48M"},
                       "honest-reader");
  EXPECT_EQ(verify.Wait(120), 0) << verify.err() << verify.out();
  ExpectWrittenAndVerified(honest, verify, Path("disk.img"), 6, 0, 48 * kMiB);
  EXPECT_EQ(Stat("d0", "xen.ring_errors"), 0u);
  EXPECT_TRUE(vios_->Running()) << vios_->err();
}

}  // namespace
}  // namespace vioport
