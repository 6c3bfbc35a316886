// SPDX-License-Identifier: Apache-2.0
// The thread a device is driven from, as every transport's device half needs
// it. Event mode: the device runs on vios's io_context, woken by kicks and
// by its own completions (event_fd), and after each wake-up it is served for
// a spin window past its last progress (DeviceController::ServeWhileBusy), so
// a guest that refills its queue within the window never pays a wake-up.
// Poll mode: the device runs on a thread of its own that busy-polls every
// ready queue and the device's completions (costs a core). Either way every
// call into the device and its controller happens on the loop's thread;
// Run() gets there from any other.
#pragma once

#include <atomic>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/posix/stream_descriptor.hpp"
#include "vioport/core/device_controller.h"
#include "vioport/transports/registry.h"

namespace vioport {

class DeviceLoop {
 public:
  struct Options {
    bool poll = false;     // a thread of its own, busy-polling
    uint32_t spin_us = 20;  // event mode: serve this long past the last progress
  };
  // Event mode runs on `io` (one thread runs it); poll mode starts its thread.
  DeviceLoop(boost::asio::io_context& io, std::shared_ptr<VirtioDevice> device, Options options);
  // Stops the poll thread; handlers still queued on `io` find the loop gone.
  ~DeviceLoop();
  DeviceLoop(const DeviceLoop&) = delete;
  DeviceLoop& operator=(const DeviceLoop&) = delete;

  // Where this device's handlers (sockets, watches) must run.
  boost::asio::io_context& io() { return *io_; }
  bool poll() const { return opts_.poll; }
  VirtioDevice& device() { return *device_; }

  // Runs `f` on the loop's thread and returns what it returns (at once when
  // called there).
  template <typename F>
  auto Run(F&& f) -> decltype(f()) {
    if (!own_io_ || std::this_thread::get_id() == poller_id_) return f();
    std::packaged_task<decltype(f())()> task(std::forward<F>(f));
    auto result = task.get_future();
    boost::asio::post(*own_io_, [&task] { task(); });
    return result.get();
  }

  // The controller the device is served through while a guest is attached
  // (null: none). Loop thread only.
  void Serve(DeviceController* ctl);
  // Event mode: kicks of queue q arrive on `fd` (the caller's; a duplicate is
  // watched). Each drains it, notifies the queue and serves while busy.
  // Poll mode: nothing (the rings are polled). Loop thread only.
  void WatchKick(uint16_t q, int fd);
  // Stops watching every kick (the guest went). Loop thread only.
  void UnwatchKicks();
  // A kick that came some other way (an event channel): notify, serve while busy.
  void Kick(uint16_t q);
  // Live upgrade. Freeze: no kick, completion or poll serves the device any
  // more (kicks stay in their eventfds for whoever serves next). Thaw: watch
  // and serve again, resuming the controller (DeviceController::Resume) so
  // nothing that came in meanwhile waits. Abandon: let go of every watch
  // without reading it (the new vios has the descriptors). Loop thread only.
  void Freeze();
  void Thaw();
  void Abandon();
  bool frozen() const { return frozen_; }
  // Runs after every wake-up's work (a transport publishing the status).
  void set_after_work(std::function<void()> f) { after_work_ = std::move(f); }

 private:
  struct Watch;
  void WatchEvents();
  void Arm(const std::shared_ptr<Watch>& w);
  void PollLoop();

  Options opts_;
  std::shared_ptr<VirtioDevice> device_;
  boost::asio::io_context* io_;
  std::unique_ptr<boost::asio::io_context> own_io_;  // poll mode
  // Poll mode: keeps own_io_ from running out of work (and stopping, after
  // which posted tasks would never run).
  std::unique_ptr<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> own_work_;
  std::thread poller_;
  std::thread::id poller_id_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> frozen_{false};
  DeviceController* ctl_ = nullptr;
  std::vector<std::shared_ptr<Watch>> kicks_;
  std::shared_ptr<Watch> events_;
  std::function<void()> after_work_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// What every endpoint serving its device from a DeviceLoop shares: the
// loop, the connection bookkeeping, and the DeviceEndpoint methods that only
// need those. A transport adds where/mode, accepting guests, and what the
// attached guest's connection knows (LiveCounters, LiveError).
class LoopEndpoint : public DeviceEndpoint {
 public:
  LoopEndpoint(EndpointContext& ctx, DeviceLoop::Options options)
      : name_(ctx.name), device_(ctx.device), loop_(ctx.io, ctx.device, options) {}
  bool connected() const override { return state_.connected; }
  uint8_t device_status() const override { return state_.status; }
  absl::Status Quiesce() override {
    return loop_.Run([this] { return device_->Quiesce(); });
  }
  std::string last_error() const override {
    return loop_.Run([this] {
      std::string e = LiveError();
      return e.empty() ? state_.error() : e;
    });
  }
  void AppendCounters(CounterList* out) const override {
    loop_.Run([this, out] {
      TransportCounters live;
      CounterList extras;
      LiveCounters(&live, &extras);
      state_.AppendCounters(live, extras, out);
    });
  }

 protected:
  // On the loop's thread: the attached guest's counters and error (if any).
  virtual void LiveCounters(TransportCounters* /*base*/, CounterList* /*extras*/) const {}
  virtual std::string LiveError() const { return ""; }

  std::string name_;  // for logs
  std::shared_ptr<VirtioDevice> device_;
  mutable DeviceLoop loop_;
  EndpointState state_;
};

}  // namespace vioport
