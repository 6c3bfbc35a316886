// SPDX-License-Identifier: Apache-2.0
// The virtio-console device and guest driver over the loopback transport,
// split and packed, mapped and copy-only: bytes both ways through a Unix
// socket client or a pipe pair, backpressure, reconnects, a refused second
// client, hostile descriptors. Every transfer is checked byte for byte.
//
// The loopback transport runs the device on the guest's thread (its waits
// pump the device), so host-side peers run on their own threads, and the
// test pumps the device itself (ProcessEvents) when the guest is idle.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "vioport/backends/console_device.h"
#include "vioport/guest/console_driver.h"
#include "vioport/transports/loopback.h"

namespace vioport {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

struct Mode {
  bool packed, copy_only;
};

std::string ModeName(const ::testing::TestParamInfo<Mode>& i) {
  return std::string(i.param.packed ? "Packed" : "Split") + (i.param.copy_only ? "CopyOnly" : "Mapped");
}

uint64_t RingFeatures(const Mode& m) {
  return feature::Bit(feature::kIndirectDesc) | feature::Bit(feature::kEventIdx) |
         (m.packed ? feature::Bit(feature::kRingPacked) : 0);
}

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// A fresh directory for socket files, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/vpcon-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    path_ = p ? p : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool IsSocket(int fd) {
  struct stat st;
  return ::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

// A blocking client with 10 s timeouts, so a bug fails the test instead of hanging it.
int ConnectTo(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), std::min(path.size(), sizeof a.sun_path - 1));
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

// Reads until `n` bytes, end of stream, an error or a timeout.
std::vector<uint8_t> ReadN(int fd, size_t n) {
  std::vector<uint8_t> got;
  got.reserve(n);
  uint8_t buf[16384];
  const absl::Time end = absl::Now() + absl::Seconds(15);
  while (got.size() < n && absl::Now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const ssize_t r = ::read(fd, buf, std::min(sizeof buf, n - got.size()));
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r <= 0) break;
    got.insert(got.end(), buf, buf + r);
  }
  return got;
}

// Writes all of `data` in 4 KiB pieces, counting progress in *sent.
bool WriteAll(int fd, std::span<const uint8_t> data, std::atomic<size_t>* sent) {
  const bool sock = IsSocket(fd);
  size_t off = 0;
  while (off < data.size()) {
    const size_t n = std::min<size_t>(4096, data.size() - off);
    const ssize_t w = sock ? ::send(fd, data.data() + off, n, MSG_NOSIGNAL) : ::write(fd, data.data() + off, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    off += static_cast<size_t>(w);
    if (sent) sent->store(off);
  }
  return true;
}

// Runs the device the way a server thread would while the guest is idle.
bool PumpUntil(ConsoleDevice& dev, const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(15)) {
  const absl::Time end = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > end) return false;
    dev.ProcessEvents();
    if (done()) break;
    pollfd p{dev.event_fd(), POLLIN, 0};
    ::poll(&p, 1, 5);
  }
  return true;
}

uint64_t Counter(const ConsoleDevice& dev, const std::string& name) {
  std::vector<std::pair<std::string, uint64_t>> c;
  dev.AppendCounters(&c);
  for (const auto& [k, v] : c)
    if (k == name) return v;
  ADD_FAILURE() << "no counter " << name;
  return ~uint64_t{0};
}

class ConsoleTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    path_ = dir_.path() + "/con.sock";
  }
  void TearDown() override {
    Stop();
    for (int fd : fds_) ::close(fd);
  }

  // A socket-mode device unless `o` names fds; the guest driver initialised.
  void Start(ConsoleOptions o = {}, WaitPolicy wait = {}) {
    if (o.in_fd < 0 && o.out_fd < 0) o.socket_path = path_;
    auto d = ConsoleDevice::Create(o);
    ASSERT_TRUE(d.ok()) << d.status();
    dev_ = *d;
    LoopbackOptions lo;
    lo.copy_only = GetParam().copy_only;
    t_ = std::make_unique<LoopbackTransport>(dev_, lo);
    drv_ = std::make_unique<ConsoleDriver>(*t_);
    absl::Status s = drv_->Init(RingFeatures(GetParam()), wait);
    ASSERT_TRUE(s.ok()) << s;
  }
  void Stop() {
    drv_.reset();
    t_.reset();
    dev_.reset();
  }

  // Connects a client and waits until the device has taken it.
  int Client() {
    const uint64_t before = Counter(*dev_, "clients");
    const int fd = ConnectTo(path_);
    EXPECT_GE(fd, 0) << strerror(errno);
    if (fd >= 0) fds_.push_back(fd);
    EXPECT_TRUE(PumpUntil(*dev_, [&] { return Counter(*dev_, "clients") == before + 1; }));
    EXPECT_TRUE(dev_->connected());
    return fd;
  }
  void CloseClient(int fd) {
    std::erase(fds_, fd);
    ::close(fd);
  }

  // Reads exactly n bytes through the guest driver, in reads of varying size.
  std::vector<uint8_t> GuestRead(size_t n, uint32_t seed = 7) {
    std::mt19937 rng(seed);
    std::vector<uint8_t> got(n);
    size_t done = 0;
    while (done < n) {
      const size_t want = std::min<size_t>(1 + rng() % 9000, n - done);
      auto r = drv_->Read(std::span<uint8_t>(got.data() + done, want), absl::Seconds(10));
      if (!r.ok()) {
        ADD_FAILURE() << "guest read at byte " << done << ": " << r.status();
        got.resize(done);
        return got;
      }
      EXPECT_GE(*r, 1u);
      EXPECT_LE(*r, want);
      done += *r;
    }
    return got;
  }

  TempDir dir_;
  std::string path_;
  std::vector<int> fds_;
  std::shared_ptr<ConsoleDevice> dev_;
  std::unique_ptr<LoopbackTransport> t_;
  std::unique_ptr<ConsoleDriver> drv_;
};

TEST_P(ConsoleTest, GuestWritesReachTheClient) {
  ConsoleOptions o;
  o.tx_buffer_limit = 64 * 1024;  // well below the data: the EPOLLOUT path runs
  Start(o);
  const int c = Client();
  const auto data = RandomBytes(kMiB, 1);
  std::vector<uint8_t> got;
  std::atomic<bool> done{false};
  std::thread reader([&] {
    got = ReadN(c, data.size());
    done = true;
  });
  absl::Status s = drv_->Write(data);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_LE(dev_->pending_to_host(), o.tx_buffer_limit);
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return done.load(); }));
  reader.join();
  ASSERT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
  EXPECT_EQ(Counter(*dev_, "tx_bytes"), data.size());
  EXPECT_EQ(Counter(*dev_, "tx_dropped"), 0u);
  EXPECT_EQ(dev_->pending_to_host(), 0u);
}

TEST_P(ConsoleTest, ClientBytesReachTheGuest) {
  Start();
  const int c = Client();
  const auto data = RandomBytes(kMiB, 2);
  std::thread sender([&] { EXPECT_TRUE(WriteAll(c, data, nullptr)); });
  const auto got = GuestRead(data.size());
  sender.join();
  ASSERT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
  EXPECT_EQ(Counter(*dev_, "rx_bytes"), data.size());
  EXPECT_EQ(dev_->pending_to_guest(), 0u);
}

TEST_P(ConsoleTest, BackpressureHoldsClientBytesUntilTheGuestReads) {
  Start();
  const int c = Client();
  const auto data = RandomBytes(kMiB, 3);
  std::atomic<size_t> sent{0};
  std::thread sender([&] { EXPECT_TRUE(WriteAll(c, data, &sent)); });
  // The guest does not read: its posted buffers fill, one read's worth waits
  // in the device, the rest stays with the kernel and the sender blocks.
  const size_t posted = size_t{ConsoleDriver::kRxBuffers} * ConsoleDriver::kRxBufferSize;
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return Counter(*dev_, "rx_bytes") == posted && dev_->pending_to_guest() > 0; }));
  PumpUntil(*dev_, [] { return false; }, absl::Milliseconds(200));
  EXPECT_EQ(Counter(*dev_, "rx_bytes"), posted);
  EXPECT_GT(dev_->pending_to_guest(), 0u);
  EXPECT_LE(dev_->pending_to_guest(), 64u * 1024);
  EXPECT_LT(sent.load(), data.size()) << "the socket absorbed everything: no backpressure was exercised";
  // The client's socket is readable, but the device does not watch it now:
  // its event fd stays quiet instead of waking a server thread for nothing.
  pollfd p{dev_->event_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0);
  const auto got = GuestRead(data.size(), 11);
  sender.join();
  ASSERT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
  EXPECT_EQ(sent.load(), data.size());
}

// Live upgrade: a successor made to adopt (no socket bound) takes the host
// side: the listener, the connected client and the bytes read from it that
// no guest buffer had room for. A guest on the successor reads the rest of
// the client's stream in order from where the first guest's buffers ended;
// the old device lets go of its copies without removing the socket file;
// the successor accepts the next client on the same path.
TEST_P(ConsoleTest, HandOverCarriesTheClientAndPendingBytes) {
  Start();
  const int c = Client();
  const auto data = RandomBytes(kMiB, 12);
  std::atomic<size_t> sent{0};
  std::thread sender([&] { EXPECT_TRUE(WriteAll(c, data, &sent)); });
  const size_t posted = size_t{ConsoleDriver::kRxBuffers} * ConsoleDriver::kRxBufferSize;
  ASSERT_TRUE(PumpUntil(*dev_, [&] { return Counter(*dev_, "rx_bytes") == posted && dev_->pending_to_guest() > 0; }));
  const size_t held = dev_->pending_to_guest();
  ASSERT_TRUE(dev_->Quiesce().ok());
  std::string bytes;
  std::vector<int> fds;
  ASSERT_TRUE(dev_->SaveHostState(&bytes, &fds).ok());
  ASSERT_EQ(fds.size(), 2u) << "the listener and the client";
  std::vector<int> copies;  // what SCM_RIGHTS gives the new vios
  for (int fd : fds) copies.push_back(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  ConsoleOptions o;
  o.socket_path = path_;
  o.adopt = true;
  auto next = ConsoleDevice::Create(o);
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_TRUE((*next)->RestoreHostState(bytes, copies).ok());
  for (int fd : copies) EXPECT_EQ(fd, -1) << "a descriptor the successor did not keep";
  EXPECT_EQ((*next)->pending_to_guest(), held);
  EXPECT_TRUE((*next)->connected());
  dev_->ReleaseHostState();
  Stop();
  EXPECT_TRUE(std::filesystem::exists(path_)) << "the old device removed the socket it handed over";
  dev_ = std::move(*next);
  LoopbackOptions lo;
  lo.copy_only = GetParam().copy_only;
  t_ = std::make_unique<LoopbackTransport>(dev_, lo);
  drv_ = std::make_unique<ConsoleDriver>(*t_);
  ASSERT_TRUE(drv_->Init(RingFeatures(GetParam()), {}).ok());
  const auto got = GuestRead(data.size() - posted, 13);
  sender.join();
  ASSERT_EQ(got.size(), data.size() - posted);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin() + static_cast<ptrdiff_t>(posted)))
      << "the stream does not go on where the first guest's buffers ended";
  CloseClient(c);
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return !dev_->connected(); }));
  const int c2 = Client();
  EXPECT_GE(c2, 0);
  Stop();
  EXPECT_FALSE(std::filesystem::exists(path_)) << "the successor leaves the socket behind";
}

TEST_P(ConsoleTest, ReconnectingClientContinuesTheStream) {
  Start();
  const auto part1 = RandomBytes(100 * 1024, 4);
  const auto part2 = RandomBytes(100 * 1024, 5);
  const auto out1 = RandomBytes(10 * 1024, 6);
  const auto out2 = RandomBytes(50 * 1024, 7);

  // The first client sends and leaves before the guest reads: its bytes are
  // still delivered.
  const int a = Client();
  ASSERT_TRUE(WriteAll(a, part1, nullptr));
  CloseClient(a);
  EXPECT_TRUE(GuestRead(part1.size()) == part1);
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return !dev_->connected(); }));

  // Nobody connected: guest output is discarded and counted.
  ASSERT_TRUE(drv_->Write(out1).ok());
  EXPECT_EQ(Counter(*dev_, "tx_dropped"), out1.size());

  const int b = Client();
  std::thread sender([&] { EXPECT_TRUE(WriteAll(b, part2, nullptr)); });
  EXPECT_TRUE(GuestRead(part2.size()) == part2);
  sender.join();
  std::vector<uint8_t> got;
  std::atomic<bool> done{false};
  std::thread reader([&] {
    got = ReadN(b, out2.size());
    done = true;
  });
  EXPECT_TRUE(drv_->Write(out2).ok());
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return done.load(); }));
  reader.join();
  EXPECT_TRUE(got == out2);
  EXPECT_EQ(Counter(*dev_, "clients"), 2u);
  EXPECT_EQ(Counter(*dev_, "tx_dropped"), out1.size());
  EXPECT_EQ(Counter(*dev_, "rx_bytes"), part1.size() + part2.size());
}

TEST_P(ConsoleTest, SecondClientIsRefusedWhileTheFirstIsConnected) {
  Start();
  const int a = Client();
  const int b = ConnectTo(path_);
  ASSERT_GE(b, 0);
  fds_.push_back(b);
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return Counter(*dev_, "clients_refused") == 1; }));
  uint8_t x;
  EXPECT_EQ(::read(b, &x, 1), 0) << "the refused client should see end of stream";

  // The first client is unaffected.
  const auto msg = RandomBytes(4096, 8);
  ASSERT_TRUE(drv_->Write(msg).ok());
  std::vector<uint8_t> got;
  std::thread reader([&] { got = ReadN(a, msg.size()); });
  PumpUntil(*dev_, [&] { return dev_->pending_to_host() == 0; });
  reader.join();
  EXPECT_TRUE(got == msg);

  // Once it leaves, the next client is taken.
  CloseClient(a);
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return !dev_->connected(); }));
  const int c = Client();
  const auto msg2 = RandomBytes(4096, 9);
  ASSERT_TRUE(drv_->Write(msg2).ok());
  std::thread reader2([&] { got = ReadN(c, msg2.size()); });
  PumpUntil(*dev_, [&] { return dev_->pending_to_host() == 0; });
  reader2.join();
  EXPECT_TRUE(got == msg2);
  EXPECT_EQ(Counter(*dev_, "clients"), 2u);
  EXPECT_EQ(Counter(*dev_, "clients_refused"), 1u);
}

TEST_P(ConsoleTest, TransmitBufferTheDeviceMayWriteNeedsReset) {
  Start();
  auto buf = t_->dma().Allocate(64, 64, Access::kReadWrite);
  ASSERT_TRUE(buf.ok());
  DriverBuffer bad{buf->device_addr, 64, true};
  DriverQueue& txq = drv_->driver().queue(1);
  ASSERT_EQ(txq.Add({&bad, 1}, 99), AddStatus::kOk);
  drv_->driver().Kick(1);
  EXPECT_TRUE(t_->GetStatus() & status::kDeviceNeedsReset);
  EXPECT_GE(t_->config_interrupts(), 1u);
  EXPECT_EQ(Counter(*dev_, "bad_requests"), 1u);
  const uint8_t hello[] = {'h', 'i'};
  absl::Status s = drv_->Write(hello);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  t_->dma().Free(*buf);

  // Init again recovers; output flows to a client.
  ASSERT_TRUE(drv_->Init(RingFeatures(GetParam())).ok());
  const int c = Client();
  ASSERT_TRUE(drv_->Write(hello).ok());
  std::vector<uint8_t> got;
  std::thread reader([&] { got = ReadN(c, sizeof hello); });
  PumpUntil(*dev_, [&] { return dev_->pending_to_host() == 0; });
  reader.join();
  EXPECT_EQ(got, std::vector<uint8_t>(hello, hello + sizeof hello));
}

TEST_P(ConsoleTest, ReceiveBufferTheDeviceMustReadNeedsReset) {
  Start();
  const int c = Client();
  // Behind the driver's posted receive buffers: a device-readable one.
  auto buf = t_->dma().Allocate(64, 64, Access::kReadWrite);
  ASSERT_TRUE(buf.ok());
  DriverBuffer bad{buf->device_addr, 64, false};
  ASSERT_EQ(drv_->driver().queue(0).Add({&bad, 1}, 99), AddStatus::kOk);
  drv_->driver().Kick(0);
  const size_t posted = size_t{ConsoleDriver::kRxBuffers} * ConsoleDriver::kRxBufferSize;
  const auto data = RandomBytes(posted + 1000, 10);
  ASSERT_TRUE(WriteAll(c, data, nullptr));
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return (t_->GetStatus() & status::kDeviceNeedsReset) != 0; }));
  EXPECT_EQ(Counter(*dev_, "bad_requests"), 1u);
  // What was delivered before the bad buffer is intact; then Unavailable.
  std::vector<uint8_t> got(data.size());
  size_t n = 0;
  absl::Status err;
  while (n < got.size()) {
    auto r = drv_->Read(std::span<uint8_t>(got.data() + n, got.size() - n), absl::Seconds(5));
    if (!r.ok()) {
      err = r.status();
      break;
    }
    n += *r;
  }
  EXPECT_EQ(err.code(), absl::StatusCode::kUnavailable) << err;
  EXPECT_EQ(n, posted);
  EXPECT_TRUE(std::equal(got.begin(), got.begin() + static_cast<ptrdiff_t>(n), data.begin()));
  t_->dma().Free(*buf);
}

TEST_P(ConsoleTest, FdPairCarriesBothDirections) {
  int to_dev[2], from_dev[2];
  ASSERT_EQ(::pipe2(to_dev, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(from_dev, O_CLOEXEC), 0);
  fds_.insert(fds_.end(), {to_dev[0], to_dev[1], from_dev[0], from_dev[1]});
  ConsoleOptions o;
  o.in_fd = to_dev[0];
  o.out_fd = from_dev[1];
  o.tx_buffer_limit = 32 * 1024;
  Start(o);
  EXPECT_TRUE(dev_->connected());

  // Guest -> host: four times the pipe's capacity.
  const auto out = RandomBytes(256 * 1024, 12);
  std::vector<uint8_t> got;
  std::atomic<bool> done{false};
  std::thread reader([&] {
    got = ReadN(from_dev[0], out.size());
    done = true;
  });
  EXPECT_TRUE(drv_->Write(out).ok());
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return done.load(); }));
  reader.join();
  EXPECT_TRUE(got == out);

  // Host -> guest.
  const auto in = RandomBytes(256 * 1024, 13);
  std::thread writer([&] { EXPECT_TRUE(WriteAll(to_dev[1], in, nullptr)); });
  EXPECT_TRUE(GuestRead(in.size()) == in);
  writer.join();

  // End of input: nothing more arrives, and nothing spins.
  std::erase(fds_, to_dev[1]);
  ::close(to_dev[1]);
  uint8_t b[16];
  auto r = drv_->Read(b, absl::Milliseconds(200));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  dev_->ProcessEvents();
  pollfd p{dev_->event_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0);

  // The reader of out_fd is gone: output is dropped and counted, and
  // SIGPIPE does not take the process down.
  std::erase(fds_, from_dev[0]);
  ::close(from_dev[0]);
  const auto lost = RandomBytes(1000, 14);
  ASSERT_TRUE(drv_->Write(lost).ok());
  EXPECT_EQ(Counter(*dev_, "tx_dropped"), lost.size());
  EXPECT_FALSE(dev_->connected());

  // The caller's fds get their blocking mode back.
  EXPECT_TRUE(::fcntl(to_dev[0], F_GETFL) & O_NONBLOCK);
  Stop();
  EXPECT_FALSE(::fcntl(to_dev[0], F_GETFL) & O_NONBLOCK);
  EXPECT_FALSE(::fcntl(from_dev[1], F_GETFL) & O_NONBLOCK);
}

TEST_P(ConsoleTest, SlowHostBlocksGuestWritesWithoutLosingBytes) {
  ConsoleOptions o;
  o.tx_buffer_limit = 10000;  // not a multiple of the driver's 4 KiB buffers
  Start(o, WaitPolicy{absl::Microseconds(30), absl::Milliseconds(300)});
  const int c = Client();
  const auto data = RandomBytes(kMiB, 15);
  // Nobody reads: the socket and the device's buffer fill, then the guest waits.
  absl::Status s = drv_->Write(data);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_LE(dev_->pending_to_host(), o.tx_buffer_limit);
  EXPECT_EQ(Counter(*dev_, "tx_dropped"), 0u);
  // Quiesce completes the transmit buffer the device was part way through
  // (all of the driver's buffers are 4 KiB).
  ASSERT_TRUE(dev_->Quiesce().ok());
  EXPECT_EQ(Counter(*dev_, "tx_bytes") % 4096, 0u);

  std::vector<uint8_t> got;
  std::atomic<bool> done{false};
  std::thread reader([&] {
    got = ReadN(c, data.size());
    done = true;
  });
  // Everything the guest handed over drains; then the guest sends the rest.
  // (With tx_pending_ empty after a pump, the device has taken every chain.)
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return dev_->pending_to_host() == 0; }));
  const size_t taken = Counter(*dev_, "tx_bytes");
  EXPECT_LT(taken, data.size());
  s = drv_->Write(std::span<const uint8_t>(data).subspan(std::min(taken, data.size())));
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return done.load(); }));
  reader.join();
  ASSERT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
}

TEST_P(ConsoleTest, ClientLeavingUnblocksAGuestWrite) {
  ConsoleOptions o;
  o.tx_buffer_limit = 10000;
  Start(o, WaitPolicy{absl::Microseconds(30), absl::Seconds(10)});
  const int c = Client();
  const auto data = RandomBytes(kMiB, 16);
  // The client never reads and leaves after a while; the guest, blocked by
  // then, finishes: the rest of its output is dropped and counted.
  std::atomic<bool> returned{false}, returned_before_leave{false};
  std::thread leaver([&] {
    absl::SleepFor(absl::Milliseconds(100));
    returned_before_leave = returned.load();
    ::shutdown(c, SHUT_RDWR);
  });
  absl::Status s = drv_->Write(data);
  returned = true;
  leaver.join();
  EXPECT_TRUE(s.ok()) << s;
  // 1 MiB cannot fit the socket buffer plus 10000 bytes of device buffer.
  EXPECT_FALSE(returned_before_leave.load()) << "the guest was never blocked";
  EXPECT_EQ(Counter(*dev_, "tx_bytes"), data.size());
  EXPECT_GT(Counter(*dev_, "tx_dropped"), 0u);
  EXPECT_TRUE(PumpUntil(*dev_, [&] { return !dev_->connected(); }));
}

TEST_P(ConsoleTest, SizeComesFromConfigAndFollowsResize) {
  ConsoleOptions o;
  o.cols = 132;
  o.rows = 43;
  Start(o);
  EXPECT_TRUE(drv_->driver().has_feature(console::kFeatureSize));
  EXPECT_EQ(drv_->size(), std::make_pair(uint16_t{132}, uint16_t{43}));
  const uint64_t irqs = t_->config_interrupts();
  dev_->Resize(100, 50);
  EXPECT_EQ(t_->config_interrupts(), irqs + 1);
  EXPECT_EQ(drv_->size(), std::make_pair(uint16_t{100}, uint16_t{50}));
  // Raw layout: cols @0, rows @2, little-endian.
  uint8_t raw[4];
  t_->ReadConfig(0, raw);
  EXPECT_EQ(raw[0] | raw[1] << 8, 100);
  EXPECT_EQ(raw[2] | raw[3] << 8, 50);
}

INSTANTIATE_TEST_SUITE_P(Rings, ConsoleTest,
                         ::testing::Values(Mode{false, false}, Mode{false, true}, Mode{true, false}, Mode{true, true}),
                         ModeName);

TEST(ConsoleCreate, RejectsBadHostSides) {
  ConsoleOptions both;
  both.socket_path = "/tmp/x.sock";
  both.in_fd = 0;
  EXPECT_EQ(ConsoleDevice::Create(both).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ConsoleDevice::Create(ConsoleOptions{}).status().code(), absl::StatusCode::kInvalidArgument);

  ConsoleOptions longp;
  longp.socket_path = "/tmp/" + std::string(200, 'a');
  auto r = ConsoleDevice::Create(longp);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(r.status().message(), longp.socket_path)) << r.status();

  TempDir dir;
  ConsoleOptions nodir;
  nodir.socket_path = dir.path() + "/missing/con.sock";
  r = ConsoleDevice::Create(nodir);
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), nodir.socket_path)) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), strerror(ENOENT))) << r.status();

  // Not a socket: refused, and left alone.
  ConsoleOptions file;
  file.socket_path = dir.path() + "/file";
  { std::FILE* f = std::fopen(file.socket_path.c_str(), "w"); ASSERT_NE(f, nullptr); std::fclose(f); }
  r = ConsoleDevice::Create(file);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_TRUE(std::filesystem::exists(file.socket_path));

  // A regular file cannot be polled.
  const int rf = ::open(file.socket_path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(rf, 0);
  ConsoleOptions fdo;
  fdo.in_fd = rf;
  r = ConsoleDevice::Create(fdo);
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "in_fd")) << r.status();
  ::close(rf);
}

TEST(ConsoleCreate, ReplacesAStaleSocketButNotALiveOne) {
  TempDir dir;
  const std::string path = dir.path() + "/con.sock";
  {
    // A dead server's socket file.
    const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.data(), path.size());
    ASSERT_EQ(::bind(s, reinterpret_cast<const sockaddr*>(&a), sizeof a), 0);
    ::close(s);
  }
  ConsoleOptions o;
  o.socket_path = path;
  auto first = ConsoleDevice::Create(o);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = ConsoleDevice::Create(o);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
  EXPECT_TRUE(absl::StrContains(second.status().message(), path));
  // The live one still accepts.
  const int c = ConnectTo(path);
  EXPECT_GE(c, 0);
  EXPECT_TRUE(PumpUntil(**first, [&] { return (*first)->connected(); }));
  ::close(c);
  first->reset();
  EXPECT_FALSE(std::filesystem::exists(path)) << "the destructor unlinks its socket";
}

}  // namespace
}  // namespace vioport
