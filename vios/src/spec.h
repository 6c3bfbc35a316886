// SPDX-License-Identifier: Apache-2.0
#pragma once

// What vios is asked to serve, from the command line (--device
// blk,id=d0,path=disk.img --attach d0,transport=NAME,...) or from a TOML
// file. Both produce the same specs, and every error names the option and
// its value. A transport's options are checked against what it registered
// (vioport/transports/registry.h) when the attachment is made.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "vioport/transports/options.h"

namespace vioport::vios {

struct DeviceSpec {
  std::string type;  // blk, rng, console
  std::string id;
  Options options;   // without type and id
};

struct AttachSpec {
  std::string device;     // id
  std::string transport;  // a registered transport's name
  Options options;        // without device and transport
};

struct Config {
  std::vector<DeviceSpec> netdevs;  // switches and uplinks (type switch or tap)
  std::vector<DeviceSpec> devices;
  std::vector<AttachSpec> attaches;
  std::string control_path;  // empty: no control socket
  uint64_t control_max_clients = 1024;  // control clients at once
  uint64_t control_timeout_s = 60;      // a control client silent this long is closed
  std::string metrics_address;          // ADDR:PORT for Prometheus; empty: none
  std::string upgrade_from;             // live upgrade: the running vios's control socket
  uint64_t threads = 1;                 // reactors (1: devices on the control loop)
  std::vector<int> cpus;                // --cpus: one pinned reactor per CPU
  std::string log_level = "info";
};

// "blk,id=d0,path=x" -> DeviceSpec. The first element is the type.
absl::StatusOr<DeviceSpec> ParseDevice(absl::string_view text);
// "switch,id=sw0" or "tap,id=up0,ifname=vio0,switch=sw0" -> a netdev.
absl::StatusOr<DeviceSpec> ParseNetdev(absl::string_view text);
// "d0,transport=NAME,KEY=VALUE..." -> AttachSpec. The first element is the device id.
absl::StatusOr<AttachSpec> ParseAttach(absl::string_view text);
// The same from a type (or device id) and KEY=VALUE pairs that came some
// other way (the control API); `origin` starts every error.
absl::StatusOr<DeviceSpec> MakeDeviceSpec(std::string type, std::map<std::string, std::string> kv, std::string origin);
absl::StatusOr<AttachSpec> MakeAttachSpec(std::string device, std::map<std::string, std::string> kv,
                                          std::string origin);
// The whole command line (argv[0] excluded). --config FILE merges a TOML file.
absl::StatusOr<Config> ParseCommandLine(const std::vector<std::string>& args);
absl::Status MergeToml(const std::string& path, Config* config);

// vios --help: the flags, the device types, and every registered transport.
std::string Usage();

}  // namespace vioport::vios
