// SPDX-License-Identifier: Apache-2.0
// KEY=VALUE options checked against what a transport declares: each option's
// type, range, choices, default and whether it is required. vios's --attach
// (and its TOML [[attach]] tables, and viosctl attach) and vioguest's
// --transport are parsed with these, and their --help is written from the
// same declarations, so a transport states its options once.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace vioport {

struct OptionSpec {
  enum class Kind { kString, kBool, kUint };
  std::string key;
  Kind kind = Kind::kString;
  std::string value;  // how the synopsis shows the value: SOCKET, N, map|copy, on
  std::string help;   // one line for --help
  std::optional<std::string> dflt;  // the default, as text; none and not required: absent
  bool required = false;
  uint64_t min = 0, max = UINT64_MAX;  // kUint
  std::vector<std::string> choices;    // kString: the values allowed (empty: any)

  static OptionSpec String(std::string key, std::string value, std::string help) {
    return Make(std::move(key), Kind::kString, std::move(value), std::move(help));
  }
  static OptionSpec Bool(std::string key, bool dflt, std::string help) {
    OptionSpec o = Make(std::move(key), Kind::kBool, dflt ? "off" : "on", std::move(help));
    o.dflt = dflt ? "on" : "off";
    return o;
  }
  static OptionSpec Uint(std::string key, std::string value, uint64_t min, uint64_t max, std::string help) {
    OptionSpec o = Make(std::move(key), Kind::kUint, std::move(value), std::move(help));
    o.min = min;
    o.max = max;
    return o;
  }
  OptionSpec& Required() {
    required = true;
    return *this;
  }
  OptionSpec& Default(std::string v) {
    dflt = std::move(v);
    return *this;
  }
  OptionSpec& Default(uint64_t v) { return Default(std::to_string(v)); }
  OptionSpec& Choices(std::vector<std::string> c) {
    choices = std::move(c);
    return *this;
  }
  // "key=VALUE" as the synopsis shows it ("poll=on" for a bool that is off by default).
  std::string Synopsis() const;

 private:
  static OptionSpec Make(std::string key, Kind kind, std::string value, std::string help) {
    OptionSpec o;
    o.key = std::move(key);
    o.kind = kind;
    o.value = std::move(value);
    o.help = std::move(help);
    return o;
  }
};

// Raw key=value options with typed, checked access. `origin` says where they
// came from ("--attach d0,transport=shm,..." or "vios.toml: attach #2"); every
// error names it, the option and its value.
class Options {
 public:
  Options() = default;
  Options(std::string origin, std::map<std::string, std::string> kv) : origin_(std::move(origin)), kv_(std::move(kv)) {}

  const std::string& origin() const { return origin_; }
  bool Has(const std::string& key) const { return kv_.count(key) != 0; }
  absl::StatusOr<std::string> String(const std::string& key, std::optional<std::string> dflt = std::nullopt);
  absl::StatusOr<bool> Bool(const std::string& key, bool dflt);
  absl::StatusOr<uint64_t> Uint(const std::string& key, uint64_t dflt, uint64_t min, uint64_t max);
  // After the last Get: an option nobody asked for is an error.
  absl::Status CheckAllUsed() const;
  const std::map<std::string, std::string>& all() const { return kv_; }
  absl::Status Error(const std::string& key, absl::string_view why) const;

 private:
  std::string origin_;
  std::map<std::string, std::string> kv_;
  std::map<std::string, bool> used_;
};

// Options checked against a declaration: every key known, every required one
// given, every value of its type, in range and among its choices. The
// accessors then cannot fail (asking for an undeclared key is a bug: abort).
class OptionValues {
 public:
  static absl::StatusOr<OptionValues> Check(Options& options, std::span<const OptionSpec> specs);

  const std::string& str(const std::string& key) const { return Get(key).text; }
  bool flag(const std::string& key) const { return Get(key).number != 0; }
  uint64_t num(const std::string& key) const { return Get(key).number; }
  // Whether the option was given (not defaulted).
  bool given(const std::string& key) const { return Get(key).given; }
  const std::string& origin() const { return origin_; }
  // An error about this set of options, naming where they came from.
  absl::Status Error(absl::string_view why) const;

 private:
  struct Value {
    std::string text;
    uint64_t number = 0;
    bool given = false;
  };
  const Value& Get(const std::string& key) const;
  std::string origin_;
  std::map<std::string, Value> values_;
};

// "first,k=v,k=v" -> first element and the map; `what` names the flag for
// messages. An empty first element, a duplicate key or a part without '='
// is an error.
absl::Status SplitKeyValues(absl::string_view text, absl::string_view what, absl::string_view first_name,
                            std::string* first, std::map<std::string, std::string>* kv);

// Parses "123", "0x7b", "4K", "16M", "1G" (powers of 2); false for anything else.
bool ParseUint(absl::string_view text, uint64_t* out);

// Help text for a list of options: one "key=VALUE  help (default D)" line each,
// indented by `indent`.
std::string OptionsHelp(std::span<const OptionSpec> specs, int indent);

}  // namespace vioport
