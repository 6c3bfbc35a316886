// SPDX-License-Identifier: Apache-2.0
// virtio-vsock (§5.10) device: one guest's port on vios's vsock hub. The
// device relays; connections live at their ends (a guest's driver, the
// hub's host endpoints). Every packet the guest transmits is checked
// (vsock_packet.h) before it goes to the PacketSink; a refused one is
// counted by cause and answered with an RST (never an RST for an RST).
// Packets for the guest arrive in inbox() from any thread and are written
// into its receive buffers, an RW payload cut to fit them (SEQPACKET's
// EOM/EOR stay on the last piece). TRANSPORT_RESET goes out on the event
// queue on request. Transmit is served whether or not the guest has
// receive buffers (§5.10.6.3's deadlock rule): the RSTs the device makes
// meanwhile wait in a bounded queue of its own.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "vioport/backends/port_inbox.h"
#include "vioport/backends/vsock_packet.h"
#include "vioport/core/device.h"

namespace vioport {

namespace vsock {
inline size_t InboxBytes(const Packet& p) { return kHdrSize + p.payload.size(); }
// A STREAM RW that follows another of the same connection waiting in the
// inbox joins it (up to kMaxPayload): the receiver sees the same bytes in
// the same order, the credit fields of the later packet. Linux's receive
// path merges small packets the same way.
inline bool InboxMerge(Packet& queued, Packet& next) {
  const Hdr& a = queued.hdr;
  const Hdr& b = next.hdr;
  if (a.op != kOpRw || b.op != kOpRw || a.type != kTypeStream || b.type != kTypeStream || a.flags || b.flags ||
      a.src_cid != b.src_cid || a.dst_cid != b.dst_cid || a.src_port != b.src_port || a.dst_port != b.dst_port ||
      queued.payload.size() + next.payload.size() > kMaxPayload)
    return false;
  queued.payload.insert(queued.payload.end(), next.payload.begin(), next.payload.end());
  queued.hdr.buf_alloc = b.buf_alloc;
  queued.hdr.fwd_cnt = b.fwd_cnt;
  queued.hdr.len = static_cast<uint32_t>(queued.payload.size());
  return true;
}
using Inbox = PortInbox<Packet>;

// Where a device's checked packets go (vios's hub), on the device's thread,
// a batch at a time; the sink takes the packets (moves what it keeps).
class PacketSink {
 public:
  virtual ~PacketSink() = default;
  virtual void Send(uint64_t from_cid, std::vector<Packet>& packets) = 0;
  // A checked RW packet whose payload lies in one mapped piece of guest
  // memory, offered in place before its buffer goes back to the guest
  // (after every earlier packet's Send): a sink that takes it returns true
  // and has copied or written what it keeps; false, and the device sends
  // it the usual way.
  virtual bool SendInPlace(uint64_t /*from_cid*/, const Hdr& /*h*/, std::span<const uint8_t> /*payload*/) {
    return false;
  }
  // The device was reset (its front-end went away, or the driver or the
  // front-end stopped it) after every packet it had sent: the driver's
  // connections are gone with it. On the device's thread.
  virtual void DriverGone(uint64_t /*cid*/) {}
};
}  // namespace vsock

struct VsockOptions {
  uint64_t guest_cid = 3;
  bool seqpacket = true;  // offer SEQPACKET
  uint16_t max_queue_size = 1024;
  vsock::Inbox::Limits inbox{1024, 8ull << 20, 256};
};

class VsockDevice final : public VirtioDevice {
 public:
  static absl::StatusOr<std::shared_ptr<VsockDevice>> Create(const VsockOptions& options);
  ~VsockDevice() override;

  // Plugs the device into a hub (before it is attached, or after it was
  // detached). nullptr unplugs: the guest's packets then get an RST.
  void Plug(std::shared_ptr<vsock::PacketSink> sink);
  vsock::Inbox& inbox() { return *inbox_; }
  uint64_t guest_cid() const { return opts_.guest_cid; }
  // Sends TRANSPORT_RESET to the driver (any thread): it drops its
  // connections, re-reads guest_cid and keeps its listeners.
  void TransportReset();

  // VirtioDevice
  DeviceId device_id() const override { return DeviceId::kVsock; }
  uint64_t device_features() const override;
  uint16_t num_queues() const override { return vsock::kNumQueues; }
  uint16_t max_queue_size() const override { return opts_.max_queue_size; }
  uint32_t config_size() const override { return sizeof(vsock::Config); }
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override;
  absl::Status Activate(ActivateContext ctx) override;
  ActivateContext Reset() override;
  void QueueNotify(uint16_t queue) override;
  int event_fd() const override { return inbox_->event_fd(); }
  bool ProcessEvents() override;
  void AppendCounters(std::vector<std::pair<std::string, uint64_t>>* out) const override;

  uint64_t refusals(vsock::Refusal r) const { return refused_[static_cast<size_t>(r)].load(std::memory_order_relaxed); }

  static constexpr uint32_t kTxBudget = 128;   // transmit chains per loop turn
  static constexpr uint32_t kRxBudget = 256;   // receive buffers filled per loop turn
  static constexpr size_t kMaxLocal = 256;     // RSTs the device made, waiting for receive buffers
  static constexpr size_t kMaxWaitingRequests = 64;  // REQUESTs kept while no driver is there

 private:
  explicit VsockDevice(const VsockOptions& options);
  enum class Put : uint8_t { kDone, kNoBuffers, kBroken };
  void DrainTx();
  // The payload of `c` (after the header) when it lies in one mapped
  // segment; empty otherwise.
  static std::span<const uint8_t> PayloadInPlace(const DescriptorChain& c, uint32_t len);
  bool DeliverRx();
  Put PutNext(vsock::Packet& p, size_t* offset);
  void SendEvents();
  void Refuse(const vsock::Hdr& h, vsock::Refusal why);
  void Flush();

  VsockOptions opts_;
  std::unique_ptr<vsock::Inbox> inbox_;
  std::shared_ptr<vsock::PacketSink> sink_;
  std::atomic<bool> reset_request_{false};

  bool active_ = false;
  ActivateContext ctx_;
  uint64_t features_ = 0;
  bool tx_more_ = false;
  std::vector<vsock::Packet> tx_batch_;
  std::deque<vsock::Packet> local_;       // RSTs from the device itself
  std::vector<vsock::Packet> taken_;      // from the inbox
  std::vector<vsock::Packet> waiting_requests_;  // REQUESTs that came with no driver
  size_t taken_head_ = 0;
  size_t offset_ = 0;                     // of the packet at the head, delivered so far

  std::array<std::atomic<uint64_t>, static_cast<size_t>(vsock::Refusal::kCount)> refused_{};
  std::atomic<uint64_t> rx_packets_{0}, rx_bytes_{0}, tx_packets_{0}, tx_bytes_{0}, tx_in_place_{0};
  std::atomic<uint64_t> rst_sent_{0}, rst_dropped_{0}, short_chains_{0}, small_rx_buffers_{0};
  std::atomic<uint64_t> events_sent_{0}, no_driver_drops_{0};
};

}  // namespace vioport
