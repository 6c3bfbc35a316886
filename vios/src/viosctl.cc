// SPDX-License-Identifier: Apache-2.0
// viosctl: a thin client of vios's control API (JSON-RPC 2.0 on its control
// socket, docs/api.md). Each command is one method call; the reply is printed
// as a table or as lines, or raw with --json.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "control_client.h"
#include "nlohmann/json.hpp"
#include "vioport/transports/options.h"

namespace {

using json = nlohmann::json;

const char kUsage[] = R"(viosctl: control a running vios through its control API (docs/api.md).

usage: viosctl --control PATH [--json] COMMAND [ARG...]

commands (the method each calls):
  list                   devices and netdevs: transport, where, guest, status
                         (netdev_list + device_list, one batch)
  stats [ID]             counters of one device or netdev, or of all (stats)
  get ID                 a device's options, attachment and counters (device_get)
  add DEVICE-SPEC        create a device, as vios --device takes it, e.g.
                         add blk,id=d1,path=/var/lib/d1.img (device_add)
  attach ATTACH-SPEC     serve a device over a transport, as vios --attach takes
                         it (vios --help lists the transports) (device_attach)
  detach ID              drop the device's guest and stop serving it; the device
                         stays (device_detach)
  remove ID              detach and delete a device (device_remove), or a netdev
                         with nothing on it (netdev_remove)
  netdev NETDEV-SPEC     create a switch or an uplink, as --netdev (netdev_add)
  link ID up|down        a net device's link (net_set_link)
  announce ID            a net device announces its guest (net_announce)
  resize ID [SIZE]       a blk device's capacity in bytes (K, M, G, T suffixes);
                         without SIZE, the backing file's size now; the guest
                         gets a config interrupt (blk_resize)
  console ID SOCKET      move a console device's host side to a Unix socket
                         listening on SOCKET (its current client is let go;
                         connect with socat - UNIX-CONNECT:SOCKET) (console_attach)
  coalescing ID DELAY_US [IOPS]
                         interrupt coalescing: hold a busy queue's interrupts
                         (above IOPS requests a second, default 60000) for
                         DELAY_US x (rate - IOPS) / IOPS; 0 turns it off
                         (device_set_coalescing)
  log-level [LEVEL]      show or set vios's log level: error, warning, info,
                         debug (log_get_level, log_set_level)
  methods                the methods vios knows (rpc_get_methods)
  call METHOD [PARAMS]   any method, PARAMS a JSON object; prints the raw reply

  --json                 print vios's reply as it came (one JSON line)

Exit status: 0 if vios answered with a result, 1 if with an error, 2 if it
could not be reached or the command line is wrong.
)";

int Usage(const char* why) {
  std::fprintf(stderr, "viosctl: %s (see viosctl --help)\n", why);
  return 2;
}

// "type,id=ID,key=value" (or "ID,transport=T,...") -> a params object of strings.
// `what` names the first element in errors; `member` is its key in params.
bool SpecParams(const std::string& text, const char* what, const char* member, json* out, std::string* err) {
  std::string first;
  std::map<std::string, std::string> kv;
  absl::Status s = vioport::SplitKeyValues(text, "viosctl", what, &first, &kv);
  if (!s.ok()) {
    *err = std::string(s.message());
    return false;
  }
  *out = json::object();
  (*out)[member] = first;
  for (const auto& [k, v] : kv) (*out)[k] = v;
  return true;
}

bool ParseSize(const std::string& text, uint64_t* out) {
  uint64_t mult = 1;
  std::string num = text;
  if (!num.empty()) {
    switch (num.back()) {
      case 'K': case 'k': mult = 1ull << 10; break;
      case 'M': case 'm': mult = 1ull << 20; break;
      case 'G': case 'g': mult = 1ull << 30; break;
      case 'T': case 't': mult = 1ull << 40; break;
      default: break;
    }
    if (mult != 1) num.pop_back();
  }
  uint64_t v;
  if (!absl::SimpleAtoi(num, &v) || v > UINT64_MAX / mult) return false;
  *out = v * mult;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using vioport::vios::ControlCall;
  using vioport::vios::ControlSend;
  std::string control;
  bool raw = false;
  std::vector<std::string> words;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (a == "--control" && i + 1 < argc) control = argv[++i];
    else if (a.rfind("--control=", 0) == 0) control = a.substr(10);
    else if (a == "--json") raw = true;
    else words.push_back(a);
  }
  if (control.empty() || words.empty()) return Usage("need --control PATH and a command");
  const std::string cmd = words[0];
  const size_t nargs = words.size() - 1;
  auto arg = [&](size_t i) { return words[i]; };

  std::string method;
  json params = json::object();
  std::string err;
  if (cmd == "list" && nargs == 0) {
    // One batch: both lists, answered together.
    const json batch = {{{"jsonrpc", "2.0"}, {"id", 1}, {"method", "netdev_list"}},
                        {{"jsonrpc", "2.0"}, {"id", 2}, {"method", "device_list"}}};
    auto line = ControlSend(control, batch.dump());
    if (!line.ok()) {
      std::fprintf(stderr, "viosctl: %s\n", std::string(line.status().message()).c_str());
      return 2;
    }
    if (raw) {
      std::printf("%s\n", line->c_str());
      return 0;
    }
    json r = json::parse(*line, nullptr, false);
    json lists[2];
    if (r.is_array()) {
      for (const json& one : r) {
        if (one.contains("error")) {
          std::fprintf(stderr, "error: %s\n", one["error"].value("message", "").c_str());
          return 1;
        }
        const int id = one.value("id", 0);
        if (id == 1 || id == 2) lists[id - 1] = one.value("result", json::array());
      }
    }
    std::fputs(vioport::vios::RenderList(lists[0], lists[1]).c_str(), stdout);
    return 0;
  }
  if (cmd == "stats" && nargs <= 1) {
    method = "stats";
    if (nargs == 1) params["id"] = arg(1);
  } else if (cmd == "get" && nargs == 1) {
    method = "device_get";
    params["id"] = arg(1);
  } else if (cmd == "add" && nargs == 1) {
    method = "device_add";
    if (!SpecParams(arg(1), "the device type", "type", &params, &err)) return Usage(err.c_str());
  } else if (cmd == "netdev" && nargs == 1) {
    method = "netdev_add";
    if (!SpecParams(arg(1), "the netdev type", "type", &params, &err)) return Usage(err.c_str());
  } else if (cmd == "attach" && nargs == 1) {
    method = "device_attach";
    if (!SpecParams(arg(1), "the device id", "id", &params, &err)) return Usage(err.c_str());
  } else if (cmd == "detach" && nargs == 1) {
    method = "device_detach";
    params["id"] = arg(1);
  } else if (cmd == "remove" && nargs == 1) {
    // A device or a netdev: ask which it is.
    auto nd = ControlCall(control, "netdev_list", json::object());
    method = "device_remove";
    if (nd.ok() && nd->contains("result") && (*nd)["result"].is_array())
      for (const json& n : (*nd)["result"])
        if (n.value("id", "") == arg(1)) method = "netdev_remove";
    params["id"] = arg(1);
  } else if (cmd == "link" && nargs == 2 && (arg(2) == "up" || arg(2) == "down")) {
    method = "net_set_link";
    params = {{"id", arg(1)}, {"up", arg(2) == "up"}};
  } else if (cmd == "announce" && nargs == 1) {
    method = "net_announce";
    params["id"] = arg(1);
  } else if (cmd == "resize" && (nargs == 1 || nargs == 2)) {
    method = "blk_resize";
    params["id"] = arg(1);
    if (nargs == 2) {
      uint64_t size;
      if (!ParseSize(arg(2), &size)) return Usage(absl::StrCat("resize: '", arg(2), "' is not a size").c_str());
      params["size"] = size;
    }
  } else if (cmd == "console" && nargs == 2) {
    method = "console_attach";
    params = {{"id", arg(1)}, {"socket", arg(2)}};
  } else if (cmd == "coalescing" && (nargs == 2 || nargs == 3)) {
    method = "device_set_coalescing";
    uint64_t delay = 0, iops = 0;
    if (!absl::SimpleAtoi(arg(2), &delay)) return Usage("coalescing: DELAY_US is not a number");
    params = {{"id", arg(1)}, {"delay_base_us", delay}};
    if (nargs == 3) {
      if (!absl::SimpleAtoi(arg(3), &iops)) return Usage("coalescing: IOPS is not a number");
      params["iops_threshold"] = iops;
    }
  } else if (cmd == "log-level" && nargs <= 1) {
    method = nargs ? "log_set_level" : "log_get_level";
    if (nargs) params["level"] = arg(1);
  } else if (cmd == "methods" && nargs == 0) {
    method = "rpc_get_methods";
  } else if (cmd == "call" && (nargs == 1 || nargs == 2)) {
    method = arg(1);
    raw = true;
    if (nargs == 2) {
      params = json::parse(arg(2), nullptr, false);
      if (params.is_discarded()) return Usage("call: PARAMS is not JSON");
    }
  } else {
    return Usage(absl::StrCat("unknown command or wrong arguments: '", cmd, "'").c_str());
  }

  auto reply = ControlCall(control, method, params);
  if (!reply.ok()) {
    std::fprintf(stderr, "viosctl: %s\n", std::string(reply.status().message()).c_str());
    return 2;
  }
  const bool failed = reply->contains("error");
  if (raw) {
    std::printf("%s\n", reply->dump().c_str());
    return failed ? 1 : 0;
  }
  if (failed) {
    const json& e = (*reply)["error"];
    std::fprintf(stderr, "error: %s\n", e.value("message", "").c_str());
    return 1;
  }
  const json& result = (*reply)["result"];
  if (method == "stats") {
    std::fputs(vioport::vios::RenderStats(result).c_str(), stdout);
  } else if (method == "rpc_get_methods") {
    for (const json& m : result) std::printf("%s\n", m.get<std::string>().c_str());
  } else if (method == "log_get_level") {
    std::printf("%s\n", result.value("level", "").c_str());
  } else if (method == "blk_resize") {
    std::printf("capacity %llu\n", static_cast<unsigned long long>(result.value("capacity", uint64_t{0})));
  } else if (method == "console_attach") {
    std::printf("console on %s\n", result.value("socket", "").c_str());
  } else if (method == "device_get") {
    std::printf("%s\n", result.dump(2).c_str());
  } else {
    std::printf("ok\n");
  }
  return 0;
}
