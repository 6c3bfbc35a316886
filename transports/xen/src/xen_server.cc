// SPDX-License-Identifier: Apache-2.0
// XenServer: the toolstack's part (the device's two xenstore directories,
// recreated when the frontend's domain comes back) and the wiring of a
// BackendSession to the world - xenstore and the channel through the
// XenBackendHost, the control port to the session's mailbox, the queue
// ports to a DeviceLoop's kicks - plus the endpoint's bookkeeping.
#include "vioport/transports/xen_server.h"

#include "absl/strings/str_cat.h"
#include "backend_session.h"
#include "grant_memory.h"
#include "vioport/core/device_controller.h"
#include "vioport/core/log.h"
#include "vioport/transports/device_loop.h"
#include "vioport/transports/xen_protocol.h"

namespace vioport::xen {

namespace {

std::string Num(XenbusState s) { return std::to_string(static_cast<int>(s)); }

}  // namespace

struct XenServer::Impl : std::enable_shared_from_this<Impl>, BackendSession::Host {
  std::shared_ptr<XenBackendHost> host;
  XenServerOptions o;
  std::string fe_dir, be_dir, fe_token, intro_token;
  DeviceLoop loop;
  EndpointState state;
  std::unique_ptr<BackendSession> session;
  // The live memory (for its counters) and the connection's ports.
  std::shared_ptr<GuestMemory> mem;
  std::vector<EvtchnPort> routed;
  GrantMemoryStats past_mem;  // memories that went
  uint64_t disconnects = 0;

  Impl(std::shared_ptr<XenBackendHost> h, std::shared_ptr<VirtioDevice> device, XenServerOptions opts)
      : host(std::move(h)), o(std::move(opts)), loop(host->io(), device, {false, o.spin_us}) {
    session = std::make_unique<BackendSession>(
        std::move(device), this,
        BackendSession::Options{o.name, o.frontend, o.copy ? "copy" : "map", o.transport_features});
    loop.set_after_work([this] { Published(); });
  }

  XsClient& xs() { return host->xs(); }
  XenChannel& ch() { return host->channel(); }
  void Published() {
    DeviceController* c = session->controller();
    state.status = c ? c->status() : 0;
  }
  absl::Status Setup();
  void Names();
  absl::Status Watch();
  void EnsureFrontendDir();
  bool abandoned = false;

  // BackendSession::Host
  absl::StatusOr<std::string> ReadFrontend(const std::string& key) override { return xs().Read(fe_dir + "/" + key); }
  void SetState(XenbusState s) override { (void)xs().Write(be_dir + "/state", Num(s)); }
  absl::StatusOr<uint8_t*> MapControl(GrantRef ref) override { return ch().MapGrants(o.frontend, {&ref, 1}, true); }
  void UnmapControl(uint8_t* page) override { (void)ch().UnmapGrants(page, 1); }
  absl::StatusOr<EvtchnPort> Bind(EvtchnPort remote) override { return ch().BindInterdomain(o.frontend, remote); }
  void Unbind(EvtchnPort local) override { (void)ch().Unbind(local); }
  void Notify(EvtchnPort local) override { (void)ch().Notify(local); }
  std::shared_ptr<GuestMemory> MakeMemory() override {
    if (mem) past_mem += GrantMemoryStatsOf(*mem);
    mem = o.copy ? MakeGrantCopyMemory(ch(), o.frontend) : MakeGrantMapMemory(ch(), o.frontend, o.cache_pages);
    return mem;
  }
  void Attached(DeviceController& ctl, EvtchnPort ctrl, std::span<const EvtchnPort> queues) override {
    std::weak_ptr<Impl> weak = weak_from_this();
    host->OnPort(ctrl, [weak] {
      if (auto im = weak.lock()) {
        im->session->OnControl();
        im->Published();
      }
    });
    routed = {ctrl};
    for (uint16_t q = 0; q < queues.size(); ++q) {
      host->OnPort(queues[q], [weak, q] {
        if (auto im = weak.lock()) im->loop.Kick(q);
      });
      routed.push_back(queues[q]);
    }
    loop.Serve(&ctl);
    state.connections++;
    state.connected = true;
    state.status = ctl.status();
  }
  void Detached(const DeviceController& ctl) override {
    for (EvtchnPort p : routed) host->RemovePort(p);
    routed.clear();
    loop.Serve(nullptr);
    state.Ended(ctl);
    if (mem) past_mem += GrantMemoryStatsOf(*mem);
    mem.reset();  // the session's reference is the last: the mappings go with it
    disconnects++;
    state.connected = false;
    state.status = 0;
  }
  void Refused(const std::string& why) override {
    state.refused++;
    state.SetError(why);
  }
  void ProtocolError(const std::string& why) override {
    state.protocol_errors++;
    state.SetError(why);
  }
};

absl::StatusOr<std::unique_ptr<XenServer>> XenServer::Create(std::shared_ptr<XenBackendHost> host,
                                                           std::shared_ptr<VirtioDevice> device,
                                                           XenServerOptions options) {
  if (!device) return absl::InvalidArgumentError("no device");
  if (device->num_queues() == 0 || device->num_queues() > kMaxQueues)
    return absl::InvalidArgumentError(absl::StrCat("xen carries 1 to ", kMaxQueues, " queues"));
  if (device->config_size() > kRequestOffset - mmio::kConfigOffset)
    return absl::InvalidArgumentError("device config space does not fit the control page");
  if (options.frontend == host->channel().self() || options.frontend >= 0x7ff0)
    return absl::InvalidArgumentError(absl::StrCat("frontend domain ", options.frontend, " is not another domain"));
  std::unique_ptr<XenServer> s(new XenServer(options));
  auto impl = std::make_shared<Impl>(std::move(host), std::move(device), std::move(options));
  if (absl::Status st = impl->Setup(); !st.ok()) return st;
  s->impl_ = std::move(impl);
  return s;
}

XenServer::~XenServer() {
  if (!impl_) return;
  Impl& im = *impl_;
  im.host->RemoveWatch(im.fe_dir + "/state", im.fe_token);
  im.host->RemoveWatch("@introduceDomain", im.intro_token);
  if (!im.abandoned) im.session->Close("backend stopping");
}

absl::StatusOr<std::unique_ptr<XenServer>> XenServer::Restore(std::shared_ptr<XenBackendHost> host,
                                                            std::shared_ptr<VirtioDevice> device,
                                                            XenServerOptions options, HandoverReader& in) {
  std::unique_ptr<XenServer> s(new XenServer(options));
  auto impl = std::make_shared<Impl>(std::move(host), std::move(device), std::move(options));
  impl->loop.Freeze();
  impl->Names();
  if (absl::Status st = impl->session->Restore(in); !st.ok()) return st;
  // The keys the old vios wrote stay; only our own watches are new.
  if (absl::Status st = impl->Watch(); !st.ok()) return st;
  s->impl_ = std::move(impl);
  return s;
}

absl::Status XenServer::Freeze(HandoverWriter* out) {
  Impl& im = *impl_;
  if (absl::Status s = im.host->Freeze(out); !s.ok()) return s;
  im.loop.Freeze();
  if (absl::Status s = im.loop.device().Drain(); !s.ok()) return s;
  if (DeviceController* c = im.session->controller()) c->FlushInterrupts(true);
  return im.session->Freeze(out);
}

void XenServer::Thaw() {
  Impl& im = *impl_;
  absl::Status s = im.session->Resume();
  im.host->Thaw();
  im.loop.Thaw();
  if (!s.ok()) {
    VIOPORT_LOG(kWarning, im.o.name, ": resuming the connection: ", s.message());
    im.state.SetError(std::string(s.message()));
    im.session->Close(absl::StrCat("resume failed: ", s.message()));
    return;
  }
  // A register write whose event went by while frozen is served now.
  im.session->OnControl();
  im.Published();
}

void XenServer::Abandon() {
  Impl& im = *impl_;
  im.abandoned = true;
  im.session->Abandon();
  im.loop.Abandon();
}

void XenServer::Impl::Names() {
  const DomId me = ch().self();
  fe_dir = FrontendDir(o.frontend, o.devid);
  be_dir = BackendDir(me, o.frontend, o.devid);
  fe_token = absl::StrCat("vioport-be-", o.frontend, "-", o.devid);
  intro_token = absl::StrCat("vioport-intro-", o.frontend, "-", o.devid);
}

absl::Status XenServer::Impl::Watch() {
  std::weak_ptr<Impl> weak = weak_from_this();
  absl::Status s = host->OnWatch(fe_dir + "/state", fe_token, [weak] {
    if (auto im = weak.lock()) {
      im->session->OnFrontendState();
      im->Published();
    }
  });
  if (s.ok())
    s = host->OnWatch("@introduceDomain", intro_token, [weak] {
      if (auto im = weak.lock()) im->EnsureFrontendDir();
    });
  return s;
}

absl::Status XenServer::Impl::Setup() {
  const DomId me = ch().self();
  Names();
  // As the toolstack (libxl): the backend directory, ours, the frontend may read.
  (void)xs().Rm(be_dir);
  absl::Status s = xs().Mkdir(be_dir);
  if (s.ok()) s = xs().SetPermissions(be_dir, {{me, 'n'}, {o.frontend, 'r'}});
  VirtioDevice& device = loop.device();
  const std::pair<const char*, std::string> keys[] = {
      {"frontend", fe_dir},
      {"frontend-id", std::to_string(o.frontend)},
      {"online", "1"},
      {"state", Num(XenbusState::kInitialising)},
      {"device-type", std::to_string(static_cast<uint32_t>(device.device_id()))},
      {"max-queues", std::to_string(device.num_queues())},
      {"max-queue-size", std::to_string(device.max_queue_size())},
      {"protocol-versions", std::to_string(kProtocolVersion)},
  };
  for (const auto& [k, v] : keys)
    if (s.ok()) s = xs().Write(be_dir + "/" + k, v);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(o.name, ": creating ", be_dir, ": ", s.message()));
  SetState(XenbusState::kInitWait);
  EnsureFrontendDir();
  if (s = Watch(); !s.ok()) return s;
  VIOPORT_LOG(kInfo, o.name, ": waiting for domain ", o.frontend, " at ", fe_dir, " (grants=", o.copy ? "copy" : "map",
              ")");
  return absl::OkStatus();
}

void XenServer::Impl::EnsureFrontendDir() {
  // The frontend's directory, its own, we may read; made when the domain
  // exists (again) and the directory does not.
  const std::string home = "/local/domain/" + std::to_string(o.frontend);
  if (!xs().Read(home).ok() && !xs().Directory(home).ok()) return;
  if (xs().Read(fe_dir + "/state").ok()) return;
  const DomId me = ch().self();
  absl::Status s = xs().Mkdir(fe_dir);
  if (s.ok()) s = xs().SetPermissions(fe_dir, {{o.frontend, 'n'}, {me, 'r'}});
  if (s.ok()) s = xs().Write(fe_dir + "/backend", be_dir);
  if (s.ok()) s = xs().Write(fe_dir + "/backend-id", std::to_string(me));
  if (s.ok()) s = xs().Write(fe_dir + "/state", Num(XenbusState::kInitialising));
  if (!s.ok()) {
    const std::string why = absl::StrCat("creating ", fe_dir, ": ", s.message());
    state.SetError(why);
    VIOPORT_LOG(kWarning, o.name, ": ", why);
  }
}

bool XenServer::connected() const { return impl_->state.connected; }
uint8_t XenServer::device_status() const { return impl_->state.status; }

std::string XenServer::last_error() const {
  if (DeviceController* c = impl_->session->controller(); c && !c->last_error().empty()) return c->last_error();
  return impl_->state.error();
}

void XenServer::AppendCounters(CounterList* out) const {
  const Impl& im = *impl_;
  TransportCounters live;
  GrantMemoryStats m = im.past_mem;
  m.cached_pages = 0;
  if (DeviceController* c = im.session->controller()) live = c->transport_counters();
  if (im.mem) {
    const GrantMemoryStats s = GrantMemoryStatsOf(*im.mem);
    m += s;
    m.cached_pages = s.cached_pages;
  }
  im.state.AppendCounters(live, {}, out);
  const BackendSession::Counters& sc = im.session->counters();
  out->insert(out->end(), {{"disconnects", im.disconnects},
                           {"register_writes", sc.register_writes},
                           {"register_writes_ignored", sc.register_writes_ignored},
                           {"grant_maps", m.maps},
                           {"grant_map_failures", m.map_failures},
                           {"mapped_pages", m.cached_pages},
                           {"grant_copies", m.copies},
                           {"grant_copy_bytes", m.copy_bytes},
                           {"grant_copy_failures", m.copy_failures},
                           {"map_cache_overflow", m.overflow},
                           {"domain_wakeups", im.host->wakeups()}});
}

absl::Status XenServer::Quiesce() { return impl_->loop.device().Quiesce(); }

}  // namespace vioport::xen
