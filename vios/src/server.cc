// SPDX-License-Identifier: Apache-2.0
#include "server.h"

#include "control.h"
#include "metrics.h"
#include "reactor.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <map>
#include <memory>

#include "absl/strings/numbers.h"
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

absl::StatusOr<std::shared_ptr<VirtioDevice>> MakeDevice(DeviceSpec& spec, bool adopt_host) {
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
    c.adopt = adopt_host && !*stdio;
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

}  // namespace

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

std::string DescriptorHint(int err) {
  if (err != EMFILE && err != ENFILE) return "";
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  if (err == ENFILE) return " (the system's file table is full: fs.file-max)";
  return absl::StrCat(" (vios may open ", rl.rlim_cur, " file descriptors, RLIMIT_NOFILE; an idle device takes 2: "
                      "raise the hard limit, e.g. LimitNOFILE= or ulimit -Hn, and restart vios)");
}

namespace {
// An error that ran out of descriptors says which limit and how to raise it.
absl::Status WithDescriptorHint(absl::Status s) {
  if (s.ok()) return s;
  const std::string m(s.message());
  if (m.find(std::strerror(EMFILE)) != std::string::npos)
    return absl::Status(s.code(), absl::StrCat(m, DescriptorHint(EMFILE)));
  if (m.find(std::strerror(ENFILE)) != std::string::npos)
    return absl::Status(s.code(), absl::StrCat(m, DescriptorHint(ENFILE)));
  return s;
}
}  // namespace

Server::Server(asio::io_context& io) : io_(io) {
  RegisterBuiltinTransports();
  RegisterMethods();
}

Server::~Server() {
  StopControl();
  // Attachments first (they reset the devices), then the devices, then
  // the uplinks and switches they were plugged into. A net device and its
  // switch hold each other (the device sends into the switch, the switch
  // holds the device's inbox): unplug before letting go of either.
  for (auto& [id, e] : devices_) DropAttachment(e);
  for (auto& [id, e] : devices_) Unplug(e);
  devices_.clear();
  vsock_hub_.reset();
  netdevs_.clear();
  reactors_.clear();  // stops and joins their threads
}

absl::Status Server::StartReactors(size_t n, const std::vector<int>& cpus) {
  if (!reactors_.empty()) return absl::FailedPreconditionError("reactors already started");
  for (const auto& [id, e] : devices_)
    if (e.attachment) return absl::FailedPreconditionError("reactors must start before devices are attached");
  if (!cpus.empty()) n = cpus.size();
  if (n <= 1 && cpus.empty()) return absl::OkStatus();  // one loop: the control loop serves every device
  for (size_t i = 0; i < n; ++i) {
    reactors_.push_back(std::make_unique<Reactor>(static_cast<int>(i), cpus.empty() ? -1 : cpus[i]));
    reactors_.back()->Start();
    if (reactors_.back()->cpu >= 0 && !reactors_.back()->pinned)
      return absl::InvalidArgumentError(absl::StrCat("--cpus: cannot pin reactor ", i, " to CPU ", cpus[i]));
  }
  VIOPORT_LOG(kInfo, "reactors: ", n, " event-loop threads", cpus.empty() ? "" : " (pinned)");
  return absl::OkStatus();
}

asio::io_context& Server::IoFor(int reactor) {
  return reactor < 0 ? io_ : reactors_[static_cast<size_t>(reactor)]->io;
}

// Destroys e's attachment on the thread that serves it (the guest is dropped,
// the device reset).
void Server::DropAttachment(Entry& e) {
  if (!e.attachment) return;
  OnDeviceThread(e, [&e] { e.attachment.reset(); });
  if (e.reactor >= 0 && static_cast<size_t>(e.reactor) < reactors_.size()) --reactors_[e.reactor]->devices;
  e.reactor = -1;
}

rpc::json Server::ReactorList() const {
  rpc::json out = rpc::json::array();
  for (const auto& r : reactors_) {
    // CPU time of the reactor's thread (utime + stime, clock ticks).
    double cpu_seconds = -1;
    if (FILE* f = std::fopen(absl::StrCat("/proc/self/task/", r->tid, "/stat").c_str(), "r")) {
      char buf[1024];
      const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
      std::fclose(f);
      buf[n] = 0;
      if (const char* p = std::strrchr(buf, ')')) {
        unsigned long long ut = 0, st = 0;
        // After "(comm)": state, then fields 4..13; utime and stime are 14 and 15.
        if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2)
          cpu_seconds = static_cast<double>(ut + st) / static_cast<double>(::sysconf(_SC_CLK_TCK));
      }
    }
    rpc::json devices = rpc::json::array();
    for (const auto& [id, e] : devices_)
      if (e.reactor == r->index) devices.push_back(id);
    out.push_back({{"id", r->index}, {"cpu", r->cpu >= 0 ? rpc::json(r->cpu) : rpc::json(nullptr)},
                   {"tid", r->tid}, {"devices", std::move(devices)}, {"cpu_seconds", cpu_seconds}});
  }
  return out;
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

absl::Status Server::AddDevice(DeviceSpec spec, bool adopt_host) {
  if (devices_.count(spec.id) || netdevs_.count(spec.id))
    return absl::AlreadyExistsError(absl::StrCat(spec.options.origin(), ": device id '", spec.id, "' already exists"));
  Entry e;
  absl::StatusOr<std::shared_ptr<VirtioDevice>> dev =
      spec.type == "net" ? MakeNetDevice(spec, &e) : spec.type == "vsock" ? MakeVsockDevice(spec, &e) : MakeDevice(spec, adopt_host);
  if (!dev.ok()) return WithDescriptorHint(dev.status());
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

absl::Status Server::Attach(AttachSpec spec, HandoverReader* handover) {
  auto it = devices_.find(spec.device);
  if (it == devices_.end())
    return absl::NotFoundError(absl::StrCat(spec.options.origin(), ": no device with id '", spec.device, "'"));
  if (it->second.attachment)
    return absl::AlreadyExistsError(absl::StrCat(spec.options.origin(), ": device '", spec.device,
                                                 "' is already attached (a device has one driver)"));
  // reactor=K is vios's, not the transport's: taken out before the transport sees the options.
  std::map<std::string, std::string> kv = spec.options.all();
  int reactor = -1;
  if (auto r = kv.find("reactor"); r != kv.end()) {
    uint64_t k = 0;
    if (handover && (!absl::SimpleAtoi(r->second, &k) || k >= reactors_.size())) {
      // Taken over by a vios with fewer reactors: placed like any other.
      VIOPORT_LOG(kWarning, spec.device, ": reactor=", r->second, " does not exist here; placing it afresh");
      kv.erase(r);
      r = kv.end();
    }
  }
  if (auto r = kv.find("reactor"); r != kv.end()) {
    uint64_t k = 0;
    if (!absl::SimpleAtoi(r->second, &k) || k >= reactors_.size())
      return absl::InvalidArgumentError(absl::StrCat(
          spec.options.origin(), ": option 'reactor=", r->second, "': ",
          reactors_.empty() ? std::string("vios runs no reactors (--threads N, N > 1)")
                            : absl::StrCat("vios has reactors 0..", reactors_.size() - 1)));
    reactor = static_cast<int>(k);
    kv.erase(r);
  }
  Options options(spec.options.origin(), std::move(kv));
  // Attachments that share their transport's state (one partition, one
  // domain) share its thread: the reactor of the first of them.
  std::string affinity;
  if (!reactors_.empty()) {
    auto key = DeviceEndpointAffinity(spec.transport, options);
    if (!key.ok()) return key.status();
    affinity = *key;
  }
  if (!affinity.empty()) {
    for (const auto& [oid, other] : devices_) {
      if (!other.attachment || other.transport != spec.transport || other.affinity != affinity) continue;
      if (reactor >= 0 && reactor != other.reactor)
        return absl::InvalidArgumentError(absl::StrCat(
            spec.options.origin(), ": option 'reactor=", reactor, "': this attachment shares its ", spec.transport,
            " channel with device '", oid, "', served on reactor ", other.reactor));
      reactor = other.reactor;
      break;
    }
  }
  if (reactor < 0 && !reactors_.empty()) {
    // The least loaded: fewest attachments (the first of equals).
    reactor = 0;
    for (size_t i = 1; i < reactors_.size(); ++i)
      if (reactors_[i]->devices < reactors_[reactor]->devices) reactor = static_cast<int>(i);
  }
  Entry& e = it->second;
  e.reactor = reactor;
  // The endpoint is made (and later destroyed) on its reactor's thread: its
  // sockets and handlers belong to that loop from the start.
  EndpointContext ctx{IoFor(reactor), e.device, absl::StrCat(spec.device, "@", spec.transport), handover};
  auto a = OnDeviceThread(e, [&] { return MakeDeviceEndpoint(spec.transport, ctx, options); });
  if (!a.ok()) {
    e.reactor = -1;
    return WithDescriptorHint(a.status());
  }
  e.attachment = std::move(*a);
  e.transport = spec.transport;
  e.attach_options = spec.options.all();
  e.affinity = affinity;
  if (reactor >= 0) ++reactors_[reactor]->devices;
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
  DropAttachment(it->second);  // drops the guest: the device is reset first
  Unplug(it->second);
  devices_.erase(it);
  VIOPORT_LOG(kInfo, "device ", id, ": removed");
  return absl::OkStatus();
}

absl::Status Server::Detach(const std::string& id) {
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("no device with id '", id, "'"));
  if (!it->second.attachment) return absl::FailedPreconditionError(absl::StrCat("device '", id, "' is not attached"));
  DropAttachment(it->second);  // drops the guest: the device is reset first
  it->second.transport.clear();
  it->second.attach_options.clear();
  it->second.affinity.clear();
  VIOPORT_LOG(kInfo, "device ", id, ": detached");
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Server::ResizeBlk(const std::string& id, uint64_t size) {
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("no device with id '", id, "'"));
  auto* blk = dynamic_cast<BlkDevice*>(it->second.device.get());
  if (!blk) return absl::FailedPreconditionError(absl::StrCat("device '", id, "' is a ", it->second.spec.type, " device, not blk"));
  if (absl::Status s = blk->Resize(size); !s.ok()) return absl::Status(s.code(), absl::StrCat("device '", id, "': ", s.message()));
  return blk->capacity_bytes();
}

absl::StatusOr<std::string> Server::AttachConsole(const std::string& id, const std::string& socket) {
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("no device with id '", id, "'"));
  Entry& e = it->second;
  auto* con = dynamic_cast<ConsoleDevice*>(e.device.get());
  if (!con)
    return absl::FailedPreconditionError(absl::StrCat("device '", id, "' is a ", e.spec.type, " device, not console"));
  // On the device's thread: its host side is served there.
  absl::Status s = OnDeviceThread(e, [&] { return con->AttachSocket(socket); });
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("device '", id, "': ", s.message()));
  std::map<std::string, std::string> kv = e.spec.options.all();
  kv.erase("stdio");
  kv["socket"] = socket;
  e.spec.options = Options(e.spec.options.origin(), std::move(kv));
  return socket;
}

rpc::json Server::NetdevList() const {
  rpc::json out = rpc::json::array();
  for (const auto& [id, n] : netdevs_) {
    rpc::json j = {{"id", id}, {"type", n.spec.type}};
    if (n.sw) {
      j["ports"] = n.sw->num_ports();
      j["learnt"] = n.sw->learnt();
    } else {
      j["ifname"] = n.tap->ifname();
      j["switch"] = n.switch_id;
    }
    out.push_back(std::move(j));
  }
  return out;
}

rpc::json Server::DeviceList() const {
  rpc::json out = rpc::json::array();
  for (const auto& [id, e] : devices_) {
    rpc::json j = {{"id", id}, {"type", e.spec.type}};
    if (const DeviceEndpoint* a = e.attachment.get()) {
      j["transport"] = e.transport;
      OnDeviceThread(e, [&] {
        j["mode"] = a->mode();
        j["where"] = a->where();
        j["guest"] = a->connected() ? "connected" : "waiting";
        j["status"] = StatusBits(a->device_status());
      });
      if (e.reactor >= 0) j["reactor"] = e.reactor;
    } else {
      j["transport"] = nullptr;
    }
    out.push_back(std::move(j));
  }
  return out;
}

absl::StatusOr<rpc::json> Server::DeviceGet(const std::string& id) const {
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("no device with id '", id, "'"));
  const Entry& e = it->second;
  rpc::json j = {{"id", id}, {"type", e.spec.type}, {"options", e.spec.options.all()}};
  if (const DeviceEndpoint* a = e.attachment.get()) {
    OnDeviceThread(e, [&] {
      j["attachment"] = {{"transport", e.transport},         {"options", e.attach_options},
                         {"mode", a->mode()},                {"where", a->where()},
                         {"guest", a->connected() ? "connected" : "waiting"},
                         {"status", StatusBits(a->device_status())}, {"last_error", a->last_error()}};
    });
    j["attachment"]["reactor"] = e.reactor >= 0 ? rpc::json(e.reactor) : rpc::json(nullptr);
  } else {
    j["attachment"] = nullptr;
  }
  if (auto* blk = dynamic_cast<const BlkDevice*>(e.device.get())) j["capacity"] = blk->capacity_bytes();
  auto stats = Stats(id);
  if (stats.ok()) j["counters"] = std::move((*stats)[id]);
  return j;
}

absl::StatusOr<rpc::json> Server::Stats(const std::string& id) const {
  if (id.empty()) {
    rpc::json all = rpc::json::object();
    for (const auto& [nid, n] : netdevs_) all.update(*Stats(nid));
    for (const auto& [did, e] : devices_) all.update(*Stats(did));
    return all;
  }
  rpc::json c = rpc::json::object();
  if (auto n = netdevs_.find(id); n != netdevs_.end()) {
    if (n->second.sw) {
      c["ports"] = n->second.sw->num_ports();
      c["learnt"] = n->second.sw->learnt();
    } else {
      std::vector<std::pair<std::string, uint64_t>> t;
      n->second.tap->AppendCounters(&t);
      for (const auto& [k, v] : t) c[k] = v;
    }
    return rpc::json{{id, std::move(c)}};
  }
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("no device with id '", id, "'"));
  std::vector<std::pair<std::string, uint64_t>> d;
  it->second.device->AppendCounters(&d);
  for (const auto& [k, v] : d) c[k] = v;
  if (const DeviceStats* ds = it->second.device->stats_if_any()) {
    // Adaptive polling: the threshold, and what polling found.
    c["poll.spin_us"] = ds->spin_us.load();
    c["poll.episodes"] = ds->busy_polls.load();
    c["poll.busy_us"] = ds->busy_poll_ns.load() / 1000;
    c["poll.found_work"] = ds->busy_poll_found.load();
    c["coalescing.delay_base_us"] = ds->coalesce_delay_us.load();
    c["coalescing.iops_threshold"] = ds->coalesce_iops_threshold.load();
    c["coalescing.interrupts_sent"] = ds->interrupts_sent.load();
    c["coalescing.interrupts_held"] = ds->interrupts_coalesced.load();
  }
  if (it->second.sw) {
    const Switch::PortStats p = it->second.sw->Stats(it->second.port);
    c["switch.drop_spoofed"] = p.spoofed;
    c["switch.drop_bad_source"] = p.bad_source;
    c["switch.drop_vlan"] = p.vlan_drops;
    c["switch.flooded"] = p.flooded;
    c["switch.unicast"] = p.unicast;
  }
  if (it->second.vsock_cid && vsock_hub_) {
    std::vector<std::pair<std::string, uint64_t>> h;
    vsock_hub_->AppendCounters(it->second.vsock_cid, &h);
    for (const auto& [k, v] : h) c[k] = v;
  }
  if (const DeviceEndpoint* a = it->second.attachment.get()) {
    CounterList counters;
    std::string err;
    OnDeviceThread(it->second, [&] {
      a->AppendCounters(&counters);
      err = a->last_error();
    });
    for (const auto& [k, v] : counters) c[absl::StrCat(it->second.transport, ".", k)] = v;
    if (!err.empty()) c["last_error"] = err;
  }
  return rpc::json{{id, std::move(c)}};
}

absl::Status Server::Shutdown() {
  StopControl();
  for (auto& kv : devices_) {
    Entry& e = kv.second;
    if (e.attachment) OnDeviceThread(e, [&e] { e.attachment->StopAccepting(); });
  }
  absl::Status result = absl::OkStatus();
  for (auto& kv : devices_) {
    const std::string& id = kv.first;
    Entry& e = kv.second;
    absl::Status s = e.attachment ? OnDeviceThread(e, [&e] { return e.attachment->Quiesce(); }) : e.device->Quiesce();
    if (!s.ok()) {
      VIOPORT_LOG(kError, "device ", id, ": ", s.message());
      result.Update(s);
    }
  }
  return result;
}

}  // namespace vioport::vios
