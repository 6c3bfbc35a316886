// SPDX-License-Identifier: Apache-2.0
// vios --threads N / --cpus LIST: devices served by N event-loop threads
// (reactors). Real vios and vioguest processes over shm and vhost-user at
// once; every byte verified in the guests and in the backing files; the
// placement (least loaded, or reactor=K), the threads themselves (/proc),
// pinning, run-time add/attach/detach/remove across reactors, and SIGTERM.
#include <dirent.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "control_client.h"
#include "nlohmann/json.hpp"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"
#include "vioport/transports/options.h"

namespace vioport {
namespace {

using json = nlohmann::json;
using testproc::Proc;

class Reactors : public testproc::ProcessTest {
 protected:
  Reactors() : ProcessTest("vioport-reactors") {}

  void StartVios(std::vector<std::string> args) {
    args.insert(args.begin(), VIOS_BIN);
    args.insert(args.end(), {"--control", Path("ctl")});
    vios_ = &Start(args, "vios");
    ASSERT_TRUE(testproc::WaitFor([&] { return !vios_->Running() || std::filesystem::exists(Path("ctl")); }, 10));
    ASSERT_TRUE(vios_->Running()) << vios_->err();
  }
  json Call(const std::string& method, const json& params = json::object()) {
    auto r = vios::ControlCall(Path("ctl"), method, params, 30);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : json();
  }
  // The names of vios's threads (comm), by thread id.
  std::map<int, std::string> Threads() const {
    std::map<int, std::string> out;
    const std::string dir = absl::StrCat("/proc/", vios_->pid, "/task");
    if (DIR* d = ::opendir(dir.c_str())) {
      while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::ifstream f(absl::StrCat(dir, "/", e->d_name, "/comm"));
        std::string name;
        std::getline(f, name);
        out[std::stoi(e->d_name)] = name;
      }
      ::closedir(d);
    }
    return out;
  }
  std::string CpusAllowed(int tid) const {
    std::ifstream f(absl::StrCat("/proc/", vios_->pid, "/task/", tid, "/status"));
    std::string line;
    while (std::getline(f, line))
      if (absl::StartsWith(line, "Cpus_allowed_list:")) return std::string(absl::StripAsciiWhitespace(line.substr(18)));
    return "";
  }
  Proc& GuestIo(const std::string& transport, const std::string& sock, const std::string& verb, int seed) {
    return Start({VIOGUEST_BIN, "--quiet", "--transport", transport + ":" + sock, "blk", verb, "--seed",
                  std::to_string(seed), "--length", "8M"},
                 "vioguest");
  }

  Proc* vios_ = nullptr;
};

TEST_F(Reactors, DevicesSpreadOverReactorsAndEveryByteArrives) {
  std::vector<std::string> args = {"--threads", "2"};
  for (int i = 0; i < 4; ++i) {
    MakeDisk(Path(absl::StrCat("d", i, ".img")), 16 << 20);
    args.insert(args.end(), {"--device", absl::StrCat("blk,id=d", i, ",path=", Path(absl::StrCat("d", i, ".img")))});
  }
  // d0, d1 least loaded (reactors 0, 1); d2 over vhost-user, d3 pinned by reactor=1.
  args.insert(args.end(), {"--attach", "d0,transport=shm,path=" + Path("d0.sock"), "--attach",
                           "d1,transport=shm,path=" + Path("d1.sock"), "--attach",
                           "d2,transport=vhost-user,socket=" + Path("d2.sock"), "--attach",
                           "d3,transport=shm,path=" + Path("d3.sock") + ",reactor=1"});
  ASSERT_NO_FATAL_FAILURE(StartVios(args));
  const json reactors = Call("reactor_list")["result"];
  ASSERT_EQ(reactors.size(), 2u) << reactors;
  EXPECT_EQ(reactors[0]["devices"], json({"d0", "d2"})) << reactors;
  EXPECT_EQ(reactors[1]["devices"], json({"d1", "d3"})) << reactors;
  // They are threads of their own, named for their reactor.
  const auto threads = Threads();
  for (const json& r : reactors) {
    const int tid = r["tid"];
    ASSERT_TRUE(threads.count(tid)) << tid;
    EXPECT_EQ(threads.at(tid), absl::StrCat("vios-r", r["id"].get<int>()));
    EXPECT_NE(tid, vios_->pid) << "a reactor is not the control thread";
  }
  // Four guests at once, each writing then verifying its own 8 MiB.
  const std::vector<std::pair<std::string, std::string>> guests = {
      {"shm", Path("d0.sock")}, {"shm", Path("d1.sock")}, {"vhost-user", Path("d2.sock")}, {"shm", Path("d3.sock")}};
  std::vector<Proc*> writers;
  for (int i = 0; i < 4; ++i) writers.push_back(&GuestIo(guests[i].first, guests[i].second, "write", 40 + i));
  for (int i = 0; i < 4; ++i) ASSERT_EQ(writers[i]->Wait(120), 0) << writers[i]->err();
  std::vector<Proc*> readers;
  for (int i = 0; i < 4; ++i) readers.push_back(&GuestIo(guests[i].first, guests[i].second, "verify", 40 + i));
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(readers[i]->Wait(120), 0) << readers[i]->err();
    EXPECT_EQ(testproc::Field(readers[i]->out(), "verified"), "yes") << readers[i]->out();
    int64_t bad = 0;
    const std::string sum = testproc::CheckFile(Path(absl::StrCat("d", i, ".img")), 40 + i, 0, 8 << 20, &bad);
    EXPECT_EQ(bad, -1) << "d" << i;
    EXPECT_EQ(testproc::Field(writers[i]->out(), "checksum"), sum) << "d" << i;
  }
  // Counters are read across threads (each on its reactor).
  const json stats = Call("stats")["result"];
  for (int i = 0; i < 4; ++i) EXPECT_EQ(stats[absl::StrCat("d", i)]["bytes_written"], 8 << 20) << stats;
  const json list = Call("device_list")["result"];
  EXPECT_EQ(list[1]["reactor"], 1);
  EXPECT_EQ(list[2]["transport"], "vhost-user");
  // At run time: a new device goes to the least loaded reactor (0 after d1's removal leaves 1 with one).
  ASSERT_EQ(Call("device_remove", {{"id", "d1"}})["result"], true);
  ASSERT_EQ(Call("device_detach", {{"id", "d3"}})["result"], true);  // reactor 1 is empty now
  ASSERT_EQ(Call("device_add", {{"type", "rng"}, {"id", "r0"}})["result"], true);
  ASSERT_EQ(Call("device_attach", {{"id", "r0"}, {"transport", "shm"}, {"path", Path("r0.sock")}})["result"], true);
  EXPECT_EQ(Call("device_get", {{"id", "r0"}})["result"]["attachment"]["reactor"], 1);
  Proc& rng = Start({VIOGUEST_BIN, "--quiet", "--transport", "shm:" + Path("r0.sock"), "rng", "--length", "64K"},
                    "vioguest");
  ASSERT_EQ(rng.Wait(60), 0) << rng.err();
  EXPECT_EQ(testproc::Field(rng.out(), "verified"), "yes");
  // d3 attached again, now on reactor 0 by choice.
  ASSERT_EQ(Call("device_attach", {{"id", "d3"}, {"transport", "shm"}, {"path", Path("d3b.sock")}, {"reactor", 0}})
                ["result"],
            true);
  Proc& again = GuestIo("shm", Path("d3b.sock"), "verify", 43);
  ASSERT_EQ(again.Wait(120), 0) << again.err();
  EXPECT_EQ(testproc::Field(again.out(), "verified"), "yes");
  // Bad placements are named.
  const json bad = Call("device_attach", {{"id", "r0"}, {"transport", "shm"}, {"path", Path("x.sock")}});
  EXPECT_TRUE(absl::StrContains(bad.dump(), "already attached")) << bad;
  ASSERT_EQ(Call("device_add", {{"type", "rng"}, {"id", "r1"}})["result"], true);
  const json far = Call("device_attach", {{"id", "r1"}, {"transport", "shm"}, {"path", Path("r1.sock")}, {"reactor", 2}});
  EXPECT_TRUE(absl::StrContains(far.dump(), "option 'reactor=2': vios has reactors 0..1")) << far;
  // SIGTERM: every reactor stops, exit 0.
  vios_->Signal(SIGTERM);
  EXPECT_EQ(vios_->Wait(30), 0) << vios_->err();
}

TEST_F(Reactors, CpusPinsOneReactorPerCpu) {
  const long ncpu = ::sysconf(_SC_NPROCESSORS_ONLN);
  if (ncpu < 2) GTEST_SKIP() << "needs 2 CPUs";
  MakeDisk(Path("d0.img"), 8 << 20);
  ASSERT_NO_FATAL_FAILURE(StartVios({"--cpus", "1,0", "--device", "blk,id=d0,path=" + Path("d0.img"), "--attach",
                                     "d0,transport=shm,path=" + Path("d0.sock")}));
  const json reactors = Call("reactor_list")["result"];
  ASSERT_EQ(reactors.size(), 2u);
  EXPECT_EQ(reactors[0]["cpu"], 1);
  EXPECT_EQ(reactors[1]["cpu"], 0);
  EXPECT_EQ(CpusAllowed(reactors[0]["tid"]), "1");
  EXPECT_EQ(CpusAllowed(reactors[1]["tid"]), "0");
  Proc& w = GuestIo("shm", Path("d0.sock"), "write", 7);
  ASSERT_EQ(w.Wait(120), 0) << w.err();
  int64_t bad = 0;
  testproc::CheckFile(Path("d0.img"), 7, 0, 8 << 20, &bad);
  EXPECT_EQ(bad, -1);
}

#ifdef CRQD_BIN
// Endpoints that share their transport's state share a reactor: every crq
// adapter of one vios partition is served by one CrqPartitionHost (one
// partition, one interrupt), so they all go to the reactor of the first,
// and reactor=K may not split them. Guests on both adapters verify data.
TEST_F(Reactors, AdaptersOfOnePartitionShareAReactor) {
  std::vector<std::string> crqd = {CRQD_BIN, "--socket", Path("crqd.sock"), "--control", Path("crqd.ctl")};
  for (int i = 0; i < 3; ++i)
    crqd.insert(crqd.end(), {"--pair", absl::StrFormat("client=%d:%#x:%#x:64,server=100:%#x:%#x:1", 1 + 2 * i,
                                                       0x1000 + i, 0x1000 + i, 0x2000 + i, 0x2000 + i)});
  Proc& emu = Start(crqd, "crqd");
  ASSERT_TRUE(testproc::WaitFor([&] { return !emu.Running() || std::filesystem::exists(Path("crqd.sock")); }, 10));
  ASSERT_TRUE(emu.Running()) << emu.err();
  auto attach = [&](int i) {
    return absl::StrFormat("d%d,transport=crq,crqd=%s,partition=100,unit=%#x,liobn=%#x,remote-liobn=%#x,"
                           "remote-window-mib=64",
                           i, Path("crqd.sock"), 0x2000 + i, 0x2000 + i, 0x1000 + i);
  };
  std::vector<std::string> args = {"--threads", "2"};
  for (int i = 0; i < 3; ++i) {
    MakeDisk(Path(absl::StrCat("d", i, ".img")), 8 << 20);
    args.insert(args.end(), {"--device", absl::StrCat("blk,id=d", i, ",path=", Path(absl::StrCat("d", i, ".img")))});
  }
  args.insert(args.end(), {"--attach", attach(0), "--attach", attach(1)});
  ASSERT_NO_FATAL_FAILURE(StartVios(args));
  const json reactors = Call("reactor_list")["result"];
  ASSERT_EQ(reactors.size(), 2u);
  EXPECT_EQ(reactors[0]["devices"], json({"d0", "d1"})) << "one partition, one reactor: " << reactors;
  EXPECT_TRUE(reactors[1]["devices"].empty()) << reactors;
  // reactor=1 would split the partition: refused, naming why.
  std::string first;
  std::map<std::string, std::string> kv;
  ASSERT_TRUE(SplitKeyValues(attach(2) + ",reactor=1", "attach", "the device id", &first, &kv).ok());
  json params = {{"id", first}};
  for (const auto& [k, v] : kv) params[k] = v;
  const json refused = Call("device_attach", params);
  EXPECT_TRUE(absl::StrContains(refused.dump(), "shares its crq channel with device 'd0', served on reactor 0"))
      << refused;
  // Guests on both adapters: data verified.
  std::vector<Proc*> writers;
  for (int i = 0; i < 2; ++i)
    writers.push_back(&Start({VIOGUEST_BIN, "--quiet", "--memory", "64", "--transport",
                              absl::StrFormat("crq:%s,partition=%d,unit=%#x,liobn=%#x", Path("crqd.sock"), 1 + 2 * i,
                                              0x1000 + i, 0x1000 + i),
                              "blk", "write", "--seed", std::to_string(60 + i), "--length", "4M"},
                             "vioguest"));
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(writers[i]->Wait(120), 0) << writers[i]->err();
    int64_t bad = 0;
    const std::string sum = testproc::CheckFile(Path(absl::StrCat("d", i, ".img")), 60 + i, 0, 4 << 20, &bad);
    EXPECT_EQ(bad, -1);
    EXPECT_EQ(testproc::Field(writers[i]->out(), "checksum"), sum);
  }
  vios_->Signal(SIGTERM);
  EXPECT_EQ(vios_->Wait(30), 0) << vios_->err();
}
#endif

TEST_F(Reactors, BadFlagsAreNamed) {
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), VIOS_BIN);
    Proc p = testproc::Spawn(args, dir_, "vios");
    p.Wait(20);
    return std::make_pair(p.status, p.err());
  };
  auto [c1, e1] = run({"--threads", "0", "--device", "rng,id=r0"});
  EXPECT_EQ(c1, 2);
  EXPECT_TRUE(absl::StrContains(e1, "--threads 0: not a number in 1..256")) << e1;
  auto [c2, e2] = run({"--cpus", "0,0", "--device", "rng,id=r0"});
  EXPECT_EQ(c2, 2);
  EXPECT_TRUE(absl::StrContains(e2, "CPU 0 given twice")) << e2;
  auto [c3, e3] = run({"--cpus", "9999", "--device", "rng,id=r0"});
  EXPECT_EQ(c3, 2);
  EXPECT_TRUE(absl::StrContains(e3, "'9999' is not a CPU")) << e3;
  auto [c4, e4] = run({"--device", "rng,id=r0", "--attach", "r0,transport=shm,path=" + Path("r.sock") + ",reactor=0"});
  EXPECT_EQ(c4, 2);
  EXPECT_TRUE(absl::StrContains(e4, "vios runs no reactors")) << e4;
}

}  // namespace
}  // namespace vioport
