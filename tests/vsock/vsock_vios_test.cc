// SPDX-License-Identifier: Apache-2.0
// vios with vsock devices, as an operator starts it: the command line and
// TOML create devices on the hub and bind their uds-path; a host process
// (socat) that CONNECTs to a guest no driver serves yet is closed after the
// hub's timeout, without an OK, and counted; duplicate CIDs and bad CIDs
// are refused with a message naming the option; removing a device unlinks
// its socket.
#include <gtest/gtest.h>

#include <signal.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"

namespace vioport {
namespace {

using testproc::Proc;

class VsockVios : public testproc::ViosProcessTest {
 protected:
  VsockVios() : ViosProcessTest("vioport-vsockvios", VIOS_BIN, VIOSCTL_BIN, VIOGUEST_BIN) {}
};

TEST_F(VsockVios, DevicesOnTheHubFromTheCommandLineAndToml) {
  vios_args_ = {"--device", "vsock,id=v0,cid=3,uds-path=" + Path("v0.sock") + ",group=a",
                "--device", "vsock,id=v1,cid=4,group=a+b"};
  ASSERT_NO_FATAL_FAILURE(SpawnVios());
  EXPECT_TRUE(std::filesystem::exists(Path("v0.sock")));
  // socat CONNECTs to guest 3, which is not attached (its REQUEST waits in
  // the device's bounded inbox): no OK; the hub gives up after its timeout
  // (2 s) and closes the socket; socat ends.
  {
    std::ofstream f(Path("connect.txt"));
    f << "CONNECT 5000\n";
  }
  Proc& host = Start({"/bin/sh", "-c", "exec socat -t 10 - UNIX-CONNECT:" + Path("v0.sock") + " <" + Path("connect.txt")},
                     "socat");
  ASSERT_EQ(host.Wait(20), 0) << host.err();
  EXPECT_EQ(host.out(), "") << "no OK without a guest";
  EXPECT_EQ(Stat("v0", "hub.conns_total"), 1u);
  EXPECT_EQ(Stat("v0", "hub.conns_open"), 0u);
  // Another device may not take a CID in use; a CID must be a guest's.
  int code = 0;
  std::string out = Viosctl("add vsock,id=v2,cid=4", &code);
  EXPECT_NE(code, 0);
  EXPECT_TRUE(absl::StrContains(out, "cid 4 is taken")) << out;
  out = Viosctl("add vsock,id=v3,cid=2", &code);
  EXPECT_NE(code, 0);
  EXPECT_TRUE(absl::StrContains(out, "cid")) << out;
  // Removing a device lets go of its socket.
  out = Viosctl("remove v0", &code);
  EXPECT_EQ(code, 0) << out;
  EXPECT_TRUE(testproc::WaitFor([&] { return !std::filesystem::exists(Path("v0.sock")); }, 5));
  vios_->Signal(SIGTERM);
  ASSERT_EQ(vios_->Wait(30), 0) << vios_->err();
  // The same from TOML.
  {
    std::ofstream f(Path("vios.toml"));
    f << "[[device]]\ntype = \"vsock\"\nid = \"t0\"\ncid = 7\nuds-path = \"" << Path("t0.sock") << "\"\n";
  }
  vios_args_ = {"--config", Path("vios.toml")};
  ASSERT_NO_FATAL_FAILURE(SpawnVios());
  EXPECT_TRUE(std::filesystem::exists(Path("t0.sock")));
  EXPECT_EQ(Stat("t0", "hub.conns_open"), 0u);
}

}  // namespace
}  // namespace vioport
