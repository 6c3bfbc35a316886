// SPDX-License-Identifier: Apache-2.0
#include "spec.h"

#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "vioport/transports/registry.h"

namespace vioport::vios {

std::string Usage() {
  RegisterBuiltinTransports();
  return absl::StrCat(R"(vios: the vioport VIO server. Serves virtio devices to guests over transports.

usage: vios [--netdev SPEC]... [--device SPEC]... [--attach SPEC]... [--config FILE]
            [--control PATH] [--metrics ADDR:PORT] [--threads N | --cpus LIST]
            [--log-level LEVEL] [--help]
       vios --upgrade-from CONTROL [--metrics ADDR:PORT] [--threads N | --cpus LIST] ...

  --netdev TYPE,id=ID[,KEY=VALUE...]   create a network: a switch, or an uplink on one
      switch,id=ID[,aging=SECONDS][,max-macs=N]
          a learning L2 switch; every net device and uplink on it is a port
          (MACs age out after aging seconds, default 300; at most max-macs
          learnt, default 4096; beyond, unknown destinations flood)
      tap,id=ID,ifname=NAME,switch=SW[,queues=N][,vlan=N|trunk=on]
          the switch's way to the host: tap NAME (created if missing) with
          virtio-net headers; offloads follow what the guests negotiated

  --device TYPE,id=ID[,KEY=VALUE...]   create a device
      blk,id=ID,path=FILE[,readonly=on][,num-queues=N][,queue-size=N][,serial=S]
                                        [,seg-max=N][,size-max=BYTES]
                                        [,aio=auto|io_uring|inline]
          queue-size: the largest queue the driver may set up, a power of 2
          up to 1024 (default 1024, the most a virtio-pci front-end sets up);
          the driver may pick any smaller power of 2
          aio: io_uring, or preadv/pwritev on the loop thread; auto (default)
          is inline for files in memory (tmpfs), io_uring for the rest
      net,id=ID,switch=SW[,mac=52:54:00:12:34:56][,queues=N][,mtu=N][,vlan=N]
                  [,mac-lock=on][,standby=on][,offloads=off][,mrg-rxbuf=off]
                  [,queue-size=N]
          virtio-net as a port of switch SW: queues is the number of queue
          pairs (MQ, up to 16); vlan puts the port in that VLAN (untagged to
          the guest); mac-lock drops frames whose source is not mac (and
          refuses MAC_ADDR_SET); standby offers STANDBY (net failover);
          offloads=off offers no checksum or TSO offload
      vsock,id=ID,cid=N[,uds-path=PATH][,group=G[+H...]][,seqpacket=off]
                  [,queue-size=N][,buf-alloc=SIZE][,host-budget=SIZE]
          virtio-vsock for guest CID N (3..4294967294) on vios's hub. The
          host side is PATH: a host process connects to PATH and writes
          "CONNECT <port>\n", and reads "OK <host-port>\n" once the guest
          accepts; the guest's connections to host port P reach a listener
          on PATH_P. Guests sharing a group reach each other by CID;
          without one, a guest reaches only the host. buf-alloc: the
          largest receive window vios offers the guest per host
          connection (default 1M; 64K..64M); host-budget: what vios may
          hold for the guest's host connections in all (data a host
          process has not read yet): a new connection's window is at
          most host-budget / (connections open + 1), at least 64K
          (default 64M, 0: no budget; the most it holds is about
          host-budget x (1 + ln(connections x buf-alloc / host-budget)))
          (docs/vsock.md)
      rng,id=ID
      console,id=ID,socket=PATH        host side on a Unix socket (one client)
      console,id=ID,stdio=on           host side on vios's own stdin/stdout
  --attach ID,transport=T[,KEY=VALUE...][,reactor=K]
                                        serve device ID to a guest over
                                        transport T (on reactor K, with
                                        --threads), one of (numbers take 0x
                                        and K, M, G):
)",
                      DeviceTransportsHelp(6), R"(  --config FILE        the same in TOML: [[netdev]], [[device]] and [[attach]]
                       tables with the keys above (type/id, device/transport), plus
                       top-level control = "PATH", metrics = "ADDR:PORT", threads = N,
                       control-max-clients = N,
                       control-timeout = SECONDS and log-level = "LEVEL"
  --control PATH       the control socket (mode 0600): JSON-RPC 2.0, one message
                       per line (docs/api.md); viosctl is its command-line client
  --control-max-clients N
                       control clients served at once (default 1024); one more
                       is told so and closed
  --control-timeout SECONDS
                       a control client that sends no whole message (or reads
                       no reply) for this long is closed (default 60)
  --threads N          N event-loop threads (reactors) serve the devices, each device
                       on one, the least loaded unless its --attach says reactor=K
                       (0..N-1); the control socket and metrics keep the main
                       thread. Default 1: every device on the main thread
  --cpus LIST          one reactor per CPU in LIST (e.g. 0,2-3), pinned to it
  --metrics ADDR:PORT  serve Prometheus metrics at http://ADDR:PORT/metrics (read-only:
                       GET /metrics and nothing else; port 0 picks one, logged);
                       also times every request (a latency histogram per device)
  --log-level LEVEL    error, warning, info (default) or debug
  --upgrade-from CONTROL
                       live upgrade: take over every device, guest and the control
                       socket of the vios listening on CONTROL (its --control),
                       which then exits; guests see no reset and no reconnect
                       (docs/upgrade.md). No --device/--attach/--netdev/--config
                       with it: the devices are the running vios's. Exits 1 with
                       the reason if the running vios refuses (it serves on)

SIGTERM or SIGINT: stop accepting guests, finish requests in flight, flush, exit 0.
)");
}

namespace {

bool ValidId(absl::string_view id) {
  if (id.empty() || id.size() > 32) return false;
  for (char c : id)
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') return false;
  return true;
}

absl::StatusOr<DeviceSpec> MakeDevice(std::string type, std::map<std::string, std::string> kv, std::string origin) {
  DeviceSpec d;
  d.type = std::move(type);
  auto id = kv.find("id");
  if (id == kv.end()) return absl::InvalidArgumentError(absl::StrCat(origin, ": option 'id' is required"));
  if (!ValidId(id->second))
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": option 'id=", id->second, "' must be 1-32 characters of [A-Za-z0-9._-]"));
  d.id = id->second;
  kv.erase(id);
  d.options = Options(std::move(origin), std::move(kv));
  return d;
}

absl::StatusOr<AttachSpec> MakeAttach(std::string device, std::map<std::string, std::string> kv, std::string origin) {
  AttachSpec a;
  a.device = std::move(device);
  auto t = kv.find("transport");
  if (t == kv.end()) return absl::InvalidArgumentError(absl::StrCat(origin, ": option 'transport' is required"));
  a.transport = t->second;
  kv.erase(t);
  a.options = Options(std::move(origin), std::move(kv));
  return a;
}

// --control-max-clients N (1..65536), --control-timeout SECONDS (1..86400).
absl::Status SetControlLimit(const std::string& key, const std::string& value, const std::string& origin, Config* c) {
  const bool clients = key == "control-max-clients";
  const uint64_t max = clients ? 65536 : 86400;
  uint64_t n;
  if (!absl::SimpleAtoi(value, &n) || n < 1 || n > max)
    return absl::InvalidArgumentError(absl::StrCat(origin, " ", value, ": not a number in 1..", max));
  (clients ? c->control_max_clients : c->control_timeout_s) = n;
  return absl::OkStatus();
}

// "0,2-3" -> {0, 2, 3}: CPUs this machine has, each once.
absl::Status ParseCpuList(const std::string& text, std::vector<int>* out) {
  out->clear();
  const long ncpu = ::sysconf(_SC_NPROCESSORS_CONF);
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    std::vector<absl::string_view> ab = absl::StrSplit(part, absl::MaxSplits('-', 1));
    int a, b;
    if (!absl::SimpleAtoi(ab[0], &a) || (ab.size() == 2 ? !absl::SimpleAtoi(ab[1], &b) : (b = a, false)) || a < 0 ||
        b < a || b >= ncpu)
      return absl::InvalidArgumentError(
          absl::StrCat("--cpus ", text, ": '", part, "' is not a CPU or range of CPUs in 0..", ncpu - 1));
    for (int c = a; c <= b; ++c) {
      if (std::find(out->begin(), out->end(), c) != out->end())
        return absl::InvalidArgumentError(absl::StrCat("--cpus ", text, ": CPU ", c, " given twice"));
      out->push_back(c);
    }
  }
  if (out->size() > 256) return absl::InvalidArgumentError(absl::StrCat("--cpus ", text, ": more than 256 CPUs"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DeviceSpec> MakeDeviceSpec(std::string type, std::map<std::string, std::string> kv, std::string origin) {
  return MakeDevice(std::move(type), std::move(kv), std::move(origin));
}
absl::StatusOr<AttachSpec> MakeAttachSpec(std::string device, std::map<std::string, std::string> kv,
                                          std::string origin) {
  return MakeAttach(std::move(device), std::move(kv), std::move(origin));
}

absl::StatusOr<DeviceSpec> ParseDevice(absl::string_view text) {
  std::string type;
  std::map<std::string, std::string> kv;
  if (absl::Status s = SplitKeyValues(text, "--device", "the device type", &type, &kv); !s.ok()) return s;
  return MakeDevice(std::move(type), std::move(kv), absl::StrCat("--device ", text));
}

absl::StatusOr<DeviceSpec> ParseNetdev(absl::string_view text) {
  std::string type;
  std::map<std::string, std::string> kv;
  if (absl::Status s = SplitKeyValues(text, "--netdev", "the netdev type", &type, &kv); !s.ok()) return s;
  return MakeDevice(std::move(type), std::move(kv), absl::StrCat("--netdev ", text));
}

absl::StatusOr<AttachSpec> ParseAttach(absl::string_view text) {
  std::string dev;
  std::map<std::string, std::string> kv;
  if (absl::Status s = SplitKeyValues(text, "--attach", "the device id", &dev, &kv); !s.ok()) return s;
  return MakeAttach(std::move(dev), std::move(kv), absl::StrCat("--attach ", text));
}

absl::Status MergeToml(const std::string& path, Config* config) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return absl::InvalidArgumentError(
        absl::StrCat(path, ":", where.line, ":", where.column, ": ", std::string(e.description())));
  }
  // Every value becomes the same string the command line would carry.
  auto to_string = [](const toml::node& n, std::string* out) -> bool {
    if (auto s = n.value<std::string>()) {
      *out = *s;
    } else if (auto b = n.value<bool>(); b && n.is_boolean()) {
      *out = *b ? "on" : "off";
    } else if (auto i = n.value<int64_t>(); i && n.is_integer()) {
      *out = absl::StrCat(*i);
    } else {
      return false;
    }
    return true;
  };
  for (auto&& [k, v] : root) {
    const std::string key(k.str());
    if (key == "device" || key == "attach" || key == "netdev") {
      const toml::array* arr = v.as_array();
      if (!arr) return absl::InvalidArgumentError(absl::StrCat(path, ": '", key, "' must be an array of tables ([[", key, "]])"));
      int index = 0;
      for (const toml::node& item : *arr) {
        ++index;
        const std::string origin = absl::StrCat(path, ": ", key, " #", index);
        const toml::table* t = item.as_table();
        if (!t) return absl::InvalidArgumentError(absl::StrCat(origin, ": not a table"));
        std::map<std::string, std::string> kv;
        for (auto&& [ik, iv] : *t) {
          std::string s;
          if (!to_string(iv, &s))
            return absl::InvalidArgumentError(absl::StrCat(origin, ": option '", std::string(ik.str()), "' must be a string, integer or boolean"));
          kv[std::string(ik.str())] = s;
        }
        const std::string first_key = key == "attach" ? "device" : "type";
        auto first = kv.find(first_key);
        if (first == kv.end()) return absl::InvalidArgumentError(absl::StrCat(origin, ": option '", first_key, "' is required"));
        std::string f = first->second;
        kv.erase(first);
        if (key == "device" || key == "netdev") {
          auto d = MakeDevice(std::move(f), std::move(kv), origin);
          if (!d.ok()) return d.status();
          (key == "device" ? config->devices : config->netdevs).push_back(std::move(*d));
        } else {
          auto a = MakeAttach(std::move(f), std::move(kv), origin);
          if (!a.ok()) return a.status();
          config->attaches.push_back(std::move(*a));
        }
      }
    } else if (key == "threads") {
      auto i = v.value<int64_t>();
      if (!v.is_integer() || !i || *i < 1 || *i > 256)
        return absl::InvalidArgumentError(absl::StrCat(path, ": 'threads' must be an integer in 1..256"));
      config->threads = static_cast<uint64_t>(*i);
    } else if (key == "control-max-clients" || key == "control-timeout") {
      auto i = v.value<int64_t>();
      if (!v.is_integer() || !i || *i < 0)
        return absl::InvalidArgumentError(absl::StrCat(path, ": '", key, "' must be a non-negative integer"));
      if (absl::Status s = SetControlLimit(key, absl::StrCat(*i), absl::StrCat(path, ": ", key), config); !s.ok()) return s;
    } else if (key == "control" || key == "log-level" || key == "metrics") {
      std::string s;
      if (!v.is_string() || !to_string(v, &s))
        return absl::InvalidArgumentError(absl::StrCat(path, ": '", key, "' must be a string"));
      (key == "control" ? config->control_path : key == "metrics" ? config->metrics_address : config->log_level) = s;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(path, ": unknown key '", key, "'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Config> ParseCommandLine(const std::vector<std::string>& args) {
  Config c;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i], value;
    const size_t eq = flag.find('=');
    const bool inline_value = flag.rfind("--", 0) == 0 && eq != std::string::npos;
    if (inline_value) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    }
    auto need_value = [&]() -> absl::Status {
      if (inline_value) return absl::OkStatus();
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat(flag, " needs a value"));
      value = args[++i];
      return absl::OkStatus();
    };
    if (flag == "--netdev") {
      if (absl::Status s = need_value(); !s.ok()) return s;
      auto d = ParseNetdev(value);
      if (!d.ok()) return d.status();
      c.netdevs.push_back(std::move(*d));
    } else if (flag == "--device") {
      if (absl::Status s = need_value(); !s.ok()) return s;
      auto d = ParseDevice(value);
      if (!d.ok()) return d.status();
      c.devices.push_back(std::move(*d));
    } else if (flag == "--attach") {
      if (absl::Status s = need_value(); !s.ok()) return s;
      auto a = ParseAttach(value);
      if (!a.ok()) return a.status();
      c.attaches.push_back(std::move(*a));
    } else if (flag == "--config") {
      if (absl::Status s = need_value(); !s.ok()) return s;
      if (absl::Status s = MergeToml(value, &c); !s.ok()) return s;
    } else if (flag == "--control") {
      if (absl::Status s = need_value(); !s.ok()) return s;
      c.control_path = value;
    } else if (flag == "--log-level") {
      if (absl::Status s = need_value(); !s.ok()) return s;
      c.log_level = value;
    } else if (flag == "--threads") {
      if (absl::Status s = need_value(); !s.ok()) return s;
      if (!absl::SimpleAtoi(value, &c.threads) || c.threads < 1 || c.threads > 256)
        return absl::InvalidArgumentError(absl::StrCat("--threads ", value, ": not a number in 1..256"));
    } else if (flag == "--cpus") {
      if (absl::Status s = need_value(); !s.ok()) return s;
      if (absl::Status s = ParseCpuList(value, &c.cpus); !s.ok()) return s;
    } else if (flag == "--metrics") {
      if (absl::Status s = need_value(); !s.ok()) return s;
      c.metrics_address = value;
    } else if (flag == "--upgrade-from") {
      if (absl::Status s = need_value(); !s.ok()) return s;
      c.upgrade_from = value;
    } else if (flag == "--control-max-clients" || flag == "--control-timeout") {
      if (absl::Status s = need_value(); !s.ok()) return s;
      if (absl::Status s = SetControlLimit(flag.substr(2), value, flag, &c); !s.ok()) return s;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument '", args[i], "' (see vios --help)"));
    }
  }
  if (!c.upgrade_from.empty()) {
    if (!c.devices.empty() || !c.attaches.empty() || !c.netdevs.empty())
      return absl::InvalidArgumentError(
          "--upgrade-from takes the devices of the running vios: give no --device, --attach, --netdev or devices in --config");
    if (!c.control_path.empty() && c.control_path != c.upgrade_from)
      return absl::InvalidArgumentError(absl::StrCat("--control ", c.control_path, " with --upgrade-from ",
                                                     c.upgrade_from, ": the control socket is the one handed over"));
    c.control_path = c.upgrade_from;
  }
  return c;
}

}  // namespace vioport::vios
