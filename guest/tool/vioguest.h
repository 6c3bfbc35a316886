// SPDX-License-Identifier: Apache-2.0
// What vioguest's device commands share: parsed arguments, the connected
// guest, and the exits for bad usage and failures. Each device's commands
// may live in a file of their own (vioguest_vsock.cc).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "vioport/guest/wait.h"
#include "vioport/transports/registry.h"

namespace vioport::vioguest {

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> opts;  // --key value / --key=value
  std::map<std::string, bool> flags;
};

struct Guest {
  GuestLink link;               // the transport and what it runs over
  DriverTransport* transport;   // link.transport
  uint64_t ring_features = 0;
  WaitPolicy wait;
  bool quiet = false;
};

// Exit 2 with a usage error.
[[noreturn]] void Usage(const std::string& why);
// Exit 1 (2 for bad arguments or an unreachable device) naming what failed.
[[noreturn]] void Fail(const absl::Status& s, const std::string& what);
// --key as a size (K, M, G suffixes), or `dflt` when absent.
uint64_t Size(const Args& a, const std::string& key, uint64_t dflt);
double Seconds(absl::Time start);

// vsock commands (vioguest_vsock.cc).
int Vsock(Guest& g, const Args& a);
extern const char* const kVsockUsage;

}  // namespace vioport::vioguest
