// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/device_loop.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>

#include "vioport/transports/fd.h"

namespace vioport {

namespace asio = boost::asio;

// One watched fd and what to do when it is readable. Kicks are duplicates
// (the transport may close its own at any time); the device's event fd is
// watched as it is (it lives as long as the device) and released, not
// closed, when the watch ends: no descriptor per device beyond its own.
struct DeviceLoop::Watch {
  asio::posix::stream_descriptor sd;
  std::function<void()> on_ready;
  bool owns_fd = true;
  Watch(asio::io_context& io, int fd, std::function<void()> f) : sd(io, fd), on_ready(std::move(f)) {}
  ~Watch() {
    if (!owns_fd && sd.is_open()) sd.release();
  }
  void Stop() {
    boost::system::error_code ec;
    if (owns_fd) sd.close(ec);
    else if (sd.is_open()) sd.release();
  }
};

DeviceLoop::DeviceLoop(asio::io_context& io, std::shared_ptr<VirtioDevice> device, Options options)
    : opts_(options), device_(std::move(device)), io_(&io) {
  if (opts_.poll) {
    own_io_ = std::make_unique<asio::io_context>(1);
    own_work_ = std::make_unique<asio::executor_work_guard<asio::io_context::executor_type>>(own_io_->get_executor());
    io_ = own_io_.get();
    poller_ = std::thread([this] { PollLoop(); });
    poller_id_ = poller_.get_id();
  } else if (device_->events_without_driver()) {
    WatchEvents();
  }
  // Otherwise event mode watches the device's events from the first guest
  // on (Serve): until then the device may not even have its event fd.
}

DeviceLoop::~DeviceLoop() {
  *alive_ = false;
  Run([this] {
    UnwatchKicks();
    if (events_) {
      events_->Stop();
      events_.reset();
    }
  });
  if (own_io_) {
    stop_ = true;
    poller_.join();
    own_work_.reset();
    own_io_.reset();  // runs pending handlers' destructors
  }
}

void DeviceLoop::Serve(DeviceController* ctl) {
  ctl_ = ctl;
  // This loop flushes held interrupts (ServeWhileBusy on every wake-up, the
  // poll loop as it goes), so the controller may coalesce them.
  if (ctl) ctl->EnableCoalescing(true);
  if (ctl && !opts_.poll && !events_) WatchEvents();
}

void DeviceLoop::Freeze() {
  frozen_ = true;
  boost::system::error_code ec;
  for (auto& w : kicks_) w->sd.cancel(ec);
  if (events_) events_->sd.cancel(ec);
}

void DeviceLoop::Thaw() {
  frozen_ = false;
  for (auto& w : kicks_) Arm(w);
  if (events_) Arm(events_);
  if (!ctl_) return;
  ctl_->Resume();
  if (!opts_.poll) {
    device_->ProcessEvents();
    ctl_->ServeWhileBusy(opts_.spin_us);
  }
  ctl_->FlushInterrupts(true);
  if (after_work_) after_work_();
}

void DeviceLoop::Abandon() {
  // release() takes each descriptor out of the reactor's epoll set: a
  // descriptor the new vios shares would otherwise still wake this one.
  for (auto& w : kicks_) {
    if (!w->sd.is_open()) continue;
    const int fd = w->sd.release();
    if (fd >= 0) ::close(fd);  // our duplicate
  }
  kicks_.clear();
  if (events_) {
    if (events_->sd.is_open()) events_->sd.release();
    events_.reset();
  }
  ctl_ = nullptr;
}

void DeviceLoop::Arm(const std::shared_ptr<Watch>& w) {
  if (frozen_) return;  // Thaw arms it
  // The handler holds the watch (it may outlive the loop on vios's io); the
  // loop's own liveness is checked before anything of it is touched.
  w->sd.async_wait(asio::posix::stream_descriptor::wait_read,
                   [this, w, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code& ec) {
                     auto a = alive.lock();
                     if (ec || !a || !*a || !w->sd.is_open() || frozen_) return;
                     w->on_ready();
                     if (w->sd.is_open()) Arm(w);
                   });
}

void DeviceLoop::WatchKick(uint16_t q, int fd) {
  if (opts_.poll) return;
  const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return;
  auto w = std::make_shared<Watch>(*io_, dup, nullptr);
  std::weak_ptr<Watch> weak = w;
  w->on_ready = [this, weak, q] {
    auto self = weak.lock();
    if (!self) return;
    DrainEventFd(self->sd.native_handle());
    Kick(q);
  };
  kicks_.push_back(w);
  Arm(w);
}

void DeviceLoop::UnwatchKicks() {
  boost::system::error_code ec;
  for (auto& w : kicks_) w->sd.close(ec);
  kicks_.clear();
}

void DeviceLoop::Kick(uint16_t q) {
  if (!ctl_ || frozen_) return;
  ctl_->NotifyQueue(q);
  if (ctl_) ctl_->ServeWhileBusy(opts_.spin_us);
  if (after_work_) after_work_();
}

void DeviceLoop::WatchEvents() {
  const int fd = device_->event_fd();
  if (fd < 0) return;
  events_ = std::make_shared<Watch>(*io_, fd, [this] {
    if (device_->ProcessEvents() && ctl_) ctl_->ServeWhileBusy(opts_.spin_us);
    if (ctl_) ctl_->FlushInterrupts(true);
    if (after_work_) after_work_();
  });
  events_->owns_fd = false;
  Arm(events_);
}

void DeviceLoop::PollLoop() {
  uint32_t spins = 0;
  while (!stop_.load(std::memory_order_acquire)) {
    DeviceController* c = ctl_;
    if (!c || frozen_ || !c->running() || (c->status() & status::kDeviceNeedsReset)) {
      own_io_->run_one_for(std::chrono::milliseconds(5));
      continue;
    }
    if ((++spins & 63) == 0) own_io_->poll();
    if (ctl_ != c || frozen_ || !c->running()) continue;
    for (uint16_t q = 0; q < c->num_queues(); ++q) {
      const QueueSetup* s = c->queue_setup(q);
      if (s && s->ready) device_->QueueNotify(q);
    }
    device_->ProcessEvents();
    c->FlushInterrupts(false);
  }
}

}  // namespace vioport
