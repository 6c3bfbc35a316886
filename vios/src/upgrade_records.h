// SPDX-License-Identifier: Apache-2.0
// The live upgrade's own records (docs/upgrade.md) as both vioses write and
// read them: HELLO, the DEVICE record up to its endpoint's part (its
// options, the device's life-long stats, its attachment), and the pieces
// those are made of. Apart from upgrade.cc so that fuzz_handover reaches
// the readers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "vioport/core/device_stats.h"
#include "vioport/transports/handover.h"

namespace vioport::vios {

inline constexpr size_t kMaxRecordOptions = 256;
inline constexpr size_t kMaxRecordText = 4096;
inline constexpr uint64_t kHandoverMagic = 0x3165646172677076;  // "vpgrade1"
// 2: a DEVICE record carries the device's life-long stats after its options
// (a version-1 vios's records are still taken, their stats start at zero).
// 3: and, at its end, the device's host state (VirtioDevice::SaveHostState:
// a console's listener, client and pending bytes); versions 1 and 2 are
// still taken (their devices open their own host side).
inline constexpr uint64_t kHandoverVersion = 3;
inline constexpr size_t kMaxHostStateFds = 8;
inline constexpr size_t kMaxHandoverDevices = 1 << 20;
// Every record starts with its kind.
enum RecordKind : uint64_t { kHello = 1, kDevice, kReady, kAbort, kCommit };

// HELLO: kind, magic, version, the old vios's pid, its device count, and its
// control socket (a descriptor). GetHello checks the magic, takes versions
// 1 to 3, bounds the count and wants nothing after the socket.
struct HelloRecord {
  uint64_t version = kHandoverVersion;
  uint64_t pid = 0;
  uint64_t devices = 0;
  UniqueFd control;
};
void PutHello(HandoverWriter& w, uint64_t pid, uint64_t devices, int control_fd);
absl::Status GetHello(HandoverReader& r, HelloRecord* out);

// A DEVICE record: kind, id, type, options; then (version 2) the stats,
// read into the device made from those (GetStats); then the attachment:
// whether there is one, and if so its transport, its options and when it
// froze; then what its endpoint's Freeze() wrote; then (version 3) the
// device's host state: its bytes and descriptors. An ABORT record where a
// DEVICE was due comes back as Aborted with the old vios's reason.
struct DeviceHead {
  std::string id, type;
  std::map<std::string, std::string> options;
};
void PutDeviceHead(HandoverWriter& w, const DeviceHead& d);
absl::Status GetDeviceHead(HandoverReader& r, DeviceHead* out);
struct AttachHead {
  bool attached = false;
  std::string transport;
  std::map<std::string, std::string> options;
  uint64_t frozen_ns = 0;  // CLOCK_MONOTONIC
};
void PutAttachHead(HandoverWriter& w, const AttachHead& a);
absl::Status GetAttachHead(HandoverReader& r, AttachHead* out);
void PutHostState(HandoverWriter& w, const std::string& bytes, const std::vector<int>& fds);
// The descriptors come as raw fds the caller owns (RestoreHostState keeps
// those it uses); closed here if the record is bad.
absl::Status GetHostState(HandoverReader& r, std::string* bytes, std::vector<int>* fds);

void PutOptions(HandoverWriter& w, const std::map<std::string, std::string>& kv);
absl::Status GetOptions(HandoverReader& r, std::map<std::string, std::string>* kv);

// What DeviceStats holds (the metrics' counters, the coalescing settings),
// carried over so the counters a scraper reads do not restart at an upgrade.
// `ds` null: no stats yet (the device never ran). GetStats adds to `ds`
// (which must have as many queues) and refuses out-of-range settings.
void PutStats(HandoverWriter& w, const DeviceStats* ds);
absl::Status GetStats(HandoverReader& r, DeviceStats& ds);

}  // namespace vioport::vios
