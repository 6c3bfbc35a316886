// SPDX-License-Identifier: Apache-2.0
// The vhost-user in-flight log (INFLIGHT_SHMFD) across a back-end crash, end
// to end and deterministic: our VmmFrontend plays QEMU, a VhostUserServer in
// this process plays vios. Requests complete OUT OF ORDER before the back-end
// dies, which is the case the log exists for (QEMU re-offers from the used
// index after a crash, which is only right when requests complete in order).
//
//   1. Connect with INFLIGHT_SHMFD, GET_INFLIGHT_FD, start the ring. Submit
//      tokens 0..3; HoldDevice pops all four and holds them; the test has it
//      complete 3 and then 1 (used idx 2; 0 and 2 still in flight).
//   2. Crash: the server is destroyed. HoldDevice's Quiesce completes nothing
//      and its Reset drops what it holds, so the ring and the log are left
//      exactly as a killed vios leaves them.
//   3. A new server (EchoDevice: completes every chain at once) on the same
//      socket; the front-end reconnects over the same guest RAM, hands the
//      kept in-flight fd back with SET_INFLIGHT_FD and, as QEMU 7.2 does after
//      a back-end crash, SET_VRING_BASE = the used index (2).
//
// With the log, exactly 0 and 2 complete (oldest first), once each; 1 and 3
// are not done again; a fifth request then completes normally. The control
// experiment runs the same sequence with the log disabled on both servers:
// the restarted back-end pops from avail index 2, so token 2 completes, token
// 3 completes a second time and token 0 is lost - the driver's queue rejects
// the repeated used id. So the test can fail, and the log is what passes it.
//
// Every wait is bounded; servers are created and destroyed on their
// io_context's one thread.

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/post.hpp"
#include "gtest/gtest.h"
#include "vioport/core/buffer_dma.h"
#include "vioport/core/device.h"
#include "vioport/core/driver_queue.h"
#include "vioport/core/inflight_log.h"
#include "vioport/core/ring_error.h"
#include "vioport/core/spec.h"
#include "vioport/transports/vhost_user_frontend.h"
#include "vioport/transports/vhost_user_server.h"

namespace vioport {
namespace {

namespace asio = boost::asio;
using vhost_user::InflightRegion;
using vhost_user::VmmFrontend;
using vhost_user::VmmFrontendOptions;
using vhost_user::VringSetup;
namespace proto = vhost_user::proto;

#define ASSERT_OK(expr)                          \
  do {                                           \
    const absl::Status _s = (expr);              \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s; \
  } while (0)

constexpr uint16_t kQueueSize = 16;
constexpr uint64_t kRamBytes = 1 << 20;
constexpr uint64_t kFeatures = feature::Bit(feature::kVersion1);
constexpr absl::Duration kWait = absl::Seconds(5);  // the bound of every wait
constexpr uint32_t kHoldMagic = 0x444c4f48;         // "HOLD"
constexpr uint32_t kEchoMagic = 0x4f484345;         // "ECHO"

// What a device writes into a request's writable buffer when it completes it.
struct Marker {
  uint32_t magic;  // which device
  uint32_t head;   // the chain's head descriptor
  uint64_t token;  // read from the request's readable buffer
};
static_assert(sizeof(Marker) == 16);

// ---- the devices --------------------------------------------------------------

// A 1-queue split-ring device; requests are {le64 token}{16 writable bytes}.
class TestDevice : public VirtioDevice {
 public:
  explicit TestDevice(uint64_t features) : features_(features) {}
  DeviceId device_id() const override { return static_cast<DeviceId>(0xFFFF); }
  uint64_t device_features() const override { return features_; }
  uint16_t num_queues() const override { return 1; }
  uint16_t max_queue_size() const override { return 256; }
  uint32_t config_size() const override { return 0; }
  void ReadConfig(uint32_t, std::span<uint8_t>) override {}
  absl::Status Activate(ActivateContext ctx) override {
    if (ctx.queues.empty() || !ctx.queues[0]) return absl::FailedPreconditionError("queue 0 not running");
    ctx_ = std::move(ctx);
    return absl::OkStatus();
  }

 protected:
  DeviceQueue* queue() { return ctx_.queues.empty() ? nullptr : ctx_.queues[0].get(); }
  static uint64_t Token(DescriptorChain& c) {
    uint64_t t = ~uint64_t{0};
    if (c.Read(0, &t, sizeof t) != RingError::kNone) ADD_FAILURE() << "request without a token";
    return t;
  }
  // Writes the marker and returns the chain to the ring (not yet published).
  void Finish(DescriptorChain&& c, uint32_t magic, uint64_t token) {
    const Marker m{magic, c.id(), token};
    const bool ok = c.Write(0, &m, sizeof m) == RingError::kNone;
    EXPECT_TRUE(ok) << "token " << token << ": writable buffer too small";
    queue()->AddUsed(std::move(c), ok ? sizeof m : 0);
  }
  void Publish() {
    if (queue()->Publish()) ctx_.interrupt->QueueInterrupt(0);
  }

  ActivateContext ctx_;
  uint64_t features_;
};

// Pops every chain on notify and keeps it until told to complete it. Quiesce
// completes nothing and Reset drops the held chains uncompleted: what a
// crashed back-end leaves behind.
class HoldDevice final : public TestDevice {
 public:
  explicit HoldDevice(uint64_t features = kFeatures) : TestDevice(features) {}
  void QueueNotify(uint16_t q) override {
    DeviceQueue* dq = queue();
    if (q != 0 || !dq) return;
    DescriptorChain c;
    while (dq->Pop(c) == PopStatus::kChain) {
      const uint64_t t = Token(c);
      EXPECT_EQ(held_.count(t), 0u) << "token " << t << " popped twice";
      held_[t] = std::move(c);
      held_count_.store(held_.size(), std::memory_order_release);
    }
  }
  ActivateContext Reset() override {
    held_.clear();  // dropped, never completed
    held_count_.store(0, std::memory_order_release);
    return std::move(ctx_);
  }
  // On the io thread: completes the held chain of `token`, in its own batch.
  bool Complete(uint64_t token) {
    auto it = held_.find(token);
    if (it == held_.end() || !queue()) return false;
    Finish(std::move(it->second), kHoldMagic, token);
    held_.erase(it);
    held_count_.store(held_.size(), std::memory_order_release);
    Publish();
    return true;
  }
  size_t held() const { return held_count_.load(std::memory_order_acquire); }

 private:
  std::map<uint64_t, DescriptorChain> held_;  // io thread only
  std::atomic<size_t> held_count_{0};
};

// Completes every chain as soon as it is popped.
class EchoDevice final : public TestDevice {
 public:
  explicit EchoDevice(uint64_t features = kFeatures) : TestDevice(features) {}
  void QueueNotify(uint16_t q) override {
    DeviceQueue* dq = queue();
    if (q != 0 || !dq) return;
    DescriptorChain c;
    bool any = false;
    while (dq->Pop(c) == PopStatus::kChain) {
      const uint64_t t = Token(c);
      completed_.push_back(t);
      Finish(std::move(c), kEchoMagic, t);
      any = true;
    }
    if (any) Publish();
  }
  ActivateContext Reset() override { return std::move(ctx_); }
  const std::vector<uint64_t>& completed() const { return completed_; }  // io thread only

 private:
  std::vector<uint64_t> completed_;
};

// ---- the io thread --------------------------------------------------------------

// An io_context run by one thread, as vios runs it. Everything that touches
// a server or a device goes through Run(), which is bounded: a handler stuck
// for kWait fails the test and, since the stuck thread cannot be joined,
// aborts the process rather than hanging it.
class IoThread {
 public:
  IoThread() : guard_(io_.get_executor()) {
    th_ = std::thread([this] {
      io_.run();
      done_.set_value();
    });
  }
  ~IoThread() {
    guard_.reset();  // run() returns once the handlers servers left have run
    if (done_fut_.wait_for(ToChrono(kWait)) != std::future_status::ready) {
      io_.stop();
      if (done_fut_.wait_for(ToChrono(kWait)) != std::future_status::ready) {
        std::fprintf(stderr, "io thread stuck in a handler: aborting\n");
        std::abort();
      }
    }
    th_.join();
  }

  // Runs f on the io thread; its result, or nullopt (and a test failure) if
  // it did not run within kWait.
  template <typename F>
  auto Run(F f) -> std::optional<decltype(f())> {
    using R = decltype(f());
    auto task = std::make_shared<std::packaged_task<R()>>(std::move(f));
    std::future<R> fut = task->get_future();
    asio::post(io_, [task] { (*task)(); });
    if (fut.wait_for(ToChrono(kWait)) != std::future_status::ready) {
      ADD_FAILURE() << "the io thread did not run a task within " << kWait;
      std::fprintf(stderr, "io thread stuck: aborting\n");
      std::abort();  // the task refers to the caller's stack: it must never run late
    }
    return fut.get();
  }
  asio::io_context& io() { return io_; }

 private:
  static std::chrono::milliseconds ToChrono(absl::Duration d) {
    return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
  }
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::promise<void> done_;
  std::future<void> done_fut_ = done_.get_future();
  std::thread th_;
};

// ---- the test -----------------------------------------------------------------

class InflightReconnectTest : public ::testing::Test {
 protected:
  struct Request {
    uint64_t token = 0;
    DmaBuffer in, out;
  };

  void SetUp() override {
    char tmpl[] = "/tmp/vioport-ifl-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    sock_ = dir_ + "/vu.sock";
    // Guest RAM belongs to the "VMM" (this test), not to a connection: it
    // outlives the back-end and both front-ends adopt it.
    ram_fd_ = ::memfd_create("ifl-guest-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    ASSERT_GE(ram_fd_, 0);
    ASSERT_EQ(::ftruncate(ram_fd_, kRamBytes), 0);
    ASSERT_EQ(::fcntl(ram_fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), 0);
    void* p = ::mmap(nullptr, kRamBytes, PROT_READ | PROT_WRITE, MAP_SHARED, ram_fd_, 0);
    ASSERT_NE(p, MAP_FAILED);
    ram_ = static_cast<uint8_t*>(p);
    dma_ = std::make_unique<BufferDmaAllocator>(ram_, 0, kRamBytes);
  }

  void TearDown() override {
    fe_.reset();  // the VMM goes first, then the back-end (on its io thread)
    if (io_) DropServer();
    io_.reset();  // joins the io thread (bounded)
    vq_.reset();
    for (Request& r : reqs_) {
      if (r.in.host) dma_->Free(r.in);
      if (r.out.host) dma_->Free(r.out);
    }
    dma_.reset();
    if (ram_) ::munmap(ram_, kRamBytes);
    if (ram_fd_ >= 0) ::close(ram_fd_);
    if (inflight_fd_ >= 0) ::close(inflight_fd_);
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  // ---- back-end
  void StartServer(std::shared_ptr<VirtioDevice> dev, bool inflight) {
    VhostUserServerOptions o;
    o.socket_path = sock_;
    o.name = "ifl";
    o.inflight = inflight;
    auto created = io_->Run([&] { return VhostUserServer::Create(io_->io(), std::move(dev), o); });
    ASSERT_TRUE(created->ok()) << created->status();
    server_ = std::move(**created);
  }
  // Destroying the server drops the connection: Session's destructor calls
  // the device's Quiesce and Reset, which for HoldDevice is a crash.
  void DropServer() {
    if (server_) io_->Run([this] {
      server_.reset();
      return true;
    });
  }
  uint64_t Counter(const std::string& name) {
    return io_->Run([&]() -> uint64_t {
                 for (auto& [n, v] : server_->Counters())
                   if (n == name) return v;
                 ADD_FAILURE() << "no counter " << name;
                 return 0;
               })
        .value_or(0);
  }

  // ---- front-end
  std::unique_ptr<VmmFrontend> Connect() {
    VmmFrontendOptions o;
    o.socket_path = sock_;
    o.memory_bytes = kRamBytes;
    o.memory_fd = ram_fd_;
    o.memory_map = ram_;
    o.reply_timeout = kWait;
    o.connect_timeout = kWait;
    auto fe = VmmFrontend::Connect(o);
    EXPECT_TRUE(fe.ok()) << fe.status();
    if (!fe.ok()) return nullptr;
    EXPECT_EQ((*fe)->memory(), ram_);
    return std::move(*fe);
  }
  VringSetup Ring(uint32_t base) const {
    VringSetup v;
    v.packed = packed_;
    v.size = kQueueSize;
    v.desc = vq_->desc_addr();
    v.avail = vq_->driver_addr();
    v.used = vq_->device_addr();
    v.base = base;
    return v;
  }

  // ---- the ring, read raw (what the device really put there, duplicates included)
  uint16_t UsedIdx() const {
    const auto* p = reinterpret_cast<const std::atomic<uint16_t>*>(ram_ + vq_->device_addr() + 2);
    return p->load(std::memory_order_acquire);
  }
  uint32_t UsedId(uint16_t i) const {
    uint32_t id;
    std::memcpy(&id, ram_ + vq_->device_addr() + 4 + 8 * (i % kQueueSize), 4);
    return id;
  }
  uint16_t AvailHead(uint16_t i) const {
    uint16_t h;
    std::memcpy(&h, ram_ + vq_->driver_addr() + 4 + 2 * (i % kQueueSize), 2);
    return h;
  }
  // Waits (bounded) until the used index reaches `idx`.
  bool WaitUsed(uint16_t idx) {
    const absl::Time end = absl::Now() + kWait;
    while (static_cast<int16_t>(UsedIdx() - idx) < 0) {
      if (absl::Now() > end) return false;
      fe_->WaitCall(0, absl::Milliseconds(20));
    }
    return true;
  }
  // The tokens of the used entries since the last call, in ring order.
  std::vector<uint64_t> NewlyUsed() {
    std::vector<uint64_t> out;
    const uint16_t end = UsedIdx();
    for (; seen_ != end; ++seen_) {
      auto it = head_token_.find(UsedId(seen_));
      out.push_back(it == head_token_.end() ? ~uint64_t{0} : it->second);
    }
    return out;
  }
  Marker MarkerOf(uint64_t token) const {
    Marker m;
    std::memcpy(&m, reqs_[token].out.host, sizeof m);
    return m;
  }

  void Submit(uint64_t token) {
    ASSERT_EQ(token, reqs_.size());
    Request r;
    r.token = token;
    auto in = dma_->Allocate(8, 8, Access::kRead);
    auto out = dma_->Allocate(sizeof(Marker), 8, Access::kReadWrite);
    ASSERT_TRUE(in.ok() && out.ok());
    r.in = *in;
    r.out = *out;
    std::memcpy(r.in.host, &token, 8);
    const DriverBuffer bufs[2] = {{r.in.device_addr, 8, false}, {r.out.device_addr, sizeof(Marker), true}};
    const uint16_t slot = avail_added_++;
    ASSERT_EQ(vq_->Add(bufs, token), AddStatus::kOk);
    if (!packed_) head_token_[AvailHead(slot)] = token;
    reqs_.push_back(r);
  }
  void Kick() {
    vq_->KickPrepare();
    fe_->Kick(0);
  }

  // The driver's own view: its queue accepts each used entry (or breaks).
  std::vector<uint64_t> DriverCollect(UsedStatus* last) {
    std::vector<uint64_t> got;
    uint64_t t;
    uint32_t len;
    while ((*last = vq_->GetUsed(&t, &len)) == UsedStatus::kUsed) {
      EXPECT_EQ(len, sizeof(Marker)) << "token " << t;
      got.push_back(t);
    }
    return got;
  }

  // Steps 1 and 2: four requests, 3 and 1 completed out of order, then the
  // back-end crashes with 0 and 2 in flight.
  void RunUpToCrash(bool inflight) {
    io_ = std::make_unique<IoThread>();
    auto hold = std::make_shared<HoldDevice>();
    ASSERT_NO_FATAL_FAILURE(StartServer(hold, inflight));
    fe_ = Connect();
    ASSERT_TRUE(fe_);
    ASSERT_EQ(fe_->has_protocol_feature(proto::kInflightShmfd), inflight);
    DriverQueueOptions qo;
    qo.size = kQueueSize;
    qo.features = kFeatures;
    auto vq = DriverQueue::Create(qo, *dma_);
    ASSERT_TRUE(vq.ok()) << vq.status();
    vq_ = std::move(*vq);

    ASSERT_OK(fe_->SetFeatures(kFeatures));
    ASSERT_OK(fe_->SetMemTable());
    ASSERT_OK(fe_->SetupInflight(1, kQueueSize));
    if (inflight) {
      // The VMM keeps the region across back-end restarts (QEMU keeps its own mapping).
      ASSERT_GE(fe_->inflight_fd(), 0);
      inflight_fd_ = ::fcntl(fe_->inflight_fd(), F_DUPFD_CLOEXEC, 0);
      ASSERT_GE(inflight_fd_, 0);
      region_ = fe_->inflight_region();
      ASSERT_EQ(region_.num_queues, 1);
      ASSERT_EQ(region_.queue_size, kQueueSize);
      ASSERT_GE(region_.mmap_size, SplitInflightLog::RegionBytes(kQueueSize));
    } else {
      ASSERT_LT(fe_->inflight_fd(), 0);
    }
    ASSERT_OK(fe_->StartVring(0, Ring(0)));
    ASSERT_OK(fe_->EnableVring(0, true));

    for (uint64_t t = 0; t < 4; ++t) ASSERT_NO_FATAL_FAILURE(Submit(t));
    Kick();
    const absl::Time end = absl::Now() + kWait;
    while (hold->held() < 4 && absl::Now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_EQ(hold->held(), 4u) << "the device did not pop all four requests";

    // Out of order: 3, then 1, each in its own batch.
    EXPECT_EQ(io_->Run([&] { return hold->Complete(3) && hold->Complete(1); }), std::optional<bool>(true));
    ASSERT_TRUE(WaitUsed(2)) << "used idx " << UsedIdx();
    EXPECT_EQ(NewlyUsed(), (std::vector<uint64_t>{3, 1}));
    EXPECT_EQ(UsedIdx(), 2);
    EXPECT_EQ(hold->held(), 2u);
    for (uint64_t t : {1, 3}) {
      EXPECT_EQ(MarkerOf(t).magic, kHoldMagic) << "token " << t;
      EXPECT_EQ(MarkerOf(t).token, t);
    }
    for (uint64_t t : {0, 2}) EXPECT_EQ(MarkerOf(t).magic, 0u) << "token " << t << " not completed yet";

    // The crash.
    DropServer();
    const absl::Time dead_by = absl::Now() + kWait;
    while (fe_->alive() && absl::Now() < dead_by) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_FALSE(fe_->alive()) << "the front-end did not notice the back-end go";
    fe_.reset();  // the VMM's connection goes; its RAM and in-flight fd stay
    EXPECT_EQ(UsedIdx(), 2) << "the crashed back-end completed something on its way down";

    if (inflight) {
      // What the log holds now: 0 and 2 in flight, used idx 2.
      void* p = ::mmap(nullptr, region_.mmap_size, PROT_READ, MAP_SHARED, inflight_fd_,
                       static_cast<off_t>(region_.mmap_offset));
      ASSERT_NE(p, MAP_FAILED);
      const auto* log = static_cast<const uint8_t*>(p);
      std::vector<uint64_t> logged;
      for (uint16_t h = 0; h < kQueueSize; ++h)
        if (log[16 + 16 * h] == 1) logged.push_back(head_token_.count(h) ? head_token_[h] : 1000 + h);
      uint16_t log_used;
      std::memcpy(&log_used, log + 14, 2);
      ::munmap(p, region_.mmap_size);
      EXPECT_EQ(logged, (std::vector<uint64_t>{0, 2}));
      EXPECT_EQ(log_used, 2);
    }
  }

  // Step 3: a new back-end; the front-end reconnects as QEMU does after a
  // back-end crash (SET_VRING_BASE = used idx) and kicks.
  void Restart(const std::shared_ptr<EchoDevice>& echo, bool inflight) {
    ASSERT_NO_FATAL_FAILURE(StartServer(echo, inflight));
    fe_ = Connect();
    ASSERT_TRUE(fe_);
    ASSERT_EQ(fe_->has_protocol_feature(proto::kInflightShmfd), inflight);
    ASSERT_OK(fe_->SetFeatures(kFeatures));
    ASSERT_OK(fe_->SetMemTable());
    if (inflight) {
      ASSERT_OK(fe_->SetInflight(inflight_fd_, region_));
      EXPECT_NE(fe_->inflight_fd(), inflight_fd_) << "the front-end works on its own duplicate";
    }
    ASSERT_OK(fe_->StartVring(0, Ring(UsedIdx())));
    ASSERT_OK(fe_->EnableVring(0, true));
    Kick();
  }

  // ---- packed rings: the same sequence, seen through the driver's queue (a
  // packed ring has no used index to read)
  static constexpr uint64_t kPackedFeatures = kFeatures | feature::Bit(feature::kRingPacked);
  static constexpr uint32_t kFreshBase = 0x80008000;  // what QEMU sends for a new packed ring

  // Waits (bounded) for `n` more used entries, as the driver takes them.
  std::vector<uint64_t> CollectPacked(size_t n, absl::Duration wait = kWait) {
    std::vector<uint64_t> got;
    const absl::Time end = absl::Now() + wait;
    while (got.size() < n && absl::Now() < end) {
      UsedStatus st;
      std::vector<uint64_t> more = DriverCollect(&st);
      EXPECT_NE(st, UsedStatus::kBroken) << RingErrorName(vq_->error());
      got.insert(got.end(), more.begin(), more.end());
      if (got.size() < n && fe_) fe_->WaitCall(0, absl::Milliseconds(20));
    }
    return got;
  }

  // Four requests of two descriptors (8 of the ring's 16 slots); 3 and then 1
  // complete, each in its own batch, so 3's used descriptor lands on the slot
  // that held 0's head; the back-end crashes with 0 and 2 in flight.
  void RunUpToCrashPacked(bool inflight) {
    packed_ = true;
    io_ = std::make_unique<IoThread>();
    auto hold = std::make_shared<HoldDevice>(kPackedFeatures);
    ASSERT_NO_FATAL_FAILURE(StartServer(hold, inflight));
    fe_ = Connect();
    ASSERT_TRUE(fe_);
    DriverQueueOptions qo;
    qo.size = kQueueSize;
    qo.features = kPackedFeatures;
    auto vq = DriverQueue::Create(qo, *dma_);
    ASSERT_TRUE(vq.ok()) << vq.status();
    vq_ = std::move(*vq);
    ASSERT_OK(fe_->SetFeatures(kPackedFeatures));
    ASSERT_OK(fe_->SetMemTable());
    ASSERT_OK(fe_->SetupInflight(1, kQueueSize));
    if (inflight) {
      inflight_fd_ = ::fcntl(fe_->inflight_fd(), F_DUPFD_CLOEXEC, 0);
      ASSERT_GE(inflight_fd_, 0);
      region_ = fe_->inflight_region();
      ASSERT_GE(region_.mmap_size, PackedInflightLog::RegionBytes(kQueueSize));
    }
    ASSERT_OK(fe_->StartVring(0, Ring(kFreshBase)));
    ASSERT_OK(fe_->EnableVring(0, true));

    for (uint64_t t = 0; t < 4; ++t) ASSERT_NO_FATAL_FAILURE(Submit(t));
    Kick();
    const absl::Time end = absl::Now() + kWait;
    while (hold->held() < 4 && absl::Now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_EQ(hold->held(), 4u) << "the device did not pop all four requests";
    EXPECT_EQ(io_->Run([&] { return hold->Complete(3) && hold->Complete(1); }), std::optional<bool>(true));
    EXPECT_EQ(CollectPacked(2), (std::vector<uint64_t>{3, 1}));

    DropServer();  // the crash
    const absl::Time dead_by = absl::Now() + kWait;
    while (fe_->alive() && absl::Now() < dead_by) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_FALSE(fe_->alive()) << "the front-end did not notice the back-end go";
    fe_.reset();
    for (uint64_t t : {0, 2}) EXPECT_EQ(MarkerOf(t).magic, 0u) << "token " << t << " completed on the way down";

    if (inflight) {
      // The log: 0 and 2 in flight, their descriptors copied (the ring lost
      // 0's head), used position 4 in wrap 1.
      void* p = ::mmap(nullptr, region_.mmap_size, PROT_READ, MAP_SHARED, inflight_fd_,
                       static_cast<off_t>(region_.mmap_offset));
      ASSERT_NE(p, MAP_FAILED);
      const auto* log = static_cast<const uint8_t*>(p);
      std::vector<uint64_t> logged;
      for (uint16_t e = 0; e < kQueueSize; ++e) {
        const uint8_t* ent = log + 32 + 32 * e;
        if (ent[0] != 1) continue;
        uint64_t addr;
        std::memcpy(&addr, ent + 24, 8);  // the chain's first descriptor: the token buffer
        uint64_t token = 1000 + e;
        for (const Request& r : reqs_)
          if (r.in.device_addr == addr) token = r.token;
        logged.push_back(token);
      }
      uint16_t used;
      std::memcpy(&used, log + 16, 2);
      const uint8_t wrap = log[20];
      ::munmap(p, region_.mmap_size);
      std::sort(logged.begin(), logged.end());
      EXPECT_EQ(logged, (std::vector<uint64_t>{0, 2}));
      EXPECT_EQ(used, 4);
      EXPECT_EQ(wrap, 1);
    }
  }

  // A new back-end; the front-end reconnects as QEMU 7.2 does after a packed
  // back-end's crash: SET_VRING_BASE with the position of the last start.
  void RestartPacked(const std::shared_ptr<EchoDevice>& echo, bool inflight) {
    ASSERT_NO_FATAL_FAILURE(StartServer(echo, inflight));
    fe_ = Connect();
    ASSERT_TRUE(fe_);
    ASSERT_OK(fe_->SetFeatures(kPackedFeatures));
    ASSERT_OK(fe_->SetMemTable());
    if (inflight) ASSERT_OK(fe_->SetInflight(inflight_fd_, region_));
    ASSERT_OK(fe_->StartVring(0, Ring(kFreshBase)));
    ASSERT_OK(fe_->EnableVring(0, true));
    Kick();
  }

  bool packed_ = false;
  std::unique_ptr<IoThread> io_;
  std::unique_ptr<VhostUserServer> server_;  // touched on the io thread only
  std::string dir_, sock_;
  int ram_fd_ = -1;
  uint8_t* ram_ = nullptr;
  std::unique_ptr<BufferDmaAllocator> dma_;
  std::unique_ptr<VmmFrontend> fe_;
  std::unique_ptr<DriverQueue> vq_;
  std::vector<Request> reqs_;
  std::map<uint32_t, uint64_t> head_token_;  // head descriptor -> token of its latest request
  uint16_t avail_added_ = 0;
  uint16_t seen_ = 0;  // used entries read so far
  int inflight_fd_ = -1;
  InflightRegion region_;
};

TEST_F(InflightReconnectTest, OutOfOrderCompletionsSurviveBackendCrash) {
  ASSERT_NO_FATAL_FAILURE(RunUpToCrash(/*inflight=*/true));
  auto echo = std::make_shared<EchoDevice>();
  ASSERT_NO_FATAL_FAILURE(Restart(echo, /*inflight=*/true));

  ASSERT_TRUE(WaitUsed(4)) << "used idx " << UsedIdx();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // room for a wrong extra completion
  EXPECT_EQ(UsedIdx(), 4);
  EXPECT_EQ(NewlyUsed(), (std::vector<uint64_t>{0, 2})) << "the in-flight requests, oldest first, once each";
  EXPECT_EQ(io_->Run([&] { return echo->completed(); }), std::optional(std::vector<uint64_t>{0, 2}));
  for (uint64_t t : {0, 2}) {
    EXPECT_EQ(MarkerOf(t).magic, kEchoMagic) << "token " << t;
    EXPECT_EQ(MarkerOf(t).token, t);
  }
  for (uint64_t t : {1, 3}) EXPECT_EQ(MarkerOf(t).magic, kHoldMagic) << "token " << t << " was done again";
  EXPECT_EQ(Counter("inflight_resubmitted"), 2u);

  // The driver accepts all four, each once.
  UsedStatus st;
  EXPECT_EQ(DriverCollect(&st), (std::vector<uint64_t>{3, 1, 0, 2}));
  EXPECT_EQ(st, UsedStatus::kNone) << RingErrorName(vq_->error());

  // And the ring carries on: a fifth request completes normally.
  ASSERT_NO_FATAL_FAILURE(Submit(4));
  Kick();
  ASSERT_TRUE(WaitUsed(5)) << "used idx " << UsedIdx();
  EXPECT_EQ(NewlyUsed(), (std::vector<uint64_t>{4}));
  EXPECT_EQ(MarkerOf(4).magic, kEchoMagic);
  EXPECT_EQ(MarkerOf(4).token, 4u);
  EXPECT_EQ(DriverCollect(&st), (std::vector<uint64_t>{4}));
  EXPECT_EQ(st, UsedStatus::kNone);
  EXPECT_EQ(io_->Run([&] { return echo->completed(); }), std::optional(std::vector<uint64_t>{0, 2, 4}));
  EXPECT_EQ(Counter("inflight_resubmitted"), 2u);
  EXPECT_EQ(io_->Run([&] { return server_->last_error(); }), std::optional<std::string>(""));
}

// The control experiment: the same sequence with INFLIGHT_SHMFD off on both
// back-ends (vios inflight=off). The restarted back-end can only trust
// SET_VRING_BASE (= used idx 2) and pops avail entries 2 and 3: token 2
// completes, token 3 completes a second time, and token 0 is never completed.
TEST_F(InflightReconnectTest, ControlWithoutInflightLogLosesOneRequestAndRepeatsAnother) {
  ASSERT_NO_FATAL_FAILURE(RunUpToCrash(/*inflight=*/false));
  auto echo = std::make_shared<EchoDevice>();
  ASSERT_NO_FATAL_FAILURE(Restart(echo, /*inflight=*/false));

  ASSERT_TRUE(WaitUsed(4)) << "used idx " << UsedIdx();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(UsedIdx(), 4);
  EXPECT_EQ(NewlyUsed(), (std::vector<uint64_t>{2, 3})) << "token 3 again, token 0 not at all";
  EXPECT_EQ(io_->Run([&] { return echo->completed(); }), std::optional(std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(MarkerOf(0).magic, 0u) << "token 0 was completed after all";
  EXPECT_EQ(MarkerOf(3).magic, kEchoMagic) << "token 3's buffer written a second time";
  EXPECT_EQ(Counter("inflight_resubmitted"), 0u);

  // The driver takes 3, 1, 2 and then meets head of token 3 again: a used id
  // it does not have out, so its queue breaks. Token 0 stays outstanding.
  UsedStatus st;
  EXPECT_EQ(DriverCollect(&st), (std::vector<uint64_t>{3, 1, 2}));
  EXPECT_EQ(st, UsedStatus::kBroken);
  EXPECT_EQ(vq_->error(), RingError::kUsedIdOutOfRange) << RingErrorName(vq_->error());
}

// The packed ring: the device's used descriptors overwrite the slots the
// driver filled, so the restarted back-end can take the two requests still in
// flight only from the log's copies, and only the log knows where the ring
// stands (QEMU re-sends the last start's position).
TEST_F(InflightReconnectTest, PackedRingOutOfOrderCompletionsSurviveBackendCrash) {
  ASSERT_NO_FATAL_FAILURE(RunUpToCrashPacked(/*inflight=*/true));
  auto echo = std::make_shared<EchoDevice>(kPackedFeatures);
  ASSERT_NO_FATAL_FAILURE(RestartPacked(echo, /*inflight=*/true));

  EXPECT_EQ(CollectPacked(2), (std::vector<uint64_t>{0, 2})) << "the in-flight requests, oldest first";
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // room for a wrong extra completion
  EXPECT_EQ(CollectPacked(1, absl::ZeroDuration()), std::vector<uint64_t>{});
  EXPECT_EQ(io_->Run([&] { return echo->completed(); }), std::optional(std::vector<uint64_t>{0, 2}));
  for (uint64_t t : {0, 2}) {
    EXPECT_EQ(MarkerOf(t).magic, kEchoMagic) << "token " << t;
    EXPECT_EQ(MarkerOf(t).token, t);
  }
  for (uint64_t t : {1, 3}) EXPECT_EQ(MarkerOf(t).magic, kHoldMagic) << "token " << t << " was done again";
  EXPECT_EQ(Counter("inflight_resubmitted"), 2u);

  // The ring carries on from where the log put it: six more requests, past
  // the end of the ring and into the next wrap, each completed once.
  for (uint64_t t = 4; t < 10; ++t) ASSERT_NO_FATAL_FAILURE(Submit(t));
  Kick();
  EXPECT_EQ(CollectPacked(6), (std::vector<uint64_t>{4, 5, 6, 7, 8, 9}));
  for (uint64_t t = 4; t < 10; ++t) EXPECT_EQ(MarkerOf(t).token, t) << "token " << t;
  EXPECT_EQ(io_->Run([&] { return echo->completed(); }),
            std::optional(std::vector<uint64_t>{0, 2, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(io_->Run([&] { return server_->last_error(); }), std::optional<std::string>(""));
}

// The control: without the log the restarted back-end believes the stale
// position, finds its own used descriptor where it expects the driver's next
// request, and waits there for ever: requests 0 and 2 are lost and the ring
// serves nothing more.
TEST_F(InflightReconnectTest, PackedRingControlWithoutInflightLogLosesRequestsAndStalls) {
  ASSERT_NO_FATAL_FAILURE(RunUpToCrashPacked(/*inflight=*/false));
  auto echo = std::make_shared<EchoDevice>(kPackedFeatures);
  ASSERT_NO_FATAL_FAILURE(RestartPacked(echo, /*inflight=*/false));
  ASSERT_NO_FATAL_FAILURE(Submit(4));
  Kick();
  EXPECT_EQ(CollectPacked(1, absl::Milliseconds(300)), std::vector<uint64_t>{});
  EXPECT_EQ(io_->Run([&] { return echo->completed(); }), std::optional(std::vector<uint64_t>{}));
  for (uint64_t t : {0, 2, 4}) EXPECT_EQ(MarkerOf(t).magic, 0u) << "token " << t << " completed after all";
  EXPECT_EQ(Counter("inflight_resubmitted"), 0u);
}

}  // namespace
}  // namespace vioport
