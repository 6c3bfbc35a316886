// SPDX-License-Identifier: Apache-2.0
#include "rpc.h"

#include <exception>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace vioport::vios::rpc {

namespace {

// Anything vios writes: invalid UTF-8 from a client is replaced, never thrown over.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// A JSON value as an error message shows it (strings quoted, long ones cut).
std::string Show(const json& v) {
  std::string s = Dump(v);
  if (s.size() > 64) s = s.substr(0, 61) + "...";
  return s;
}

const char* KindName(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    default: return "a value";
  }
}

// Nesting depth of a JSON text, outside strings. A request is at most a batch
// of objects holding scalars; a deeper text is refused before parsing.
constexpr int kMaxDepth = 16;
bool TooDeep(std::string_view text) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxDepth) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

json ErrorObject(const json& id, int code, std::string_view message) {
  return json{{"jsonrpc", "2.0"}, {"id", id}, {"error", {{"code", code}, {"message", std::string(message)}}}};
}

bool ValidId(const json& id) { return id.is_string() || id.is_number_integer() || id.is_number_unsigned() || id.is_null(); }

}  // namespace

int CodeFor(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: return kInvalidParams;
    case absl::StatusCode::kNotFound: return kNotFound;
    case absl::StatusCode::kAlreadyExists: return kAlreadyExists;
    case absl::StatusCode::kFailedPrecondition: return kFailedPrecondition;
    case absl::StatusCode::kResourceExhausted: return kTooManyClients;
    case absl::StatusCode::kUnavailable: return kUnavailable;
    case absl::StatusCode::kInternal: return kInternalError;
    default: return kServerError;
  }
}

std::string ErrorReply(const json& id, int code, std::string_view message) {
  return Dump(ErrorObject(id, code, message));
}

void Dispatcher::Add(std::string method, Handler handler) { methods_[std::move(method)] = std::move(handler); }

std::vector<std::string> Dispatcher::Methods() const {
  std::vector<std::string> out;
  for (const auto& [name, h] : methods_) out.push_back(name);
  return out;
}

json Dispatcher::HandleOne(const json& req, bool* is_notification) const {
  *is_notification = false;
  if (!req.is_object()) return ErrorObject(nullptr, kInvalidRequest, absl::StrCat("a request is an object, not ", KindName(req)));
  json id = nullptr;
  if (auto it = req.find("id"); it != req.end()) {
    if (!ValidId(*it))
      return ErrorObject(nullptr, kInvalidRequest, absl::StrCat("id: ", Show(*it), " is not a string, an integer or null"));
    id = *it;
  } else {
    *is_notification = true;
  }
  auto fail = [&](int code, std::string_view msg) {
    // A malformed request is answered even without an id (with id null).
    *is_notification = false;
    return ErrorObject(id, code, msg);
  };
  auto v = req.find("jsonrpc");
  if (v == req.end() || !v->is_string() || *v != "2.0") return fail(kInvalidRequest, "jsonrpc: must be \"2.0\"");
  auto m = req.find("method");
  if (m == req.end() || !m->is_string()) return fail(kInvalidRequest, "method: missing or not a string");
  for (const auto& [key, val] : req.items())
    if (key != "jsonrpc" && key != "method" && key != "params" && key != "id")
      return fail(kInvalidRequest, absl::StrCat("unknown member '", key, "' (jsonrpc, method, params, id)"));
  const std::string& method = m->get_ref<const std::string&>();
  static const json kEmpty = json::object();
  const json* params = &kEmpty;
  if (auto p = req.find("params"); p != req.end()) {
    if (!p->is_object())
      return fail(kInvalidParams, absl::StrCat("params: must be an object (parameters by name), not ", KindName(*p)));
    params = &*p;
  }
  auto h = methods_.find(method);
  if (h == methods_.end()) {
    std::string names;
    for (const auto& [name, fn] : methods_) absl::StrAppend(&names, names.empty() ? "" : ", ", name);
    return fail(kMethodNotFound, absl::StrCat("unknown method ", Show(*m), " (", names, ")"));
  }
  absl::StatusOr<json> result;
  try {
    result = h->second(*params);
  } catch (const std::exception& e) {
    result = absl::InternalError(absl::StrCat(method, ": ", e.what()));
  }
  if (*is_notification) return nullptr;
  if (!result.ok()) return ErrorObject(id, CodeFor(result.status()), std::string(result.status().message()));
  return json{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(*result)}};
}

std::string Dispatcher::Handle(std::string_view message) const {
  if (TooDeep(message)) return ErrorReply(nullptr, kParseError, absl::StrCat("nested deeper than ", kMaxDepth, " levels"));
  json req;
  try {
    req = json::parse(message.begin(), message.end());
  } catch (const json::exception& e) {
    std::string what = e.what();
    // "[json.exception.parse_error.101] parse error at line 1, ...": keep the part after the tag.
    if (auto pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
    return ErrorReply(nullptr, kParseError, absl::StrCat("not JSON: ", what));
  }
  if (!req.is_array()) {
    bool note = false;
    json reply = HandleOne(req, &note);
    return note ? std::string() : Dump(reply);
  }
  if (req.empty()) return ErrorReply(nullptr, kInvalidRequest, "an empty batch");
  if (req.size() > kMaxBatch)
    return ErrorReply(nullptr, kInvalidRequest, absl::StrCat("a batch of ", req.size(), " requests (at most ", kMaxBatch, ")"));
  json replies = json::array();
  for (const json& one : req) {
    bool note = false;
    json reply = HandleOne(one, &note);
    if (!note) replies.push_back(std::move(reply));
  }
  return replies.empty() ? std::string() : Dump(replies);
}

// ---- Params ---------------------------------------------------------------------------------

const json* Params::Find(const std::string& key) const {
  used_[key] = true;
  auto it = p_.find(key);
  return it == p_.end() ? nullptr : &*it;
}

absl::StatusOr<std::string> Params::String(const std::string& key) const {
  const json* v = Find(key);
  if (!v) return absl::InvalidArgumentError(absl::StrCat("params.", key, ": required"));
  if (!v->is_string()) return absl::InvalidArgumentError(absl::StrCat("params.", key, ": ", Show(*v), " is not a string"));
  std::string s = v->get<std::string>();
  if (s.find('\0') != std::string::npos)
    return absl::InvalidArgumentError(absl::StrCat("params.", key, ": ", Show(*v), " holds a NUL character"));
  return s;
}

absl::StatusOr<std::string> Params::String(const std::string& key, const std::string& dflt) const {
  if (!p_.contains(key)) {
    used_[key] = true;
    return dflt;
  }
  return String(key);
}

absl::StatusOr<uint64_t> Params::Uint(const std::string& key, uint64_t min, uint64_t max) const {
  const json* v = Find(key);
  if (!v) return absl::InvalidArgumentError(absl::StrCat("params.", key, ": required"));
  uint64_t n = 0;
  if (v->is_number_unsigned()) n = v->get<uint64_t>();
  else if (v->is_number_integer() && v->get<int64_t>() >= 0) n = static_cast<uint64_t>(v->get<int64_t>());
  else return absl::InvalidArgumentError(absl::StrCat("params.", key, ": ", Show(*v), " is not an unsigned integer"));
  if (n < min || n > max)
    return absl::InvalidArgumentError(absl::StrCat("params.", key, ": ", n, " is not in ", min, "..", max));
  return n;
}

absl::StatusOr<uint64_t> Params::Uint(const std::string& key, uint64_t dflt, uint64_t min, uint64_t max) const {
  if (!p_.contains(key)) {
    used_[key] = true;
    return dflt;
  }
  return Uint(key, min, max);
}

absl::StatusOr<bool> Params::Bool(const std::string& key) const {
  const json* v = Find(key);
  if (!v) return absl::InvalidArgumentError(absl::StrCat("params.", key, ": required"));
  if (!v->is_boolean()) return absl::InvalidArgumentError(absl::StrCat("params.", key, ": ", Show(*v), " is not true or false"));
  return v->get<bool>();
}

absl::Status Params::CheckAllUsed() const {
  for (const auto& [key, val] : p_.items())
    if (!used_.count(key)) return absl::InvalidArgumentError(absl::StrCat("params.", key, ": unknown parameter"));
  return absl::OkStatus();
}

absl::StatusOr<Options> ToOptions(const json& params, const std::string& origin,
                                  std::initializer_list<std::string_view> skip) {
  std::map<std::string, std::string> kv;
  for (const auto& [key, v] : params.items()) {
    bool skipped = false;
    for (std::string_view s : skip) skipped |= key == s;
    if (skipped) continue;
    std::string text;
    if (v.is_string() && v.get_ref<const std::string&>().find('\0') == std::string::npos) text = v.get<std::string>();
    else if (v.is_boolean()) text = v.get<bool>() ? "on" : "off";
    else if (v.is_number_unsigned()) text = std::to_string(v.get<uint64_t>());
    else if (v.is_number_integer() && v.get<int64_t>() >= 0) text = std::to_string(v.get<int64_t>());
    else
      return absl::InvalidArgumentError(absl::StrCat(origin, ": params.", key, ": ", Show(v),
                                                     " is not a string (without NUL), an unsigned integer or a boolean"));
    kv[key] = std::move(text);
  }
  return Options(origin, std::move(kv));
}

}  // namespace vioport::vios::rpc
