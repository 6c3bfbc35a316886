// SPDX-License-Identifier: Apache-2.0
// The Xen transport in vios and vioguest: their options, the backend host
// shared by every endpoint on one channel, and the guest connector. Channels
// come from the registry by name ("xen" here, "emu" from emulators/xen).
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/transports/xen_guest.h"
#include "vioport/transports/xen_server.h"

namespace vioport::xen {
namespace {

namespace asio = boost::asio;

// vios is ONE domain per channel (the emulator's socket, or real Xen): every
// xen endpoint naming the same channel shares its XenBackendHost - one
// domain connection, one xenstore connection, one event-channel dispatcher
// on the Asio loop.
std::map<std::string, std::weak_ptr<XenBackendHost>>& Hosts() {
  static auto* hosts = new std::map<std::string, std::weak_ptr<XenBackendHost>>;
  return *hosts;
}

absl::StatusOr<std::shared_ptr<XenBackendHost>> HostFor(asio::io_context& io, const std::string& channel,
                                                        const ChannelOptions& co) {
  auto* hosts = &Hosts();
  const std::string key = absl::StrCat(channel, "#", co.self);
  if (auto h = (*hosts)[key].lock()) return h;
  auto ch = OpenChannel(channel, co);
  if (!ch.ok()) return ch.status();
  auto h = XenBackendHost::Create(io, std::move(*ch));
  if (!h.ok()) return h.status();
  (*hosts)[key] = *h;
  return *h;
}

// Live upgrade, the new vios: the host the old one's first record on this
// channel carried (its domain), frozen until the commit.
absl::StatusOr<std::shared_ptr<XenBackendHost>> AdoptHost(asio::io_context& io, const std::string& channel,
                                                          const ChannelOptions& co, HandoverReader& in) {
  const std::string key = absl::StrCat(channel, "#", co.self);
  uint64_t carried = 0;
  if (absl::Status s = in.U64(&carried, 1, "domain carried"); !s.ok()) return s;
  if (!carried) {
    if (auto h = Hosts()[key].lock()) return h;
    return absl::InvalidArgumentError(absl::StrCat("xen domain ", key, " was not handed over before its device"));
  }
  if (Hosts()[key].lock()) return absl::AlreadyExistsError(absl::StrCat("xen domain ", key, " handed over twice"));
  const std::string name = channel.substr(0, channel.find(':'));
  const ChannelAdopter* adopt = XenChannelAdopters::Find(name);
  if (!adopt) return absl::FailedPreconditionError(absl::StrCat("this build cannot take over xen channel '", name, "'"));
  auto ch = (*adopt)(in);
  if (!ch.ok()) return ch.status();
  auto h = XenBackendHost::Create(io, std::move(*ch), /*frozen=*/true);
  if (!h.ok()) return h.status();
  Hosts()[key] = *h;
  return *h;
}

absl::StatusOr<std::unique_ptr<DeviceEndpoint>> MakeEndpoint(EndpointContext& ctx, const OptionValues& o) {
  ChannelOptions co;
  co.self = static_cast<DomId>(o.num("self"));
  co.memory_bytes = o.num("memory-mib") << 20;
  co.spin_us = static_cast<uint32_t>(o.num("spin-us"));
  auto host = ctx.handover ? AdoptHost(ctx.io, o.str("channel"), co, *ctx.handover) : HostFor(ctx.io, o.str("channel"), co);
  if (!host.ok()) return host.status();
  XenServerOptions xo;
  xo.name = ctx.name;
  xo.frontend = static_cast<DomId>(o.num("domid"));
  xo.devid = static_cast<uint32_t>(o.num("devid"));
  xo.copy = o.str("grants") == "copy";
  xo.cache_pages = static_cast<uint32_t>(o.num("cache-pages"));
  xo.spin_us = co.spin_us;
  xo.where = absl::StrFormat("%s dom%u dev%u grants=%s", o.str("channel"), xo.frontend, xo.devid, o.str("grants"));
  auto s = ctx.handover ? XenServer::Restore(*host, ctx.device, xo, *ctx.handover) : XenServer::Create(*host, ctx.device, xo);
  if (!s.ok()) return s.status();
  return std::unique_ptr<DeviceEndpoint>(std::move(*s));
}

absl::StatusOr<GuestLink> ConnectGuest(const GuestContext& ctx, const std::string& channel, const OptionValues& o) {
  ChannelOptions co;
  if (channel != "xen") {
    // The emulator needs to be told which domain this process is.
    if (!o.given("domid") || o.num("domid") == 0)
      return o.Error("domid=F (1..32751) is required with the emulator");
    co.self = static_cast<DomId>(o.num("domid"));
    co.grant_pages = static_cast<uint32_t>(*ctx.memory_bytes / 4096);
    co.memory_bytes = 4 << 20;
  }
  auto ch = OpenChannel(channel, co);
  if (!ch.ok()) return ch.status();
  std::shared_ptr<XenChannel> channel_owner = std::move(*ch);
  XenGuestOptions g;
  g.devid = static_cast<uint32_t>(o.num("devid"));
  return LinkOf(XenDriverTransport::Connect(*channel_owner, g), channel_owner);
}

}  // namespace
}  // namespace vioport::xen

namespace vioport {

void RegisterXenTransport() {
  using O = OptionSpec;
  xen::RegisterLibxenChannel();
  RegisterDeviceTransport(
      {"xen",
       "Xen: serve frontend domain F's virtio device N over grants, event channels\n"
       "and xenstore (docs/transports/xen.md). channel: emu:SOCKET joins the\n"
       "xenemud emulator (xenemud --domains SOCKET) as domain B (self=B, default\n"
       "0 = dom0; memory-mib of RAM from the first endpoint); xen uses real Xen\n"
       "through libxen (docs/transports/xen-real.md). vios writes both xenstore\n"
       "directories as the toolstack would. grants=map keeps up to cache-pages\n"
       "persistent mappings, then grant-copies; grants=copy copies every access",
       {O::String("channel", "emu:SOCKET|xen", "the Xen channel").Required(),
        O::Uint("domid", "F", 1, 0x7fef, "the frontend domain").Required(),
        O::Uint("devid", "N", 0, 0xffff, "the frontend's virtio device number").Default(0),
        O::String("grants", "map|copy", "how vios reaches the frontend's pages").Default("map").Choices({"map", "copy"}),
        O::Uint("cache-pages", "N", 0, 1 << 20, "persistent mappings kept (grants=map)").Default(4096),
        O::Uint("self", "B", 0, 0x7fef, "vios's own domain on the emulator").Default(0),
        O::Uint("memory-mib", "N", 1, 1 << 16, "vios's domain RAM on the emulator").Default(64),
        O::Uint("spin-us", "N", 0, 1000,
                "keep serving N us past the last request (a notification through the hypervisor costs about 100)")
            .Default(100)},
       xen::MakeEndpoint,
       // One XenBackendHost per (channel, domain) serves all its devices: one thread.
       [](const OptionValues& o) { return absl::StrCat(o.str("channel"), "#", o.num("self")); }});
  RegisterGuestTransport(
      {"xen", "emu:SOCKET|xen",
       "Xen grants: this process is frontend domain F of the xenemud emulator\n"
       "(xenemud --domains SOCKET; --memory MiB of grantable pages), or a real Xen\n"
       "domain through libxen, and drives its virtio device N as vios --attach\n"
       "...,transport=xen,domid=F set it up",
       {O::Uint("domid", "F", 1, 0x7fef, "this process's domain (the emulator)"),
        O::Uint("devid", "N", 0, 0xffff, "the virtio device number").Default(0)},
       {},
       // Grantable pages are scarce (gntalloc's limit; one file descriptor
       // each in the emulator).
       16 << 20,
       xen::ConnectGuest});
}

}  // namespace vioport
