// SPDX-License-Identifier: Apache-2.0
// The loopback rig: loopback is in-process only, so vios's own server
// (vios/src/server.h: the same --device parsing, backends, stats and list)
// runs in this process with a "loopback" transport registered here: its
// device half publishes each attached device under its id, its guest half
// (--transport loopback:ID) drives that device through a LoopbackTransport
// on the caller's thread. What vioport logs goes through `tee` into a file
// (and on to this process's stderr), which is "vios's log" here.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio/io_context.hpp"
#include "control_client.h"
#include "server.h"
#include "spec.h"
#include "vioport/core/log.h"
#include "vioport/testing/transport_rig.h"
#include "vioport/transports/endpoint.h"
#include "vioport/transports/loopback.h"

extern char** environ;

namespace vioport::testing {
namespace {

// ---- A loopback transport for vios's server, in this process -------------------------

struct LoopbackChannel {
  std::shared_ptr<VirtioDevice> device;
  std::string name;  // "ID@loopback", for the controller's log lines
  EndpointState state;
  absl::Mutex mu;
  LoopbackTransport* live ABSL_GUARDED_BY(mu) = nullptr;  // the guest's, while one is connected
};

absl::Mutex g_channels_mu;
std::map<std::string, std::weak_ptr<LoopbackChannel>>& Channels() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g_channels_mu) {
  static auto* m = new std::map<std::string, std::weak_ptr<LoopbackChannel>>;
  return *m;
}

class LoopbackEndpoint final : public DeviceEndpoint {
 public:
  LoopbackEndpoint(std::string id, std::shared_ptr<LoopbackChannel> ch) : id_(std::move(id)), ch_(std::move(ch)) {}
  ~LoopbackEndpoint() override {
    absl::MutexLock l(&g_channels_mu);
    Channels().erase(id_);
  }
  std::string where() const override { return "in-process:" + id_; }
  std::string mode() const override { return "loopback"; }
  bool connected() const override { return ch_->state.connected.load(); }
  uint8_t device_status() const override {
    absl::MutexLock l(&ch_->mu);
    return ch_->live ? ch_->live->controller().status() : 0;
  }
  std::string last_error() const override {
    absl::MutexLock l(&ch_->mu);
    if (ch_->live && !ch_->live->controller().last_error().empty()) return ch_->live->controller().last_error();
    return ch_->state.error();
  }
  void AppendCounters(CounterList* out) const override {
    absl::MutexLock l(&ch_->mu);
    ch_->state.AppendCounters(ch_->live ? ch_->live->controller().transport_counters() : TransportCounters{}, {},
                              out);
  }
  absl::Status Quiesce() override { return ch_->device->Quiesce(); }

 private:
  std::string id_;
  std::shared_ptr<LoopbackChannel> ch_;
};

// The guest's transport: a LoopbackTransport it owns, so that when the guest
// goes the connection's counters are filed (as every endpoint does) after
// the reset a connection's end is.
class LoopbackGuest final : public DriverTransport {
 public:
  LoopbackGuest(std::shared_ptr<LoopbackChannel> ch, uint64_t memory) : ch_(std::move(ch)) {
    LoopbackOptions o;
    o.memory_bytes = memory;
    o.name = ch_->name;
    t_ = std::make_unique<LoopbackTransport>(ch_->device, o);
    absl::MutexLock l(&ch_->mu);
    ch_->live = t_.get();
    ch_->state.connections++;
    ch_->state.connected = true;
  }
  ~LoopbackGuest() override {
    {
      absl::MutexLock l(&ch_->mu);
      t_->SetStatus(0);
      ch_->state.Ended(t_->controller());
      ch_->live = nullptr;
      ch_->state.connected = false;
    }
    t_.reset();
  }
  uint32_t GetDeviceId() override { return t_->GetDeviceId(); }
  uint8_t GetStatus() override { return t_->GetStatus(); }
  void SetStatus(uint8_t s) override { t_->SetStatus(s); }
  uint64_t GetDeviceFeatures() override { return t_->GetDeviceFeatures(); }
  void SetDriverFeatures(uint64_t f) override { t_->SetDriverFeatures(f); }
  uint32_t GetConfigGeneration() override { return t_->GetConfigGeneration(); }
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override { t_->ReadConfig(offset, out); }
  void WriteConfig(uint32_t offset, std::span<const uint8_t> in) override { t_->WriteConfig(offset, in); }
  uint32_t GetQueueMaxSize(uint16_t q) override { return t_->GetQueueMaxSize(q); }
  absl::Status EnableQueue(uint16_t q, uint32_t size, uint64_t desc, uint64_t driver, uint64_t device) override {
    return t_->EnableQueue(q, size, desc, driver, device);
  }
  void Notify(uint16_t q, uint32_t data) override { t_->Notify(q, data); }
  DmaAllocator& dma() override { return t_->dma(); }
  uint64_t SupportedTransportFeatures() override { return t_->SupportedTransportFeatures(); }
  bool WaitForInterrupt(uint16_t q, absl::Duration timeout) override { return t_->WaitForInterrupt(q, timeout); }

 private:
  std::shared_ptr<LoopbackChannel> ch_;
  std::unique_ptr<LoopbackTransport> t_;
};

void RegisterInProcessLoopback() {
  RegisterDeviceTransport(
      {"loopback",
       "in this process only (the conformance rig): the guest half is --transport loopback:ID",
       {},
       [](EndpointContext& ctx, const OptionValues&) -> absl::StatusOr<std::unique_ptr<DeviceEndpoint>> {
         const std::string id = ctx.name.substr(0, ctx.name.find('@'));
         auto ch = std::make_shared<LoopbackChannel>();
         ch->device = ctx.device;
         ch->name = ctx.name;
         absl::MutexLock l(&g_channels_mu);
         if (Channels().count(id) && !Channels()[id].expired())
           return absl::AlreadyExistsError(absl::StrCat("loopback ", id, " exists"));
         Channels()[id] = ch;
         return std::unique_ptr<DeviceEndpoint>(std::make_unique<LoopbackEndpoint>(id, ch));
       },
       nullptr});
  RegisterGuestTransport(
      {"loopback", "ID", "the device ID a loopback endpoint in this process serves", {}, {}, 64 << 20,
       [](const GuestContext& ctx, const std::string& id, const OptionValues&) -> absl::StatusOr<GuestLink> {
         std::shared_ptr<LoopbackChannel> ch;
         {
           absl::MutexLock l(&g_channels_mu);
           auto it = Channels().find(id);
           if (it != Channels().end()) ch = it->second.lock();
         }
         if (!ch) return absl::UnavailableError(absl::StrCat("no loopback device '", id, "' in this process"));
         {
           absl::MutexLock l(&ch->mu);
           if (ch->live) {
             ch->state.refused++;
             return absl::UnavailableError(absl::StrCat("loopback ", id, ": busy (one guest at a time)"));
           }
         }
         GuestLink link;
         link.transport = std::make_unique<LoopbackGuest>(ch, *ctx.memory_bytes);
         return link;
       }});
}

// ---- stderr through tee ---------------------------------------------------------------------

// While it lives, fd 2 is a pipe into `tee -a PATH` whose output is the
// old stderr: everything logged lands in PATH and still shows, even if
// this process dies mid-test.
class StderrTee {
 public:
  absl::Status Start(const std::string& path) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return absl::InternalError("pipe2");
    saved_ = ::fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&fa, saved_, STDOUT_FILENO);
    const char* argv[] = {"tee", "-a", path.c_str(), nullptr};
    const int rc = ::posix_spawnp(&pid_, "tee", &fa, nullptr, const_cast<char**>(argv), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(p[0]);
    if (rc != 0) {
      ::close(p[1]);
      ::close(saved_);
      saved_ = -1;
      return absl::InternalError("cannot start tee");
    }
    std::fflush(stderr);
    ::dup2(p[1], STDERR_FILENO);
    ::close(p[1]);
    return absl::OkStatus();
  }
  ~StderrTee() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, STDERR_FILENO);  // the pipe's last writer: tee sees EOF
    ::close(saved_);
    int st;
    ::waitpid(pid_, &st, 0);
  }

 private:
  int saved_ = -1;
  pid_t pid_ = -1;
};

// ---- The rig ------------------------------------------------------------------------------------

class Loopback final : public TransportRig {
 public:
  explicit Loopback(std::string dir)
      : TransportRig(std::move(dir),
                     {.transport = "loopback",
                      .device_side_in_process = true,
                      .guest_processes = false,
                      .no_reconnect_reason = "loopback's device side runs in this process: there is no vios to lose",
                      .zero_while_guests_behave = {"connections_refused", "protocol_errors"}}) {}
  ~Loopback() override {
    server_.reset();
    tee_.reset();
    SetLogLevel(old_level_);
  }

  absl::Status StartDevices(const std::vector<std::string>& device_specs) override {
    static const bool registered = [] {
      RegisterBuiltinTransports();
      RegisterInProcessLoopback();
      return true;
    }();
    (void)registered;
    tee_ = std::make_unique<StderrTee>();
    if (absl::Status s = tee_->Start(Path("vios.log")); !s.ok()) return s;
    old_level_ = GetLogLevel();
    SetLogLevel(LogLevel::kInfo);  // vios's default
    server_ = std::make_unique<vios::Server>(io_);
    ids_.clear();
    for (const std::string& spec : device_specs)
      if (absl::Status s = AddDevice(spec); !s.ok()) return s;
    return absl::OkStatus();
  }
  absl::Status RestartDevices() override {
    return absl::UnimplementedError("loopback's device side is this process");
  }
  int KillDevices(int) override { return -1; }
  int StopDevices() override {
    if (!server_) return -1;
    const absl::Status s = server_->Shutdown();
    server_.reset();
    return s.ok() ? 0 : 1;
  }
  bool DevicesRunning() override { return server_ != nullptr; }
  absl::Status RemoveDevice(const std::string& id) override {
    if (!server_) return absl::FailedPreconditionError("stopped");
    return server_->Remove(id);
  }
  absl::Status AddDevice(const std::string& spec) override {
    if (!server_) return absl::FailedPreconditionError("stopped");
    auto d = vios::ParseDevice(spec);
    if (!d.ok()) return d.status();
    const std::string id = d->id;
    if (absl::Status s = server_->AddDevice(std::move(*d)); !s.ok()) return s;
    auto a = vios::ParseAttach(id + ",transport=loopback");
    if (!a.ok()) return a.status();
    if (absl::Status s = server_->Attach(std::move(*a)); !s.ok()) return s;
    if (std::find(ids_.begin(), ids_.end(), id) == ids_.end()) ids_.push_back(id);
    return absl::OkStatus();
  }

  std::string GuestSpec(const std::string& id) const override { return "loopback:" + id; }
  uint64_t AddressOutsideGuestMemory() const override {
    return LoopbackOptions{}.memory_base + traits_.guest_memory;
  }

  std::string Stats(const std::string& id) override {
    if (!server_) return "error: stopped\n";
    auto s = server_->Stats(id);
    return s.ok() ? vios::RenderStats(*s) + "ok\n" : absl::StrCat("error: ", s.status().message(), "\n");
  }
  std::string List() override {
    return server_ ? vios::RenderList(server_->NetdevList(), server_->DeviceList()) + "ok\n" : "error: stopped\n";
  }
  std::string DeviceLog() override { return testproc::Proc::Slurp(Path("vios.log")); }

 private:
  boost::asio::io_context io_;  // the endpoints' loop: loopback's never needs running
  std::unique_ptr<StderrTee> tee_;
  std::unique_ptr<vios::Server> server_;
  LogLevel old_level_ = LogLevel::kWarning;
};

}  // namespace

RigFactory LoopbackRig() {
  return {"Loopback", [](const std::string& dir) -> std::unique_ptr<TransportRig> {
            return std::make_unique<Loopback>(dir);
          }};
}

}  // namespace vioport::testing
