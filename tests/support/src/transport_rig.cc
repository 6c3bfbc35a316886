// SPDX-License-Identifier: Apache-2.0
// The rigs of the transports that cross processes: vios as a process
// (ViosRig), and per transport its --attach options, its guest's channel,
// its emulator and its traits. The loopback rig is in loopback_rig.cc.
#include "vioport/testing/transport_rig.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "control_client.h"
#include "nlohmann/json.hpp"
#include "vioport/transports/options.h"
#include "vioport/testing/tool_output.h"
#include "vioport/transports/vhost_user_guest.h"
#ifdef VIOPORT_RIG_EMULATORS
#include "vioport/transports/xen_protocol.h"
#endif

namespace vioport::testing {

using testproc::Proc;
using testproc::Spawn;

namespace {

// Polls `pred` every 5 ms until it holds or `seconds` pass.
template <typename Pred>
bool PollFor(Pred pred, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// The id= of a --device spec ("blk,id=d0,path=x" -> "d0"); "" if none.
std::string IdOf(const std::string& spec) {
  for (absl::string_view kv : absl::StrSplit(spec, ','))
    if (absl::ConsumePrefix(&kv, "id=")) return std::string(kv);
  return "";
}

}  // namespace

const std::vector<std::string>& BaseCounterNames() {
  static const auto* names = new std::vector<std::string>{
      "requests",         "bytes_in",      "bytes_out",  "ring_errors", "device_resets", "activations",
      "features_refused", "notifications", "interrupts", "reconnects"};
  return *names;
}

// ---- TransportRig ------------------------------------------------------------------

TransportRig::~TransportRig() {
  for (Proc& p : procs_)
    if (p.pid > 0 && p.Running()) {
      p.Signal(SIGKILL);
      p.Wait(10);
    }
}

Proc& TransportRig::Keep(Proc p) {
  procs_.push_back(std::move(p));
  return procs_.back();
}

int TransportRig::SlotOf(const std::string& id) const {
  auto it = std::find(ids_.begin(), ids_.end(), id);
  return it == ids_.end() ? -1 : static_cast<int>(it - ids_.begin());
}

absl::StatusOr<GuestLink> TransportRig::ConnectGuest(const std::string& id, DeviceId type) {
  RegisterBuiltinTransports();
  if (absl::Status s = WaitGuestSlotFree(SlotOf(id)); !s.ok()) return s;
  GuestContext ctx;
  ctx.device = type;
  ctx.memory_bytes = traits_.guest_memory;
  return ::vioport::ConnectGuest(GuestSpec(id), ctx);
}

Proc& TransportRig::StartGuestProcess(const std::string& id, const std::vector<std::string>& cmd) {
  // A refusal here shows as the guest's own failure to connect.
  (void)WaitGuestSlotFree(SlotOf(id));
  std::vector<std::string> argv = {VIOGUEST_BIN, "--quiet", "--transport", GuestSpec(id)};
  argv.insert(argv.end(), cmd.begin(), cmd.end());
  return Keep(Spawn(argv, dir_, "vioguest"));
}

Proc& TransportRig::RunGuestProcess(const std::string& id, const std::vector<std::string>& cmd, double seconds) {
  Proc& p = StartGuestProcess(id, cmd);
  p.Wait(seconds);
  return p;
}

absl::Status TransportRig::WaitGuestGone(const std::string& id, GuestExit) {
  // `viosctl list`: the device's line says "waiting" once no guest is attached.
  std::string list;
  const bool gone = testproc::WaitFor(
      [&] {
        list = List();
        for (absl::string_view line : absl::StrSplit(list, '\n')) {
          std::vector<absl::string_view> w = absl::StrSplit(line, ' ', absl::SkipEmpty());
          if (!w.empty() && w[0] == id) return std::find(w.begin(), w.end(), "waiting") != w.end();
        }
        return false;
      },
      10);
  if (!gone) return absl::DeadlineExceededError(absl::StrCat("device ", id, " still has a guest:\n", list));
  return WaitGuestSlotFree(SlotOf(id));
}

uint64_t TransportRig::Stat(const std::string& id, const std::string& name) {
  return testproc::StatValue(Stats(id), id, name);
}

bool TransportRig::WaitForStat(const std::string& id, const std::string& name,
                               const std::function<bool(uint64_t)>& pred, double seconds) {
  return PollFor(
      [&] {
        const uint64_t v = QuickStat(id, name);
        return v != ~0ull && pred(v);
      },
      seconds);
}

bool TransportRig::WaitForLog(const std::string& text, double seconds) {
  return testproc::WaitFor([&] { return absl::StrContains(DeviceLog(), text); }, seconds);
}

// ---- vios as a process ------------------------------------------------------------------

namespace {

class ViosRig : public TransportRig {
 public:
  ViosRig(std::string dir, RigTraits traits) : TransportRig(std::move(dir), std::move(traits)) {}

  absl::Status StartChannel() override {
    const std::vector<std::string> argv = EmulatorArgv();
    if (argv.empty()) return absl::OkStatus();
    emulator_ = &Keep(Spawn(argv, dir_, std::filesystem::path(argv[0]).filename().string()));
    const std::vector<std::string> paths = EmulatorPaths();
    const bool up = testproc::WaitFor(
        [&] {
          return !emulator_->Running() ||
                 std::all_of(paths.begin(), paths.end(), [](const std::string& p) { return std::filesystem::exists(p); });
        },
        10);
    if (!up || !emulator_->Running())
      return absl::UnavailableError(absl::StrCat(argv[0], " did not start: ", emulator_->err()));
    return absl::OkStatus();
  }
  int StopChannel() override {
    if (!emulator_) return 0;
    emulator_->Signal(SIGTERM);
    return emulator_->Wait(30);
  }

  absl::Status StartDevices(const std::vector<std::string>& device_specs) override {
    if (device_specs.size() > static_cast<size_t>(kMaxDevices))
      return absl::InvalidArgumentError(absl::StrCat("at most ", kMaxDevices, " devices per rig"));
    ids_.clear();
    vios_args_.clear();
    for (const std::string& spec : device_specs) {
      const std::string id = IdOf(spec);
      if (id.empty()) return absl::InvalidArgumentError(absl::StrCat("no id= in '", spec, "'"));
      const int slot = static_cast<int>(ids_.size());
      ids_.push_back(id);
      vios_args_.insert(vios_args_.end(), {"--device", spec, "--attach",
                                           absl::StrCat(id, ",transport=", traits_.transport, ",",
                                                        AttachOptions(slot, id))});
    }
    return SpawnVios();
  }
  absl::Status RestartDevices() override {
    if (absl::Status s = WaitDeviceSideGone(); !s.ok()) return s;
    return SpawnVios();
  }
  int KillDevices(int signal) override {
    if (!vios_) return -1;
    vios_->Signal(signal);
    return vios_->Wait(10);
  }
  int StopDevices() override { return KillDevices(SIGTERM); }
  bool DevicesRunning() override { return vios_ && vios_->Running(); }
  absl::Status RemoveDevice(const std::string& id) override {
    return Control("device_remove", {{"id", id}});
  }
  absl::Status AddDevice(const std::string& spec) override {
    const std::string id = IdOf(spec);
    if (id.empty()) return absl::InvalidArgumentError(absl::StrCat("no id= in '", spec, "'"));
    int slot = SlotOf(id);
    if (slot < 0) {
      slot = static_cast<int>(ids_.size());
      ids_.push_back(id);
    }
    std::string type;
    std::map<std::string, std::string> kv;
    if (absl::Status s = SplitKeyValues(spec, "device", "the device type", &type, &kv); !s.ok()) return s;
    nlohmann::json add = {{"type", type}};
    for (const auto& [k, v] : kv) add[k] = v;
    if (absl::Status s = Control("device_add", add); !s.ok()) return s;
    nlohmann::json attach = {{"id", id}, {"transport", traits_.transport}};
    std::string first;
    std::map<std::string, std::string> opts;
    if (absl::Status s = SplitKeyValues(absl::StrCat(id, ",", AttachOptions(slot, id)), "attach", "the device id",
                                        &first, &opts);
        !s.ok())
      return s;
    for (const auto& [k, v] : opts) attach[k] = v;
    return Control("device_attach", attach);
  }

  absl::StatusOr<double> UpgradeDevices() override {
    if (!vios_) return absl::FailedPreconditionError("no vios to upgrade");
    Proc& next = Keep(Spawn({VIOS_BIN, "--upgrade-from", Path("vios.ctl")}, dir_, "vios"));
    // The new vios gives up (and the old one serves on), or the old one exits.
    testproc::WaitFor([&] { return !vios_->Running() || !next.Running(); }, 60);
    if (vios_->Running())
      return absl::InternalError(absl::StrCat("not upgraded: the new vios exited ", next.Wait(5), ": ", next.err()));
    const int old = vios_->Wait(1);
    if (old != 0)
      return absl::InternalError(absl::StrCat("the old vios exited ", old, ": ", vios_->err(), "\nthe new one: ", next.err()));
    std::string log;
    testproc::WaitFor([&] { return (log = next.err()).find("vios ready") != std::string::npos || !next.Running(); }, 30);
    if (!next.Running()) return absl::InternalError(absl::StrCat("the new vios exited ", next.Wait(1), ": ", log));
    const size_t at = log.find("guests waited ");
    if (at == std::string::npos) return absl::InternalError(absl::StrCat("no pause reported: ", log));
    vios_ = &next;
    return std::stod(log.substr(at + 14));
  }

  std::string GuestSpec(const std::string& id) const override {
    return absl::StrCat(traits_.transport, ":", GuestChannel(SlotOf(id), id));
  }

  std::string Stats(const std::string& id) override { return Viosctl("stats " + id); }
  std::string List() override { return Viosctl("list"); }
  std::string DeviceLog() override { return vios_ ? vios_->err() : ""; }

 protected:
  uint64_t QuickStat(const std::string& id, const std::string& name) override {
    return testproc::StatValue(vios::StatsText(Path("vios.ctl"), id), id, name);
  }
  // The emulator's command line (binary first) and the paths it creates once
  // it serves; none by default.
  virtual std::vector<std::string> EmulatorArgv() const { return {}; }
  virtual std::vector<std::string> EmulatorPaths() const { return {}; }
  // What follows "ID,transport=NAME," in --attach for the device in `slot`.
  virtual std::string AttachOptions(int slot, const std::string& id) const = 0;
  // What follows "NAME:" in the guest's --transport.
  virtual std::string GuestChannel(int slot, const std::string& id) const = 0;
  // Before vios starts again: waits until the channel forgot the dead one.
  virtual absl::Status WaitDeviceSideGone() { return absl::OkStatus(); }

  // One control API call; its error as a status.
  absl::Status Control(const std::string& method, const nlohmann::json& params) {
    auto r = vios::ControlCall(Path("vios.ctl"), method, params, 30);
    if (!r.ok()) return r.status();
    if (r->contains("error"))
      return absl::InternalError(absl::StrCat(method, ": ", (*r)["error"].value("message", "")));
    return absl::OkStatus();
  }

  std::string Viosctl(const std::string& command) {
    std::vector<std::string> argv = {VIOSCTL_BIN, "--control", Path("vios.ctl")};
    for (absl::string_view w : absl::StrSplit(command, ' ', absl::SkipEmpty())) argv.emplace_back(w);
    Proc p = Spawn(argv, dir_, "viosctl");
    p.Wait(30);
    return p.out() + p.err();
  }

  absl::Status SpawnVios() {
    std::filesystem::remove(Path("vios.ctl"));  // left behind by a killed vios
    std::vector<std::string> argv = {VIOS_BIN};
    argv.insert(argv.end(), vios_args_.begin(), vios_args_.end());
    argv.insert(argv.end(), {"--control", Path("vios.ctl")});
    vios_ = &Keep(Spawn(argv, dir_, "vios"));
    if (vios_->pid <= 0) return absl::InternalError("could not spawn vios");
    const bool up = testproc::WaitFor(
        [&] { return !vios_->Running() || std::filesystem::exists(Path("vios.ctl")); }, 10);
    if (!up || !vios_->Running()) return absl::UnavailableError(absl::StrCat("vios did not start: ", vios_->err()));
    return absl::OkStatus();
  }

  Proc* emulator_ = nullptr;
  Proc* vios_ = nullptr;
  std::vector<std::string> vios_args_;
};

// ---- shm ---------------------------------------------------------------------------------

class Shm final : public ViosRig {
 public:
  explicit Shm(std::string dir)
      : ViosRig(std::move(dir),
                {.transport = "shm",
                 .no_reconnect_reason = "the shm guest half does not reconnect: once vios is gone its transport "
                                        "stays gone and a reset does not connect again",
                 .zero_while_guests_behave = {"connections_refused", "protocol_errors", "register_writes_ignored"}}) {}

 protected:
  std::string AttachOptions(int, const std::string& id) const override { return "path=" + Path(id + ".sock"); }
  std::string GuestChannel(int, const std::string& id) const override { return Path(id + ".sock"); }
};

// ---- vhost-user --------------------------------------------------------------------------------

class VhostUser final : public ViosRig {
 public:
  explicit VhostUser(std::string dir)
      : ViosRig(std::move(dir),
                {.transport = "vhost-user",
                 .no_reconnect_reason = "vioport's vhost-user guest half (VhostUserDriverTransport) does not "
                                        "reconnect to a restarted back-end (a VMM does, with a new VmmFrontend "
                                        "over the same RAM: tests/kvm/inflight_reconnect_test.cc)",
                 .queue_size_refusal = QueueSizeRefusal::kClosesConnectionAtDriverOk,
                 .reports_device_queue_max = false,
                 .zero_while_guests_behave = {"connections_refused", "protocol_errors", "activations_refused"}}) {}

  // The registry's front-end reports (and enforces) a maximum of 256, as
  // vhost-user carries none; this one passes any size on, as a VMM
  // configured with a larger queue-size would.
  absl::StatusOr<GuestLink> ConnectUncheckedGuest(const std::string& id, DeviceId type) override {
    VhostUserGuestOptions o;
    o.frontend.socket_path = GuestChannel(SlotOf(id), id);
    o.frontend.memory_bytes = traits_.guest_memory;
    o.device_id = static_cast<uint32_t>(type);
    o.queue_size_max = 32768;
    auto t = VhostUserDriverTransport::Connect(o);
    if (!t.ok()) return t.status();
    GuestLink link;
    link.transport = std::move(*t);
    return link;
  }

 protected:
  std::string AttachOptions(int, const std::string& id) const override { return "socket=" + Path(id + ".sock"); }
  std::string GuestChannel(int, const std::string& id) const override { return Path(id + ".sock"); }
};

#ifdef VIOPORT_RIG_EMULATORS

// ---- crq over crqd ------------------------------------------------------------------------------
//
// crqd holds one adapter pair per slot: client partition 1 + 2*slot (unit
// and LIOBN 0x1000 + slot, a 64 MiB window: the guest's memory), server
// partition 2 for every slot (unit and LIOBN 0x2000 + slot, 1 MiB), as a
// VIO server is one partition with many adapters.

class Crq final : public ViosRig {
 public:
  explicit Crq(std::string dir)
      : ViosRig(std::move(dir),
                {.transport = "crq",
                 .guest_reconnects = true,
                 .zero_while_guests_behave = {"closes", "protocol_errors", "stale_generation", "copy_failures"}}) {}

  absl::Status WaitGuestGone(const std::string& id, GuestExit how) override {
    if (absl::Status s = ViosRig::WaitGuestGone(id, how); !s.ok()) return s;
    if (how == GuestExit::kKilled) {
      // The hypervisor told vios (FF 01: the partner partition failed).
      if (!WaitForStat(id, "crq.partner_resets", [](uint64_t v) { return v >= 1; }, 10))
        return absl::DeadlineExceededError(absl::StrCat("vios saw no partner reset:\n", Stats(id)));
      if (!WaitForLog("partner failed")) return absl::NotFoundError("vios logged no 'partner failed'");
      // A partner that went is not a protocol violation: vios closed nothing.
      if (const uint64_t closes = Stat(id, "crq.closes"); closes != 0)
        return absl::FailedPreconditionError(absl::StrCat("vios closed ", closes, " connection(s):\n", DeviceLog()));
    }
    return absl::OkStatus();
  }

 protected:
  static constexpr uint32_t kServerPartition = 2;
  static uint32_t ClientPartition(int slot) { return 1 + 2 * static_cast<uint32_t>(slot); }
  static uint32_t ClientUnit(int slot) { return 0x1000 + static_cast<uint32_t>(slot); }
  static uint32_t ServerUnit(int slot) { return 0x2000 + static_cast<uint32_t>(slot); }
  uint64_t WindowMib() const { return traits_.guest_memory >> 20; }

  std::vector<std::string> EmulatorArgv() const override {
    std::vector<std::string> argv = {CRQD_BIN, "--socket", Path("crqd.sock"), "--control", Path("crqd.ctl")};
    for (int s = 0; s < kMaxDevices; ++s)
      argv.insert(argv.end(), {"--pair", absl::StrFormat("client=%u:%#x:%#x:%u,server=%u:%#x:%#x:1", ClientPartition(s),
                                                         ClientUnit(s), ClientUnit(s), WindowMib(), kServerPartition,
                                                         ServerUnit(s), ServerUnit(s))});
    return argv;
  }
  std::vector<std::string> EmulatorPaths() const override { return {Path("crqd.sock"), Path("crqd.ctl")}; }
  std::string AttachOptions(int slot, const std::string&) const override {
    return absl::StrFormat("crqd=%s,partition=%u,unit=%#x,liobn=%#x,remote-liobn=%#x,remote-window-mib=%u",
                           Path("crqd.sock"), kServerPartition, ServerUnit(slot), ServerUnit(slot), ClientUnit(slot),
                           WindowMib());
  }
  std::string GuestChannel(int slot, const std::string&) const override {
    return absl::StrFormat("%s,partition=%u,unit=%#x,liobn=%#x", Path("crqd.sock"), ClientPartition(slot),
                           ClientUnit(slot), ClientUnit(slot));
  }
  // crqd frees a partition id only once its thread for the last process
  // with that id read the EOF: a guest right after another one on the same
  // partition could be refused ("already connected").
  absl::Status WaitGuestSlotFree(int slot) override {
    if (slot < 0) return absl::OkStatus();
    if (!testproc::WaitFor([&] { return !Partitions().count(ClientPartition(slot)); }, 10))
      return absl::DeadlineExceededError(absl::StrCat("crqd still lists partition ", ClientPartition(slot)));
    return absl::OkStatus();
  }
  absl::Status WaitDeviceSideGone() override {
    if (!testproc::WaitFor([&] { return !Partitions().count(kServerPartition); }, 10))
      return absl::DeadlineExceededError("crqd still lists vios's partition");
    return absl::OkStatus();
  }
  // `crqctl partitions`: the partition ids connected now.
  std::set<uint32_t> Partitions() {
    Proc p = Spawn({CRQCTL_BIN, "--control", Path("crqd.ctl"), "partitions"}, dir_, "crqctl");
    p.Wait(30);
    std::set<uint32_t> ids;
    for (absl::string_view line : absl::StrSplit(p.out(), '\n')) {
      uint32_t id;
      if (absl::ConsumePrefix(&line, "partition ") && absl::SimpleAtoi(line, &id)) ids.insert(id);
    }
    return ids;
  }
};

// ---- Xen over xenemud -------------------------------------------------------------------------------
//
// vios is dom0; the device in slot N is frontend domain 1 + N's device 0.

class Xen final : public ViosRig {
 public:
  explicit Xen(std::string dir)
      : ViosRig(std::move(dir), {.transport = "xen",
                                 .guest_reconnects = true,
                                 .guest_memory = 16 << 20,  // the transport's default (grantable pages are scarce)
                                 .zero_while_guests_behave = {"connections_refused", "register_writes_ignored",
                                                              "grant_map_failures", "grant_copy_failures",
                                                              "map_cache_overflow"}}) {}

  // Xen device addresses are grant references (bit 63): one far past any
  // this guest granted names no page of it.
  uint64_t AddressOutsideGuestMemory() const override { return xen::EncodeGrant(60000); }

  absl::Status WaitGuestGone(const std::string& id, GuestExit how) override {
    if (absl::Status s = ViosRig::WaitGuestGone(id, how); !s.ok()) return s;
    if (how == GuestExit::kKilled && !WaitForLog("disconnected"))
      return absl::NotFoundError("vios logged no 'disconnected' for the killed frontend");
    // vios unmapped every page of the guest it kept mapped.
    if (!WaitForStat(id, "xen.mapped_pages", [](uint64_t v) { return v == 0; }, 10))
      return absl::DeadlineExceededError(absl::StrCat("vios still maps the guest's pages:\n", Stats(id)));
    return absl::OkStatus();
  }

 protected:
  static uint32_t Domain(int slot) { return 1 + static_cast<uint32_t>(slot); }
  std::vector<std::string> EmulatorArgv() const override {
    return {XENEMUD_BIN, "--xenstore", Path("xs.sock"), "--domains", Path("xen.sock")};
  }
  std::vector<std::string> EmulatorPaths() const override { return {Path("xs.sock"), Path("xen.sock")}; }
  std::string AttachOptions(int slot, const std::string&) const override {
    return absl::StrFormat("channel=emu:%s,domid=%u", Path("xen.sock"), Domain(slot));
  }
  std::string GuestChannel(int slot, const std::string&) const override {
    return absl::StrFormat("emu:%s,domid=%u", Path("xen.sock"), Domain(slot));
  }
};

#endif  // VIOPORT_RIG_EMULATORS

template <typename Rig>
RigFactory Factory(std::string name) {
  return {std::move(name), [](const std::string& dir) -> std::unique_ptr<TransportRig> {
            return std::make_unique<Rig>(dir);
          }};
}

}  // namespace

RigFactory ShmRig() { return Factory<Shm>("Shm"); }
RigFactory VhostUserRig() { return Factory<VhostUser>("VhostUser"); }
#ifdef VIOPORT_RIG_EMULATORS
RigFactory CrqRig() { return Factory<Crq>("Crq"); }
RigFactory XenRig() { return Factory<Xen>("Xen"); }
#endif

}  // namespace vioport::testing
