// SPDX-License-Identifier: Apache-2.0
#pragma once

// The VIO server's network: a learning L2 switch. Its ports are the net
// devices vios serves, over any transport, and uplinks (tap). Each port
// sends from its own thread (FrameSink::Send) and receives through its
// Inbox, so the switch holds no thread of its own:
//  - learning: a source MAC is learnt on the port it came from, per VLAN,
//    and forgotten after `aging` without traffic (or when its port goes);
//  - forwarding: a known unicast destination gets the frame; broadcast,
//    multicast and unknown unicast are flooded to every other port of the
//    same VLAN;
//  - a port may have a VLAN (access port: its frames stay in that VLAN,
//    untagged on the port); a trunk port (the uplink with trunk=on) carries
//    every VLAN tagged with 802.1Q and VLAN 0 untagged;
//  - mac-lock: frames whose source is not the port's MAC are dropped and
//    counted;
//  - fairness: a receiving port's inbox holds a bounded number of frames
//    from each sender, so one flooding port cannot crowd out the others.
// Locking: ports on different reactors send at once. A batch reads the
// port list and the address table under their reader locks only (an
// address seen again has its time refreshed in place); the table's writer
// lock is taken only when a batch brings an address that is new, or new on
// its port, and when a port goes.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/node_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "vioport/backends/net_port.h"

namespace vioport::vios {

class Switch final : public net::FrameSink {
 public:
  struct Options {
    std::string id;
    absl::Duration aging = absl::Seconds(300);
    size_t max_macs = 4096;  // learnt addresses; beyond, new ones flood
  };
  struct PortOptions {
    std::string name;                    // device or netdev id, for logs and stats
    std::shared_ptr<net::Inbox> inbox;   // where frames for the port go
    net::Mac mac = 0;                    // the port's own MAC (0: none, e.g. an uplink)
    bool mac_lock = false;
    uint16_t vlan = 0;                   // 0: untagged
    bool trunk = false;                  // carries every VLAN, tagged
  };
  struct PortStats {
    uint64_t spoofed = 0;     // mac-lock drops
    uint64_t bad_source = 0;  // a multicast or zero source MAC, or a runt
    uint64_t vlan_drops = 0;  // a tagged frame on an access port, or a VID out of range
    uint64_t flooded = 0;     // frames from the port that were flooded
    uint64_t unicast = 0;     // frames from the port sent to one learnt port
  };

  explicit Switch(Options options);
  const std::string& id() const { return opts_.id; }

  uint32_t AddPort(PortOptions port);
  void RemovePort(uint32_t port);
  PortStats Stats(uint32_t port) const;
  size_t learnt() const;
  size_t num_ports() const;

  // Frames from `from_port` (any thread).
  void Send(uint32_t from_port, std::vector<net::Frame>& frames) override;
  // A guest port's receive offloads; uplinks hear the union of them all.
  void SetPortCaps(uint32_t port, const net::RxCaps* caps) override;
  // `port` is an uplink: `on_caps` gets the guests' union whenever it changes.
  void SetUplink(uint32_t port, std::function<void(const net::RxCaps&)> on_caps);

 private:
  struct Port {
    PortOptions o;
    bool live = false;
    bool has_caps = false;
    net::RxCaps caps;
    std::function<void(const net::RxCaps&)> on_caps;  // uplinks
    std::atomic<uint64_t> spoofed{0}, bad_source{0}, vlan_drops{0}, flooded{0}, unicast{0};
  };
  // Stable in the table (a node map): refreshed in place under the reader lock.
  struct Learnt {
    std::atomic<uint32_t> port{0};
    std::atomic<int64_t> seen_ns{0};  // absl::GetCurrentTimeNanos()
  };
  static uint64_t Key(uint16_t vlan, net::Mac mac) { return (uint64_t{vlan} << 48) | mac; }

  const Options opts_;
  mutable absl::Mutex ports_mu_;
  std::vector<std::unique_ptr<Port>> ports_ ABSL_GUARDED_BY(ports_mu_);
  void PublishCaps() ABSL_EXCLUSIVE_LOCKS_REQUIRED(ports_mu_);
  mutable absl::Mutex fdb_mu_;
  absl::node_hash_map<uint64_t, Learnt> fdb_ ABSL_GUARDED_BY(fdb_mu_);
  // Learns `key` on `port` at `now_ns` (a new entry, or a station move).
  void Learn(uint64_t key, uint32_t port, int64_t now_ns) ABSL_EXCLUSIVE_LOCKS_REQUIRED(fdb_mu_);
  // How stale an entry's time may get before a batch refreshes it: a
  // fraction of the aging time, at most a second.
  int64_t refresh_ns_ = 0;

 public:
  // Tests: the address table's reader lock, held until the result goes (as
  // another port's batch holds it).
  std::unique_ptr<absl::ReaderMutexLock> HoldTableForTesting() const {
    return std::make_unique<absl::ReaderMutexLock>(&fdb_mu_);
  }
};

}  // namespace vioport::vios
