// SPDX-License-Identifier: Apache-2.0
// vios's control socket as clients see it: a real vios process, JSON-RPC 2.0
// over its Unix socket (docs/api.md). Many messages per connection, hostile
// clients (too long, silent, a thousand at once, over the limit) that must
// not disturb the others, a blk resize seen by a real vioguest, and the
// Python client printed in docs/api.md, run as printed. What each method does
// and every error's wording: tests/vios/vios_spec_test.cc (in process).
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <dirent.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "control_client.h"
#include "nlohmann/json.hpp"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"

namespace vioport {
namespace {

using json = nlohmann::json;
using testproc::Proc;

class ControlSocket : public testproc::ProcessTest {
 protected:
  ControlSocket() : ProcessTest("vioport-ctl") {}

  void StartVios(std::vector<std::string> extra = {}) {
    MakeDisk(Path("d0.img"), 8 << 20);
    std::vector<std::string> argv = {VIOS_BIN, "--device", "blk,id=d0,path=" + Path("d0.img"), "--control", Ctl()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    vios_ = &Start(argv, "vios");
    ASSERT_TRUE(testproc::WaitFor([&] { return !vios_->Running() || std::filesystem::exists(Ctl()); }, 10));
    ASSERT_TRUE(vios_->Running()) << vios_->err();
  }
  std::string Ctl() const { return Path("ctl"); }

  // A raw client: connect, write bytes, read a line (or EOF).
  int Connect() { return testproc::ConnectUnixStream(Ctl(), 5); }
  static bool Send(int fd, const std::string& bytes) {
    for (size_t off = 0; off < bytes.size();) {
      const ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  // Reads until `lines` newlines or EOF or `seconds`; *eof set if the peer closed.
  static std::string ReadLines(int fd, int lines, double seconds, bool* eof = nullptr) {
    std::string in;
    if (eof) *eof = false;
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::count(in.begin(), in.end(), '\n') < lines && std::chrono::steady_clock::now() < end) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      char buf[65536];
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) {
        if (eof) *eof = true;
        break;
      }
      in.append(buf, static_cast<size_t>(n));
    }
    return in;
  }
  static std::string Request(int id, const std::string& method, const json& params = nullptr) {
    json r = {{"jsonrpc", "2.0"}, {"id", id}, {"method", method}};
    if (!params.is_null()) r["params"] = params;
    return r.dump() + "\n";
  }
  // vios's open descriptors and resident memory (KiB), from /proc.
  int Fds() const {
    int n = 0;
    if (DIR* d = ::opendir(absl::StrCat("/proc/", vios_->pid, "/fd").c_str())) {
      while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
      ::closedir(d);
    }
    return n;
  }
  uint64_t RssKiB() const {
    std::ifstream f(absl::StrCat("/proc/", vios_->pid, "/status"));
    std::string line;
    while (std::getline(f, line)) {
      uint64_t v;
      if (absl::StartsWith(line, "VmRSS:") &&
          absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(line.substr(6), "kB")), &v))
        return v;
    }
    return 0;
  }
  // vioguest on d0 over shm (attached at d0.sock), waited for.
  Proc Guest(std::vector<std::string> args) {
    args.insert(args.begin(), {VIOGUEST_BIN, "--quiet", "--transport", "shm:" + Path("d0.sock")});
    Proc p = testproc::Spawn(args, dir_, "vioguest");
    p.Wait(120);
    return p;
  }
  json Call(const std::string& method, const json& params = json::object()) {
    auto r = vios::ControlCall(Ctl(), method, params, 10);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : json();
  }

  Proc* vios_ = nullptr;
};

TEST_F(ControlSocket, OwnerOnlyAndManyMessagesPerConnection) {
  ASSERT_NO_FATAL_FAILURE(StartVios());
  struct stat st;
  ASSERT_EQ(::stat(Ctl().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const int fd = Connect();
  ASSERT_GE(fd, 0);
  // Three requests and a notification in one write, a batch after them:
  // one reply line each (the notification none), in order.
  ASSERT_TRUE(Send(fd, Request(1, "log_get_level") + Request(2, "stats", {{"id", "d0"}}) +
                           R"({"jsonrpc":"2.0","method":"log_get_level"})" "\r\n\n" + Request(3, "nosuch") +
                           R"([{"jsonrpc":"2.0","id":4,"method":"device_list"},{"jsonrpc":"2.0","id":5,"method":"netdev_list"}])"
                           "\n"));
  const std::string out = ReadLines(fd, 4, 10);
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u) << out;
  EXPECT_EQ(json::parse(lines[0])["result"]["level"], "info");
  EXPECT_EQ(json::parse(lines[1])["result"]["d0"]["bytes_written"], 0);
  EXPECT_EQ(json::parse(lines[2])["error"]["code"], -32601);
  const json batch = json::parse(lines[3]);
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch[0]["result"][0]["id"], "d0");
  EXPECT_TRUE(batch[1]["result"].empty());
  // The connection stays open for more.
  ASSERT_TRUE(Send(fd, Request(6, "rpc_get_methods")));
  EXPECT_TRUE(absl::StrContains(ReadLines(fd, 1, 10), "\"id\":6"));
  ::close(fd);
}

TEST_F(ControlSocket, HostileClientsDoNotDisturbTheOthers) {
  ASSERT_NO_FATAL_FAILURE(StartVios({"--control-timeout", "2"}));
  // Too long: 300 KiB without a newline is refused (-32005) and that client closed.
  const int big = Connect();
  ASSERT_GE(big, 0);
  Send(big, std::string(300 << 10, 'x'));
  bool eof = false;
  const std::string refused = ReadLines(big, 2, 10, &eof);
  EXPECT_TRUE(absl::StrContains(refused, "\"code\":-32005")) << refused.substr(0, 300);
  EXPECT_TRUE(eof || ReadLines(big, 1, 5, &eof).empty());
  EXPECT_TRUE(eof) << "the connection of a too-long message is closed";
  ::close(big);
  // Silent: connects, sends half a message, then nothing. Meanwhile others
  // are served at once; after the timeout (2 s) the silent one is closed.
  const int silent = Connect();
  ASSERT_GE(silent, 0);
  Send(silent, R"({"jsonrpc":"2.0","id":1,)");
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(Call("log_get_level")["result"]["level"], "info");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2)) << "served while a client is silent";
  eof = false;
  ReadLines(silent, 1, 10, &eof);
  EXPECT_TRUE(eof) << "a silent client is closed";
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1500)) << "not before the timeout";
  ::close(silent);
  // Garbage, then binary: an error reply each, and the connection lives on.
  const int junk = Connect();
  ASSERT_GE(junk, 0);
  Send(junk, std::string("\x00\xff\xfe{]\n", 6) + "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"log_get_level\"}\n");
  const std::string two = ReadLines(junk, 2, 10);
  EXPECT_TRUE(absl::StrContains(two, "\"code\":-32700")) << two;
  EXPECT_TRUE(absl::StrContains(two, "\"id\":9,\"jsonrpc\":\"2.0\",\"result\"")) << two;
  ::close(junk);
  // vios is none the worse.
  EXPECT_TRUE(vios_->Running());
  EXPECT_EQ(Call("stats", {{"id", "d0"}})["result"]["d0"]["errors"], 0);
}

TEST_F(ControlSocket, AThousandClientsAtOnce) {
  // This test's own descriptors: 1000 sockets need more than the usual 1024 soft limit leaves.
  rlimit rl;
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_max < 1200) GTEST_SKIP() << "RLIMIT_NOFILE hard limit " << rl.rlim_max << " < 1200";
  rl.rlim_cur = rl.rlim_max;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &rl), 0);
  ASSERT_NO_FATAL_FAILURE(StartVios());
  // The socket is there before vios has finished starting (its signal pipe
  // comes after it): count from when vios has answered once and let go of
  // that client, and the count has held for a while.
  EXPECT_EQ(Call("log_get_level")["result"]["level"], "info");
  int fds0 = Fds();
  for (int still = 0, tries = 0; still < 5 && tries < 250; ++tries, ::usleep(20000)) {
    const int n = Fds();
    still = n == fds0 ? still + 1 : 0;
    fds0 = n;
  }
  const uint64_t rss0 = RssKiB();
  constexpr int kClients = 1000;
  std::vector<int> fds;
  for (int i = 0; i < kClients; ++i) {
    const int fd = Connect();
    ASSERT_GE(fd, 0) << "client " << i;
    fds.push_back(fd);
  }
  // All connected before any asks; then every one asks, then every one reads.
  for (int i = 0; i < kClients; ++i) ASSERT_TRUE(Send(fds[i], Request(i, "stats", {{"id", "d0"}}))) << i;
  int answered = 0;
  for (int i = 0; i < kClients; ++i) {
    const std::string line = ReadLines(fds[i], 1, 10);
    auto j = json::parse(line, nullptr, false);
    answered += !j.is_discarded() && j["id"] == i && j["result"]["d0"].contains("bytes_read");
  }
  EXPECT_EQ(answered, kClients);
  const int fds_busy = Fds();
  const uint64_t rss_busy = RssKiB();
  EXPECT_GE(fds_busy, fds0 + kClients) << "vios holds every client";
  for (int fd : fds) ::close(fd);
  // Every client's descriptor and buffer are let go.
  EXPECT_TRUE(testproc::WaitFor([&] { return Fds() == fds0; }, 10)) << Fds() << " open, " << fds0 << " before";
  // Bounded memory: a thousand small clients cost well under 16 KiB each.
#ifndef VIOPORT_SANITIZED  // ASan's shadow and redzones are not vios's memory
  EXPECT_LT(rss_busy - rss0, 16u * kClients) << "RSS " << rss0 << " KiB -> " << rss_busy << " KiB";
#endif
  std::printf("1000 control clients: %d -> %d fds, RSS %llu -> %llu KiB\n", fds0, fds_busy,
              static_cast<unsigned long long>(rss0), static_cast<unsigned long long>(rss_busy));
  EXPECT_EQ(Call("log_get_level")["result"]["level"], "info");
}

TEST_F(ControlSocket, OneClientOverTheLimitIsToldAndClosed) {
  ASSERT_NO_FATAL_FAILURE(StartVios({"--control-max-clients", "8"}));
  std::vector<int> fds;
  for (int i = 0; i < 8; ++i) fds.push_back(Connect());
  // vios has accepted all eight once each has been answered.
  for (int fd : fds) {
    ASSERT_TRUE(Send(fd, Request(1, "log_get_level")));
    ASSERT_TRUE(absl::StrContains(ReadLines(fd, 1, 10), "result"));
  }
  const int ninth = Connect();
  ASSERT_GE(ninth, 0);
  bool eof = false;
  const std::string told = ReadLines(ninth, 1, 10, &eof);
  EXPECT_TRUE(absl::StrContains(told, "\"code\":-32004")) << told;
  EXPECT_TRUE(absl::StrContains(told, "too many control clients (8)")) << told;
  ReadLines(ninth, 1, 5, &eof);
  EXPECT_TRUE(eof);
  ::close(ninth);
  // The eight are still served; once one leaves, a new client is.
  ASSERT_TRUE(Send(fds[3], Request(2, "log_get_level")));
  EXPECT_TRUE(absl::StrContains(ReadLines(fds[3], 1, 10), "\"id\":2"));
  ::close(fds[0]);
  EXPECT_TRUE(testproc::WaitFor(
      [&] {
        auto r = vios::ControlCall(Ctl(), "log_get_level", json::object(), 2);
        return r.ok() && r->contains("result");
      },
      10));
  for (size_t i = 1; i < fds.size(); ++i) ::close(fds[i]);
}

TEST_F(ControlSocket, BlkResizeReachesTheGuest) {
  ASSERT_NO_FATAL_FAILURE(StartVios());
  ASSERT_EQ(Call("device_attach", {{"id", "d0"}, {"transport", "shm"}, {"path", Path("d0.sock")}})["result"], true);
  Proc before = Guest({"blk", "info"});
  ASSERT_EQ(before.status, 0) << before.err();
  EXPECT_TRUE(absl::StrContains(before.out(), "(8388608 bytes)")) << before.out();
  // Grow to 16 MiB: the file grows, the guest sees it, and the new half takes data.
  const json r = Call("blk_resize", {{"id", "d0"}, {"size", 16 << 20}});
  ASSERT_EQ(r["result"]["capacity"], 16 << 20) << r;
  EXPECT_EQ(std::filesystem::file_size(Path("d0.img")), 16u << 20);
  Proc after = Guest({"blk", "info"});
  EXPECT_TRUE(absl::StrContains(after.out(), "(16777216 bytes)")) << after.out();
  Proc w = Guest({"blk", "write", "--seed", "5", "--offset", "12M", "--length", "4M"});
  ASSERT_EQ(w.status, 0) << w.err();
  int64_t bad = 0;
  const std::string sum = testproc::CheckFile(Path("d0.img"), 5, 12 << 20, 4 << 20, &bad);
  EXPECT_EQ(bad, -1);
  EXPECT_EQ(testproc::Field(w.out(), "checksum"), sum);
  // The file grown behind vios's back: size omitted reads it.
  std::filesystem::resize_file(Path("d0.img"), 24 << 20);
  EXPECT_EQ(Call("blk_resize", {{"id", "d0"}})["result"]["capacity"], 24 << 20);
  EXPECT_TRUE(absl::StrContains(Guest({"blk", "info"}).out(), "(25165824 bytes)"));
  EXPECT_EQ(Call("stats", {{"id", "d0"}})["result"]["d0"]["resizes"], 2);
}

// Interrupt coalescing set at run time (device_set_coalescing, SPDK's
// delay_base_us and iops_threshold), over each transport whose loop applies
// it: a busy queue's interrupts are held and sent together, and no request
// is lost or late past the device going idle: the guest's data verifies.
class Coalescing : public ControlSocket, public ::testing::WithParamInterface<std::string> {
 protected:
  // Attaches d0 over the transport and returns the vioguest arguments that reach it.
  std::vector<std::string> AttachD0() {
    const std::string t = GetParam();
    json params = {{"id", "d0"}, {"transport", t}};
    std::vector<std::string> guest = {VIOGUEST_BIN, "--quiet"};
    if (t == "shm") {
      params["path"] = Path("d0.sock");
      guest.insert(guest.end(), {"--transport", "shm:" + Path("d0.sock")});
    } else if (t == "vhost-user") {
      params["socket"] = Path("d0.sock");
      guest.insert(guest.end(), {"--transport", "vhost-user:" + Path("d0.sock")});
    } else {
#ifdef CRQD_BIN
      Proc& emu = Start({CRQD_BIN, "--socket", Path("crqd.sock"), "--control", Path("crqd.ctl"), "--pair",
                         "client=1:0x1000:0x1000:64,server=100:0x2000:0x2000:16"},
                        "crqd");
      EXPECT_TRUE(testproc::WaitFor([&] { return !emu.Running() || std::filesystem::exists(Path("crqd.sock")); }, 10));
      params.update({{"crqd", Path("crqd.sock")}, {"partition", "100"}, {"unit", "0x2000"}, {"liobn", "0x2000"},
                     {"remote-liobn", "0x1000"}, {"remote-window-mib", "64"}});
      guest.insert(guest.end(),
                   {"--memory", "64", "--transport", "crq:" + Path("crqd.sock") + ",partition=1,unit=0x1000,liobn=0x1000"});
#endif
    }
    const json r = Call("device_attach", params);
    EXPECT_EQ(r["result"], true) << r;
    return guest;
  }
  Proc Run(std::vector<std::string> guest, std::vector<std::string> args) {
    guest.insert(guest.end(), args.begin(), args.end());
    Proc p = testproc::Spawn(guest, dir_, "vioguest");
    p.Wait(120);
    return p;
  }
};

TEST_P(Coalescing, HoldsInterruptsAndLosesNothing) {
#ifndef CRQD_BIN
  if (GetParam() == "crq") GTEST_SKIP() << "crqd is not built";
#endif
  ASSERT_NO_FATAL_FAILURE(StartVios());
  const std::vector<std::string> guest = AttachD0();
  ASSERT_FALSE(HasFailure());
  const std::string t = GetParam();
  ASSERT_EQ(Run(guest, {"blk", "write", "--seed", "3", "--length", "8M"}).status, 0);
  auto counters = [&] { return Call("stats", {{"id", "d0"}})["result"]["d0"]; };
  auto bench = [&] {
    const json c0 = counters();
    Proc b = Run(guest, {"blk", "bench", "--pattern", "randread", "--bs", "4K", "--qd", "32", "--time", "1"});
    EXPECT_EQ(b.status, 0) << b.err();
    const json c1 = counters();
    const double reqs = c1[t + ".requests"].get<double>() - c0[t + ".requests"].get<double>();
    const double irqs = c1[t + ".interrupts"].get<double>() - c0[t + ".interrupts"].get<double>();
    return std::make_pair(irqs / std::max(reqs, 1.0), reqs);
  };
  const auto [without, reqs0] = bench();
  const json off = counters();
  EXPECT_EQ(off["coalescing.delay_base_us"], 0);
  EXPECT_EQ(off["coalescing.interrupts_held"], 0);
  ASSERT_EQ(Call("device_set_coalescing", {{"id", "d0"}, {"delay_base_us", 100}, {"iops_threshold", 1000}})["result"],
            true);
  const auto [with, reqs1] = bench();
  const json on = counters();
  std::printf("%s: interrupts per request: %.4f without coalescing (%.0f requests), %.4f with (%.0f requests)\n",
              t.c_str(), without, reqs0, with, reqs1);
  EXPECT_EQ(on["coalescing.delay_base_us"], 100);
  // Held interrupts are counted, and every one was sent by the time the
  // device went idle: the guest's requests all completed (the bench ran to
  // its end, the verify below reads everything back).
  EXPECT_GT(on["coalescing.interrupts_held"].get<uint64_t>(), 0u) << on;
  EXPECT_GT(reqs1, 0);
  // (vioguest's driver polls its used ring before it sleeps, so it asks for
  // few interrupts with or without coalescing. docs/performance.md has the
  // figures.)
  // Nothing lost: the data reads back whole with coalescing on.
  Proc v = Run(guest, {"blk", "verify", "--seed", "3", "--length", "8M"});
  ASSERT_EQ(v.status, 0) << v.err();
  EXPECT_EQ(testproc::Field(v.out(), "verified"), "yes");
  // Off again; bad values are named.
  EXPECT_EQ(Call("device_set_coalescing", {{"id", "d0"}, {"delay_base_us", 0}})["result"], true);
  EXPECT_TRUE(absl::StrContains(
      Call("device_set_coalescing", {{"id", "d0"}, {"delay_base_us", 5}, {"iops_threshold", 0}}).dump(),
      "params.iops_threshold: 0 is not in 1.."));
}

INSTANTIATE_TEST_SUITE_P(Transports, Coalescing, ::testing::Values("shm", "vhost-user", "crq"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           return i.param == "vhost-user" ? std::string("VhostUser") : i.param;
                         });

// console_attach moves a console's host side to another socket at run time:
// the old socket goes, a client on the new one talks with the guest both
// ways; a blk device, an unknown id and a path that is not a socket are
// refused with nothing changed.
TEST_F(ControlSocket, ConsoleAttachMovesTheHostSide) {
  ASSERT_NO_FATAL_FAILURE(StartVios({"--device", "console,id=c0,socket=" + Path("con-a.sock"), "--attach",
                                     "c0,transport=shm,path=" + Path("c0.sock")}));
  ASSERT_TRUE(std::filesystem::exists(Path("con-a.sock")));
  const json r = Call("console_attach", {{"id", "c0"}, {"socket", Path("con-b.sock")}});
  ASSERT_EQ(r["result"]["socket"], Path("con-b.sock")) << r;
  EXPECT_FALSE(std::filesystem::exists(Path("con-a.sock")));
  EXPECT_EQ(Call("device_get", {{"id", "c0"}})["result"]["options"]["socket"], Path("con-b.sock"));
  // Refusals: nothing changes.
  EXPECT_EQ(Call("console_attach", {{"id", "d0"}, {"socket", Path("x.sock")}})["error"]["code"], -32003);
  EXPECT_EQ(Call("console_attach", {{"id", "nosuch"}, {"socket", Path("x.sock")}})["error"]["code"], -32001);
  { std::ofstream(Path("plain")) << "x"; }
  const json bad = Call("console_attach", {{"id", "c0"}, {"socket", Path("plain")}});
  EXPECT_TRUE(bad.contains("error")) << bad;
  EXPECT_TRUE(absl::StrContains(bad["error"]["message"].get<std::string>(), "not a socket")) << bad;
  // The guest and a client on the new socket, both ways.
  Proc& g = Start({VIOGUEST_BIN, "--quiet", "--transport", "shm:" + Path("c0.sock"), "console", "--send",
                   "from-guest\n", "--expect", "from-host", "--timeout", "30"},
                  "console");
  const int fd = testproc::ConnectUnixStream(Path("con-b.sock"), 5);
  ASSERT_GE(fd, 0);
  const std::string got = ReadLines(fd, 1, 30);
  EXPECT_TRUE(absl::StrContains(got, "from-guest")) << got;
  ASSERT_TRUE(Send(fd, "from-host\n"));
  EXPECT_EQ(g.Wait(30), 0) << g.err() << g.out();
  ::close(fd);
}

// docs/api.md prints a Python client; it must work as printed.
TEST_F(ControlSocket, ThePythonClientInTheDocsWorks) {
  ASSERT_NO_FATAL_FAILURE(StartVios());
  std::ifstream doc(std::string(VIOPORT_SOURCE_DIR) + "/docs/api.md");
  std::stringstream ss;
  ss << doc.rdbuf();
  const std::string text = ss.str();
  const size_t begin = text.find("```python\n");
  ASSERT_NE(begin, std::string::npos) << "docs/api.md has no ```python block";
  const size_t end = text.find("```\n", begin + 10);
  ASSERT_NE(end, std::string::npos);
  std::ofstream(Path("client.py")) << text.substr(begin + 10, end - begin - 10);
  Proc p = testproc::Spawn({"/usr/bin/python3", Path("client.py"), Ctl()}, dir_, "python");
  ASSERT_EQ(p.Wait(60), 0) << p.out() << p.err();
  // It added rng r9 and printed the device list and r9's counters.
  EXPECT_TRUE(absl::StrContains(p.out(), "d0 blk")) << p.out();
  EXPECT_TRUE(absl::StrContains(p.out(), "r9 rng")) << p.out();
  EXPECT_TRUE(absl::StrContains(p.out(), "error -32002")) << p.out();
  const json list = Call("device_list")["result"];
  ASSERT_EQ(list.size(), 2u) << list;
  EXPECT_EQ(list[1]["id"], "r9");
}

}  // namespace
}  // namespace vioport
