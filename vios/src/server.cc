// SPDX-License-Identifier: Apache-2.0
#include "server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "boost/asio/local/stream_protocol.hpp"
#include "boost/asio/read_until.hpp"
#include "boost/asio/streambuf.hpp"
#include "boost/asio/write.hpp"
#include "vioport/backends/blk_device.h"
#include "vioport/backends/console_device.h"
#include "vioport/backends/net_device.h"
#include "vioport/backends/vsock_device.h"
#include "vioport/backends/rng_device.h"
#include "vioport/core/log.h"
#include "vioport/transports/registry.h"

namespace vioport::vios {

namespace asio = boost::asio;

namespace {

absl::StatusOr<std::shared_ptr<VirtioDevice>> MakeDevice(DeviceSpec& spec) {
  Options& o = spec.options;
  std::shared_ptr<VirtioDevice> dev;
  if (spec.type == "blk") {
    BlkOptions b;
    auto path = o.String("path");
    auto ro = o.Bool("readonly", false);
    auto nq = o.Uint("num-queues", 1, 1, 16);
    auto qs = o.Uint("queue-size", 1024, 1, 1024);
    auto serial = o.String("serial", "");
    auto seg = o.Uint("seg-max", 126, 1, 1024);
    auto size_max = o.Uint("size-max", 1 << 20, 4096, 1u << 31);
    auto aio = o.String("aio", "auto");
    if (!aio.ok()) return aio.status();
    if (*aio == "auto") b.io = BlkOptions::Io::kAuto;
    else if (*aio == "io_uring") b.io = BlkOptions::Io::kIoUring;
    else if (*aio == "inline") b.io = BlkOptions::Io::kInline;
    else return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": option 'aio=", *aio, "' is not auto, io_uring or inline"));
    for (const absl::Status& s : {path.status(), ro.status(), nq.status(), qs.status(), serial.status(), seg.status(),
                                  size_max.status()})
      if (!s.ok()) return s;
    if (*qs & (*qs - 1)) return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": option 'queue-size=", *qs, "' is not a power of 2"));
    if (serial->size() > 20)
      return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": option 'serial=", *serial, "' is longer than 20 bytes"));
    b.path = *path;
    b.read_only = *ro;
    b.num_queues = static_cast<uint16_t>(*nq);
    b.queue_size = static_cast<uint16_t>(*qs);
    b.serial = *serial;
    b.seg_max = static_cast<uint32_t>(*seg);
    b.size_max = static_cast<uint32_t>(*size_max);
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    auto d = BlkDevice::Open(b);
    if (!d.ok()) return absl::Status(d.status().code(), absl::StrCat(o.origin(), ": ", d.status().message()));
    dev = std::move(*d);
  } else if (spec.type == "rng") {
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    dev = std::make_shared<RngDevice>();
  } else if (spec.type == "console") {
    ConsoleOptions c;
    auto sock = o.String("socket", "");
    auto stdio = o.Bool("stdio", false);
    if (!sock.ok()) return sock.status();
    if (!stdio.ok()) return stdio.status();
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    if (sock->empty() == !*stdio)
      return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": give exactly one of socket=PATH or stdio=on"));
    c.socket_path = *sock;
    if (*stdio) {
      c.in_fd = STDIN_FILENO;
      c.out_fd = STDOUT_FILENO;
    }
    auto d = ConsoleDevice::Create(c);
    if (!d.ok()) return absl::Status(d.status().code(), absl::StrCat(o.origin(), ": ", d.status().message()));
    dev = std::move(*d);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(o.origin(), ": unknown device type '", spec.type, "' (blk, net, vsock, rng or console)"));
  }
  return dev;
}

std::string StatusBits(uint8_t s) {
  if (s == 0) return "reset";
  std::string out;
  auto add = [&](uint8_t bit, const char* name) {
    if (s & bit) absl::StrAppend(&out, out.empty() ? "" : "|", name);
  };
  add(status::kAcknowledge, "ACK");
  add(status::kDriver, "DRIVER");
  add(status::kFeaturesOk, "FEATURES_OK");
  add(status::kDriverOk, "DRIVER_OK");
  add(status::kDeviceNeedsReset, "NEEDS_RESET");
  add(status::kFailed, "FAILED");
  return out;
}

}  // namespace

struct Server::Control {
  asio::local::stream_protocol::acceptor acceptor;
  std::string path;
  explicit Control(asio::io_context& io) : acceptor(io) {}
};

Server::Server(asio::io_context& io) : io_(io) { RegisterBuiltinTransports(); }

Server::~Server() {
  if (control_) {
    boost::system::error_code ec;
    control_->acceptor.close(ec);
    ::unlink(control_->path.c_str());
  }
  // Attachments first (they reset the devices), then the devices, then
  // the uplinks and switches they were plugged into. A net device and its
  // switch hold each other (the device sends into the switch, the switch
  // holds the device's inbox): unplug before letting go of either.
  for (auto& [id, e] : devices_) e.attachment.reset();
  for (auto& [id, e] : devices_) Unplug(e);
  devices_.clear();
  vsock_hub_.reset();
  netdevs_.clear();
}

absl::Status Server::AddNetdev(DeviceSpec spec) {
  Options& o = spec.options;
  if (netdevs_.count(spec.id) || devices_.count(spec.id))
    return absl::AlreadyExistsError(absl::StrCat(o.origin(), ": id '", spec.id, "' already exists"));
  Netdev n;
  if (spec.type == "switch") {
    auto aging = o.Uint("aging", 300, 1, 86400);
    auto macs = o.Uint("max-macs", 4096, 1, 1 << 20);
    for (const absl::Status& s : {aging.status(), macs.status()})
      if (!s.ok()) return s;
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    Switch::Options so;
    so.id = spec.id;
    so.aging = absl::Seconds(*aging);
    so.max_macs = *macs;
    n.sw = std::make_shared<Switch>(so);
    VIOPORT_LOG(kInfo, "netdev ", spec.id, ": switch created");
  } else if (spec.type == "tap") {
    auto ifname = o.String("ifname");
    auto sw = o.String("switch");
    auto queues = o.Uint("queues", 1, 1, 16);
    auto vlan = o.Uint("vlan", 0, 0, 4094);
    auto trunk = o.Bool("trunk", false);
    for (const absl::Status& s : {ifname.status(), sw.status(), queues.status(), vlan.status(), trunk.status()})
      if (!s.ok()) return s;
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    auto it = netdevs_.find(*sw);
    if (it == netdevs_.end() || !it->second.sw)
      return absl::NotFoundError(absl::StrCat(o.origin(), ": no switch with id '", *sw, "'"));
    if (*trunk && *vlan) return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": give vlan=N or trunk=on, not both"));
    TapUplink::Options to;
    to.id = spec.id;
    to.ifname = *ifname;
    to.queues = static_cast<uint16_t>(*queues);
    to.vlan = static_cast<uint16_t>(*vlan);
    to.trunk = *trunk;
    auto t = TapUplink::Open(to, it->second.sw);
    if (!t.ok()) return absl::Status(t.status().code(), absl::StrCat(o.origin(), ": ", t.status().message()));
    n.tap = std::move(*t);
    n.switch_id = *sw;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": unknown netdev type '", spec.type, "' (switch or tap)"));
  }
  const std::string id = spec.id;
  n.spec = std::move(spec);
  netdevs_[id] = std::move(n);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<VirtioDevice>> Server::MakeNetDevice(DeviceSpec& spec, Entry* entry) {
  Options& o = spec.options;
  auto sw = o.String("switch");
  auto mac = o.String("mac", "52:54:00:12:34:56");
  auto queues = o.Uint("queues", 1, 1, 16);
  auto mtu = o.Uint("mtu", 1500, 68, 65535);
  auto vlan = o.Uint("vlan", 0, 0, 4094);
  auto lock = o.Bool("mac-lock", false);
  auto standby = o.Bool("standby", false);
  auto offloads = o.Bool("offloads", true);
  auto mrg = o.Bool("mrg-rxbuf", true);
  auto qs = o.Uint("queue-size", 1024, 1, 1024);
  for (const absl::Status& s : {sw.status(), mac.status(), queues.status(), mtu.status(), vlan.status(), lock.status(),
                                standby.status(), offloads.status(), mrg.status(), qs.status()})
    if (!s.ok()) return s;
  if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
  auto it = netdevs_.find(*sw);
  if (it == netdevs_.end() || !it->second.sw)
    return absl::NotFoundError(absl::StrCat(o.origin(), ": no switch with id '", *sw, "'"));
  NetOptions n;
  if (!net::ParseMac(*mac, &n.mac))
    return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": option 'mac=", *mac, "' is not a MAC address (52:54:00:12:34:56)"));
  n.max_pairs = static_cast<uint16_t>(*queues);
  n.mtu = static_cast<uint16_t>(*mtu);
  n.standby = *standby;
  n.offloads = *offloads;
  n.mrg_rxbuf = *mrg;
  n.max_queue_size = static_cast<uint16_t>(*qs);
  auto d = NetDevice::Create(n);
  if (!d.ok()) return absl::Status(d.status().code(), absl::StrCat(o.origin(), ": ", d.status().message()));
  std::shared_ptr<NetDevice> dev = std::move(*d);
  dev->set_mac_locked(*lock);
  Switch::PortOptions p;
  p.name = spec.id;
  p.inbox = std::shared_ptr<net::Inbox>(dev, &dev->inbox());
  p.mac = n.mac;
  p.mac_lock = *lock;
  p.vlan = static_cast<uint16_t>(*vlan);
  entry->sw = it->second.sw;
  entry->port = entry->sw->AddPort(std::move(p));
  dev->Plug(entry->sw, entry->port);
  return std::shared_ptr<VirtioDevice>(std::move(dev));
}

// A net device leaves its switch, a vsock device the hub: each holds the
// other (the device sends into it, it holds the device's inbox).
void Server::Unplug(Entry& e) {
  if (e.sw) {
    e.sw->RemovePort(e.port);
    if (auto* net = dynamic_cast<NetDevice*>(e.device.get())) net->Plug(nullptr, 0);
  }
  if (auto* vs = dynamic_cast<VsockDevice*>(e.device.get())) {
    vs->Plug(nullptr);
    if (vsock_hub_) vsock_hub_->RemoveGuest(e.vsock_cid);
  }
}

absl::StatusOr<std::shared_ptr<VirtioDevice>> Server::MakeVsockDevice(DeviceSpec& spec, Entry* entry) {
  Options& o = spec.options;
  auto cid = o.Uint("cid", 0, 3, 0xfffffffe);
  auto uds = o.String("uds-path", "");
  auto group = o.String("group", "");
  auto seq = o.Bool("seqpacket", true);
  auto qs = o.Uint("queue-size", 1024, 1, 1024);
  auto ba = o.Uint("buf-alloc", 1 << 20, vsock::kMaxPayload, 64u << 20);
  auto budget = o.Uint("host-budget", 64ull << 20, 0, 64ull << 30);
  for (const absl::Status& s :
       {cid.status(), uds.status(), group.status(), seq.status(), qs.status(), ba.status(), budget.status()})
    if (!s.ok()) return s;
  if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
  if (*cid == 0) return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": vsock needs cid=N (3..4294967294)"));
  if (!vsock_hub_) {
    auto h = VsockHub::Create({});
    if (!h.ok()) return h.status();
    vsock_hub_ = std::move(*h);
  }
  VsockOptions v;
  v.guest_cid = *cid;
  v.seqpacket = *seq;
  v.max_queue_size = static_cast<uint16_t>(*qs);
  auto d = VsockDevice::Create(v);
  if (!d.ok()) return absl::Status(d.status().code(), absl::StrCat(o.origin(), ": ", d.status().message()));
  std::shared_ptr<VsockDevice> dev = std::move(*d);
  VsockHub::Guest g;
  g.id = spec.id;
  g.cid = *cid;
  g.inbox = std::shared_ptr<vsock::Inbox>(dev, &dev->inbox());
  g.uds_path = *uds;
  g.buf_alloc = static_cast<uint32_t>(*ba);
  g.budget = *budget;
  if (!group->empty()) g.groups = absl::StrSplit(*group, '+', absl::SkipEmpty());
  if (absl::Status s = vsock_hub_->AddGuest(std::move(g)); !s.ok())
    return absl::Status(s.code(), absl::StrCat(o.origin(), ": ", s.message()));
  dev->Plug(vsock_hub_);
  entry->vsock_cid = *cid;
  return std::shared_ptr<VirtioDevice>(std::move(dev));
}

absl::Status Server::AddDevice(DeviceSpec spec) {
  if (devices_.count(spec.id) || netdevs_.count(spec.id))
    return absl::AlreadyExistsError(absl::StrCat(spec.options.origin(), ": device id '", spec.id, "' already exists"));
  Entry e;
  absl::StatusOr<std::shared_ptr<VirtioDevice>> dev =
      spec.type == "net" ? MakeNetDevice(spec, &e) : spec.type == "vsock" ? MakeVsockDevice(spec, &e) : MakeDevice(spec);
  if (!dev.ok()) return dev.status();
  VIOPORT_LOG(kInfo, "device ", spec.id, ": ", spec.type, " created");
  const std::string id = spec.id;
  e.spec = std::move(spec);
  e.device = std::move(*dev);
  devices_[id] = std::move(e);
  return absl::OkStatus();
}

absl::Status Server::NetAction(const std::string& id, const std::string& action) {
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("no device with id '", id, "'"));
  auto* net = dynamic_cast<NetDevice*>(it->second.device.get());
  if (!net) return absl::InvalidArgumentError(absl::StrCat("device '", id, "' is not a net device"));
  if (action == "up" || action == "down") net->SetLink(action == "up");
  else if (action == "announce") net->Announce();
  else return absl::InvalidArgumentError(absl::StrCat("unknown action '", action, "'"));
  return absl::OkStatus();
}

absl::Status Server::Attach(AttachSpec spec) {
  auto it = devices_.find(spec.device);
  if (it == devices_.end())
    return absl::NotFoundError(absl::StrCat(spec.options.origin(), ": no device with id '", spec.device, "'"));
  if (it->second.attachment)
    return absl::AlreadyExistsError(absl::StrCat(spec.options.origin(), ": device '", spec.device,
                                                 "' is already attached (a device has one driver)"));
  EndpointContext ctx{io_, it->second.device, absl::StrCat(spec.device, "@", spec.transport)};
  auto a = MakeDeviceEndpoint(spec.transport, ctx, spec.options);
  if (!a.ok()) return a.status();
  it->second.attachment = std::move(*a);
  it->second.transport = spec.transport;
  return absl::OkStatus();
}

absl::Status Server::Remove(const std::string& id) {
  if (auto n = netdevs_.find(id); n != netdevs_.end()) {
    if (n->second.sw) {
      for (const auto& [did, e] : devices_)
        if (e.sw == n->second.sw)
          return absl::FailedPreconditionError(absl::StrCat("switch '", id, "' still has device '", did, "' on it"));
      for (const auto& [nid, other] : netdevs_)
        if (other.tap && other.switch_id == id)
          return absl::FailedPreconditionError(absl::StrCat("switch '", id, "' still has uplink '", nid, "' on it"));
    }
    netdevs_.erase(n);
    VIOPORT_LOG(kInfo, "netdev ", id, ": removed");
    return absl::OkStatus();
  }
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("no device with id '", id, "'"));
  it->second.attachment.reset();  // drops the guest: the device is reset first
  Unplug(it->second);
  devices_.erase(it);
  VIOPORT_LOG(kInfo, "device ", id, ": removed");
  return absl::OkStatus();
}

std::string Server::List() const {
  // WHERE is as wide as the longest (some name a socket, a partition and a unit).
  int where = 44;
  for (const auto& [id, e] : devices_)
    if (e.attachment) where = std::max(where, static_cast<int>(e.attachment->where().size()));
  std::string out = absl::StrFormat("%-10s %-8s %-10s %-*s %-10s %s\n", "ID", "TYPE", "TRANSPORT", where, "WHERE",
                                    "GUEST", "STATUS");
  for (const auto& [id, n] : netdevs_) {
    const std::string desc = n.sw ? absl::StrCat(n.sw->num_ports(), " port(s), ", n.sw->learnt(), " MAC(s) learnt")
                                  : absl::StrCat("tap ", n.tap->ifname(), " on ", n.switch_id);
    absl::StrAppendFormat(&out, "%-10s %-8s %-10s %-*s %-10s %s\n", id, n.spec.type, "-", where, desc, "-", "-");
  }
  for (const auto& [id, e] : devices_) {
    const DeviceEndpoint* a = e.attachment.get();
    absl::StrAppendFormat(&out, "%-10s %-8s %-10s %-*s %-10s %s\n", id, e.spec.type, a ? a->mode() : "-", where,
                          a ? a->where() : "-", a ? (a->connected() ? "connected" : "waiting") : "-",
                          a ? StatusBits(a->device_status()) : "-");
  }
  return out;
}

absl::StatusOr<std::string> Server::Stats(const std::string& id) const {
  if (auto n = netdevs_.find(id); n != netdevs_.end()) {
    std::string out;
    if (n->second.sw) {
      absl::StrAppend(&out, id, ".ports ", n->second.sw->num_ports(), "\n");
      absl::StrAppend(&out, id, ".learnt ", n->second.sw->learnt(), "\n");
    } else {
      std::vector<std::pair<std::string, uint64_t>> c;
      n->second.tap->AppendCounters(&c);
      for (const auto& [k, v] : c) absl::StrAppend(&out, id, ".", k, " ", v, "\n");
    }
    return out;
  }
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("no device with id '", id, "'"));
  std::vector<std::pair<std::string, uint64_t>> c;
  it->second.device->AppendCounters(&c);
  std::string out;
  for (const auto& [k, v] : c) absl::StrAppend(&out, id, ".", k, " ", v, "\n");
  if (it->second.sw) {
    const Switch::PortStats p = it->second.sw->Stats(it->second.port);
    absl::StrAppend(&out, id, ".switch.drop_spoofed ", p.spoofed, "\n", id, ".switch.drop_bad_source ", p.bad_source,
                    "\n", id, ".switch.drop_vlan ", p.vlan_drops, "\n", id, ".switch.flooded ", p.flooded, "\n", id,
                    ".switch.unicast ", p.unicast, "\n");
  }
  if (it->second.vsock_cid && vsock_hub_) {
    std::vector<std::pair<std::string, uint64_t>> h;
    vsock_hub_->AppendCounters(it->second.vsock_cid, &h);
    for (const auto& [k, v] : h) absl::StrAppend(&out, id, ".", k, " ", v, "\n");
  }
  if (const DeviceEndpoint* a = it->second.attachment.get()) {
    CounterList counters;
    a->AppendCounters(&counters);
    for (const auto& [k, v] : counters) absl::StrAppend(&out, id, ".", it->second.transport, ".", k, " ", v, "\n");
    const std::string err = a->last_error();
    if (!err.empty()) absl::StrAppend(&out, id, ".last_error ", err, "\n");
  }
  return out;
}

std::string Server::Execute(const std::string& line) {
  std::vector<std::string> words = absl::StrSplit(absl::StripAsciiWhitespace(line), ' ', absl::SkipEmpty());
  auto done = [](const absl::Status& s, std::string body = "") {
    if (!s.ok()) return absl::StrCat(body, "error: ", s.message(), "\n");
    return absl::StrCat(body, "ok\n");
  };
  if (words.empty()) return done(absl::InvalidArgumentError("empty command"));
  const std::string& cmd = words[0];
  if (cmd == "list" && words.size() == 1) return done(absl::OkStatus(), List());
  if (cmd == "stats" && words.size() <= 2) {
    if (words.size() == 2) {
      auto s = Stats(words[1]);
      return s.ok() ? done(absl::OkStatus(), *s) : done(s.status());
    }
    std::string all;
    for (const auto& [id, n] : netdevs_) all += *Stats(id);
    for (const auto& [id, e] : devices_) all += *Stats(id);
    return done(absl::OkStatus(), all);
  }
  if (cmd == "add" && words.size() == 2) {
    auto d = ParseDevice(words[1]);
    return done(d.ok() ? AddDevice(std::move(*d)) : d.status());
  }
  if (cmd == "attach" && words.size() == 2) {
    auto a = ParseAttach(words[1]);
    return done(a.ok() ? Attach(std::move(*a)) : a.status());
  }
  if (cmd == "remove" && words.size() == 2) return done(Remove(words[1]));
  if (cmd == "netdev" && words.size() == 2) {
    auto d = ParseNetdev(words[1]);
    return done(d.ok() ? AddNetdev(std::move(*d)) : d.status());
  }
  if (cmd == "link" && words.size() == 3 && (words[2] == "up" || words[2] == "down"))
    return done(NetAction(words[1], words[2]));
  if (cmd == "announce" && words.size() == 2) return done(NetAction(words[1], "announce"));
  return done(absl::InvalidArgumentError(
      absl::StrCat("unknown command '", line,
                   "' (list, stats [ID], add DEVICE-SPEC, attach ATTACH-SPEC, remove ID, netdev NETDEV-SPEC, "
                   "link ID up|down, announce ID)")));
}

absl::Status Server::ListenControl(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return absl::AlreadyExistsError(absl::StrCat("--control ", path, ": exists and is not a socket"));
    ::unlink(path.c_str());
  }
  control_ = std::make_unique<Control>(io_);
  control_->path = path;
  boost::system::error_code ec;
  control_->acceptor.open(asio::local::stream_protocol(), ec);
  if (!ec) control_->acceptor.bind(asio::local::stream_protocol::endpoint(path), ec);
  if (!ec) control_->acceptor.listen(8, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("--control ", path, ": ", ec.message()));
  ::chmod(path.c_str(), 0600);
  AcceptControl();
  return absl::OkStatus();
}

namespace {
struct Session : std::enable_shared_from_this<Session> {
  asio::local::stream_protocol::socket sock;
  asio::streambuf in{4096};  // a command line is short; longer is refused
  std::string out;
  explicit Session(asio::local::stream_protocol::socket s) : sock(std::move(s)) {}
};
}  // namespace

void Server::AcceptControl() {
  control_->acceptor.async_accept([this](const boost::system::error_code& ec, asio::local::stream_protocol::socket sock) {
    if (ec == asio::error::operation_aborted) return;
    if (!ec) {
      auto s = std::make_shared<Session>(std::move(sock));
      asio::async_read_until(s->sock, s->in, '\n', [this, s](const boost::system::error_code& rec, size_t n) {
        if (rec) {
          if (rec != asio::error::not_found) return;
          s->out = "error: command too long\n";
        } else {
          std::string line(asio::buffers_begin(s->in.data()), asio::buffers_begin(s->in.data()) + n);
          s->out = Execute(line);
        }
        asio::async_write(s->sock, asio::buffer(s->out), [s](const boost::system::error_code&, size_t) {
          boost::system::error_code ignored;
          s->sock.shutdown(asio::socket_base::shutdown_both, ignored);
        });
      });
    }
    if (control_->acceptor.is_open()) AcceptControl();
  });
}

absl::Status Server::Shutdown() {
  if (control_) {
    boost::system::error_code ec;
    control_->acceptor.close(ec);
  }
  for (auto& [id, e] : devices_)
    if (e.attachment) e.attachment->StopAccepting();
  absl::Status result = absl::OkStatus();
  for (auto& [id, e] : devices_) {
    absl::Status s = e.attachment ? e.attachment->Quiesce() : e.device->Quiesce();
    if (!s.ok()) {
      VIOPORT_LOG(kError, "device ", id, ": ", s.message());
      result.Update(s);
    }
  }
  return result;
}

}  // namespace vioport::vios
