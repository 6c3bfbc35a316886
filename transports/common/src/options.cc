// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/options.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace vioport {

bool ParseUint(absl::string_view v, uint64_t* out) {
  unsigned shift = 0;
  if (!v.empty()) {
    switch (v.back()) {
      case 'k': case 'K': shift = 10; break;
      case 'm': case 'M': shift = 20; break;
      case 'g': case 'G': shift = 30; break;
      default: break;
    }
    if (shift) v.remove_suffix(1);
  }
  const bool hex = v.size() > 2 && v[0] == '0' && (v[1] == 'x' || v[1] == 'X');
  uint64_t n;
  if (!(hex ? absl::SimpleHexAtoi(v.substr(2), &n) : absl::SimpleAtoi(v, &n))) return false;
  if (shift && n > (UINT64_MAX >> shift)) return false;
  *out = n << shift;
  return true;
}

namespace {
absl::StatusOr<bool> ParseBool(absl::string_view text) {
  const std::string v = absl::AsciiStrToLower(text);
  if (v == "on" || v == "true" || v == "yes" || v == "1") return true;
  if (v == "off" || v == "false" || v == "no" || v == "0") return false;
  return absl::InvalidArgumentError("is not on/off");
}
}  // namespace

std::string OptionSpec::Synopsis() const { return absl::StrCat(key, "=", value); }

absl::Status Options::Error(const std::string& key, absl::string_view why) const {
  auto it = kv_.find(key);
  return absl::InvalidArgumentError(it == kv_.end()
                                        ? absl::StrCat(origin_, ": option '", key, "' ", why)
                                        : absl::StrCat(origin_, ": option '", key, "=", it->second, "' ", why));
}

absl::StatusOr<std::string> Options::String(const std::string& key, std::optional<std::string> dflt) {
  used_[key] = true;
  auto it = kv_.find(key);
  if (it != kv_.end()) return it->second;
  if (dflt) return *dflt;
  return Error(key, "is required");
}

absl::StatusOr<bool> Options::Bool(const std::string& key, bool dflt) {
  used_[key] = true;
  auto it = kv_.find(key);
  if (it == kv_.end()) return dflt;
  auto b = ParseBool(it->second);
  if (!b.ok()) return Error(key, b.status().message());
  return *b;
}

absl::StatusOr<uint64_t> Options::Uint(const std::string& key, uint64_t dflt, uint64_t min, uint64_t max) {
  used_[key] = true;
  auto it = kv_.find(key);
  if (it == kv_.end()) return dflt;
  uint64_t v;
  if (!ParseUint(it->second, &v)) return Error(key, "is not a number");
  if (v < min || v > max) return Error(key, absl::StrCat("is out of range (", min, "..", max, ")"));
  return v;
}

absl::Status Options::CheckAllUsed() const {
  for (const auto& [k, v] : kv_)
    if (!used_.count(k)) return absl::InvalidArgumentError(absl::StrCat(origin_, ": unknown option '", k, "=", v, "'"));
  return absl::OkStatus();
}

absl::StatusOr<OptionValues> OptionValues::Check(Options& o, std::span<const OptionSpec> specs) {
  OptionValues out;
  out.origin_ = o.origin();
  for (const OptionSpec& s : specs) {
    Value v;
    v.given = o.Has(s.key);
    if (!v.given && s.required) return o.Error(s.key, "is required");
    switch (s.kind) {
      case OptionSpec::Kind::kString: {
        auto r = o.String(s.key, s.dflt.value_or(""));
        if (!r.ok()) return r.status();
        if (v.given && !s.choices.empty() && std::find(s.choices.begin(), s.choices.end(), *r) == s.choices.end())
          return o.Error(s.key, absl::StrCat("is not ", absl::StrJoin(s.choices, ", ")));
        v.text = *r;
        break;
      }
      case OptionSpec::Kind::kBool: {
        auto dflt = ParseBool(s.dflt.value_or("off"));
        auto r = o.Bool(s.key, dflt.ok() && *dflt);
        if (!r.ok()) return r.status();
        v.number = *r;
        v.text = *r ? "on" : "off";
        break;
      }
      case OptionSpec::Kind::kUint: {
        uint64_t dflt = 0;
        if (s.dflt && !ParseUint(*s.dflt, &dflt)) dflt = 0;
        auto r = o.Uint(s.key, dflt, s.min, s.max);
        if (!r.ok()) return r.status();
        v.number = *r;
        v.text = absl::StrCat(*r);
        break;
      }
    }
    out.values_[s.key] = std::move(v);
  }
  if (absl::Status st = o.CheckAllUsed(); !st.ok()) return st;
  return out;
}

absl::Status OptionValues::Error(absl::string_view why) const {
  return absl::InvalidArgumentError(absl::StrCat(origin_, ": ", why));
}

const OptionValues::Value& OptionValues::Get(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) {
    std::fprintf(stderr, "vioport: option '%s' read but never declared (%s)\n", key.c_str(), origin_.c_str());
    std::abort();
  }
  return it->second;
}

absl::Status SplitKeyValues(absl::string_view text, absl::string_view what, absl::string_view first_name,
                            std::string* first, std::map<std::string, std::string>* kv) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, ',');
  if (parts.empty() || parts[0].empty() || parts[0].find('=') != absl::string_view::npos)
    return absl::InvalidArgumentError(absl::StrCat(what, " ", text, ": must start with ", first_name));
  *first = std::string(parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    if (parts[i].empty()) continue;
    const size_t eq = parts[i].find('=');
    if (eq == absl::string_view::npos || eq == 0)
      return absl::InvalidArgumentError(absl::StrCat(what, " ", text, ": '", parts[i], "' is not KEY=VALUE"));
    const std::string key(parts[i].substr(0, eq));
    if (kv->count(key)) return absl::InvalidArgumentError(absl::StrCat(what, " ", text, ": option '", key, "' given twice"));
    (*kv)[key] = std::string(parts[i].substr(eq + 1));
  }
  return absl::OkStatus();
}

std::string OptionsHelp(std::span<const OptionSpec> specs, int indent) {
  size_t width = 0;
  for (const OptionSpec& s : specs) width = std::max(width, s.Synopsis().size());
  std::string out;
  for (const OptionSpec& s : specs) {
    std::string help = s.help;
    if (s.required) absl::StrAppend(&help, " (required)");
    else if (s.dflt && s.kind != OptionSpec::Kind::kBool && !s.dflt->empty())
      absl::StrAppend(&help, " (default ", *s.dflt, ")");
    absl::StrAppendFormat(&out, "%*s%-*s  %s\n", indent, "", static_cast<int>(width), s.Synopsis(), help);
  }
  return out;
}

}  // namespace vioport
