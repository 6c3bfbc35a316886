// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the option parsing that every transport's options go
// through on their way in from vios's command line, its TOML file and its
// control socket (`viosctl attach ...`), and from vioguest's --transport:
// SplitKeyValues, ParseUint and OptionValues::Check against what each
// registered transport declared (vioport/transports/options.h).
//
// Input: text. Its first byte picks a transport (device half or guest half)
// of the registry; the rest is the "first,KEY=VALUE,..." text as --attach
// or --transport would carry it.
// Checked besides ASan/UBSan: a refusal is InvalidArgument and names where
// the options came from; an acceptance has every declared key, every
// number within its declared range, every string among its declared
// choices, and only keys that were declared; ParseUint agrees with itself
// (a number it accepts prints back to itself and parses the same).
#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "vioport/transports/registry.h"

namespace {

using namespace vioport;

void CheckAgainst(const std::vector<OptionSpec>& specs, const std::map<std::string, std::string>& kv) {
  Options o("fuzz origin", kv);
  auto v = OptionValues::Check(o, specs);
  if (!v.ok()) {
    if (!absl::IsInvalidArgument(v.status()) || !absl::StartsWith(v.status().message(), "fuzz origin: "))
      __builtin_trap();
    return;
  }
  for (const auto& [k, val] : kv) {
    bool declared = false;
    for (const OptionSpec& s : specs) declared |= s.key == k;
    if (!declared) __builtin_trap();  // an unknown key must be refused
  }
  for (const OptionSpec& s : specs) {
    if (s.required && !v->given(s.key)) __builtin_trap();
    switch (s.kind) {
      case OptionSpec::Kind::kUint:
        if (v->given(s.key) && (v->num(s.key) < s.min || v->num(s.key) > s.max)) __builtin_trap();
        break;
      case OptionSpec::Kind::kString:
        if (v->given(s.key) && !s.choices.empty() &&
            std::find(s.choices.begin(), s.choices.end(), v->str(s.key)) == s.choices.end())
          __builtin_trap();
        break;
      case OptionSpec::Kind::kBool:
        if (v->str(s.key) != "on" && v->str(s.key) != "off") __builtin_trap();
        break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool registered = [] {
    RegisterBuiltinTransports();
    return true;
  }();
  (void)registered;
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::string first;
  std::map<std::string, std::string> kv;
  if (absl::Status s = SplitKeyValues(text, "--attach", "the device id", &first, &kv); !s.ok()) {
    if (!absl::IsInvalidArgument(s)) __builtin_trap();
    return 0;
  }
  for (const auto& [k, val] : kv) {
    uint64_t n;
    if (ParseUint(val, &n)) {
      uint64_t again;
      if (!ParseUint(absl::StrCat(n), &again) || again != n) __builtin_trap();
    }
  }
  const auto devices = DeviceTransports();
  const auto guests = GuestTransports();
  const size_t pick = data[0] % (devices.size() + guests.size());
  if (pick < devices.size()) CheckAgainst(devices[pick]->options, kv);
  else CheckAgainst(guests[pick - devices.size()]->options, kv);
  return 0;
}
