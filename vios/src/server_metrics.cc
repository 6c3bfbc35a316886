// SPDX-License-Identifier: Apache-2.0
// The Server's Prometheus metrics (vios --metrics): every device's, queue's,
// transport's and netdev's counters as metric families. Names follow
// Prometheus's conventions: a vios_ prefix, base units (bytes, seconds),
// _total on counters, and labels (device, type, transport, queue, cause)
// instead of names that carry them. docs/vios.md lists the families.
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "metrics.h"
#include "reactor.h"
#include "server.h"
#include "vioport/backends/blk_device.h"
#include "vioport/core/log.h"

namespace vioport::vios {

namespace {

// Counters that are levels, not counts (exported as gauges, without _total).
bool IsGauge(const std::string& name) {
  static const std::set<std::string> gauges = {"conns_open", "to_host_queued_bytes", "mapped_pages", "online",
                                               "state",      "staging_slots",        "offload_flags", "sealed",
                                               "ports",      "learnt"};
  const size_t dot = name.rfind('.');
  return gauges.count(dot == std::string::npos ? name : name.substr(dot + 1)) != 0;
}

// One counter of a device, a transport or a netdev as a sample: "drop_X"
// becomes <prefix>_drops_total{cause="X"}, a gauge <prefix>_<name>, any
// other <prefix>_<name>_total. A dotted name ("hub.drop_dest_full") puts its
// first part into the prefix.
void AddCounter(Exposition& x, std::string prefix, std::string name, const Exposition::Labels& labels, uint64_t v,
                const std::string& what) {
  if (const size_t dot = name.rfind('.'); dot != std::string::npos) {
    prefix = absl::StrCat(prefix, "_", Exposition::Sanitize(name.substr(0, dot)));
    name = name.substr(dot + 1);
  }
  name = Exposition::Sanitize(name);
  if (absl::StartsWith(name, "drop_")) {
    const std::string fam = absl::StrCat(prefix, "_drops_total");
    x.Family(fam, "counter", absl::StrCat(what, ": packets or requests dropped, by cause"));
    Exposition::Labels l = labels;
    l.emplace_back("cause", name.substr(5));
    x.Sample(fam, l, static_cast<double>(v));
    return;
  }
  const bool gauge = IsGauge(name);
  const std::string fam = gauge ? absl::StrCat(prefix, "_", name) : absl::StrCat(prefix, "_", name, "_total");
  x.Family(fam, gauge ? "gauge" : "counter", absl::StrCat(what, ": ", name, " (viosctl stats ID.", name, ")"));
  x.Sample(fam, labels, static_cast<double>(v));
}

}  // namespace

std::string Server::PrometheusText() const {
  Exposition x;
  x.Family("vios_build_info", "gauge", "vios's build (always 1)");
  x.Sample("vios_build_info", {{"version", VIOPORT_VERSION}}, 1);
  x.Family("vios_devices", "gauge", "devices vios serves");
  x.Sample("vios_devices", {}, static_cast<double>(devices_.size()));
  x.Family("vios_device_info", "gauge", "one per device (always 1): its type and transport");
  x.Family("vios_device_guest_connected", "gauge", "1 while a guest is attached to the device");
  x.Family("vios_device_status", "gauge", "the virtio device status byte the driver last set");
  x.Family("vios_queue_requests_total", "counter", "requests (descriptor chains) the device completed, per queue");
  x.Family("vios_queue_bytes_total", "counter",
           "bytes of completed requests per queue: direction in = read from the guest, out = written to it");
  x.Family("vios_request_duration_seconds", "histogram",
           "time from the device taking a request off its queue to returning it (with --metrics)");
  x.Family("vios_blk_capacity_bytes", "gauge", "a blk device's capacity");
  for (const auto& [id, e] : devices_) {
    const std::string transport = e.attachment ? e.transport : "";
    x.Sample("vios_device_info", {{"device", id}, {"type", e.spec.type}, {"transport", transport}}, 1);
    const Exposition::Labels dev = {{"device", id}};
    // What the attachment knows, read on the thread that serves it.
    bool connected = false;
    uint8_t status = 0;
    CounterList counters;
    if (const DeviceEndpoint* a = e.attachment.get())
      OnDeviceThread(e, [&] {
        connected = a->connected();
        status = a->device_status();
        a->AppendCounters(&counters);
      });
    x.Sample("vios_device_guest_connected", dev, connected ? 1 : 0);
    x.Sample("vios_device_status", dev, status);
    if (auto* blk = dynamic_cast<const BlkDevice*>(e.device.get()))
      x.Sample("vios_blk_capacity_bytes", dev, static_cast<double>(blk->capacity_bytes()));
    // The device's own counters: vios_<type>_<name>_total{device}.
    std::vector<std::pair<std::string, uint64_t>> c;
    e.device->AppendCounters(&c);
    for (const auto& [name, v] : c)
      AddCounter(x, absl::StrCat("vios_", Exposition::Sanitize(e.spec.type)), name, dev, v,
                 absl::StrCat(e.spec.type, " device"));
    if (e.sw) {
      const Switch::PortStats p = e.sw->Stats(e.port);
      AddCounter(x, "vios_net", "switch.drop_spoofed", dev, p.spoofed, "net device's switch port");
      AddCounter(x, "vios_net", "switch.drop_bad_source", dev, p.bad_source, "net device's switch port");
      AddCounter(x, "vios_net", "switch.drop_vlan", dev, p.vlan_drops, "net device's switch port");
      AddCounter(x, "vios_net", "switch.flooded", dev, p.flooded, "net device's switch port");
      AddCounter(x, "vios_net", "switch.unicast", dev, p.unicast, "net device's switch port");
    }
    if (e.vsock_cid && vsock_hub_) {
      std::vector<std::pair<std::string, uint64_t>> h;
      vsock_hub_->AppendCounters(e.vsock_cid, &h);
      for (const auto& [name, v] : h) AddCounter(x, "vios_vsock", name, dev, v, "vsock device's host side");
    }
    // Per queue and latency: the device's life-long totals, any transport.
    const Exposition::Labels devt = {{"device", id}, {"transport", transport}};
    if (const DeviceStats* s = e.device->stats_if_any()) {
      for (uint16_t q = 0; q < s->num_queues(); ++q) {
        const QueueStats* qs = s->queue(q);
        Exposition::Labels l = devt;
        l.emplace_back("queue", absl::StrCat(q));
        x.Sample("vios_queue_requests_total", l, static_cast<double>(qs->requests.load()));
        Exposition::Labels in = l, out = l;
        in.emplace_back("direction", "in");
        out.emplace_back("direction", "out");
        x.Sample("vios_queue_bytes_total", in, static_cast<double>(qs->bytes_in.load()));
        x.Sample("vios_queue_bytes_total", out, static_cast<double>(qs->bytes_out.load()));
      }
      x.Family("vios_device_poll_spin_seconds", "gauge",
               "adaptive polling: how long the device is served past its last progress before sleeping");
      x.Family("vios_device_polls_total", "counter", "adaptive polling episodes (one per wake-up that polls)");
      x.Family("vios_device_poll_seconds_total", "counter", "time spent polling past wake-ups");
      x.Family("vios_device_poll_found_work_total", "counter",
               "polling passes that found new work without a wake-up");
      x.Sample("vios_device_poll_spin_seconds", dev, static_cast<double>(s->spin_us.load()) / 1e6);
      x.Sample("vios_device_polls_total", dev, static_cast<double>(s->busy_polls.load()));
      x.Sample("vios_device_poll_seconds_total", dev, static_cast<double>(s->busy_poll_ns.load()) / 1e9);
      x.Sample("vios_device_poll_found_work_total", dev, static_cast<double>(s->busy_poll_found.load()));
      const LatencyHistogram& h = s->latency();
      uint64_t cumulative = 0;
      for (size_t b = 0; b <= LatencyHistogram::kBoundsNs.size(); ++b) {
        cumulative += h.bucket(b);
        Exposition::Labels l = devt;
        l.emplace_back("le", b < LatencyHistogram::kBoundsNs.size()
                                 ? absl::StrCat(static_cast<double>(LatencyHistogram::kBoundsNs[b]) / 1e9)
                                 : "+Inf");
        x.Sample("vios_request_duration_seconds", "vios_request_duration_seconds_bucket", l,
                 static_cast<double>(cumulative));
      }
      x.Sample("vios_request_duration_seconds", "vios_request_duration_seconds_sum", devt,
               static_cast<double>(h.sum_ns()) / 1e9);
      x.Sample("vios_request_duration_seconds", "vios_request_duration_seconds_count", devt,
               static_cast<double>(cumulative));
    }
    // The transport's: vios_transport_<name>_total{device,transport}.
    for (const auto& [name, v] : counters) AddCounter(x, "vios_transport", name, devt, v, "transport endpoint");
  }
  for (const auto& [id, n] : netdevs_) {
    const Exposition::Labels l = {{"netdev", id}};
    if (n.sw) {
      x.Family("vios_switch_ports", "gauge", "ports on a switch");
      x.Family("vios_switch_learnt_macs", "gauge", "MAC addresses a switch has learnt");
      x.Sample("vios_switch_ports", l, static_cast<double>(n.sw->num_ports()));
      x.Sample("vios_switch_learnt_macs", l, static_cast<double>(n.sw->learnt()));
    } else {
      std::vector<std::pair<std::string, uint64_t>> t;
      n.tap->AppendCounters(&t);
      for (const auto& [name, v] : t) AddCounter(x, "vios_tap", name, l, v, "tap uplink");
    }
  }
  if (metrics_) {
    x.Family("vios_metrics_scrapes_total", "counter", "GET /metrics answered");
    x.Sample("vios_metrics_scrapes_total", {}, static_cast<double>(metrics_->scrapes()));
  }
  return x.Text();
}

absl::Status Server::ListenMetrics(const std::string& address) {
  DeviceStats::EnableTiming(true);  // before devices activate queues, so every request is timed
  auto m = MetricsServer::Start(io_, address, [this] { return PrometheusText(); });
  if (!m.ok()) return m.status();
  metrics_ = std::move(*m);
  VIOPORT_LOG(kInfo, "metrics at http://", metrics_->where(), "/metrics");
  return absl::OkStatus();
}

}  // namespace vioport::vios
