// SPDX-License-Identifier: Apache-2.0
#pragma once

// JSON-RPC 2.0 (https://www.jsonrpc.org/specification) for vios's control
// socket: one message per line (a request, a notification or a batch), one
// reply line per message that has requests with an id. The dispatcher knows
// nothing of sockets or of vios: it maps method names to handlers and turns
// an absl::Status into a JSON-RPC error. docs/api.md has the schema.

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "vioport/transports/options.h"

namespace vioport::vios::rpc {

using json = nlohmann::json;

// Error codes: the five JSON-RPC defines, then vios's (-32000..-32099 is the
// range the specification leaves to servers).
enum Code : int {
  kParseError = -32700,      // not JSON
  kInvalidRequest = -32600,  // JSON, but not a request
  kMethodNotFound = -32601,
  kInvalidParams = -32602,   // a missing, unknown or bad parameter (the message names it)
  kInternalError = -32603,
  kServerError = -32000,     // anything else the operation failed with (an I/O error...)
  kNotFound = -32001,        // no such device, netdev or switch
  kAlreadyExists = -32002,   // an id, CID or attachment already there
  kFailedPrecondition = -32003,  // not now: still in use, not attached, wrong device type
  kTooManyClients = -32004,  // the control socket's client limit
  kRequestTooLarge = -32005, // a line longer than the limit
  kUnavailable = -32006,     // a resource the operation needs is missing or busy (a socket path...)
};

// The JSON-RPC error code for a failed operation's status.
int CodeFor(const absl::Status& s);
// {"jsonrpc":"2.0","id":id,"error":{"code":c,"message":m}} (compact, no newline).
std::string ErrorReply(const json& id, int code, std::string_view message);

using Handler = std::function<absl::StatusOr<json>(const json& params)>;

class Dispatcher {
 public:
  // `params` is always an object (absent params read as {}).
  void Add(std::string method, Handler handler);
  // One message (a JSON text). Returns the reply (compact JSON, no newline);
  // empty when nothing is due (notifications only). Never throws.
  std::string Handle(std::string_view message) const;
  std::vector<std::string> Methods() const;

  // Batches larger than this are refused whole (each request in a batch is
  // answered, so this bounds a reply's size).
  static constexpr size_t kMaxBatch = 1024;

 private:
  // The reply to one request; `is_notification` set when no reply is due.
  json HandleOne(const json& request, bool* is_notification) const;

  std::map<std::string, Handler> methods_;
};

// Typed access to a request's named parameters. Every error is
// InvalidArgument naming the parameter and its value ("params.size: -1 is not
// an unsigned integer"); CheckAllUsed refuses a parameter nobody asked for.
class Params {
 public:
  explicit Params(const json& params) : p_(params) {}
  absl::StatusOr<std::string> String(const std::string& key) const;  // required
  absl::StatusOr<std::string> String(const std::string& key, const std::string& dflt) const;
  absl::StatusOr<uint64_t> Uint(const std::string& key, uint64_t dflt, uint64_t min, uint64_t max) const;
  absl::StatusOr<uint64_t> Uint(const std::string& key, uint64_t min, uint64_t max) const;  // required
  absl::StatusOr<bool> Bool(const std::string& key) const;  // required
  bool Has(const std::string& key) const { return p_.contains(key); }
  absl::Status CheckAllUsed() const;

 private:
  const json* Find(const std::string& key) const;
  const json& p_;
  mutable std::map<std::string, bool> used_;
};

// A request's parameters as KEY=VALUE options (the form --device, --attach
// and the TOML file give vios), but for `skip`: strings as they are,
// unsigned integers in decimal, booleans as on/off. An object, array, null,
// negative or fractional value is refused naming its key. `origin` starts
// every later error ("device_add").
absl::StatusOr<Options> ToOptions(const json& params, const std::string& origin,
                                  std::initializer_list<std::string_view> skip);

}  // namespace vioport::vios::rpc
