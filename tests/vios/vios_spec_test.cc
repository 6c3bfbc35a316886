// SPDX-License-Identifier: Apache-2.0
// vios option parsing (command line and TOML) and the control commands,
// in process.
#include <gtest/gtest.h>

#include <fstream>

#include "boost/asio/io_context.hpp"
#include "server.h"
#include "spec.h"

namespace vioport::vios {
namespace {

TEST(ViosSpec, DeviceAndAttachStrings) {
  auto d = ParseDevice("blk,id=d0,path=/x.img,readonly=on");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->type, "blk");
  EXPECT_EQ(d->id, "d0");
  EXPECT_EQ(*d->options.String("path"), "/x.img");
  EXPECT_TRUE(*d->options.Bool("readonly", false));
  EXPECT_TRUE(d->options.CheckAllUsed().ok());
  auto a = ParseAttach("d0,transport=shm,path=/run/x.sock");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->device, "d0");
  EXPECT_EQ(a->transport, "shm");

  EXPECT_NE(ParseDevice("id=d0").status().message().find("device type"), std::string::npos);
  EXPECT_NE(ParseDevice("blk,path=x").status().message().find("'id' is required"), std::string::npos);
  EXPECT_NE(ParseDevice("blk,id=a/b").status().message().find("id=a/b"), std::string::npos);
  EXPECT_NE(ParseDevice("blk,id=d0,id=d1").status().message().find("given twice"), std::string::npos);
  EXPECT_NE(ParseDevice("blk,id=d0,flag").status().message().find("'flag' is not KEY=VALUE"), std::string::npos);
  EXPECT_NE(ParseAttach("d0,path=x").status().message().find("'transport' is required"), std::string::npos);

  auto n = ParseDevice("blk,id=d0,num-queues=x,size=9");
  ASSERT_TRUE(n.ok());
  EXPECT_NE(n->options.Uint("num-queues", 1, 1, 16).status().message().find("num-queues=x' is not a number"),
            std::string::npos);
  EXPECT_NE(n->options.CheckAllUsed().message().find("unknown option 'size=9'"), std::string::npos);
}

TEST(ViosSpec, TomlMatchesTheCommandLine) {
  const std::string path = ::testing::TempDir() + "/spec.toml";
  std::ofstream(path) << "control = \"/tmp/c.sock\"\nlog-level = \"debug\"\n"
                      << "[[device]]\ntype = \"blk\"\nid = \"d0\"\npath = \"/d.img\"\nreadonly = true\nnum-queues = 4\n"
                      << "[[device]]\ntype = \"rng\"\nid = \"r0\"\n"
                      << "[[attach]]\ndevice = \"d0\"\ntransport = \"shm\"\npath = \"/s\"\npoll = false\n";
  auto c = ParseCommandLine({"--config", path, "--device", "rng,id=r1"});
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->devices.size(), 3u);
  EXPECT_EQ(c->control_path, "/tmp/c.sock");
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_EQ(*c->devices[0].options.String("readonly"), "on");
  EXPECT_EQ(*c->devices[0].options.Uint("num-queues", 1, 1, 16), 4u);
  EXPECT_EQ(c->devices[2].id, "r1");
  ASSERT_EQ(c->attaches.size(), 1u);
  EXPECT_FALSE(*c->attaches[0].options.Bool("poll", true));
  EXPECT_NE(c->devices[0].options.origin().find("device #1"), std::string::npos);

  std::ofstream(path) << "[[device]]\ntype = \"blk\"\nid = \"d0\"\npath = [1, 2]\n";
  auto bad = ParseCommandLine({"--config", path});
  EXPECT_NE(bad.status().message().find("'path' must be a string"), std::string::npos) << bad.status();
  std::ofstream(path) << "colour = \"red\"\n";
  bad = ParseCommandLine({"--config", path});
  EXPECT_NE(bad.status().message().find("unknown key 'colour'"), std::string::npos) << bad.status();
  EXPECT_NE(ParseCommandLine({"--device"}).status().message().find("--device needs a value"), std::string::npos);
  EXPECT_TRUE(ParseCommandLine({"--device=rng,id=r0"}).ok());
}

TEST(ViosControl, Commands) {
  boost::asio::io_context io;
  Server s(io);
  EXPECT_EQ(s.Execute("add rng,id=r0"), "ok\n");
  EXPECT_NE(s.Execute("add rng,id=r0").find("error: "), std::string::npos);
  const std::string list = s.Execute("list");
  EXPECT_NE(list.find("r0"), std::string::npos);
  EXPECT_NE(list.find("rng"), std::string::npos);
  EXPECT_NE(s.Execute("stats r0").find("r0.bytes 0"), std::string::npos);
  const std::string sock = ::testing::TempDir() + "/ctl-r0.sock";
  EXPECT_EQ(s.Execute("attach r0,transport=shm,path=" + sock), "ok\n");
  EXPECT_NE(s.Execute("attach r0,transport=shm,path=" + sock).find("already attached"), std::string::npos);
  EXPECT_NE(s.Execute("list").find(sock), std::string::npos);
  EXPECT_EQ(s.Execute("remove r0"), "ok\n");
  EXPECT_NE(s.Execute("remove r0").find("no device with id 'r0'"), std::string::npos);
  EXPECT_NE(s.Execute("frobnicate").find("unknown command"), std::string::npos);
  EXPECT_NE(s.Execute("").find("error: empty command"), std::string::npos);
}

}  // namespace
}  // namespace vioport::vios
