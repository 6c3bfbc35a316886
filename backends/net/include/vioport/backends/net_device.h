// SPDX-License-Identifier: Apache-2.0
// virtio-net (§5.1) device: one port of a network (vios's switch). Receive
// and transmit queue pairs (MQ), mergeable receive buffers, checksum and
// TCP segmentation offload both ways, the control queue (RX mode, MAC
// table and address, VLAN filter, ANNOUNCE, MQ pairs, guest offloads),
// STATUS, MTU and SPEED_DUPLEX, and STANDBY on request. Runs over any
// transport; behind a VMM that owns the control queue (vhost-user) it
// serves the data queues and the NetControl messages.
//
// Frames the guest transmits are checked (net_frame.h) and sent to the
// FrameSink as port `port`; frames for the guest arrive in inbox() from any
// thread and are filtered, adapted to what the guest negotiated and written
// into its receive buffers. A frame that does not fit the guest's buffer is
// dropped and counted, never truncated.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "vioport/backends/net_frame.h"
#include "vioport/backends/net_port.h"
#include "vioport/core/counters.h"
#include "vioport/core/device.h"
#include "vioport/core/net_control.h"
#include "vioport/core/net_spec.h"

namespace vioport {

struct NetOptions {
  net::Mac mac = 0x525400123456ULL;
  uint16_t max_pairs = 1;     // MQ when above 1
  uint16_t mtu = 1500;        // offered with F_MTU (68..65535)
  uint32_t speed = 10000;     // Mb/s, SPEED_DUPLEX
  uint8_t duplex = net::kDuplexFull;
  bool offloads = true;       // CSUM/GUEST_CSUM, HOST/GUEST TSO4/TSO6/ECN
  bool mrg_rxbuf = true;
  bool ctrl_vq = true;        // the control queue and what needs it
  bool standby = false;       // STANDBY (net failover)
  uint16_t max_queue_size = 1024;
  net::Inbox::Limits inbox;
};

// The guest's control-queue state and what a command does to it; a pure
// function of bytes, so the fuzzer drives it directly.
struct NetCtrlState {
  uint64_t features = 0;  // negotiated
  uint16_t max_pairs = 1;
  uint16_t pairs = 1;     // active queue pairs
  uint64_t guest_offloads = 0;
  bool announce = false;  // STATUS ANNOUNCE set, waiting for the ack
  bool mac_locked = false;  // MAC_ADDR_SET is refused (mac-lock=on)
  net::RxFilter filter;
};
// One command: class, command, data. Returns kCtrlOk or kCtrlErr.
uint8_t HandleNetCtrl(NetCtrlState& state, std::span<const uint8_t> command);
inline constexpr size_t kMaxCtrlCommand = 2 + 2 * (4 + 6 * 256);  // MAC tables of 256 entries each
inline constexpr size_t kMacTableEntries = 64;  // kept; more means "accept all" (as QEMU)

class NetDevice final : public VirtioDevice, public NetControl {
 public:
  static absl::StatusOr<std::shared_ptr<NetDevice>> Create(const NetOptions& options);
  ~NetDevice() override;

  // Plugs the device into a network as port `port` (before it is attached
  // to a transport, or after it was detached). nullptr unplugs: frames the
  // guest sends are then dropped and counted.
  void Plug(std::shared_ptr<net::FrameSink> sink, uint32_t port);
  net::Inbox& inbox() { return *inbox_; }
  net::Mac mac() const { return opts_.mac; }
  // The MAC_ADDR_SET command is refused (mac-lock: the switch drops frames
  // from any other source).
  void set_mac_locked(bool on) { mac_locked_ = on; }

  // Operator actions, from any thread; the device applies them on its own.
  void SetLink(bool up);
  void Announce();

  // VirtioDevice
  DeviceId device_id() const override { return DeviceId::kNet; }
  uint64_t device_features() const override;
  uint16_t num_queues() const override { return static_cast<uint16_t>(2 * opts_.max_pairs + 1); }
  uint16_t max_queue_size() const override { return opts_.max_queue_size; }
  uint32_t config_size() const override { return sizeof(net::Config); }
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override;
  absl::Status CheckFeatures(uint64_t acked) override;
  absl::Status Activate(ActivateContext ctx) override;
  ActivateContext Reset() override;
  void QueueNotify(uint16_t queue) override;
  int event_fd() const override { return inbox_->event_fd(); }
  bool ProcessEvents() override;
  void AppendCounters(std::vector<std::pair<std::string, uint64_t>>* out) const override;

  // NetControl (from the transport's thread)
  uint16_t max_queue_pairs() const override { return opts_.max_pairs; }
  absl::Status SetMtu(uint16_t mtu) override;
  void SendRarp(const uint8_t mac[6]) override;

  // Frames dropped, by cause (any thread).
  uint64_t drops(net::Drop d) const { return drops_[static_cast<size_t>(d)].load(std::memory_order_relaxed); }
  const net::PortCounters& counters() const { return counters_; }
  uint16_t active_pairs() const { return ctrl_.pairs; }

  // Bounded work per loop turn, so one busy port cannot hold a loop that
  // serves other devices: transmit chains per queue, frames delivered. A
  // turn's transmit batch stays well under a receiver's per-sender inbox
  // share (Inbox::Limits::per_source), so a receiver on the same loop gets
  // its turn before its share fills.
  static constexpr uint32_t kTxBudget = 128;
  static constexpr uint32_t kRxBudget = 256;
  static constexpr size_t kBatch = 64;        // frames per hand-over to the switch

 private:
  explicit NetDevice(const NetOptions& options);
  enum class Put : uint8_t { kDone, kNoBuffers, kDropped, kBroken };
  // Device thread only (single writer: a plain add).
  void Count(net::Drop d, uint64_t n = 1) { BumpOwned(drops_[static_cast<size_t>(d)], n); }
  void DrainTx(uint16_t pair);
  void FlushTx();
  bool DeliverRx();
  Put PutFrame(uint16_t pair, const net::Frame& f);
  void ProcessCtrl();
  void ApplyOperatorActions();
  void UpdateCaps();
  void SendToNetwork(net::Frame&& f);
  uint32_t FrameMtu() const { return mtu_.load(std::memory_order_relaxed); }
  void BroadcastRarp(net::Mac mac);

  NetOptions opts_;
  std::unique_ptr<net::Inbox> inbox_;
  std::shared_ptr<net::FrameSink> sink_;
  uint32_t port_ = 0;
  std::atomic<bool> mac_locked_{false};
  uint8_t config_mac_[6];
  std::atomic<uint16_t> mtu_;
  std::atomic<uint64_t> rarp_request_{0};  // bit 63: a RARP to send for the MAC below
  bool link_up_ = true;
  std::atomic<int> link_request_{-1};  // -1: none, 0 down, 1 up
  std::atomic<bool> announce_request_{false};

  bool active_ = false;
  ActivateContext ctx_;
  uint32_t hdr_size_ = net::kHdrSize;
  bool mrg_ = false;
  bool has_ctrl_ = false;
  uint16_t ctrl_queue_ = 0;
  uint16_t usable_pairs_ = 0;  // pairs whose two queues the transport gave
  NetCtrlState ctrl_;
  net::RxCaps rx_caps_;   // from the negotiated features
  net::RxCaps caps_now_;  // ... and the guest-offload state
  std::array<uint8_t, 256> steer_{};  // flow hash -> the pair it was last sent on
  uint32_t tx_more_ = 0;              // pairs whose budget ran out this turn (bit per pair, first 32)

  std::vector<net::Frame> tx_batch_;
  std::vector<std::vector<uint8_t>> tx_pool_;  // frame buffers to reuse
  std::vector<net::Frame> taken_;      // from the inbox, before adaption
  std::vector<net::Frame> rx_pending_; // adapted, waiting for receive buffers
  size_t rx_head_ = 0;
  // Receive chains popped for a frame that did not get all it needs yet.
  std::vector<std::vector<DescriptorChain>> held_;

  net::PortCounters counters_;
  std::array<std::atomic<uint64_t>, static_cast<size_t>(net::Drop::kCount)> drops_{};
  std::atomic<uint64_t> ctrl_ok_{0}, ctrl_err_{0}, unplugged_{0}, link_down_drops_{0};
  std::atomic<uint64_t> rx_gso_{0}, tx_gso_{0}, no_driver_drops_{0};
};

}  // namespace vioport
