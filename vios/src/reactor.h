// SPDX-License-Identifier: Apache-2.0
#pragma once

// vios's reactors (Server::StartReactors): event-loop threads that serve
// devices, each attachment on one of them. Private to vios/src.

#include <pthread.h>
#include <sched.h>

#include <future>
#include <memory>
#include <thread>
#include <type_traits>

#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/post.hpp"
#include "server.h"

namespace vioport::vios {

struct Server::Reactor {
  explicit Reactor(int index, int cpu) : index(index), cpu(cpu), work(io.get_executor()) {}
  ~Reactor() { Stop(); }
  void Start() {
    thread = std::thread([this] {
      tid = static_cast<int>(::gettid());
      started.set_value();
      io.run();
    });
    started_future.wait();
    if (cpu >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpu, &set);
      pinned = ::pthread_setaffinity_np(thread.native_handle(), sizeof set, &set) == 0;
    }
    char name[16];
    std::snprintf(name, sizeof name, "vios-r%d", index);
    ::pthread_setname_np(thread.native_handle(), name);
  }
  void Stop() {
    work.reset();
    io.stop();
    if (thread.joinable()) thread.join();
  }
  const int index;
  const int cpu;  // -1: not pinned
  bool pinned = false;
  int tid = 0;
  size_t devices = 0;  // attachments placed here
  boost::asio::io_context io{1};
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work;
  std::thread thread;
  std::promise<void> started;
  std::future<void> started_future = started.get_future();
};

template <typename F>
auto Server::OnDeviceThread(const Entry& e, F&& f) const -> decltype(f()) {
  if (e.reactor < 0 || static_cast<size_t>(e.reactor) >= reactors_.size()) return f();
  Reactor& r = *reactors_[e.reactor];
  if (r.io.get_executor().running_in_this_thread()) return f();
  std::packaged_task<decltype(f())()> task(std::forward<F>(f));
  auto result = task.get_future();
  boost::asio::post(r.io, [&task] { task(); });
  return result.get();
}

}  // namespace vioport::vios
