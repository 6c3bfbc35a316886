// SPDX-License-Identifier: Apache-2.0
// virtio-net (§5.1) guest driver over the core's driver model, for any
// transport: the role DPDK's virtio-user plays. Queue pairs (MQ, chosen
// over the control queue), mergeable receive buffers, checksum and TSO
// offload both ways, the control queue's commands. Frames are copied
// through DMA buffers the driver owns (small slots for frames up to the
// MTU, big ones for TSO frames), posted and reaped in batches.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "vioport/core/driver.h"
#include "vioport/core/net_spec.h"
#include "vioport/guest/wait.h"

namespace vioport {

struct NetDriverOptions {
  uint16_t pairs = 1;        // queue pairs to use (MQ + VQ_PAIRS_SET when above 1)
  bool mrg_rxbuf = true;
  bool offloads = true;      // CSUM/GUEST_CSUM and TSO4/TSO6 both ways
  bool ctrl = true;          // the control queue
  uint32_t queue_size = 256; // 0: the device's maximum (capped at 1024)
  WaitPolicy wait;
};

class NetDriver {
 public:
  explicit NetDriver(DriverTransport& transport);
  ~NetDriver();
  NetDriver(const NetDriver&) = delete;
  NetDriver& operator=(const NetDriver&) = delete;

  absl::Status Init(uint64_t ring_features, const NetDriverOptions& options);

  // Config space (§5.1.4).
  net::Mac mac() const { return mac_; }
  uint16_t mtu() const { return mtu_; }
  absl::StatusOr<bool> LinkUp();
  uint16_t max_pairs() const { return max_pairs_; }
  uint16_t pairs() const { return pairs_; }
  VirtioDriver& driver() { return drv_; }
  bool has(unsigned bit) const { return drv_.has_feature(bit); }

  // Queues frames for transmission on `pair` (hdr.num_buffers must be 0)
  // and notifies once. Takes as many as there is room for after reaping
  // finished ones; returns how many. With `wait`, waits for room for at
  // least one.
  absl::StatusOr<size_t> Send(uint16_t pair, std::span<const net::Frame> frames, bool wait = true);
  // Collects received frames from `pair`, up to `max`, waiting up to
  // `timeout` for the first. Buffers go back to the device at once.
  absl::StatusOr<size_t> Recv(uint16_t pair, std::vector<net::Frame>* out, size_t max, absl::Duration timeout);
  // Frames sent whose buffers the device has not returned yet.
  uint32_t tx_in_flight(uint16_t pair) const { return pairs_state_[pair].tx_in_flight; }
  // Waits until every frame sent on `pair` has been taken by the device.
  absl::Status FlushTx(uint16_t pair);

  // Control queue (§5.1.6.5): sends one command, returns the ack.
  absl::StatusOr<uint8_t> Command(uint8_t cls, uint8_t cmd, std::span<const uint8_t> data);
  absl::Status SetPairs(uint16_t n);
  absl::Status SetRxMode(uint8_t cmd, bool on);
  absl::Status SetMacTable(std::span<const net::Mac> uni, std::span<const net::Mac> multi);
  absl::Status SetMac(net::Mac mac);
  absl::Status AddVlan(uint16_t vid, bool add = true);
  absl::Status AckAnnounce();
  absl::Status SetGuestOffloads(uint64_t offloads);

  // Frames the driver dropped on receive: a header it could not believe
  // (num_buffers of 0 or more than posted, a length below the header).
  uint64_t rx_errors() const { return rx_errors_; }

  static constexpr uint32_t kSmallSlot = 2048;
  static constexpr uint32_t kBigSlot = net::kHdrSize + net::kMaxGsoFrame;
  static constexpr uint32_t kBigSlots = 16;

 private:
  struct Pair {
    DmaBuffer tx_small{}, tx_big{}, rx{};
    std::vector<uint32_t> tx_free_small, tx_free_big;
    uint32_t tx_in_flight = 0;
    uint32_t rx_slots = 0, rx_slot_size = 0;
  };
  absl::Status PostRx(uint16_t pair, uint32_t slot);
  void ReapTx(uint16_t pair);
  static void Reclaim(Pair& ps, uint64_t token);
  absl::Status Wait(DriverQueue& q, uint64_t* token, uint32_t* len, absl::Duration timeout);
  void FreeAll();

  VirtioDriver drv_;
  NetDriverOptions opts_;
  bool ready_ = false;
  net::Mac mac_ = 0;
  uint16_t mtu_ = 1500;
  uint16_t max_pairs_ = 1;
  uint16_t pairs_ = 1;
  uint16_t ctrl_q_ = 0;
  uint32_t hdr_size_ = net::kHdrSize;
  std::vector<Pair> pairs_state_;
  DmaBuffer ctrl_buf_{};
  uint64_t rx_errors_ = 0;
};

}  // namespace vioport
