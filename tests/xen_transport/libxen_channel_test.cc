// SPDX-License-Identifier: Apache-2.0
// The real-Xen channel (OpenLibxenChannel, transports/xen/src/libxen_channel.cc).
//
// Without Xen (this project's CI: no /dev/xen) it must refuse at start with a
// FailedPrecondition naming the first missing device node, never crash and
// print nothing. The start-up checks are also run against a scratch device
// directory, so every refusal's text is checked here. The tests that use Xen
// run only where /dev/xen/evtchn exists.

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "vioport/transports/xen_channel.h"

namespace vioport::xen {

// Defined in libxen_channel.cc without a header (test hooks).
namespace libxen_internal {
absl::Status CheckStartNodes(const std::string& dev_xen);
absl::Status CheckGntallocNode(const std::string& dev_xen);
absl::StatusOr<DomId> ReadSelfDomid(absl::Duration timeout);
}  // namespace libxen_internal

namespace {

constexpr int16_t kGntstOkay = 0;          // GNTST_okay
constexpr int16_t kGntstBadCopyArg = -10;  // GNTST_bad_copy_arg

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Where xs_open would connect without XENSTORED_PATH (Xen 4.17 xs_lib.c).
bool XenstoreReachable() {
  if (const char* p = std::getenv("XENSTORED_PATH"); p != nullptr) return Exists(p);
  const char* rundir = std::getenv("XENSTORED_RUNDIR");
  return Exists(std::string(rundir != nullptr ? rundir : "/var/run/xenstored") + "/socket") ||
         Exists("/dev/xen/xenbus") || Exists("/proc/xen/xenbus");
}

// What the refusal on this machine must name, or nullopt where every node
// the start needs is present.
std::optional<std::string> FirstMissing() {
  for (const char* node : {"/dev/xen/evtchn", "/dev/xen/gntdev"})
    if (!Exists(node)) return std::string(node);
  if (!XenstoreReachable()) return std::string("xenstore");
  return std::nullopt;
}

// Sets or unsets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name); old != nullptr) old_ = old;
    if (value != nullptr)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// A scratch stand-in for /dev/xen whose "nodes" are plain files.
class FakeDevXen : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vioport-libxen-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    dev_ = root_ + "/dev-xen";
    run_ = root_ + "/run";
    ASSERT_EQ(::mkdir(dev_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(run_.c_str(), 0755), 0);
  }
  void TearDown() override {
    for (const char* n : {"evtchn", "gntdev", "gntalloc", "xenbus"}) ::unlink((dev_ + "/" + n).c_str());
    ::unlink((run_ + "/socket").c_str());
    ::rmdir(dev_.c_str());
    ::rmdir(run_.c_str());
    ::rmdir(root_.c_str());
  }
  void Touch(const std::string& name) {
    int fd = ::open((dev_ + "/" + name).c_str(), O_CREAT | O_WRONLY, 0600);
    ASSERT_GE(fd, 0);
    ::close(fd);
  }

  std::string root_, dev_, run_;
  ScopedEnv no_path_{"XENSTORED_PATH", nullptr};
};

TEST(LibxenChannel, RefusesWithoutXenNamingTheFirstMissingNode) {
  std::optional<std::string> missing = FirstMissing();
  if (!missing) GTEST_SKIP() << "every node the real channel needs is present: this machine runs on Xen";
  for (int attempt = 0; attempt < 2; ++attempt) {  // and again: nothing half-open is left behind
    absl::StatusOr<std::unique_ptr<XenChannel>> ch = OpenLibxenChannel();
    ASSERT_FALSE(ch.ok());
    EXPECT_EQ(ch.status().code(), absl::StatusCode::kFailedPrecondition) << ch.status();
    EXPECT_NE(ch.status().message().find(*missing), std::string::npos) << ch.status();
    EXPECT_NE(ch.status().message().find("real Xen"), std::string::npos) << ch.status();
  }
}

// The whole refusal in a child process under a bogus XENSTORED_PATH: it
// exits normally, with the refusal, and writes nothing to stderr (libxen's
// default logger would).
TEST(LibxenChannel, ChildUnderBogusXenstoredPathExitsNormallyAndQuietly) {
  const std::string bogus = "/nonexistent/vioport-test/xenstored.sock";
  std::string expect;
  if (!Exists("/dev/xen/evtchn"))
    expect = "/dev/xen/evtchn";
  else if (!Exists("/dev/xen/gntdev"))
    expect = "/dev/xen/gntdev";
  else
    expect = bogus;  // the only xenstore libxenstore would try

  int out[2], err[2];
  ASSERT_EQ(::pipe(out), 0);
  ASSERT_EQ(::pipe(err), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(out[0]);
    ::close(err[0]);
    ::dup2(err[1], 2);
    ::setenv("XENSTORED_PATH", bogus.c_str(), 1);
    absl::StatusOr<std::unique_ptr<XenChannel>> ch = OpenLibxenChannel();
    std::string msg = ch.ok() ? std::string("opened") : std::string(ch.status().message());
    if (::write(out[1], msg.data(), msg.size()) < 0) ::_exit(5);
    ::_exit(ch.ok() ? 3 : ch.status().code() == absl::StatusCode::kFailedPrecondition ? 0 : 4);
  }
  ::close(out[1]);
  ::close(err[1]);
  auto drain = [](int fd) {
    std::string s;
    char buf[512];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) s.append(buf, static_cast<size_t>(n));
    ::close(fd);
    return s;
  };
  std::string msg = drain(out[0]);
  std::string stderr_text = drain(err[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3: opened; 4: not FailedPrecondition; message: " << msg;
  EXPECT_NE(msg.find(expect), std::string::npos) << msg;
  EXPECT_EQ(stderr_text, "");
}

TEST_F(FakeDevXen, NamesEvtchnFirst) {
  absl::Status s = libxen_internal::CheckStartNodes(dev_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find(dev_ + "/evtchn is missing"), std::string::npos) << s;
  EXPECT_NE(s.message().find("xen-evtchn"), std::string::npos) << s;
  EXPECT_NE(s.message().find("emulator"), std::string::npos) << s;
}

TEST_F(FakeDevXen, NamesGntdevWhenOnlyEvtchnExists) {
  Touch("evtchn");
  absl::Status s = libxen_internal::CheckStartNodes(dev_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find(dev_ + "/gntdev is missing"), std::string::npos) << s;
  EXPECT_NE(s.message().find("xen-gntdev"), std::string::npos) << s;
}

TEST_F(FakeDevXen, NamesEveryXenstoreItTriedWhenNoneExists) {
  if (Exists("/proc/xen/xenbus")) GTEST_SKIP() << "/proc/xen/xenbus exists here";
  ScopedEnv rundir("XENSTORED_RUNDIR", run_.c_str());
  Touch("evtchn");
  Touch("gntdev");
  absl::Status s = libxen_internal::CheckStartNodes(dev_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("xenstore is unreachable"), std::string::npos) << s;
  EXPECT_NE(s.message().find(run_ + "/socket"), std::string::npos) << s;
  EXPECT_NE(s.message().find(dev_ + "/xenbus"), std::string::npos) << s;
}

TEST_F(FakeDevXen, PassesWithXenbus) {
  ScopedEnv rundir("XENSTORED_RUNDIR", run_.c_str());
  Touch("evtchn");
  Touch("gntdev");
  Touch("xenbus");
  EXPECT_TRUE(libxen_internal::CheckStartNodes(dev_).ok());
}

TEST_F(FakeDevXen, PassesWithXenstoredSocketAndNoGntalloc) {
  ScopedEnv rundir("XENSTORED_RUNDIR", run_.c_str());
  Touch("evtchn");
  Touch("gntdev");
  int fd = ::open((run_ + "/socket").c_str(), O_CREAT | O_WRONLY, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  // gntalloc is not part of the start: a backend never shares pages.
  EXPECT_TRUE(libxen_internal::CheckStartNodes(dev_).ok());
}

TEST_F(FakeDevXen, BogusXenstoredPathIsNamedEvenWithXenbusPresent) {
  Touch("evtchn");
  Touch("gntdev");
  Touch("xenbus");
  ScopedEnv path("XENSTORED_PATH", "/nonexistent/xs.sock");
  absl::Status s = libxen_internal::CheckStartNodes(dev_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("XENSTORED_PATH=/nonexistent/xs.sock does not exist"), std::string::npos) << s;
}

TEST_F(FakeDevXen, GntallocRefusalSaysOnlyFrontendsNeedIt) {
  absl::Status s = libxen_internal::CheckGntallocNode(dev_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find(dev_ + "/gntalloc is missing"), std::string::npos) << s;
  EXPECT_NE(s.message().find("a backend does not"), std::string::npos) << s;
  Touch("gntalloc");
  EXPECT_TRUE(libxen_internal::CheckGntallocNode(dev_).ok());
}

// ---- The domid read, against a stand-in xenstored ----------------------------------
//
// A Unix socket speaking just enough of xs_wire.h for one request: every
// request is answered with `type` and `payload` (or not at all when `silent`).
// libxenstore itself (xs_open, xs_read) is the client, through XENSTORED_PATH.

class FakeXenstored {
 public:
  FakeXenstored(uint32_t type, std::string payload, bool silent)
      : type_(type), payload_(std::move(payload)), silent_(silent) {
    char tmpl[] = "/tmp/vioport-fakexs-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    path_ = dir_ + "/socket";
    listen_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
    ok_ = listen_ >= 0 && ::bind(listen_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
          ::listen(listen_, 4) == 0;
    if (ok_) thread_ = std::thread([this] { Serve(); });
  }
  ~FakeXenstored() {
    ::shutdown(listen_, SHUT_RDWR);
    ::close(listen_);
    if (thread_.joinable()) thread_.join();
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  bool ok() const { return ok_; }
  const std::string& path() const { return path_; }

 private:
  void Serve() {
    int conn = ::accept(listen_, nullptr, nullptr);
    if (conn < 0) return;
    uint32_t hdr[4];
    if (::recv(conn, hdr, sizeof hdr, MSG_WAITALL) == static_cast<ssize_t>(sizeof hdr)) {
      std::string body(hdr[3], '\0');
      if (hdr[3] == 0 || ::recv(conn, body.data(), body.size(), MSG_WAITALL) == static_cast<ssize_t>(body.size())) {
        if (silent_) {
          // Hold the request until the test's client has given up (and a bit).
          struct pollfd p{listen_, POLLIN, 0};
          ::poll(&p, 1, 3000);
        } else {
          uint32_t reply[4] = {type_, hdr[1], 0, static_cast<uint32_t>(payload_.size())};
          std::string out(reinterpret_cast<const char*>(reply), sizeof reply);
          out += payload_;
          if (::send(conn, out.data(), out.size(), MSG_NOSIGNAL) < 0) {
          }
        }
      }
    }
    ::close(conn);
  }

  uint32_t type_;
  std::string payload_;
  bool silent_;
  std::string dir_, path_;
  int listen_ = -1;
  bool ok_ = false;
  std::thread thread_;
};

constexpr uint32_t kXsRead = 2;    // XS_READ
constexpr uint32_t kXsError = 16;  // XS_ERROR

TEST(LibxenDomid, ReadsDomidThroughLibxenstore) {
  FakeXenstored xs(kXsRead, "7", false);
  ASSERT_TRUE(xs.ok());
  ScopedEnv path("XENSTORED_PATH", xs.path().c_str());
  absl::StatusOr<DomId> id = libxen_internal::ReadSelfDomid(absl::Seconds(5));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, 7);
}

TEST(LibxenDomid, RefusesAMalformedDomid) {
  for (const char* bad : {"", "7x", "-1", "32752", "99999999999"}) {
    FakeXenstored xs(kXsRead, bad, false);
    ASSERT_TRUE(xs.ok());
    ScopedEnv path("XENSTORED_PATH", xs.path().c_str());
    absl::StatusOr<DomId> id = libxen_internal::ReadSelfDomid(absl::Seconds(5));
    ASSERT_FALSE(id.ok()) << "\"" << bad << "\" accepted as " << *id;
    EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition) << id.status();
    EXPECT_NE(id.status().message().find("not a domain id"), std::string::npos) << id.status();
  }
}

TEST(LibxenDomid, MissingDomidKeyIsNamed) {
  FakeXenstored xs(kXsError, std::string("ENOENT", 7), false);
  ASSERT_TRUE(xs.ok());
  ScopedEnv path("XENSTORED_PATH", xs.path().c_str());
  absl::StatusOr<DomId> id = libxen_internal::ReadSelfDomid(absl::Seconds(5));
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition) << id.status();
  EXPECT_NE(id.status().message().find("\"domid\""), std::string::npos) << id.status();
  EXPECT_NE(id.status().message().find(std::strerror(ENOENT)), std::string::npos) << id.status();
}

TEST(LibxenDomid, SilentXenstoreTimesOutInsteadOfHanging) {
  FakeXenstored xs(kXsRead, "", true);
  ASSERT_TRUE(xs.ok());
  ScopedEnv path("XENSTORED_PATH", xs.path().c_str());
  absl::Time start = absl::Now();
  absl::StatusOr<DomId> id = libxen_internal::ReadSelfDomid(absl::Milliseconds(300));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kDeadlineExceeded) << id.status();
  EXPECT_NE(id.status().message().find("did not answer"), std::string::npos) << id.status();
}

TEST(LibxenDomid, NobodyListeningIsAnXsOpenFailure) {
  char tmpl[] = "/tmp/vioport-deadxs-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string path = std::string(tmpl) + "/socket";
  {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ::close(fd);  // the socket file stays; nobody listens on it
  }
  ScopedEnv env("XENSTORED_PATH", path.c_str());
  absl::StatusOr<DomId> id = libxen_internal::ReadSelfDomid(absl::Seconds(5));
  ::unlink(path.c_str());
  ::rmdir(tmpl);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition) << id.status();
  EXPECT_NE(id.status().message().find("xs_open failed"), std::string::npos) << id.status();
}

// ---- On Xen only ---------------------------------------------------------------

class OnXen : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!Exists("/dev/xen/evtchn")) GTEST_SKIP() << "no /dev/xen/evtchn: not a Xen domain";
    absl::StatusOr<std::unique_ptr<XenChannel>> ch = OpenLibxenChannel();
    ASSERT_TRUE(ch.ok()) << ch.status();
    ch_ = std::move(*ch);
  }
  // Waits up to 2 s for `port` among the pending ports.
  bool WaitPending(EvtchnPort port, std::vector<EvtchnPort>& seen) {
    for (int i = 0; i < 200; ++i) {
      struct pollfd p{ch_->event_fd(), POLLIN, 0};
      ::poll(&p, 1, 10);
      ch_->PendingPorts(seen);
      for (EvtchnPort q : seen)
        if (q == port) return true;
    }
    return false;
  }
  std::unique_ptr<XenChannel> ch_;
};

TEST_F(OnXen, OpensAndKnowsItsDomain) {
  EXPECT_EQ(ch_->name(), "xen");
  EXPECT_LT(ch_->self(), 0x7FF0);
  EXPECT_EQ(ch_->xenstore_path(), "");
  // PendingPorts must not block when nothing is pending.
  std::vector<EvtchnPort> ports;
  ch_->PendingPorts(ports);
}

TEST_F(OnXen, LoopbackEventChannel) {
  absl::StatusOr<EvtchnPort> a = ch_->BindUnboundPort(ch_->self());
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<EvtchnPort> b = ch_->BindInterdomain(ch_->self(), *a);
  ASSERT_TRUE(b.ok()) << b.status();
  std::vector<EvtchnPort> seen;
  // Binding marks the new port pending (event_channel.h).
  EXPECT_TRUE(WaitPending(*b, seen));
  ASSERT_TRUE(ch_->Unmask(*b).ok());
  seen.clear();
  ASSERT_TRUE(ch_->Notify(*b).ok());
  EXPECT_TRUE(WaitPending(*a, seen));
  ASSERT_TRUE(ch_->Unmask(*a).ok());
  EXPECT_TRUE(ch_->Unbind(*b).ok());
  EXPECT_TRUE(ch_->Unbind(*a).ok());
}

TEST_F(OnXen, BadGrantMapFailsWithErrno) {
  absl::StatusOr<uint8_t*> m = ch_->MapGrant(ch_->self(), 0xFFFFFFF0u, false);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("xengnttab_map_grant_ref"), std::string::npos) << m.status();
  EXPECT_NE(m.status().message().find("errno"), std::string::npos) << m.status();
}

TEST_F(OnXen, ShareMapAndCopyOwnPages) {
  if (!Exists("/dev/xen/gntalloc")) GTEST_SKIP() << "no /dev/xen/gntalloc";
  absl::StatusOr<SharedPages> pages = ch_->SharePages(ch_->self(), 2, true);
  ASSERT_TRUE(pages.ok()) << pages.status();
  ASSERT_EQ(pages->refs.size(), 2u);
  EXPECT_EQ(pages->addr[0], 0);
  std::memcpy(pages->addr, "grant", 5);
  absl::StatusOr<uint8_t*> m = ch_->MapGrant(ch_->self(), pages->refs[0], true);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(std::memcmp(*m, "grant", 5), 0);
  EXPECT_TRUE(ch_->UnmapGrant(*m).ok());

  uint8_t* buf = ch_->AllocCopyBuffer(4096);
  ASSERT_NE(buf, nullptr);
  std::memcpy(buf, "copied", 6);
  GrantCopySegment segs[3];
  segs[0] = {.to_foreign = true, .domid = ch_->self(), .ref = pages->refs[1], .offset = 100, .local = buf, .len = 6};
  segs[1] = {.to_foreign = false, .domid = ch_->self(), .ref = pages->refs[0], .offset = 0, .local = buf + 100, .len = 5};
  segs[2] = {.to_foreign = false, .domid = ch_->self(), .ref = pages->refs[0], .offset = 4000, .local = buf, .len = 200};
  ch_->GrantCopy(segs);
  EXPECT_EQ(segs[0].status, kGntstOkay);
  EXPECT_EQ(segs[1].status, kGntstOkay);
  EXPECT_EQ(segs[2].status, kGntstBadCopyArg);  // crosses the grant's page
  EXPECT_EQ(std::memcmp(pages->addr + 4096 + 100, "copied", 6), 0);
  EXPECT_EQ(std::memcmp(buf + 100, "grant", 5), 0);
  ch_->FreeCopyBuffer(buf);
  ch_->UnsharePages(*pages);
}

}  // namespace
}  // namespace vioport::xen
