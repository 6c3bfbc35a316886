// SPDX-License-Identifier: Apache-2.0
// A hostile (or broken) front-end against VhostUserServer: each case brings a
// connection to some state, then sends one message the protocol forbids. The
// server must close that connection (the raw front-end reads EOF), count a
// protocol error, and name the problem in last_error(); meanwhile a second
// server and device on the same io_context keep serving verified I/O, and
// the victim's next connection is served as if nothing happened.
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>

#include "vhost_user_test_support.h"
#include "vioport/backends/blk_device.h"

namespace vioport::vutest {
namespace {

constexpr uint64_t kFileBytes = 4 << 20;

// How far the victim connection gets before the hostile message.
enum class Stage {
  kConnected,  // nothing sent
  kOwner,      // features and protocol features read, SET_OWNER
  kMemory,     // + SET_FEATURES and SET_MEM_TABLE
  kRunning,    // + ring 0 started and enabled, a write and a read verified
};

struct Case {
  const char* name;
  Stage stage;
  std::function<void(Guest&)> send;  // the hostile message(s)
  const char* expect;                // in last_error()
  // The server stops reading mid-message (it refuses the header), so the
  // close comes with bytes of ours unread: ECONNRESET rather than EOF.
  bool unread = false;
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

// Helpers for the cases.
void Send(Guest& g, Req r, const std::vector<uint8_t>& p, std::vector<int> fds = {}) {
  ASSERT_TRUE(g.fe().Send(r, p, fds, /*need_reply=*/true));
}
vu::VringAddr RingAddr(Guest& g, uint64_t desc_off = 0x1000, uint64_t avail_off = 0x2000, uint64_t used_off = 0x3000) {
  return {0, 0, g.ram().va() + desc_off, g.ram().va() + used_off, g.ram().va() + avail_off, 0};
}
void MemTableWith(Guest& g, vu::MemRegion r, int fd) { Send(g, Req::kSetMemTable, MemTable({r}), {fd}); }
// A sealed memfd of `size` bytes (closed by the test after sending).
UniqueFd Memfd(size_t size, bool seal) {
  UniqueFd fd(::memfd_create("vu-hostile", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  if (seal) {
    EXPECT_EQ(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
  }
  return fd;
}

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      // Payload sizes.
      {"SetFeaturesShortPayload", Stage::kOwner,
       [](Guest& g) { Send(g, Req::kSetFeatures, {1, 2, 3, 4}); }, "SET_FEATURES: payload of 4 bytes, expected 8"},
      {"SetVringAddrLongPayload", Stage::kMemory,
       [](Guest& g) {
         auto p = AsBytes(RingAddr(g));
         p.resize(48);
         Send(g, Req::kSetVringAddr, p);
       },
       "SET_VRING_ADDR: payload of 48 bytes, expected 40"},
      {"GetVringBaseEmptyPayload", Stage::kRunning, [](Guest& g) { Send(g, Req::kGetVringBase, {}); },
       "GET_VRING_BASE: payload of 0 bytes, expected 8"},
      {"SetOwnerWithPayload", Stage::kConnected, [](Guest& g) { Send(g, Req::kSetOwner, U64(0)); },
       "SET_OWNER: unexpected payload"},
      {"MemTableShortPayload", Stage::kOwner,
       [](Guest& g) {
         auto p = MemTable({g.ram().region()});
         p.resize(p.size() - 8);
         Send(g, Req::kSetMemTable, p, {g.ram().fd()});
       },
       "SET_MEM_TABLE: payload of 32 bytes for 1 regions"},
      {"GetConfigTooLarge", Stage::kOwner,
       [](Guest& g) {
         auto p = AsBytes(vu::ConfigHeader{0, 300, 0});
         p.resize(p.size() + 300);
         Send(g, Req::kGetConfig, p);
       },
       "GET_CONFIG: config size 300 (limit 256)"},
      {"InflightAreaTooSmall", Stage::kMemory,
       [](Guest& g) {
         UniqueFd fd = Memfd(4096, true);
         Send(g, Req::kSetInflightFd, AsBytes(vu::Inflight{64, 0, 1, 64}), {fd.get()});
       },
       "SET_INFLIGHT_FD: in-flight area of 64 bytes for 1 queues of 64"},
      // Fd counts.
      {"FdWithSetFeatures", Stage::kOwner,
       [](Guest& g) {
         UniqueFd e = EventFd();
         Send(g, Req::kSetFeatures, U64(g.offered()), {e.get()});
       },
       "SET_FEATURES: carries 1 unexpected fds"},
      {"FdWithGetFeatures", Stage::kConnected,
       [](Guest& g) {
         UniqueFd e = EventFd();
         Send(g, Req::kGetFeatures, {}, {e.get()});
       },
       "GET_FEATURES: carries 1 unexpected fds"},
      {"TwoFdsWithKick", Stage::kMemory,
       [](Guest& g) {
         UniqueFd a = EventFd(), b = EventFd();
         Send(g, Req::kSetVringKick, U64(0), {a.get(), b.get()});
       },
       "SET_VRING_KICK: 2 fds with an fd request"},
      {"BackendChannelWithoutFd", Stage::kOwner, [](Guest& g) { Send(g, Req::kSetBackendReqFd, {}); },
       "SET_BACKEND_REQ_FD: 0 fds, expected 1 (a socket)"},
      {"BackendChannelWithPayload", Stage::kOwner,
       [](Guest& g) {
         int sv[2];
         ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
         UniqueFd a(sv[0]), b(sv[1]);
         Send(g, Req::kSetBackendReqFd, U64(0), {a.get()});
       },
       "SET_BACKEND_REQ_FD: payload of 8 bytes, expected none"},
      {"KickWithoutFd", Stage::kMemory, [](Guest& g) { Send(g, Req::kSetVringKick, U64(0)); },
       "SET_VRING_KICK: 0 fds with an fd request"},
      {"CallNoFdFlagWithFd", Stage::kMemory,
       [](Guest& g) {
         UniqueFd e = EventFd();
         Send(g, Req::kSetVringCall, U64(vu::kVringNoFd), {e.get()});
       },
       "SET_VRING_CALL: 1 fds with the no-fd flag"},
      {"MemTableMissingFd", Stage::kOwner,
       [](Guest& g) {
         vu::MemRegion r0 = g.ram().region(), r1 = r0;
         r1.guest_phys_addr += r0.memory_size;
         r1.userspace_addr += r0.memory_size;
         Send(g, Req::kSetMemTable, MemTable({r0, r1}), {g.ram().fd()});
       },
       "SET_MEM_TABLE: 1 fds for 2 regions"},
      {"MemTableExtraFd", Stage::kOwner,
       [](Guest& g) { Send(g, Req::kSetMemTable, MemTable({g.ram().region()}), {g.ram().fd(), g.ram().fd()}); },
       "SET_MEM_TABLE: 2 fds for 1 regions"},
      {"InflightWithoutFd", Stage::kMemory,
       [](Guest& g) { Send(g, Req::kSetInflightFd, AsBytes(vu::Inflight{4096, 0, 1, 64})); },
       "SET_INFLIGHT_FD: 0 fds, expected 1"},
      {"NineFds", Stage::kOwner,
       [](Guest& g) {
         std::vector<UniqueFd> e;
         std::vector<int> raw;
         for (int i = 0; i < 9; ++i) {
           e.push_back(EventFd());
           raw.push_back(e.back().get());
         }
         Send(g, Req::kSetMemTable, MemTable({g.ram().region()}), raw);
       },
       "more than 8 fds with one message", /*unread=*/true},
      // Memory tables.
      {"MemTableOverlapInFrontendSpace", Stage::kOwner,
       [](Guest& g) {
         vu::MemRegion r0 = g.ram().region(), r1 = r0;
         r0.memory_size = r1.memory_size = 1 << 20;
         r1.guest_phys_addr += 16 << 20;
         r1.userspace_addr += 512 << 10;  // overlaps r0 in the front-end's space
         r1.mmap_offset = 1 << 20;
         Send(g, Req::kSetMemTable, MemTable({r0, r1}), {g.ram().fd(), g.ram().fd()});
       },
       "regions 0 and 1 overlap in the front-end's address space"},
      {"MemTableOverlapInGuestSpace", Stage::kOwner,
       [](Guest& g) {
         vu::MemRegion r0 = g.ram().region(), r1 = r0;
         r0.memory_size = r1.memory_size = 1 << 20;
         r1.guest_phys_addr += 512 << 10;  // overlaps r0 in guest-physical space
         r1.userspace_addr += 1 << 20;
         r1.mmap_offset = 1 << 20;
         Send(g, Req::kSetMemTable, MemTable({r0, r1}), {g.ram().fd(), g.ram().fd()});
       },
       "SET_MEM_TABLE: region 1: memory region"},
      {"MemTableZeroSize", Stage::kOwner,
       [](Guest& g) {
         vu::MemRegion r = g.ram().region();
         r.memory_size = 0;
         MemTableWith(g, r, g.ram().fd());
       },
       "SET_MEM_TABLE: region 0: region of size 0"},
      {"MemTableWraps", Stage::kOwner,
       [](Guest& g) {
         vu::MemRegion r = g.ram().region();
         r.guest_phys_addr = ~0ull - 4095;
         MemTableWith(g, r, g.ram().fd());
       },
       "wraps around"},
      {"MemTableOffsetWraps", Stage::kOwner,
       [](Guest& g) {
         vu::MemRegion r = g.ram().region();
         r.mmap_offset = ~0ull - 4095;
         MemTableWith(g, r, g.ram().fd());
       },
       "wraps around"},
      {"MemTablePastEnd", Stage::kOwner,
       [](Guest& g) {
         vu::MemRegion r = g.ram().region();
         r.memory_size += 256 << 10;  // the memfd has 64 KiB past the region
         MemTableWith(g, r, g.ram().fd());
       },
       "lies past the file's end"},
      {"MemTableOffsetPastEnd", Stage::kOwner,
       [](Guest& g) {
         vu::MemRegion r = g.ram().region();
         r.mmap_offset = 1 << 20;
         MemTableWith(g, r, g.ram().fd());
       },
       "lies past the file's end"},
      {"MemTableMisalignedInMapping", Stage::kOwner,
       [](Guest& g) {
         vu::MemRegion r = g.ram().region();
         r.mmap_offset = 1;  // guest address 4k-aligned, its bytes at an odd host address
         r.memory_size -= 4096;
         MemTableWith(g, r, g.ram().fd());
       },
       "SET_MEM_TABLE: region 0: region at guest 0x100000000 starts at fd offset 0x1: misaligned in the mapping"},
      {"MemTableUnsealed", Stage::kOwner,
       [](Guest& g) {
         UniqueFd fd = Memfd(1 << 20, false);
         vu::MemRegion r = g.ram().region();
         r.memory_size = 1 << 20;
         MemTableWith(g, r, fd.get());
       },
       "not sealed against shrinking"},
      {"MemTableNotAFile", Stage::kOwner,
       [](Guest& g) {
         UniqueFd e = EventFd();
         MemTableWith(g, g.ram().region(), e.get());
       },
       "region fd is not a memory file"},
      {"MemTableNineRegions", Stage::kOwner,
       [](Guest& g) {
         std::vector<vu::MemRegion> r(9, g.ram().region());
         Send(g, Req::kSetMemTable, MemTable(r));
       },
       "SET_MEM_TABLE: 9 regions (1 to 8)"},
      {"MemTableLeavesRingOutside", Stage::kOwner,
       [](Guest& g) {
         // The ring was placed first; the memory then arrives without it.
         ASSERT_TRUE(g.fe().Ack(Req::kSetFeatures, U64(g.offered() & ~feature::Bit(feature::kRingPacked))));
         ASSERT_TRUE(g.fe().Ack(Req::kSetVringNum, State(0, 64)));
         ASSERT_TRUE(g.fe().Ack(Req::kSetVringAddr, AsBytes(RingAddr(g, 0x1000, 0x2000, 0x3000))));
         vu::MemRegion r = g.ram().region();
         r.userspace_addr += 1 << 20;
         r.memory_size -= 1 << 20;
         r.mmap_offset = 1 << 20;
         MemTableWith(g, r, g.ram().fd());
       },
       "SET_MEM_TABLE: queue 0: descriptor ring address"},
      {"RemMemRegUnknown", Stage::kMemory,
       [](Guest& g) {
         vu::MemRegion r = g.ram().region();
         r.guest_phys_addr += 4096;
         Send(g, Req::kRemMemReg, AsBytes(vu::SingleMemRegion{0, r}));
       },
       "REM_MEM_REG: no region at guest"},
      // Rings.
      {"DescRingOutsideMemory", Stage::kMemory,
       [](Guest& g) { Send(g, Req::kSetVringAddr, AsBytes(RingAddr(g, g.ram().size() + 0x1000))); },
       "SET_VRING_ADDR: queue 0: descriptor ring address"},
      {"UsedRingOutsideMemory", Stage::kMemory,
       [](Guest& g) {
         auto a = RingAddr(g);
         a.used = 0x1000;
         Send(g, Req::kSetVringAddr, AsBytes(a));
       },
       "SET_VRING_ADDR: queue 0: used ring address 0x1000 is outside every memory region"},
      {"RingMisaligned", Stage::kMemory,
       [](Guest& g) {
         ASSERT_TRUE(g.fe().Ack(Req::kSetVringNum, State(0, 64)));
         ASSERT_TRUE(g.fe().Ack(Req::kSetVringAddr, AsBytes(RingAddr(g, 0x1008))));
         UniqueFd k = EventFd();
         ASSERT_TRUE(g.fe().Ack(Req::kSetVringKick, U64(0), std::vector<int>{k.get()}));
         Send(g, Req::kSetVringEnable, State(0, 1));
       },
       "SET_VRING_ENABLE: queue 0: ring area misaligned"},
      {"RingStartedWithoutMemory", Stage::kOwner,
       [](Guest& g) {
         ASSERT_TRUE(g.fe().Ack(Req::kSetFeatures, U64(g.offered() & ~feature::Bit(feature::kRingPacked))));
         ASSERT_TRUE(g.fe().Ack(Req::kSetVringNum, State(0, 64)));
         ASSERT_TRUE(g.fe().Ack(Req::kSetVringAddr, AsBytes(RingAddr(g))));
         UniqueFd k = EventFd();
         ASSERT_TRUE(g.fe().Ack(Req::kSetVringKick, U64(0), std::vector<int>{k.get()}));
         Send(g, Req::kSetVringEnable, State(0, 1));
       },
       "SET_VRING_ENABLE: queue 0 started before SET_MEM_TABLE"},
      {"SplitRingSizeNotPowerOf2", Stage::kMemory, [](Guest& g) { Send(g, Req::kSetVringNum, State(0, 48)); },
       "SET_VRING_NUM: queue 0 size 48"},
      {"RingSizeAboveDeviceMax", Stage::kMemory, [](Guest& g) { Send(g, Req::kSetVringNum, State(0, 2048)); },
       "SET_VRING_NUM: queue 0 size 2048 is above the device's maximum 1024"},
      {"RingSizeNotAPowerOf2", Stage::kMemory, [](Guest& g) { Send(g, Req::kSetVringNum, State(0, 96)); },
       "SET_VRING_NUM: queue 0 size 96 is not a power of 2 (split ring)"},
      {"QueueIndexOutOfRange", Stage::kMemory, [](Guest& g) { Send(g, Req::kSetVringNum, State(1, 64)); },
       "SET_VRING_NUM: queue index 1 out of range (the device has 1 queues)"},
      {"KickIndexOutOfRange", Stage::kMemory,
       [](Guest& g) {
         UniqueFd e = EventFd();
         Send(g, Req::kSetVringKick, U64(0xff), {e.get()});
       },
       "SET_VRING_KICK: queue index 255 out of range"},
      {"GetVringBaseIndexOutOfRange", Stage::kRunning,
       [](Guest& g) { Send(g, Req::kGetVringBase, State(7, 0)); }, "GET_VRING_BASE: queue index 7 out of range"},
      {"KickUnknownBits", Stage::kMemory,
       [](Guest& g) {
         UniqueFd e = EventFd();
         Send(g, Req::kSetVringKick, U64(1 << 9), {e.get()});
       },
       "SET_VRING_KICK: unknown bits in 0x200"},
      {"KickPolling", Stage::kMemory, [](Guest& g) { Send(g, Req::kSetVringKick, U64(vu::kVringNoFd)); },
       "SET_VRING_KICK: rings without a kick fd (polling) are not supported"},
      {"VringEnableValue2", Stage::kMemory, [](Guest& g) { Send(g, Req::kSetVringEnable, State(0, 2)); },
       "SET_VRING_ENABLE: enable value 2"},
      {"DirtyLogRequested", Stage::kMemory,
       [](Guest& g) {
         auto a = RingAddr(g);
         a.flags = 1;
         Send(g, Req::kSetVringAddr, AsBytes(a));
       },
       "SET_VRING_ADDR: dirty logging requested"},
      {"FeaturesNotOffered", Stage::kOwner, [](Guest& g) { Send(g, Req::kSetFeatures, U64(1ull << 63)); },
       "SET_FEATURES: features 0x8000000000000000 include bits not offered"},
      {"ProtocolFeaturesNotOffered", Stage::kConnected,
       [](Guest& g) { Send(g, Req::kSetProtocolFeatures, U64(1ull << vu::proto::kStatus)); },
       "SET_PROTOCOL_FEATURES: protocol features 0x10000 include bits not offered"},
      {"GetInflightTooManyQueues", Stage::kMemory,
       [](Guest& g) { Send(g, Req::kGetInflightFd, AsBytes(vu::Inflight{0, 0, 5, 64})); },
       "GET_INFLIGHT_FD: 5 queues (the device has 1)"},
      // Wrong states.
      {"VringNumBeforeOwner", Stage::kConnected, [](Guest& g) { Send(g, Req::kSetVringNum, State(0, 64)); },
       "SET_VRING_NUM: before SET_OWNER"},
      {"MemTableBeforeOwner", Stage::kConnected,
       [](Guest& g) { MemTableWith(g, g.ram().region(), g.ram().fd()); }, "SET_MEM_TABLE: before SET_OWNER"},
      {"KickBeforeOwner", Stage::kConnected,
       [](Guest& g) {
         UniqueFd e = EventFd();
         Send(g, Req::kSetVringKick, U64(0), {e.get()});
       },
       "SET_VRING_KICK: before SET_OWNER"},
      {"VringNumWhileRunning", Stage::kRunning, [](Guest& g) { Send(g, Req::kSetVringNum, State(0, 32)); },
       "SET_VRING_NUM: queue 0 is running"},
      {"VringBaseWhileRunning", Stage::kRunning, [](Guest& g) { Send(g, Req::kSetVringBase, State(0, 0)); },
       "SET_VRING_BASE: queue 0 is running"},
      {"RingMovedWhileRunning", Stage::kRunning,
       [](Guest& g) { Send(g, Req::kSetVringAddr, AsBytes(RingAddr(g, 0x10000, 0x20000, 0x30000))); },
       "SET_VRING_ADDR: queue 0 is running; its ring cannot move"},
      {"FeaturesChangedWhileRunning", Stage::kRunning,
       [](Guest& g) { Send(g, Req::kSetFeatures, U64(g.features() & ~feature::Bit(feature::kEventIdx))); },
       "SET_FEATURES: features changed while the device runs"},
      {"AddMemRegWithoutMemSlots", Stage::kOwner,
       [](Guest& g) {
         ASSERT_TRUE(g.fe().Ack(Req::kSetProtocolFeatures,
                                U64(g.offered_proto() & ~(1ull << vu::proto::kConfigureMemSlots))));
         Send(g, Req::kAddMemReg, AsBytes(vu::SingleMemRegion{0, g.ram().region()}), {g.ram().fd()});
       },
       "ADD_MEM_REG: CONFIGURE_MEM_SLOTS not negotiated"},
      {"GetInflightWithoutShmfd", Stage::kOwner,
       [](Guest& g) {
         ASSERT_TRUE(
             g.fe().Ack(Req::kSetProtocolFeatures, U64(g.offered_proto() & ~(1ull << vu::proto::kInflightShmfd))));
         Send(g, Req::kGetInflightFd, AsBytes(vu::Inflight{0, 0, 1, 64}));
       },
       "GET_INFLIGHT_FD: INFLIGHT_SHMFD not negotiated"},
      {"SecondSetOwner", Stage::kOwner, [](Guest& g) { Send(g, Req::kSetOwner, {}); },
       "SET_OWNER: the session already has an owner"},
      // Headers.
      {"HeaderVersion0", Stage::kOwner,
       [](Guest& g) { ASSERT_TRUE(g.fe().SendRaw(static_cast<uint32_t>(Req::kGetFeatures), 0, {})); },
       "header version 0 (expected 1)"},
      {"HeaderVersion2", Stage::kRunning,
       [](Guest& g) { ASSERT_TRUE(g.fe().SendRaw(static_cast<uint32_t>(Req::kGetFeatures), 2, {})); },
       "header version 2 (expected 1)"},
      {"PayloadTooLarge", Stage::kOwner,
       [](Guest& g) {
         // The header alone: the server must refuse before reading 5000 bytes.
         ASSERT_TRUE(g.fe().SendRaw(static_cast<uint32_t>(Req::kSetMemTable), vu::kVersion, {}, {}, 5000));
       },
       "SET_MEM_TABLE: payload of 5000 bytes (limit 4096)"},
      {"UnknownRequest", Stage::kOwner, [](Guest& g) { Send(g, static_cast<Req>(99), {}); },
       "UNKNOWN: request 99 is not supported by this back-end"},
      {"UnsupportedSetLogBase", Stage::kRunning, [](Guest& g) { Send(g, Req::kSetLogBase, U64(0)); },
       "SET_LOG_BASE: request 6 is not supported by this back-end"},
  };
  return cases;
}

// A victim server and a bystander server, each with its own BlkDevice, on
// one io_context; the bystander's front-end is connected and running.
class HostileRig : public ::testing::Test {
 protected:
  void SetUp() override {
    victim_dev_ = OpenBlkDevice(victim_file_);
    bystander_dev_ = OpenBlkDevice(bystander_file_);
    ASSERT_TRUE(victim_dev_ && bystander_dev_);
    victim_ = loop_.AddServer(victim_dev_, Options("victim"));
    bystander_ = loop_.AddServer(bystander_dev_, Options("bystander"));
    ASSERT_TRUE(victim_ && bystander_);
    bys_ = std::make_unique<Guest>(bystander_->options().socket_path);
    ASSERT_TRUE(bys_->Negotiate());
    ASSERT_TRUE(bys_->Start());
    ASSERT_EQ(bys_->VerifiedIo(&bystander_file_, 1, 1), 2);
  }

  static std::shared_ptr<BlkDevice> OpenBlkDevice(const TempFile& f) {
    BlkOptions bo;
    bo.path = f.path();
    auto d = BlkDevice::Open(bo);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : nullptr;
  }
  static VhostUserServerOptions Options(const std::string& tag) {
    VhostUserServerOptions o;
    o.socket_path = TempPath(tag);
    o.name = tag;
    return o;
  }

  // Brings a fresh connection to the victim up to `stage`.
  void Reach(Guest& g, Stage stage) {
    if (stage == Stage::kConnected) {
      ASSERT_TRUE(loop_.WaitFor([&] { return victim_->connected(); }));
      return;
    }
    ASSERT_TRUE(g.Negotiate());
    if (stage == Stage::kOwner) return;
    if (stage == Stage::kMemory) {
      ASSERT_TRUE(g.fe().Ack(Req::kSetFeatures, U64(g.offered() & ~feature::Bit(feature::kRingPacked))));
      ASSERT_TRUE(g.SetMemory());
      return;
    }
    ASSERT_TRUE(g.Start());
    ASSERT_EQ(g.VerifiedIo(&victim_file_, 2, 1), 2);
  }

  TempFile victim_file_{kFileBytes}, bystander_file_{kFileBytes};
  std::shared_ptr<BlkDevice> victim_dev_, bystander_dev_;
  Loop loop_;
  VhostUserServer* victim_ = nullptr;
  VhostUserServer* bystander_ = nullptr;
  std::unique_ptr<Guest> bys_;
};

class Hostile : public HostileRig, public ::testing::WithParamInterface<Case> {};
class HostileFrontend : public HostileRig {};

TEST_P(Hostile, ClosesOnlyThatConnection) {
  const Case& c = GetParam();
  {
    Guest g(victim_->options().socket_path);
    ASSERT_NO_FATAL_FAILURE(Reach(g, c.stage));
    // The bystander serves while the victim is mid-session...
    EXPECT_EQ(bys_->VerifiedIo(&bystander_file_, 10, 1), 2);
    ASSERT_NO_FATAL_FAILURE(c.send(g));
    EXPECT_TRUE(g.fe().ExpectClosed(c.unread));
  }
  ASSERT_TRUE(loop_.WaitFor([&] { return !victim_->connected(); }));
  EXPECT_EQ(loop_.Counter(victim_, "protocol_errors"), 1u);
  const std::string err = loop_.LastError(victim_);
  EXPECT_NE(err.find(c.expect), std::string::npos) << "last_error: " << err << "\nexpected: " << c.expect;
  EXPECT_EQ(loop_.Status(victim_), 0);

  // ...and after: its connection never noticed.
  EXPECT_EQ(bys_->VerifiedIo(&bystander_file_, 20, 2), 4);
  EXPECT_TRUE(loop_.Connected(bystander_));
  EXPECT_EQ(loop_.Counter(bystander_, "protocol_errors"), 0u);

  // The victim accepts the next front-end and serves it.
  Guest next(victim_->options().socket_path);
  ASSERT_TRUE(next.Negotiate());
  ASSERT_TRUE(next.Start());
  EXPECT_EQ(next.VerifiedIo(&victim_file_, 30, 2), 4);
  EXPECT_EQ(loop_.Counter(victim_, "connections"), 2u);
  EXPECT_EQ(loop_.Counter(victim_, "protocol_errors"), 1u);
}

// Fds are shared with the front-end: it can change them after sending them.
// These must not stop the io thread (and with it every other device).

TEST_F(HostileFrontend, KickFdTurnedBlockingAgain) {
  // Asio put the kick eventfd in non-blocking mode for its wait; the
  // front-end, sharing the file description, takes that back. Reading it
  // until EAGAIN would then block the loop until the next kick.
  Guest g(victim_->options().socket_path);
  ASSERT_TRUE(g.Negotiate());
  ASSERT_TRUE(g.Start());
  ASSERT_EQ(g.VerifiedIo(&victim_file_, 3, 1), 2);
  ASSERT_EQ(::fcntl(g.kick_fd(0), F_SETFL, 0), 0);
  const uint64_t w = g.AddBlk(0, blk::req::kOut, 0, RandomBytes(512, 9), 512);
  auto done = g.Complete(0, 1);
  EXPECT_EQ(done.count(w), 1u);
  const bool responsive = loop_.Responsive();
  EXPECT_TRUE(responsive) << "the loop blocked reading the kick eventfd";
  if (!responsive) g.Kick(0);  // unblock it, so the test can end
  EXPECT_EQ(bys_->VerifiedIo(&bystander_file_, 40, 1), 2);
  EXPECT_EQ(g.VerifiedIo(&victim_file_, 4, 1), 2);
}

TEST_F(HostileFrontend, CallEventFdAtItsMaximum) {
  // A blocking call eventfd whose counter is one below its maximum: one more
  // write of 1 would wait until the front-end reads it, which it never does.
  GuestOptions go;
  go.blocking_eventfds = true;
  Guest g(victim_->options().socket_path, go);
  ASSERT_TRUE(g.Negotiate());
  ASSERT_TRUE(g.Start());
  const uint64_t almost = 0xfffffffffffffffeull;
  ASSERT_EQ(::write(g.call_fd(0), &almost, 8), 8);
  const uint64_t w = g.AddBlk(0, blk::req::kOut, 0, RandomBytes(512, 9), 512);
  g.queue(0).KickPrepare();
  g.Kick(0);
  const bool responsive = loop_.Responsive();
  EXPECT_TRUE(responsive) << "the loop blocked writing the call eventfd";
  uint64_t v;
  if (!responsive) {
    EXPECT_EQ(::read(g.call_fd(0), &v, 8), 8);  // unblock it
  }
  // The request completed all the same (the used ring says so).
  uint64_t tok = 0;
  uint32_t len;
  for (int i = 0; i < 500 && g.queue(0).GetUsed(&tok, &len) != UsedStatus::kUsed; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(tok, w);
  EXPECT_EQ(g.BlkStatus(w), blk::status::kOk);
  EXPECT_EQ(bys_->VerifiedIo(&bystander_file_, 41, 1), 2);
  EXPECT_TRUE(loop_.Connected(victim_));
}

TEST_F(HostileFrontend, NeverReadsItsReplies) {
  // GET_FEATURES after GET_FEATURES, no reply ever read. Once the front-end's
  // socket buffer is full the server drops the connection at once instead of
  // waiting for it, so other devices on the loop never stall. Checked: the
  // drop, its reason, that the loop stayed responsive, and the bystander
  // serving afterwards.
  auto fe = Frontend::Connect(victim_->options().socket_path);
  ASSERT_TRUE(fe);
  std::atomic<bool> flooding{true};
  std::atomic<int64_t> worst_ms{0};
  std::thread probe([&] {
    while (flooding) {
      const auto t0 = std::chrono::steady_clock::now();
      if (!loop_.Responsive(10000)) break;
      const int64_t ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
      if (ms > worst_ms) worst_ms = ms;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  int sent = 0;
  while (sent < 100000 && fe->Send(Req::kGetFeatures)) sent++;
  // The server gave up: what it did send, then the end.
  uint8_t b[4096];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool closed = false;
  while (std::chrono::steady_clock::now() < deadline) {
    const ssize_t n = ::recv(fe->fd(), b, sizeof b, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) {
      closed = true;
      break;
    }
    if (n < 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  flooding = false;
  probe.join();
  EXPECT_TRUE(closed);
  EXPECT_GT(sent, 100);
  EXPECT_EQ(loop_.Counter(victim_, "protocol_errors"), 1u);
  const std::string err = loop_.LastError(victim_);
  EXPECT_NE(err.find("GET_FEATURES: peer does not read its socket"), std::string::npos) << err;
  EXPECT_LT(worst_ms, 500) << "the loop stalled for " << worst_ms << " ms";
  EXPECT_EQ(bys_->VerifiedIo(&bystander_file_, 42, 1), 2);
  EXPECT_TRUE(loop_.Connected(bystander_));
}

INSTANTIATE_TEST_SUITE_P(VhostUser, Hostile, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace vioport::vutest
