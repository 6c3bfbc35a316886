// SPDX-License-Identifier: Apache-2.0
// vios option parsing (command line and TOML) and the control commands,
// in process.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "boost/asio/io_context.hpp"
#include "nlohmann/json.hpp"
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

// One JSON-RPC call through Server::Call, as the control socket carries it.
nlohmann::json Call(const Server& s, const std::string& method, const nlohmann::json& params = nullptr) {
  nlohmann::json req = {{"jsonrpc", "2.0"}, {"id", 1}, {"method", method}};
  if (!params.is_null()) req["params"] = params;
  return nlohmann::json::parse(s.Call(req.dump()));
}
int ErrorCode(const nlohmann::json& reply) { return reply.contains("error") ? reply["error"].value("code", 0) : 0; }
std::string ErrorMessage(const nlohmann::json& reply) {
  return reply.contains("error") ? reply["error"].value("message", "") : "";
}

TEST(ViosControl, MethodsChangeWhatTheServerHolds) {
  boost::asio::io_context io;
  Server s(io);
  EXPECT_EQ(Call(s, "device_add", {{"type", "rng"}, {"id", "r0"}})["result"], true);
  const auto dup = Call(s, "device_add", {{"type", "rng"}, {"id", "r0"}});
  EXPECT_EQ(ErrorCode(dup), rpc::kAlreadyExists);
  EXPECT_NE(ErrorMessage(dup).find("'r0' already exists"), std::string::npos) << dup;
  auto list = Call(s, "device_list")["result"];
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["id"], "r0");
  EXPECT_EQ(list[0]["type"], "rng");
  EXPECT_TRUE(list[0]["transport"].is_null());
  EXPECT_EQ(Call(s, "stats", {{"id", "r0"}})["result"]["r0"]["bytes"], 0);
  const std::string sock = ::testing::TempDir() + "/ctl-r0.sock";
  EXPECT_EQ(Call(s, "device_attach", {{"id", "r0"}, {"transport", "shm"}, {"path", sock}})["result"], true);
  const auto again = Call(s, "device_attach", {{"id", "r0"}, {"transport", "shm"}, {"path", sock}});
  EXPECT_NE(ErrorMessage(again).find("already attached"), std::string::npos) << again;
  list = Call(s, "device_list")["result"];
  EXPECT_EQ(list[0]["transport"], "shm");
  EXPECT_EQ(list[0]["where"], sock);
  EXPECT_EQ(list[0]["guest"], "waiting");
  const auto got = Call(s, "device_get", {{"id", "r0"}})["result"];
  EXPECT_EQ(got["attachment"]["options"]["path"], sock) << got;
  EXPECT_EQ(got["counters"]["shm.connections"], 0) << got;
  EXPECT_EQ(Call(s, "device_detach", {{"id", "r0"}})["result"], true);
  EXPECT_TRUE(Call(s, "device_list")["result"][0]["transport"].is_null());
  EXPECT_EQ(ErrorCode(Call(s, "device_detach", {{"id", "r0"}})), rpc::kFailedPrecondition);
  EXPECT_EQ(Call(s, "device_remove", {{"id", "r0"}})["result"], true);
  const auto gone = Call(s, "device_remove", {{"id", "r0"}});
  EXPECT_EQ(ErrorCode(gone), rpc::kNotFound);
  EXPECT_NE(ErrorMessage(gone).find("no device with id 'r0'"), std::string::npos);
  EXPECT_TRUE(Call(s, "device_list")["result"].empty());
  // netdevs
  EXPECT_EQ(Call(s, "netdev_add", {{"type", "switch"}, {"id", "sw0"}, {"aging", 30}})["result"], true);
  EXPECT_EQ(Call(s, "netdev_list")["result"][0]["ports"], 0);
  EXPECT_EQ(Call(s, "device_add", {{"type", "net"}, {"id", "n0"}, {"switch", "sw0"}, {"mrg-rxbuf", false}})["result"],
            true);
  EXPECT_EQ(Call(s, "device_get", {{"id", "n0"}})["result"]["options"]["mrg-rxbuf"], "off");
  EXPECT_EQ(ErrorCode(Call(s, "netdev_remove", {{"id", "sw0"}})), rpc::kFailedPrecondition);
  EXPECT_EQ(Call(s, "net_set_link", {{"id", "n0"}, {"up", false}})["result"], true);
  EXPECT_EQ(Call(s, "device_remove", {{"id", "n0"}})["result"], true);
  EXPECT_EQ(Call(s, "netdev_remove", {{"id", "sw0"}})["result"], true);
  // The log level
  EXPECT_EQ(Call(s, "log_set_level", {{"level", "debug"}})["result"], true);
  EXPECT_EQ(Call(s, "log_get_level")["result"]["level"], "debug");
  EXPECT_EQ(Call(s, "log_set_level", {{"level", "info"}})["result"], true);
  const auto methods = Call(s, "rpc_get_methods")["result"];
  for (const char* m : {"device_add", "device_remove", "device_list", "device_get", "device_attach", "device_detach",
                        "stats", "netdev_add", "netdev_remove", "netdev_list", "net_set_link", "net_announce",
                        "blk_resize", "log_set_level", "log_get_level", "rpc_get_methods"})
    EXPECT_NE(std::find(methods.begin(), methods.end(), m), methods.end()) << m;
}

// Every bad request gets a JSON-RPC error whose code says what kind and
// whose message names the bad member, parameter or option and its value.
TEST(ViosControl, BadRequestsAreNamedErrors) {
  boost::asio::io_context io;
  Server s(io);
  ASSERT_EQ(Call(s, "device_add", {{"type", "rng"}, {"id", "r0"}})["result"], true);
  const std::string disk = ::testing::TempDir() + "/ctl-bad.img";
  std::ofstream(disk).close();
  std::filesystem::resize_file(disk, 1 << 20);
  ASSERT_EQ(Call(s, "device_add", {{"type", "blk"}, {"id", "d0"}, {"path", disk}})["result"], true);
  struct Case {
    std::string request;
    int code;
    std::string says;
  };
  const std::string big_batch = [] {
    std::string b = "[";
    for (int i = 0; i <= 1024; ++i) absl::StrAppend(&b, i ? "," : "", R"({"jsonrpc":"2.0","id":1,"method":"stats"})");
    return b + "]";
  }();
  const std::vector<Case> cases = {
      {"{bad", rpc::kParseError, "not JSON"},
      {"", rpc::kParseError, "not JSON"},
      {std::string(100, '['), rpc::kParseError, "nested deeper than"},
      {"42", rpc::kInvalidRequest, "not an integer"},
      {"[]", rpc::kInvalidRequest, "empty batch"},
      {big_batch, rpc::kInvalidRequest, "a batch of 1025 requests"},
      {R"({"id":1,"method":"stats"})", rpc::kInvalidRequest, "jsonrpc"},
      {R"({"jsonrpc":"1.0","id":1,"method":"stats"})", rpc::kInvalidRequest, "jsonrpc"},
      {R"({"jsonrpc":"2.0","id":1,"method":7})", rpc::kInvalidRequest, "method"},
      {R"({"jsonrpc":"2.0","id":{},"method":"stats"})", rpc::kInvalidRequest, "id: {} is not"},
      {R"({"jsonrpc":"2.0","id":1,"method":"stats","colour":"red"})", rpc::kInvalidRequest, "unknown member 'colour'"},
      {R"({"jsonrpc":"2.0","id":1,"method":"frobnicate"})", rpc::kMethodNotFound, "unknown method \"frobnicate\""},
      {R"({"jsonrpc":"2.0","id":1,"method":"stats","params":["r0"]})", rpc::kInvalidParams, "params: must be an object"},
      {R"({"jsonrpc":"2.0","id":1,"method":"stats","params":{"id":"r0","bogus":1}})", rpc::kInvalidParams,
       "params.bogus: unknown parameter"},
      {R"({"jsonrpc":"2.0","id":1,"method":"stats","params":{"id":5}})", rpc::kInvalidParams, "params.id: 5 is not a string"},
      {R"({"jsonrpc":"2.0","id":1,"method":"stats","params":{"id":"nosuch"}})", rpc::kNotFound, "no device with id 'nosuch'"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_add","params":{"id":"x"}})", rpc::kInvalidParams, "params.type: required"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_add","params":{"type":"tape","id":"x"}})", rpc::kInvalidParams,
       "unknown device type 'tape'"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_add","params":{"type":"rng","id":"bad id"}})", rpc::kInvalidParams,
       "option 'id=bad id'"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_add","params":{"type":"blk","id":"x","path":"/nonexistent/x.img"}})",
       rpc::kNotFound, "cannot open /nonexistent/x.img"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_add","params":{"type":"blk","id":"x","path":")" + disk +
           R"(","queue-size":3}})",
       rpc::kInvalidParams, "'queue-size=3' is not a power of 2"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_add","params":{"type":"blk","id":"x","path":")" + disk +
           R"(","queue-size":-1}})",
       rpc::kInvalidParams, "params.queue-size: -1"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_add","params":{"type":"blk","id":"x","path":{"a":1}}})",
       rpc::kInvalidParams, "params.path: {\"a\":1}"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_add","params":{"type":"blk","id":"x","path":"a\u0000b"}})",
       rpc::kInvalidParams, "params.path"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_add","params":{"type":"rng","id":"x","colour":"red"}})",
       rpc::kInvalidParams, "colour"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_attach","params":{"id":"r0","transport":"carrier-pigeon"}})",
       rpc::kInvalidParams, "carrier-pigeon"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_attach","params":{"id":"nosuch","transport":"shm","path":"/tmp/x"}})",
       rpc::kNotFound, "no device with id 'nosuch'"},
      {R"({"jsonrpc":"2.0","id":1,"method":"device_remove","params":{}})", rpc::kInvalidParams, "params.id: required"},
      {R"({"jsonrpc":"2.0","id":1,"method":"blk_resize","params":{"id":"r0","size":4096}})", rpc::kFailedPrecondition,
       "is a rng device, not blk"},
      {R"({"jsonrpc":"2.0","id":1,"method":"blk_resize","params":{"id":"d0","size":1000}})", rpc::kInvalidParams,
       "1000"},
      {R"({"jsonrpc":"2.0","id":1,"method":"blk_resize","params":{"id":"d0","size":"big"}})", rpc::kInvalidParams,
       "params.size: \"big\" is not an unsigned integer"},
      {R"({"jsonrpc":"2.0","id":1,"method":"net_set_link","params":{"id":"r0","up":"yes"}})", rpc::kInvalidParams,
       "params.up: \"yes\" is not true or false"},
      {R"({"jsonrpc":"2.0","id":1,"method":"net_set_link","params":{"id":"r0","up":true}})", rpc::kInvalidParams,
       "not a net device"},
      {R"({"jsonrpc":"2.0","id":1,"method":"log_set_level","params":{"level":"loud"}})", rpc::kInvalidParams,
       "params.level: 'loud'"},
      {R"({"jsonrpc":"2.0","id":1,"method":"netdev_remove","params":{"id":"r0"}})", rpc::kNotFound, "no netdev"},
  };
  for (const Case& c : cases) {
    const std::string reply = s.Call(c.request);
    auto j = nlohmann::json::parse(reply, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << c.request << " -> " << reply;
    EXPECT_EQ(j["jsonrpc"], "2.0") << reply;
    EXPECT_EQ(ErrorCode(j), c.code) << c.request.substr(0, 200) << " -> " << reply;
    EXPECT_NE(ErrorMessage(j).find(c.says), std::string::npos) << c.request.substr(0, 200) << " -> " << reply;
  }
  // Nothing changed: the two devices, untouched.
  EXPECT_EQ(Call(s, "device_list")["result"].size(), 2u);
  // Notifications (no id) are not answered; in a batch only requests are.
  EXPECT_EQ(s.Call(R"({"jsonrpc":"2.0","method":"stats"})"), "");
  EXPECT_EQ(s.Call(R"([{"jsonrpc":"2.0","method":"stats"}])"), "");
  auto batch = nlohmann::json::parse(s.Call(
      R"([{"jsonrpc":"2.0","method":"stats"},{"jsonrpc":"2.0","id":"a","method":"log_get_level"},7])"));
  ASSERT_EQ(batch.size(), 2u) << batch;
  EXPECT_EQ(batch[0]["id"], "a");
  EXPECT_EQ(batch[1]["error"]["code"], rpc::kInvalidRequest);
  // A client's invalid UTF-8 comes back replaced, never as an exception.
  auto bad_utf8 = nlohmann::json::parse(s.Call("{\"jsonrpc\":\"2.0\",\"id\":\"\xff\",\"method\":\"x\xfe\"}"), nullptr, false);
  EXPECT_FALSE(bad_utf8.is_discarded());
}

}  // namespace
}  // namespace vioport::vios
