// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/registry.h"

#include <deque>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace vioport {
namespace {

// Registration happens at start (RegisterBuiltinTransports) before any
// lookup; the deques keep the pointers handed out stable.
std::deque<DeviceTransport>& Devices() {
  static auto* d = new std::deque<DeviceTransport>;
  return *d;
}
std::deque<GuestTransport>& Guests() {
  static auto* g = new std::deque<GuestTransport>;
  return *g;
}

std::string Indent(const std::string& text, int n) {
  std::string out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty()) continue;
    absl::StrAppend(&out, std::string(n, ' '), line, "\n");
  }
  return out;
}

// `head` then the options, required first, each optional one in brackets;
// lines wrapped before 100 columns, continued 4 spaces further in.
std::string Synopsis(int indent, const std::string& head, const std::vector<OptionSpec>& specs) {
  std::vector<std::string> parts;
  for (const OptionSpec& s : specs)
    if (s.required) parts.push_back(absl::StrCat(",", s.Synopsis()));
  for (const OptionSpec& s : specs)
    if (!s.required) parts.push_back(absl::StrCat("[,", s.Synopsis(), "]"));
  std::string out = absl::StrCat(std::string(indent, ' '), head);
  size_t line = out.size();
  for (const std::string& p : parts) {
    if (line + p.size() > 100) {
      absl::StrAppend(&out, "\n", std::string(indent + 4, ' '));
      line = indent + 4;
    }
    absl::StrAppend(&out, p);
    line += p.size();
  }
  return out + "\n";
}

}  // namespace

void RegisterDeviceTransport(DeviceTransport t) {
  for (const auto& d : Devices())
    if (d.name == t.name) return;
  Devices().push_back(std::move(t));
}

void RegisterGuestTransport(GuestTransport t) {
  for (const auto& g : Guests())
    if (g.name == t.name) return;
  Guests().push_back(std::move(t));
}

const DeviceTransport* FindDeviceTransport(const std::string& name) {
  for (const auto& d : Devices())
    if (d.name == name) return &d;
  return nullptr;
}

const GuestTransport* FindGuestTransport(const std::string& name) {
  for (const auto& g : Guests())
    if (g.name == name) return &g;
  return nullptr;
}

std::vector<const DeviceTransport*> DeviceTransports() {
  std::vector<const DeviceTransport*> out;
  for (const auto& d : Devices()) out.push_back(&d);
  return out;
}

std::vector<const GuestTransport*> GuestTransports() {
  std::vector<const GuestTransport*> out;
  for (const auto& g : Guests()) out.push_back(&g);
  return out;
}

std::vector<OptionSpec> GuestFlagSpecs() {
  std::vector<OptionSpec> out;
  for (const auto& g : Guests())
    for (const OptionSpec& f : g.flags) {
      bool dup = false;
      for (const OptionSpec& o : out) dup |= o.key == f.key;
      if (!dup) out.push_back(f);
    }
  return out;
}

absl::StatusOr<std::string> DeviceEndpointAffinity(const std::string& name, const Options& o) {
  const DeviceTransport* t = FindDeviceTransport(name);
  if (!t || !t->affinity) return std::string();  // unknown transports fail in MakeDeviceEndpoint
  Options copy = o;
  auto values = OptionValues::Check(copy, t->options);
  if (!values.ok()) return values.status();
  return t->affinity(*values);
}

absl::StatusOr<std::unique_ptr<DeviceEndpoint>> MakeDeviceEndpoint(const std::string& name, EndpointContext& ctx,
                                                                   Options& o) {
  const DeviceTransport* t = FindDeviceTransport(name);
  if (!t) {
    std::vector<std::string> names;
    for (const auto& d : Devices()) names.push_back(d.name);
    return absl::InvalidArgumentError(
        absl::StrCat(o.origin(), ": unknown transport '", name, "' (this build serves: ", absl::StrJoin(names, ", "), ")"));
  }
  auto values = OptionValues::Check(o, t->options);
  if (!values.ok()) return values.status();
  auto e = t->make(ctx, *values);
  if (!e.ok()) return absl::Status(e.status().code(), absl::StrCat(o.origin(), ": ", e.status().message()));
  return e;
}

absl::StatusOr<GuestLink> ConnectGuest(const std::string& spec, GuestContext ctx) {
  const std::string origin = absl::StrCat("--transport ", spec);
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const GuestTransport* t = FindGuestTransport(name);
  if (!t) {
    std::vector<std::string> names;
    for (const auto& g : Guests()) names.push_back(absl::StrCat(g.name, ":", g.channel));
    return absl::InvalidArgumentError(absl::StrCat(origin, ": unknown transport '", name, "' (this build speaks ",
                                                   absl::StrJoin(names, ", "), ")"));
  }
  const std::string rest = colon == std::string::npos ? "" : spec.substr(colon + 1);
  std::string channel = rest;
  std::map<std::string, std::string> kv;
  if (!t->options.empty() && !rest.empty()) {
    if (absl::Status s = SplitKeyValues(rest, "--transport", t->channel, &channel, &kv); !s.ok())
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": ", absl::StripPrefix(s.message(), absl::StrCat("--transport ", rest, ": "))));
  }
  if (channel.empty())
    return absl::InvalidArgumentError(absl::StrCat(origin, ": needs ", name, ":", t->channel));
  Options o(origin, std::move(kv));
  auto values = OptionValues::Check(o, t->options);
  if (!values.ok()) return values.status();
  if (!ctx.memory_bytes) ctx.memory_bytes = t->default_memory_bytes;
  auto link = t->connect(ctx, channel, *values);
  if (!link.ok()) {
    // Keep the code (bad usage, unreachable, refused) and say which transport.
    if (absl::StartsWith(link.status().message(), origin)) return link.status();
    return absl::Status(link.status().code(), absl::StrCat(origin, ": ", link.status().message()));
  }
  return link;
}

std::string DeviceTransportsHelp(int indent) {
  std::string out;
  for (const auto& d : Devices()) {
    absl::StrAppend(&out, Synopsis(indent, absl::StrCat("ID,transport=", d.name), d.options));
    absl::StrAppend(&out, Indent(d.help, indent + 4));
    absl::StrAppend(&out, OptionsHelp(d.options, indent + 4));
  }
  return out;
}

std::string GuestTransportsHelp(int indent) {
  std::string out;
  for (const auto& g : Guests()) {
    absl::StrAppend(&out, Synopsis(indent, absl::StrCat("--transport ", g.name, ":", g.channel), g.options));
    absl::StrAppend(&out, Indent(g.help, indent + 4));
    absl::StrAppend(&out, OptionsHelp(g.options, indent + 4));
    if (!g.flags.empty()) {
      std::vector<OptionSpec> flags = g.flags;
      for (OptionSpec& f : flags) f.key = "--" + f.key;
      absl::StrAppend(&out, OptionsHelp(flags, indent + 4));
    }
    absl::StrAppendFormat(&out, "%*s(--memory default: %u MiB)\n", indent + 4, "", g.default_memory_bytes >> 20);
  }
  return out;
}

}  // namespace vioport
