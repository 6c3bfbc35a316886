// SPDX-License-Identifier: Apache-2.0
// xenemud as its own process, driven by (1) Debian's real xenstore-utils
// binaries, (2) the real libxenstore linked into this test, both through
// XENSTORED_PATH, (3) raw clients on per-domain sockets (identity and
// permissions) and (4) hostile raw clients. Every wait is bounded.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

extern "C" {
#include <xenstore.h>
}

#include "vioport/emulators/xenstore_wire.h"
#include "xenemud_child.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"  // GCC bug 105329 (std::string operator+)
#endif

namespace vioport::xen {
namespace {

using namespace std::string_literals;
using Clock = std::chrono::steady_clock;

constexpr const char* kUtils[] = {"xenstore-read", "xenstore-write", "xenstore-ls", "xenstore-rm",
                                  "xenstore-list", "xenstore-chmod", "xenstore-exists", "xenstore-watch"};

class Daemon {
 public:
  Daemon() {
    char tmpl[] = "/tmp/xenemud-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    dom0_ = dir_ + "/xs";
    d5_ = dir_ + "/d5";
    d6_ = dir_ + "/d6";
    pid_ = child::SpawnXenemud({"--xenstore", dom0_, "--domain", "5=" + d5_, "--domain", "6=" + d6_, "--max-output",
                                  "65536"});
    // Ready when every socket accepts (bounded).
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    for (const auto& p : {dom0_, d5_, d6_}) {
      int fd = -1;
      while (Clock::now() < deadline && (fd = Connect(p)) < 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (fd >= 0) close(fd);
      else ADD_FAILURE() << "xenemud did not open " << p;
    }
  }
  ~Daemon() {
    child::StopXenemud(pid_, 10);
    std::system(("rm -rf " + dir_).c_str());
  }
  static int Connect(const std::string& path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      close(fd);
      return -1;
    }
    return fd;
  }
  const std::string& dom0() const { return dom0_; }
  const std::string& d5() const { return d5_; }
  const std::string& d6() const { return d6_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_, dom0_, d5_, d6_;
  pid_t pid_ = -1;
};

// Runs a shell command with XENSTORED_PATH set; returns {exit status, stdout}.
std::pair<int, std::string> RunTool(const Daemon& d, const std::string& cmd) {
  const std::string full = "XENSTORED_PATH=" + d.dom0() + " timeout 10 " + cmd + " 2>&1";
  FILE* f = popen(full.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const int st = pclose(f);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

void RequireXenstoreUtils() {
  for (const char* u : kUtils) {
    const std::string path = std::string("/usr/bin/") + u;
    ASSERT_EQ(access(path.c_str(), X_OK), 0)
        << path << " is missing: install Debian's xenstore-utils package (scripts/install-deps.sh does)";
  }
}

// A raw wire client.
class Raw {
 public:
  explicit Raw(const std::string& path) : fd_(Daemon::Connect(path)) { EXPECT_GE(fd_, 0); }
  ~Raw() {
    if (fd_ >= 0) close(fd_);
  }
  bool SendBytes(const std::string& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  // Reads one message (bounded); nullopt on EOF/timeout.
  std::optional<XsMessage> ReadMsg(int timeout_ms = 5000) {
    std::string hdr;
    if (!ReadN(kXsHeaderSize, &hdr, timeout_ms)) return std::nullopt;
    XsMessage m;
    m.hdr = DecodeXsHeader(reinterpret_cast<const uint8_t*>(hdr.data()));
    if (m.hdr.len > kXsPayloadMax || !ReadN(m.hdr.len, &m.payload, timeout_ms)) return std::nullopt;
    return m;
  }
  // Request -> reply as "OK" / value / "ERR:NAME"; events are skipped.
  std::string Call(uint32_t type, const std::string& payload, uint32_t tx = 0) {
    const uint32_t req = ++req_;
    if (!SendBytes(EncodeXsMessage(type, req, tx, payload))) return "SEND-FAILED";
    for (int i = 0; i < 1000; ++i) {
      auto m = ReadMsg();
      if (!m) return "NO-REPLY";
      if (m->hdr.type == kXsWatchEvent) continue;
      EXPECT_EQ(m->hdr.req_id, req);
      if (m->hdr.type == kXsError) return "ERR:" + std::string(m->payload.c_str());
      return m->payload == "OK\0"s ? "OK" : m->payload;
    }
    return "TOO-MANY-EVENTS";
  }
  // True once the peer closed (EOF) within the timeout, draining data.
  bool ClosedByPeer(int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    char buf[65536];
    while (Clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
    }
    return false;
  }
  int fd() const { return fd_; }

 private:
  bool ReadN(size_t n, std::string* out, int timeout_ms) {
    out->clear();
    while (out->size() < n) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, timeout_ms) <= 0) return false;
      char buf[4096];
      const ssize_t got = ::recv(fd_, buf, std::min(sizeof(buf), n - out->size()), 0);
      if (got <= 0) return false;
      out->append(buf, static_cast<size_t>(got));
    }
    return true;
  }
  int fd_;
  uint32_t req_ = 0;
};

std::string Z(const std::string& s) { return s + '\0'; }

// ---- (1) Debian's xenstore-utils --------------------------------------------------

TEST(XenemudProcess, HelpDescribesUsage) {
  FILE* f = popen(XENEMUD_BIN " --help", "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  EXPECT_EQ(pclose(f), 0);
  EXPECT_NE(out.find("--xenstore PATH"), std::string::npos);
  EXPECT_NE(out.find("--domain ID=PATH"), std::string::npos);
  EXPECT_NE(out.find("SIGTERM"), std::string::npos);
}

TEST(XenemudProcess, RealXenstoreUtils) {
  RequireXenstoreUtils();
  Daemon d;
  EXPECT_EQ(RunTool(d, "xenstore-write /vm/a hello /vm/b/c 'two words'"), std::make_pair(0, ""s));
  EXPECT_EQ(RunTool(d, "xenstore-read /vm/a /vm/b/c"), std::make_pair(0, "hello\ntwo words\n"s));
  EXPECT_EQ(RunTool(d, "xenstore-list /vm"), std::make_pair(0, "a\nb\n"s));
  EXPECT_EQ(RunTool(d, "xenstore-ls /vm"), std::make_pair(0, "a = \"hello\"\nb = \"\"\n c = \"two words\"\n"s));
  EXPECT_EQ(RunTool(d, "xenstore-exists /vm/b/c").first, 0);
  EXPECT_EQ(RunTool(d, "xenstore-chmod /vm/a n0 r5"), std::make_pair(0, ""s));
  const auto ls = RunTool(d, "xenstore-ls -p /vm");
  EXPECT_EQ(ls.first, 0);
  EXPECT_NE(ls.second.find("(n0,r5)"), std::string::npos) << ls.second;
  // The whole tree includes the domains introduced at start.
  const auto all = RunTool(d, "xenstore-ls /local/domain");
  EXPECT_EQ(all, std::make_pair(0, "5 = \"\"\n6 = \"\"\n"s));
  EXPECT_EQ(RunTool(d, "xenstore-rm /vm/b"), std::make_pair(0, ""s));
  EXPECT_NE(RunTool(d, "xenstore-exists /vm/b/c").first, 0);
  const auto missing = RunTool(d, "xenstore-read /vm/nope");
  EXPECT_NE(missing.first, 0);
  EXPECT_NE(missing.second.find("couldn't read path /vm/nope"), std::string::npos) << missing.second;
}

TEST(XenemudProcess, RealXenstoreWatchSeesLaterWrite) {
  RequireXenstoreUtils();
  Daemon d;
  const std::string out_path = d.dir() + "/watch.out";
  pid_t pid = fork();
  if (pid == 0) {
    const std::string cmd = "XENSTORED_PATH=" + d.dom0() + " exec timeout 10 xenstore-watch -n 2 /watched > " + out_path;
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Keep writing until the watcher has seen its initial event plus one
  // change and exited (the write may race its registration, so repeat).
  int status = -1;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (int i = 0; Clock::now() < deadline; ++i) {
    if (waitpid(pid, &status, WNOHANG) == pid) break;
    RunTool(d, "xenstore-write /watched/key v" + std::to_string(i));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "xenstore-watch status " << status;
  std::ifstream f(out_path);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(ss.str(), "/watched\n/watched/key\n");
}

// ---- (2) the real libxenstore -------------------------------------------------------

TEST(XenemudProcess, RealLibxenstore) {
  Daemon d;
  setenv("XENSTORED_PATH", d.dom0().c_str(), 1);
  xs_handle* h = xs_open(0);
  xs_handle* h2 = xs_open(0);
  ASSERT_NE(h, nullptr);
  ASSERT_NE(h2, nullptr);
  ASSERT_TRUE(xs_write(h, XBT_NULL, "/lib/x", "42", 2));
  unsigned int len = 0;
  char* v = static_cast<char*>(xs_read(h, XBT_NULL, "/lib/x", &len));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(std::string(v, len), "42");
  free(v);
  EXPECT_EQ(xs_read(h, XBT_NULL, "/lib/none", &len), nullptr);
  EXPECT_EQ(errno, ENOENT);
  ASSERT_TRUE(xs_mkdir(h, XBT_NULL, "/lib/dir"));
  unsigned int num = 0;
  char** names = xs_directory(h, XBT_NULL, "/lib", &num);
  ASSERT_NE(names, nullptr);
  ASSERT_EQ(num, 2u);
  EXPECT_STREQ(names[0], "x");
  EXPECT_STREQ(names[1], "dir");
  free(names);
  char* dp = xs_get_domain_path(h, 5);
  ASSERT_NE(dp, nullptr);
  EXPECT_STREQ(dp, "/local/domain/5");
  free(dp);
  xs_permissions perms[2] = {{0, XS_PERM_NONE}, {5, XS_PERM_READ}};
  ASSERT_TRUE(xs_set_permissions(h, XBT_NULL, "/lib/x", perms, 2));
  unsigned int nperms = 0;
  xs_permissions* got = xs_get_permissions(h, XBT_NULL, "/lib/x", &nperms);
  ASSERT_NE(got, nullptr);
  ASSERT_EQ(nperms, 2u);
  EXPECT_EQ(got[1].id, 5u);
  EXPECT_EQ(got[1].perms, XS_PERM_READ);
  free(got);

  // Watch: initial event, then the write from the other handle.
  ASSERT_TRUE(xs_watch(h, "/lib", "tok"));
  const int fd = xs_fileno(h);
  ASSERT_GE(fd, 0);
  auto next_event = [&]() -> std::string {
    for (int i = 0; i < 50; ++i) {
      unsigned int n = 0;
      char** ev = xs_check_watch(h);
      if (ev) {
        std::string s = std::string(ev[XS_WATCH_PATH]) + "|" + ev[XS_WATCH_TOKEN];
        free(ev);
        (void)n;
        return s;
      }
      pollfd p{fd, POLLIN, 0};
      poll(&p, 1, 100);
    }
    return "TIMEOUT";
  };
  EXPECT_EQ(next_event(), "/lib|tok");
  ASSERT_TRUE(xs_write(h2, XBT_NULL, "/lib/y", "1", 1));
  EXPECT_EQ(next_event(), "/lib/y|tok");

  // Transactions: commit, then a conflict between the two handles.
  xs_transaction_t t = xs_transaction_start(h);
  ASSERT_NE(t, XBT_NULL);
  ASSERT_TRUE(xs_write(h, t, "/lib/t", "in-tx", 5));
  EXPECT_EQ(xs_read(h2, XBT_NULL, "/lib/t", &len), nullptr);
  ASSERT_TRUE(xs_transaction_end(h, t, false));
  v = static_cast<char*>(xs_read(h2, XBT_NULL, "/lib/t", &len));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(std::string(v, len), "in-tx");
  free(v);
  EXPECT_EQ(next_event(), "/lib/t|tok");  // fired at commit

  t = xs_transaction_start(h);
  v = static_cast<char*>(xs_read(h, t, "/lib/x", &len));
  free(v);
  ASSERT_TRUE(xs_write(h, t, "/lib/from-tx", "a", 1));
  ASSERT_TRUE(xs_write(h2, XBT_NULL, "/lib/x", "changed", 7));
  errno = 0;
  EXPECT_FALSE(xs_transaction_end(h, t, false));
  EXPECT_EQ(errno, EAGAIN);
  EXPECT_EQ(xs_read(h2, XBT_NULL, "/lib/from-tx", &len), nullptr);
  // An aborted transaction leaves nothing behind.
  t = xs_transaction_start(h);
  ASSERT_TRUE(xs_write(h, t, "/lib/aborted", "a", 1));
  ASSERT_TRUE(xs_transaction_end(h, t, true));
  EXPECT_EQ(xs_read(h2, XBT_NULL, "/lib/aborted", &len), nullptr);

  ASSERT_TRUE(xs_unwatch(h, "/lib", "tok"));
  ASSERT_TRUE(xs_rm(h, XBT_NULL, "/lib"));
  EXPECT_EQ(xs_read(h2, XBT_NULL, "/lib/x", &len), nullptr);
  xs_close(h2);
  xs_close(h);
  unsetenv("XENSTORED_PATH");
}

// ---- (3) per-domain identity ------------------------------------------------------------

TEST(XenemudProcess, DomainSocketsActAsTheirDomain) {
  Daemon d;
  Raw d5(d.d5()), d6(d.d6()), d0(d.dom0());
  EXPECT_EQ(d5.Call(kXsWrite, "device/vif/0/state\0"s "1"), "OK");
  EXPECT_EQ(d0.Call(kXsRead, Z("/local/domain/5/device/vif/0/state")), "1");
  EXPECT_EQ(d5.Call(kXsRead, Z("/local/domain/5/device/vif/0/state")), "1");
  EXPECT_EQ(d0.Call(kXsGetPerms, Z("/local/domain/5/device")), "n5\0"s);
  EXPECT_EQ(d6.Call(kXsRead, Z("/local/domain/5/device/vif/0/state")), "ERR:EACCES");
  EXPECT_EQ(d6.Call(kXsWrite, "/local/domain/5/evil\0x"s), "ERR:EACCES");
  EXPECT_EQ(d6.Call(kXsRead, Z("device/vif/0/state")), "ERR:ENOENT");  // its own home
  EXPECT_EQ(d6.Call(kXsIntroduce, "7\0"s "1\0"s "1\0"s), "ERR:EACCES");
  // Granting read makes it visible to 6.
  EXPECT_EQ(d5.Call(kXsSetPerms, "device/vif/0/state\0n5\0r6\0"s), "OK");
  EXPECT_EQ(d6.Call(kXsRead, Z("/local/domain/5/device/vif/0/state")), "1");
  // A relative watch reports relative paths.
  EXPECT_EQ(d5.Call(kXsWatch, "device\0t\0"s), "OK");
  auto ev = d5.ReadMsg();
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->hdr.type, uint32_t{kXsWatchEvent});
  EXPECT_EQ(ev->payload, "device\0t\0"s);
  EXPECT_EQ(d0.Call(kXsWrite, "/local/domain/5/device/vif/0/state\0"s "4"), "OK");
  ev = d5.ReadMsg();
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->hdr.req_id, 0u);
  EXPECT_EQ(ev->payload, "device/vif/0/state\0t\0"s);
}

// ---- (4) hostile clients ---------------------------------------------------------------

TEST(XenemudProcess, OversizedLengthClosesOnlyThatConnection) {
  Daemon d;
  Raw good(d.dom0()), bad(d.dom0()), bad5(d.d5());
  EXPECT_EQ(good.Call(kXsWrite, "/h\0v"s), "OK");
  std::string hdr = EncodeXsMessage(kXsWrite, 1, 0, "");
  const uint32_t len = kXsPayloadMax + 1;
  std::memcpy(hdr.data() + 12, &len, 4);
  ASSERT_TRUE(bad.SendBytes(hdr));
  EXPECT_TRUE(bad.ClosedByPeer(5000));
  std::memcpy(hdr.data() + 12, "\xff\xff\xff\xff", 4);
  ASSERT_TRUE(bad5.SendBytes(hdr));
  EXPECT_TRUE(bad5.ClosedByPeer(5000));
  EXPECT_EQ(good.Call(kXsRead, Z("/h")), "v");
  // A payload of exactly 4096 is fine.
  EXPECT_EQ(good.Call(kXsWrite, "/big\0"s + std::string(4096 - 5, 'z')), "OK");
}

TEST(XenemudProcess, GarbageGetsErrorReplies) {
  Daemon d;
  Raw c(d.dom0());
  EXPECT_EQ(c.Call(999, "x"), "ERR:ENOSYS");
  EXPECT_EQ(c.Call(kXsWatchEvent, "a\0b\0"s), "ERR:ENOSYS");
  EXPECT_EQ(c.Call(kXsRead, "/unterminated"), "ERR:EINVAL");
  EXPECT_EQ(c.Call(kXsRead, ""), "ERR:EINVAL");
  EXPECT_EQ(c.Call(kXsWatch, "/only\0"s), "ERR:EINVAL");
  EXPECT_EQ(c.Call(kXsTransactionEnd, "T\0"s, 77), "ERR:ENOENT");
  EXPECT_EQ(c.Call(kXsRead, Z("/tool")), "");  // still serving
}

TEST(XenemudProcess, SlowWatchReaderIsDroppedOthersContinue) {
  Daemon d;  // started with --max-output 65536
  Raw writer(d.dom0()), watcher(d.dom0());
  EXPECT_EQ(watcher.Call(kXsWatch, "/\0t\0"s), "OK");
  // The watcher never reads again; each write queues a ~3 KiB event for it.
  const std::string dir = "/" + std::string(1000, 'p') + "/" + std::string(1000, 'q') + "/";
  bool dropped = false;
  for (int i = 0; i < 2000 && !dropped; ++i) {
    ASSERT_EQ(writer.Call(kXsWrite, dir + std::string(900, 'r') + std::to_string(i) + '\0'), "OK") << i;
    if (i % 50 == 49) {
      pollfd p{watcher.fd(), POLLIN, 0};
      // Dropped once the daemon closed it: the socket reports hang-up/EOF
      // after the buffered bytes; check cheaply without reading.
      dropped = poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR)) != 0;
    }
  }
  EXPECT_TRUE(watcher.ClosedByPeer(5000));
  EXPECT_EQ(writer.Call(kXsRead, Z("/tool")), "");
}

}  // namespace
}  // namespace vioport::xen
