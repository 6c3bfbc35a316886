// SPDX-License-Identifier: Apache-2.0
// vios: the vioport VIO server daemon. See Usage() in spec.cc and docs/vios.md.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "boost/asio/io_context.hpp"
#include "boost/asio/signal_set.hpp"
#include "server.h"
#include "spec.h"
#include "vioport/core/log.h"

int main(int argc, char** argv) {
  using namespace vioport;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::fputs(vios::Usage().c_str(), stdout);
      return 0;
    }
  }
  auto cfg = vios::ParseCommandLine(args);
  if (!cfg.ok()) {
    std::fprintf(stderr, "vios: %s\n", std::string(cfg.status().message()).c_str());
    return 2;
  }
  LogLevel level;
  if (!ParseLogLevel(cfg->log_level, &level)) {
    std::fprintf(stderr, "vios: --log-level %s: not one of error, warning, info, debug\n", cfg->log_level.c_str());
    return 2;
  }
  SetLogLevel(level);
  ::signal(SIGPIPE, SIG_IGN);
  // Every guest connection, backing file and control client is a file
  // descriptor: take all the kernel allows this process (the hard limit).
  if (rlimit rl; ::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    const rlim_t soft = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &rl) == 0)
      VIOPORT_LOG(kInfo, "file descriptors: raised RLIMIT_NOFILE from ", soft, " to ", rl.rlim_max, " (the hard limit)");
  }

  boost::asio::io_context io(1);
  vios::Server server(io);
  if (absl::Status s = server.StartReactors(cfg->threads, cfg->cpus); !s.ok()) {
    std::fprintf(stderr, "vios: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (!cfg->upgrade_from.empty()) {
    auto r = server.TakeOver(cfg->upgrade_from, absl::Seconds(30));
    if (!r.ok()) {
      std::fprintf(stderr, "vios: upgrade from %s: %s\n", cfg->upgrade_from.c_str(), std::string(r.status().message()).c_str());
      return 1;
    }
  }
  // Switches first: uplinks and net devices name them.
  for (int pass = 0; pass < 2; ++pass) {
    for (auto& d : cfg->netdevs) {
      if ((d.type == "switch") != (pass == 0)) continue;
      if (absl::Status s = server.AddNetdev(d); !s.ok()) {
        std::fprintf(stderr, "vios: %s\n", std::string(s.message()).c_str());
        return 2;
      }
    }
  }
  for (auto& d : cfg->devices) {
    if (absl::Status s = server.AddDevice(std::move(d)); !s.ok()) {
      std::fprintf(stderr, "vios: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  for (auto& a : cfg->attaches) {
    if (absl::Status s = server.Attach(std::move(a)); !s.ok()) {
      std::fprintf(stderr, "vios: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  if (!cfg->control_path.empty()) {
    vios::Server::ControlLimits limits;
    limits.max_clients = cfg->control_max_clients;
    limits.idle_timeout = absl::Seconds(cfg->control_timeout_s);
    if (absl::Status s = server.ListenControl(cfg->control_path, limits); !s.ok()) {
      std::fprintf(stderr, "vios: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  if (!cfg->metrics_address.empty()) {
    absl::Status s = server.ListenMetrics(cfg->metrics_address);
    // After an upgrade the old vios may take a moment to let go of the port.
    for (int i = 0; !s.ok() && !cfg->upgrade_from.empty() && i < 100; ++i) {
      ::usleep(20000);
      s = server.ListenMetrics(cfg->metrics_address);
    }
    if (!s.ok()) {
      std::fprintf(stderr, "vios: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  if (server.num_devices() == 0 && cfg->control_path.empty()) {
    std::fprintf(stderr, "vios: nothing to serve: give --device/--attach, --config or --control (see vios --help)\n");
    return 2;
  }

  int exit_code = 0;
  boost::asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    VIOPORT_LOG(kInfo, "signal ", sig, ": stopping (finishing requests in flight, flushing)");
    if (absl::Status s = server.Shutdown(); !s.ok()) exit_code = 1;
    io.stop();
  });
  VIOPORT_LOG(kInfo, "vios ready: ", server.num_devices(), " device(s)");
  io.run();
  if (server.handed_over()) {
    VIOPORT_LOG(kInfo, "vios handed over to its successor");
    return 0;
  }
  VIOPORT_LOG(kInfo, "vios stopped");
  return exit_code;
}
