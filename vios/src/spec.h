#pragma once

// What vios is asked to serve, from the command line (qemu-storage-daemon
// style: --device blk,id=d0,path=disk.img) or from a TOML file. Both produce
// the same specs, and every error names the option and its value.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace vioport::vios {

// key=value options with typed, checked access. `origin` says where they came
// from ("--device blk,id=d0,..." or "vios.toml: device #2") for messages.
class Options {
 public:
  Options() = default;
  Options(std::string origin, std::map<std::string, std::string> kv) : origin_(std::move(origin)), kv_(std::move(kv)) {}

  const std::string& origin() const { return origin_; }
  bool Has(const std::string& key) const { return kv_.count(key) != 0; }
  absl::StatusOr<std::string> String(const std::string& key, std::optional<std::string> dflt = std::nullopt);
  absl::StatusOr<bool> Bool(const std::string& key, bool dflt);
  absl::StatusOr<uint64_t> Uint(const std::string& key, uint64_t dflt, uint64_t min, uint64_t max);
  // After the last Get: an option nobody asked for is an error.
  absl::Status CheckAllUsed() const;
  const std::map<std::string, std::string>& all() const { return kv_; }

 private:
  absl::Status Error(const std::string& key, absl::string_view why) const;

  std::string origin_;
  std::map<std::string, std::string> kv_;
  std::map<std::string, bool> used_;
};

struct DeviceSpec {
  std::string type;  // blk, rng, console
  std::string id;
  Options options;   // without type and id
};

struct AttachSpec {
  std::string device;     // id
  std::string transport;  // shm, ...
  Options options;        // without device and transport
};

struct Config {
  std::vector<DeviceSpec> devices;
  std::vector<AttachSpec> attaches;
  std::string control_path;  // empty: no control socket
  std::string log_level = "info";
};

// "blk,id=d0,path=x" -> DeviceSpec. The first element is the type.
absl::StatusOr<DeviceSpec> ParseDevice(absl::string_view text);
// "d0,transport=shm,path=x" -> AttachSpec. The first element is the device id.
absl::StatusOr<AttachSpec> ParseAttach(absl::string_view text);
// The whole command line (argv[0] excluded). --config FILE merges a TOML file.
absl::StatusOr<Config> ParseCommandLine(const std::vector<std::string>& args);
absl::Status MergeToml(const std::string& path, Config* config);

extern const char kUsage[];

}  // namespace vioport::vios
