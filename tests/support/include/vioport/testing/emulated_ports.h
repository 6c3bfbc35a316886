// SPDX-License-Identifier: Apache-2.0
#pragma once

// Devices of one vios attached over each transport, and the channel
// emulators those attachments need, for the whole-system tests that run a
// vioguest per device (net_system, vsock_system):
//  - shm and vhost-user: a socket in the test's directory;
//  - crq (crqd): vios is server partition 2 with adapter 0x2000+slot (a
//    1 MiB window), the guest client partition 1+2*slot with adapter
//    0x1000+slot (a 64 MiB window: its memory), as the conformance rig;
//  - Xen (xenemud): vios is dom0, the guest frontend domain 1+N.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vioport::testproc {

struct PortAttach {
  std::string transport;  // shm, vhost-user, crq, xen
  std::string attach;     // vios --attach ID,transport=T,<attach>
  std::string guest;      // vioguest --transport <guest>
  uint32_t crq_partition = 0;  // crq: the client partition (crqd frees it when the guest left)
};

class EmulatedPorts {
 public:
  // `path` names a file in the test's directory.
  explicit EmulatedPorts(std::function<std::string(const std::string&)> path) : path_(std::move(path)) {}

  // The attachment of device `id` over `transport`; empty `attach` if the
  // transport is unknown.
  PortAttach Attach(const std::string& id, const std::string& transport) {
    PortAttach p{transport, "", ""};
    if (transport == "shm") {
      p.attach = "path=" + path_(id + ".sock");
      p.guest = "shm:" + path_(id + ".sock");
    } else if (transport == "vhost-user") {
      p.attach = "socket=" + path_(id + ".sock");
      p.guest = "vhost-user:" + path_(id + ".sock");
    } else if (transport == "crq") {
      const int slot = crq_slots_++;
      p.crq_partition = 1 + 2 * slot;
      p.attach = absl::StrFormat("crqd=%s,partition=2,unit=%#x,liobn=%#x,remote-liobn=%#x,remote-window-mib=64",
                                 path_("crqd.sock"), 0x2000 + slot, 0x2000 + slot, 0x1000 + slot);
      p.guest = absl::StrFormat("crq:%s,partition=%u,unit=%#x,liobn=%#x", path_("crqd.sock"), p.crq_partition,
                                0x1000 + slot, 0x1000 + slot);
    } else if (transport == "xen") {
      const int dom = ++xen_domains_;
      p.attach = absl::StrFormat("channel=emu:%s,domid=%d", path_("xen.sock"), dom);
      p.guest = absl::StrFormat("xen:emu:%s,domid=%d", path_("xen.sock"), dom);
    }
    return p;
  }
  // vios's --attach value for `id`.
  static std::string AttachArg(const std::string& id, const PortAttach& p) {
    return absl::StrCat(id, ",transport=", p.transport, ",", p.attach);
  }

  bool needs_crqd() const { return crq_slots_ > 0; }
  bool needs_xen() const { return xen_domains_ > 0; }
  // crqd with one adapter pair per crq attachment; it is up when both paths exist.
  std::vector<std::string> CrqdArgv(const std::string& bin) const {
    std::vector<std::string> argv = {bin, "--socket", path_("crqd.sock"), "--control", path_("crqd.ctl")};
    for (int s = 0; s < crq_slots_; ++s)
      argv.insert(argv.end(), {"--pair", absl::StrFormat("client=%u:%#x:%#x:64,server=2:%#x:%#x:1", 1 + 2 * s, 0x1000 + s,
                                                         0x1000 + s, 0x2000 + s, 0x2000 + s)});
    return argv;
  }
  std::vector<std::string> CrqdPaths() const { return {path_("crqd.sock"), path_("crqd.ctl")}; }
  std::vector<std::string> XenemudArgv(const std::string& bin) const {
    return {bin, "--xenstore", path_("xs.sock"), "--domains", path_("xen.sock")};
  }
  std::vector<std::string> XenemudPaths() const { return {path_("xs.sock"), path_("xen.sock")}; }

 private:
  std::function<std::string(const std::string&)> path_;
  int crq_slots_ = 0;
  int xen_domains_ = 0;
};

}  // namespace vioport::testproc
