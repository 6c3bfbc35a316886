// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/device_controller.h"

#include <algorithm>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/core/interrupt_coalescer.h"
#include "vioport/core/log.h"

namespace vioport {

// Interrupt-out as the device and the controller see it: counted, then the
// transport's sink. Called from backend worker threads too.
// Counts what goes out and, when the loop driving the device flushes it
// (EnableCoalescing), holds used-buffer interrupts of busy queues
// (DeviceStats::coalesce_*). Device thread only.
class DeviceController::CountingSink final : public InterruptSink {
 public:
  CountingSink(std::shared_ptr<InterruptSink> inner, ControllerCounters* c, DeviceStats* stats)
      : inner_(std::move(inner)), c_(c), stats_(stats), coalescer_(stats) {}
  void QueueInterrupt(uint16_t q) override {
    if (coalescing_ && coalescer_.Hold(q)) return;
    Send(q);
  }
  void ConfigInterrupt() override {
    c_->config_interrupts.fetch_add(1, std::memory_order_relaxed);
    inner_->ConfigInterrupt();
  }
  void set_coalescing(bool on) { coalescing_ = on; }
  // Sends every held interrupt (all: `force`; else those whose delay ran out).
  void Flush(bool force) {
    coalescer_.Flush(force, [this](uint16_t q) { Send(q); });
  }

 private:
  void Send(uint16_t q) {
    c_->queue_interrupts.fetch_add(1, std::memory_order_relaxed);
    if (stats_) BumpOwned(stats_->interrupts_sent);
    inner_->QueueInterrupt(q);
  }

  std::shared_ptr<InterruptSink> inner_;
  ControllerCounters* c_;
  DeviceStats* stats_;
  InterruptCoalescer coalescer_;
  bool coalescing_ = false;
};

DeviceController::DeviceController(std::shared_ptr<VirtioDevice> device, std::shared_ptr<GuestMemory> memory,
                                   std::shared_ptr<InterruptSink> interrupt, uint64_t transport_features)
    : device_(std::move(device)),
      name_(absl::StrCat("device ", static_cast<int>(device_->device_id()))),
      memory_(std::move(memory)) {
  SetInterruptSink(std::move(interrupt));
  offered_ = feature::Offer(device_->device_features(), transport_features);
  queues_.resize(device_->num_queues());
  device_->set_config_changed_hook([this] { OnConfigChanged(); });
}

DeviceController::~DeviceController() {
  if (active_) device_->Reset();
  device_->set_config_changed_hook(nullptr);
}

void DeviceController::DoReset() {
  restore_bases_.reset();
  if (active_) {
    active_queues_.clear();
    ActivateContext back = device_->Reset();  // the device stops touching memory here
    active_ = false;
    for (const auto& q : back.queues) {
      if (!q) continue;
      retired_.requests += q->counters().completed;
      retired_.bytes_in += q->counters().bytes_in;
      retired_.bytes_out += q->counters().bytes_out;
    }
  }
  driver_features_ = 0;
  for (auto& q : queues_) q = QueueSetup{};
  status_.store(0, std::memory_order_release);
  counters_.resets++;
}

absl::Status DeviceController::SetStatus(uint8_t s) {
  const uint8_t old = status();
  if (s == 0) {
    DoReset();
    return absl::OkStatus();
  }
  if (s & status::kDeviceNeedsReset) {
    counters_.bad_register_writes++;
    return absl::InvalidArgumentError("driver may not set DEVICE_NEEDS_RESET");
  }
  const uint8_t visible = old & ~status::kDeviceNeedsReset;
  if ((visible & ~s) != 0) {  // §2.1.1: the driver never clears bits
    counters_.bad_register_writes++;
    return absl::FailedPreconditionError(
        absl::StrFormat("status write 0x%02x clears bits of 0x%02x; only a write of 0 resets", s, old));
  }
  const uint8_t added = s & ~visible;
  uint8_t next = s | (old & status::kDeviceNeedsReset);

  if (added & status::kFailed) {
    // The driver gave up: stop the device, keep the status for the driver to see.
    if (active_) {
      active_queues_.clear();
      device_->Reset();
      active_ = false;
    }
    status_.store(next, std::memory_order_release);
    return absl::OkStatus();
  }
  if (old & status::kDeviceNeedsReset) {
    counters_.bad_register_writes++;
    return absl::FailedPreconditionError("device needs reset; only a write of 0 is accepted");
  }
  if ((added & status::kDriver) && !(s & status::kAcknowledge)) {
    counters_.bad_register_writes++;
    return absl::FailedPreconditionError("DRIVER set without ACKNOWLEDGE");
  }
  if (added & status::kFeaturesOk) {
    absl::Status ok = absl::OkStatus();
    if (!(s & status::kDriver)) ok = absl::FailedPreconditionError("FEATURES_OK before DRIVER");
    const uint64_t unknown = driver_features_ & ~offered_;
    if (ok.ok() && unknown)
      ok = absl::InvalidArgumentError(absl::StrFormat("driver acked features not offered: 0x%x", unknown));
    if (ok.ok() && !feature::Has(driver_features_, feature::kVersion1))
      ok = absl::InvalidArgumentError("FEATURES_OK without VERSION_1 (legacy drivers have no FEATURES_OK)");
    if (ok.ok()) ok = device_->CheckFeatures(driver_features_);
    if (!ok.ok()) {
      // §3.1.1: FEATURES_OK does not stick; the driver re-reads and sees it unset.
      counters_.features_refused++;
      VIOPORT_LOG(kInfo, name_, ": features 0x", absl::Hex(driver_features_), " refused: ", ok.message());
      status_.store(next & ~status::kFeaturesOk, std::memory_order_release);
      return absl::OkStatus();
    }
  }
  if (added & status::kDriverOk) {
    const bool legacy = !feature::Has(driver_features_, feature::kVersion1);
    if (!(s & status::kDriver) || (!legacy && !(s & status::kFeaturesOk))) {
      counters_.bad_register_writes++;
      return absl::FailedPreconditionError("DRIVER_OK before DRIVER/FEATURES_OK");
    }
    status_.store(next, std::memory_order_release);
    if (absl::Status a = Activate(); !a.ok()) SetNeedsReset(std::string(a.message()));
    return absl::OkStatus();
  }
  status_.store(next, std::memory_order_release);
  return absl::OkStatus();
}

absl::Status DeviceController::SetDriverFeatures(uint64_t features) {
  if (status() & status::kFeaturesOk)
    return absl::FailedPreconditionError("driver features changed after FEATURES_OK");
  if (status() & status::kDriverOk) return absl::FailedPreconditionError("driver features changed after DRIVER_OK");
  driver_features_ = features;
  return absl::OkStatus();
}

absl::Status DeviceController::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  const uint32_t size = device_->config_size();
  if (offset > size || out.size() > size - offset)
    return absl::OutOfRangeError(
        absl::StrFormat("config read of %u bytes at %u past config size %u", out.size(), offset, size));
  device_->ReadConfig(offset, out);
  return absl::OkStatus();
}

absl::Status DeviceController::WriteConfig(uint32_t offset, std::span<const uint8_t> in) {
  const uint32_t size = device_->config_size();
  if (offset > size || in.size() > size - offset)
    return absl::OutOfRangeError(
        absl::StrFormat("config write of %u bytes at %u past config size %u", in.size(), offset, size));
  device_->WriteConfig(offset, in);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  return absl::OkStatus();
}

uint32_t DeviceController::QueueMaxSize(uint16_t q) const {
  return q < queues_.size() ? device_->max_queue_size() : 0;
}

const QueueSetup* DeviceController::queue_setup(uint16_t q) const {
  return q < queues_.size() ? &queues_[q] : nullptr;
}

absl::Status DeviceController::SetQueueSize(uint16_t q, uint32_t size) {
  if (q >= queues_.size()) return absl::OutOfRangeError(absl::StrCat("queue ", q, " does not exist"));
  if (queues_[q].ready || active_) return absl::FailedPreconditionError("queue size changed while ready");
  if (size == 0 || size > device_->max_queue_size()) {
    // Logged here, once for every transport: a driver that asks for more
    // than the device takes otherwise only sees its write ignored.
    const std::string why = size == 0 ? absl::StrCat("queue ", q, " size 0 refused")
                                      : absl::StrCat("queue ", q, " size ", size, " is above the device's maximum ",
                                                     device_->max_queue_size());
    VIOPORT_LOG(kWarning, name_, ": ", why);
    return absl::InvalidArgumentError(why);
  }
  queues_[q].size = size;
  return absl::OkStatus();
}

absl::Status DeviceController::SetQueueAddresses(uint16_t q, uint64_t desc, uint64_t driver, uint64_t device) {
  if (q >= queues_.size()) return absl::OutOfRangeError(absl::StrCat("queue ", q, " does not exist"));
  if (queues_[q].ready || active_) return absl::FailedPreconditionError("ring addresses changed while ready");
  queues_[q].desc = desc;
  queues_[q].driver = driver;
  queues_[q].device = device;
  return absl::OkStatus();
}

absl::Status DeviceController::SetQueueReady(uint16_t q, bool ready) {
  if (q >= queues_.size()) return absl::OutOfRangeError(absl::StrCat("queue ", q, " does not exist"));
  if (active_) return absl::FailedPreconditionError("queue enable changed after DRIVER_OK");
  if (ready && queues_[q].size == 0) queues_[q].size = device_->max_queue_size();
  queues_[q].ready = ready;
  return absl::OkStatus();
}

void DeviceController::NotifyQueue(uint16_t q) {
  if (!active_ || q >= queues_.size() || (status() & status::kDeviceNeedsReset)) {
    counters_.notifies_ignored++;
    return;
  }
  counters_.notifies++;
  device_->QueueNotify(q);
}

absl::Status DeviceController::SetMemory(std::shared_ptr<GuestMemory> memory) {
  if (active_) return absl::FailedPreconditionError("memory replaced while the device runs");
  memory_ = std::move(memory);
  return absl::OkStatus();
}

void DeviceController::SetInterruptSink(std::shared_ptr<InterruptSink> interrupt) {
  interrupt_ = interrupt ? std::make_shared<CountingSink>(std::move(interrupt), &counters_, &device_->stats())
                         : nullptr;
  if (interrupt_) interrupt_->set_coalescing(coalescing_);
}

TransportCounters DeviceController::transport_counters() const {
  TransportCounters t = retired_;
  for (const DeviceQueue* q : active_queues_) {
    if (!q) continue;
    t.requests += q->counters().completed;
    t.bytes_in += q->counters().bytes_in;
    t.bytes_out += q->counters().bytes_out;
  }
  t.ring_errors = counters_.ring_errors.load();
  t.device_resets = counters_.resets.load();
  t.activations = counters_.activations.load();
  t.features_refused = counters_.features_refused.load();
  t.notifications = counters_.notifies.load() + counters_.notifies_ignored.load();
  t.interrupts = counters_.queue_interrupts.load() + counters_.config_interrupts.load();
  return t;
}

absl::StatusOr<ControllerSnapshot> DeviceController::Snapshot() const {
  ControllerSnapshot s;
  s.status = status();
  s.driver_features = driver_features_;
  s.generation = config_generation();
  s.queues = queues_;
  s.bases.assign(queues_.size(), 0);
  for (uint16_t q = 0; q < active_queues_.size(); ++q) {
    const DeviceQueue* dq = active_queues_[q];
    if (!dq) continue;
    if (dq->in_flight() != 0)
      return absl::FailedPreconditionError(
          absl::StrCat(name_, ": queue ", q, " has ", dq->in_flight(), " requests in flight"));
    s.bases[q] = dq->GetBase();
  }
  {
    absl::MutexLock l(&error_mu_);
    s.last_error = last_error_;
  }
  return s;
}

absl::Status DeviceController::Restore(const ControllerSnapshot& s) {
  if (status() != 0 || active_) return absl::FailedPreconditionError("restore into a controller in use");
  if (s.queues.size() != queues_.size() || s.bases.size() != queues_.size())
    return absl::InvalidArgumentError(
        absl::StrCat("saved state has ", s.queues.size(), " queues, the device ", queues_.size()));
  // Before FEATURES_OK the driver may have written any bits (they are
  // checked when it sets FEATURES_OK, as on a live device); after, only
  // offered ones can have been taken.
  if (const uint64_t unknown = s.driver_features & ~offered_; unknown && (s.status & status::kFeaturesOk))
    return absl::InvalidArgumentError(absl::StrFormat("saved features 0x%x were not offered", unknown));
  for (uint16_t q = 0; q < queues_.size(); ++q) {
    const QueueSetup& qs = s.queues[q];
    const uint32_t max = QueueMaxSize(q);
    if (qs.size > max) return absl::InvalidArgumentError(absl::StrCat("saved queue ", q, " size ", qs.size, " > ", max));
  }
  driver_features_ = s.driver_features;
  queues_ = s.queues;
  generation_.store(s.generation, std::memory_order_release);
  {
    absl::MutexLock l(&error_mu_);
    last_error_ = s.last_error;
  }
  // The device starts in Resume(): starting it builds the queues, which
  // reads the rings, and on a copy-only memory that is a hypercall the old
  // vios may still be making on the same channel until the commit.
  if ((s.status & status::kDriverOk) && !(s.status & (status::kDeviceNeedsReset | status::kFailed)))
    restore_bases_ = s.bases;
  status_.store(s.status, std::memory_order_release);
  return absl::OkStatus();
}

void DeviceController::Resume() {
  if (restore_bases_) {
    const std::vector<uint32_t> bases = std::move(*restore_bases_);
    restore_bases_.reset();
    if (absl::Status a = Activate(&bases); !a.ok()) {
      SetNeedsReset(std::string(a.message()));  // the driver sees NEEDS_RESET, as for any failed activation
      return;
    }
  }
  if (!active_ || (status() & status::kDeviceNeedsReset)) return;
  for (uint16_t q = 0; q < active_queues_.size(); ++q)
    if (active_queues_[q]) {
      device_->QueueNotify(q);
      if (interrupt_) interrupt_->QueueInterrupt(q);
    }
}

absl::Status DeviceController::Activate(const std::vector<uint32_t>* bases) {
  if (!memory_) return absl::FailedPreconditionError("no guest memory");
  ActivateContext ctx;
  ctx.features = driver_features_;
  ctx.memory = memory_;
  ctx.interrupt = interrupt_;
  ctx.queues.resize(queues_.size());
  const RingByteOrder order =
      feature::Has(driver_features_, feature::kVersion1) ? RingByteOrder::kLittle : legacy_order_;
  for (uint16_t i = 0; i < queues_.size(); ++i) {
    const QueueSetup& s = queues_[i];
    if (!s.ready) continue;
    QueueConfig cfg{i, s.size, s.desc, s.driver, s.device, driver_features_, order};
    RingError e = DeviceQueue::Create(cfg, memory_.get(), MakeQueueErrorHandler(), &ctx.queues[i]);
    if (e != RingError::kNone) return RingErrorStatus(e, i);
    if (bases) ctx.queues[i]->SetBase((*bases)[i]);
    if (polled_) ctx.queues[i]->SetPolled(true);
    device_->AttachStats(*ctx.queues[i]);
  }
  std::vector<const DeviceQueue*> queues;
  for (const auto& q : ctx.queues) queues.push_back(q.get());
  absl::Status st = device_->Activate(std::move(ctx));
  if (!st.ok()) return st;
  active_ = true;
  active_queues_ = std::move(queues);
  counters_.activations++;
  return absl::OkStatus();
}

QueueErrorHandler DeviceController::MakeQueueErrorHandler() {
  return [this](uint16_t q, RingError err) {
    // A channel that failed a copy (a partner gone, a hypervisor gone) broke
    // nothing the driver did: counted apart from the driver's ring errors.
    (err == RingError::kMemoryFault ? counters_.memory_faults : counters_.ring_errors)++;
    SetNeedsReset(RingErrorStatus(err, q).ToString());
  };
}

void DeviceController::SetNeedsReset(const std::string& why) {
  {
    absl::MutexLock l(&error_mu_);
    if (status() & status::kDeviceNeedsReset) return;  // logged once
    last_error_ = why;
  }
  VIOPORT_LOG(kWarning, name_, ": ", why, "; DEVICE_NEEDS_RESET");
  const uint8_t prev = status_.fetch_or(status::kDeviceNeedsReset, std::memory_order_acq_rel);
  // §2.1.2: with DRIVER_OK set, the device must send a config change notification.
  if ((prev & status::kDriverOk) && interrupt_) interrupt_->ConfigInterrupt();
}

void DeviceController::OnConfigChanged() {
  generation_.fetch_add(1, std::memory_order_acq_rel);
  if ((status() & status::kDriverOk) && interrupt_) interrupt_->ConfigInterrupt();
}

void DeviceController::EnableCoalescing(bool on) {
  coalescing_ = on;
  if (interrupt_) {
    if (!on) interrupt_->Flush(true);
    interrupt_->set_coalescing(on);
  }
}

void DeviceController::FlushInterrupts(bool force) {
  if (interrupt_) interrupt_->Flush(force);
}

void DeviceController::ServeWhileBusy(uint32_t spin_us) {
  // Whatever was held goes out when the device goes idle: nothing is held
  // past the loop's return.
  struct FlushOnReturn {
    DeviceController* c;
    ~FlushOnReturn() { c->FlushInterrupts(true); }
  } flush_on_return{this};
  if (!spin_us) return;
  using Clock = std::chrono::steady_clock;
  const auto window = std::chrono::microseconds(spin_us);
  const auto start = Clock::now();
  auto idle_until = start + window;
  const auto hard_stop = start + 20 * window;
  VirtioDevice& dev = device();
  BusyPollEpisode episode(dev.stats(), spin_us);
  for (;;) {
    if (!running() || (status() & status::kDeviceNeedsReset)) return;
    bool progress = dev.ProcessEvents();
    for (uint16_t i = 0; i < num_queues(); ++i) {
      const DeviceQueue* q = active_queue(i);
      if (!q) continue;
      const uint64_t before = q->counters().popped;
      dev.QueueNotify(i);
      progress |= q->counters().popped != before || q->in_flight() != 0;
    }
    episode.Pass(progress);
    FlushInterrupts(false);
    const auto now = Clock::now();
    if (progress) idle_until = now + window;
    if (now >= idle_until || now >= hard_stop) return;
  }
}

}  // namespace vioport
