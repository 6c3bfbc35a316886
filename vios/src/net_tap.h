// SPDX-License-Identifier: Apache-2.0
#pragma once

// The switch's way to the host's network: a tap device opened with
// IFF_VNET_HDR (TUNSETVNETHDRSZ 12), IFF_MULTI_QUEUE when queues > 1, and
// TUNSETOFFLOAD set to what the switch's guests negotiated (the union of
// their GUEST_CSUM/TSO4/TSO6/ECN): a TSO frame a guest sends goes to the
// host as one frame with its header, and the host's big frames reach the
// guests that take them whole; a guest that cannot take them gets them
// segmented (or checksummed) by its own port. Runs on its own thread.

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "net_switch.h"
#include "vioport/backends/net_frame.h"

namespace vioport::vios {

class TapUplink {
 public:
  struct Options {
    std::string id;
    std::string ifname;      // created if missing (needs CAP_NET_ADMIN)
    uint16_t queues = 1;
    uint16_t vlan = 0;       // access VLAN
    bool trunk = false;      // or every VLAN, 802.1Q-tagged on the tap
  };
  static absl::StatusOr<std::unique_ptr<TapUplink>> Open(Options options, std::shared_ptr<Switch> sw);
  ~TapUplink();

  // The guests' receive offloads changed: sets TUNSETOFFLOAD to their union.
  void SetOffloads(const net::RxCaps& caps);
  unsigned offload_flags() const { return offload_flags_.load(); }

  const std::string& id() const { return opts_.id; }
  const std::string& ifname() const { return opts_.ifname; }
  uint32_t port() const { return port_; }
  void AppendCounters(std::vector<std::pair<std::string, uint64_t>>* out) const;

 private:
  TapUplink(Options options, std::shared_ptr<Switch> sw);
  void Run();
  bool ReadTap(int fd);
  void WriteTap();

  Options opts_;
  std::shared_ptr<Switch> sw_;
  std::shared_ptr<net::Inbox> inbox_;
  uint32_t port_ = 0;
  std::vector<int> fds_;
  int stop_fd_ = -1;
  std::thread thread_;
  std::atomic<unsigned> offload_flags_{0};
  std::vector<net::Frame> batch_;
  std::vector<net::Frame> taken_;
  std::vector<uint8_t> buf_;
  std::atomic<uint64_t> rx_packets_{0}, rx_bytes_{0}, tx_packets_{0}, tx_bytes_{0};
  std::atomic<uint64_t> drop_short_{0}, drop_bad_hdr_{0}, drop_write_{0};
};

}  // namespace vioport::vios
