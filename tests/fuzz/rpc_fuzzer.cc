// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for vios's control API parsing (vios/src/rpc.h): the
// JSON-RPC 2.0 dispatcher (framing checks, batches, notifications, ids,
// error replies), typed parameter access (rpc::Params) and the conversion of
// a request's params to device, netdev and attach specs (rpc::ToOptions,
// MakeDeviceSpec, MakeAttachSpec), which is what device_add, netdev_add and
// device_attach run before touching anything.
//
// Input: text; each line is one message, as the control socket frames them.
// Methods: "echo" returns its params; "typed" reads s (string), n (0..100)
// and b (bool), optionally, then refuses unknown ones; "spec" turns params
// into a DeviceSpec and reads some options the way vios does; "attach" the
// same for an AttachSpec; "throw" throws (a bug must become an error reply).
// Checked besides ASan/UBSan: every reply is JSON; a reply is an object, or
// a non-empty array of objects no longer than the batch; each has
// "jsonrpc":"2.0", an id, and exactly one of result and error; an error's
// code is one vios defines and its message is not empty.
#include <cstdint>
#include <set>
#include <string>
#include <string_view>

#include "rpc.h"
#include "spec.h"

namespace {

using vioport::vios::rpc::json;
namespace rpc = vioport::vios::rpc;

const rpc::Dispatcher& TheDispatcher() {
  static const rpc::Dispatcher* d = [] {
    auto* d = new rpc::Dispatcher;
    d->Add("echo", [](const json& p) -> absl::StatusOr<json> { return p; });
    d->Add("typed", [](const json& p) -> absl::StatusOr<json> {
      rpc::Params params(p);
      auto s = params.String("s", "");
      auto n = params.Uint("n", 0, 0, 100);
      if (!s.ok()) return s.status();
      if (!n.ok()) return n.status();
      if (params.Has("b")) {
        auto b = params.Bool("b");
        if (!b.ok()) return b.status();
      }
      if (absl::Status st = params.CheckAllUsed(); !st.ok()) return st;
      if (*n > 100) __builtin_trap();
      return json{{"s", *s}, {"n", *n}};
    });
    d->Add("spec", [](const json& p) -> absl::StatusOr<json> {
      rpc::Params params(p);
      auto type = params.String("type");
      auto id = params.String("id");
      if (!type.ok()) return type.status();
      if (!id.ok()) return id.status();
      auto o = rpc::ToOptions(p, "fuzz", {"type", "id"});
      if (!o.ok()) return o.status();
      auto kv = o->all();
      kv["id"] = *id;
      auto spec = vioport::vios::MakeDeviceSpec(*type, kv, "fuzz");
      if (!spec.ok()) return spec.status();
      // The accessors a device type uses, in any order.
      auto path = spec->options.String("path", "");
      auto q = spec->options.Uint("num-queues", 1, 1, 16);
      auto ro = spec->options.Bool("readonly", false);
      for (const absl::Status& s : {path.status(), q.status(), ro.status()})
        if (!s.ok()) return s;
      if (*q < 1 || *q > 16) __builtin_trap();
      return json{{"id", spec->id}};
    });
    d->Add("attach", [](const json& p) -> absl::StatusOr<json> {
      rpc::Params params(p);
      auto id = params.String("id");
      if (!id.ok()) return id.status();
      auto o = rpc::ToOptions(p, "fuzz", {"id"});
      if (!o.ok()) return o.status();
      auto a = vioport::vios::MakeAttachSpec(*id, o->all(), "fuzz");
      if (!a.ok()) return a.status();
      return json{{"transport", a->transport}};
    });
    d->Add("throw", [](const json& p) -> absl::StatusOr<json> { return json(p.at("missing")); });
    return d;
  }();
  return *d;
}

bool KnownCode(int c) {
  static const std::set<int> known = {rpc::kParseError, rpc::kInvalidRequest, rpc::kMethodNotFound,
                                      rpc::kInvalidParams, rpc::kInternalError, rpc::kServerError,
                                      rpc::kNotFound, rpc::kAlreadyExists, rpc::kFailedPrecondition,
                                      rpc::kTooManyClients, rpc::kRequestTooLarge, rpc::kUnavailable};
  return known.count(c) != 0;
}

void CheckOne(const json& r) {
  if (!r.is_object()) __builtin_trap();
  if (!r.contains("jsonrpc") || r["jsonrpc"] != "2.0") __builtin_trap();
  if (!r.contains("id")) __builtin_trap();
  const bool has_result = r.contains("result"), has_error = r.contains("error");
  if (has_result == has_error) __builtin_trap();
  if (has_error) {
    const json& e = r["error"];
    if (!e.is_object() || !e.contains("code") || !e["code"].is_number_integer()) __builtin_trap();
    if (!KnownCode(e["code"].get<int>())) __builtin_trap();
    if (!e.contains("message") || !e["message"].is_string() || e["message"].get<std::string>().empty())
      __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  size_t start = 0;
  while (start <= all.size()) {
    size_t nl = all.find('\n', start);
    if (nl == std::string_view::npos) nl = all.size();
    const std::string_view line = all.substr(start, nl - start);
    start = nl + 1;
    const std::string reply = TheDispatcher().Handle(line);
    if (reply.empty()) continue;  // notifications only
    json r = json::parse(reply, nullptr, false);
    if (r.is_discarded()) __builtin_trap();
    if (r.is_array()) {
      if (r.empty() || r.size() > rpc::Dispatcher::kMaxBatch) __builtin_trap();
      for (const json& one : r) CheckOne(one);
    } else {
      CheckOne(r);
    }
  }
  return 0;
}
