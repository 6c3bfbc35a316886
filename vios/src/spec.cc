#include "spec.h"

#include <toml++/toml.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace vioport::vios {

const char kUsage[] = R"(vios: the vioport VIO server. Serves virtio devices to guests over transports.

usage: vios [--device SPEC]... [--attach SPEC]... [--config FILE] [--control PATH]
            [--log-level LEVEL] [--help]

  --device TYPE,id=ID[,KEY=VALUE...]   create a device
      blk,id=ID,path=FILE[,readonly=on][,num-queues=N][,queue-size=N][,serial=S]
                                        [,seg-max=N][,size-max=BYTES]
                                        [,aio=auto|io_uring|inline]
          aio: io_uring, or preadv/pwritev on the loop thread; auto (default)
          is inline for files in memory (tmpfs), io_uring for the rest
      rng,id=ID
      console,id=ID,socket=PATH        host side on a Unix socket (one client)
      console,id=ID,stdio=on           host side on vios's own stdin/stdout
  --attach ID,transport=T[,KEY=VALUE...]  serve device ID to a guest
      ID,transport=shm,path=SOCKET[,poll=on][,spin-us=N]
                                        hypervisor-less virtio-mmio over shared
                                        memory; poll=on busy-polls the rings on
                                        a dedicated thread (costs a core);
                                        spin-us: keep serving N us past the last
                                        request before sleeping (default 20)
      ID,transport=vhost-user,socket=SOCKET[,spin-us=N][,inflight=off]
                                        KVM: serve QEMU (or any vhost-user
                                        front-end) on SOCKET, e.g. QEMU's
                                        -chardev socket,path=SOCKET,reconnect=1
                                        -device vhost-user-blk-pci; requests in
                                        flight survive a vios restart unless
                                        inflight=off
      ID,transport=xen,channel=emu:SOCKET|xen,domid=F[,devid=N]
         [,grants=map|copy][,cache-pages=N][,self=B][,memory-mib=N]
         [,spin-us=N]
                                        Xen: serve frontend domain F's virtio
                                        device N (default 0) over grants,
                                        event channels and xenstore
                                        (docs/transports/xen.md). channel:
                                        emu:SOCKET joins the xenemud emulator
                                        (xenemud --domains SOCKET) as domain B
                                        (self, default 0 = dom0; memory-mib of
                                        RAM, default 64, from the first
                                        attachment); xen uses real Xen through
                                        libxen (docs/transports/xen-real.md).
                                        vios writes both xenstore directories
                                        as the toolstack would. grants=map
                                        (default) keeps up to cache-pages
                                        (default 4096) persistent mappings,
                                        then grant-copies; grants=copy copies
                                        every access. spin-us: serve on N us
                                        past the last request before sleeping
                                        (default 100: a notification through
                                        the hypervisor costs about that)
      ID,transport=crq,crqd=SOCKET,partition=PID,unit=UNIT,liobn=LIOBN,
         remote-liobn=RLIOBN,remote-window-mib=N[,memory-mib=N]
         [,max-transfer=B][,staging=N][,read-ahead=off][,spin-us=N]
                                        PowerVM: serve a client partition over a
                                        CRQ adapter pair of the crqd emulator
                                        (docs/transports/crq.md). vios joins
                                        crqd on SOCKET as partition PID, once
                                        for all its crq attachments naming PID
                                        (a VIO server partition with many
                                        adapters; memory-mib of RAM, default 64,
                                        taken from the first), registers server
                                        adapter UNIT, maps its queue page,
                                        bounce buffer and N staging buffers of
                                        256 KiB (default 32; as many as fit) in
                                        its window LIOBN, and copies to/from the
                                        client's window RLIOBN (remote-window-mib:
                                        its size, as in the crqd --pair).
                                        read-ahead: small buffer reads (request
                                        headers) copy their whole page once
                                        per batch (default on).
                                        spin-us: keep serving the partition N
                                        us past the last work before sleeping
                                        (default 20). Numbers take 0x
  --config FILE        the same in TOML: [[device]] and [[attach]] tables with
                       the keys above (type/id, device/transport), plus
                       top-level control = "PATH" and log-level = "LEVEL"
  --control PATH       control socket for viosctl (list, stats, add, attach, remove)
  --log-level LEVEL    error, warning, info (default) or debug

SIGTERM or SIGINT: stop accepting guests, finish requests in flight, flush, exit 0.
)";

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
  const std::string v = absl::AsciiStrToLower(it->second);
  if (v == "on" || v == "true" || v == "yes" || v == "1") return true;
  if (v == "off" || v == "false" || v == "no" || v == "0") return false;
  return Error(key, "is not on/off");
}

absl::StatusOr<uint64_t> Options::Uint(const std::string& key, uint64_t dflt, uint64_t min, uint64_t max) {
  used_[key] = true;
  auto it = kv_.find(key);
  if (it == kv_.end()) return dflt;
  uint64_t v;
  const bool hex = it->second.size() > 2 && it->second[0] == '0' && (it->second[1] == 'x' || it->second[1] == 'X');
  if (hex ? !absl::SimpleHexAtoi(absl::string_view(it->second).substr(2), &v) : !absl::SimpleAtoi(it->second, &v))
    return Error(key, "is not a number");
  if (v < min || v > max) return Error(key, absl::StrCat("is out of range (", min, "..", max, ")"));
  return v;
}

absl::Status Options::CheckAllUsed() const {
  for (const auto& [k, v] : kv_)
    if (!used_.count(k)) return absl::InvalidArgumentError(absl::StrCat(origin_, ": unknown option '", k, "=", v, "'"));
  return absl::OkStatus();
}

namespace {

// "first,k=v,k=v" -> first element and the map. `what` names the flag.
absl::Status SplitSpec(absl::string_view text, absl::string_view what, std::string* first,
                       std::map<std::string, std::string>* kv) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, ',');
  if (parts.empty() || parts[0].empty() || parts[0].find('=') != absl::string_view::npos)
    return absl::InvalidArgumentError(absl::StrCat(what, " ", text, ": must start with ",
                                                   what == "--device" ? "the device type" : "the device id"));
  *first = std::string(parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    const size_t eq = parts[i].find('=');
    if (parts[i].empty()) continue;
    if (eq == absl::string_view::npos || eq == 0)
      return absl::InvalidArgumentError(absl::StrCat(what, " ", text, ": '", parts[i], "' is not KEY=VALUE"));
    const std::string key(parts[i].substr(0, eq));
    if (kv->count(key)) return absl::InvalidArgumentError(absl::StrCat(what, " ", text, ": option '", key, "' given twice"));
    (*kv)[key] = std::string(parts[i].substr(eq + 1));
  }
  return absl::OkStatus();
}

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

}  // namespace

absl::StatusOr<DeviceSpec> ParseDevice(absl::string_view text) {
  std::string type;
  std::map<std::string, std::string> kv;
  if (absl::Status s = SplitSpec(text, "--device", &type, &kv); !s.ok()) return s;
  return MakeDevice(std::move(type), std::move(kv), absl::StrCat("--device ", text));
}

absl::StatusOr<AttachSpec> ParseAttach(absl::string_view text) {
  std::string dev;
  std::map<std::string, std::string> kv;
  if (absl::Status s = SplitSpec(text, "--attach", &dev, &kv); !s.ok()) return s;
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
    if (key == "device" || key == "attach") {
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
        const std::string first_key = key == "device" ? "type" : "device";
        auto first = kv.find(first_key);
        if (first == kv.end()) return absl::InvalidArgumentError(absl::StrCat(origin, ": option '", first_key, "' is required"));
        std::string f = first->second;
        kv.erase(first);
        if (key == "device") {
          auto d = MakeDevice(std::move(f), std::move(kv), origin);
          if (!d.ok()) return d.status();
          config->devices.push_back(std::move(*d));
        } else {
          auto a = MakeAttach(std::move(f), std::move(kv), origin);
          if (!a.ok()) return a.status();
          config->attaches.push_back(std::move(*a));
        }
      }
    } else if (key == "control" || key == "log-level") {
      std::string s;
      if (!v.is_string() || !to_string(v, &s))
        return absl::InvalidArgumentError(absl::StrCat(path, ": '", key, "' must be a string"));
      (key == "control" ? config->control_path : config->log_level) = s;
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
    if (flag == "--device") {
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
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument '", args[i], "' (see vios --help)"));
    }
  }
  return c;
}

}  // namespace vioport::vios
