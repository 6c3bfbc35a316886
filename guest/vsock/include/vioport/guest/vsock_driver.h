// SPDX-License-Identifier: Apache-2.0
// virtio-vsock (§5.10) guest driver over the core's driver model, for any
// transport: sockets of a guest in a process. Connections are core's
// vsock::Endpoint (the same connection end vios's host side uses), so
// credit, SHUTDOWN and RST behave alike at both ends. Single-threaded: the
// caller's thread runs the queues inside every call (Poll, Connect, Send,
// Recv, Accept), nothing runs between calls.
//
// Buffers: receive buffers of rx_buffer bytes (header included); transmit
// slots of a header plus max_packet bytes for data, and small ones for
// control packets; all posted and reaped in batches.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <span>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "vioport/core/driver.h"
#include "vioport/core/vsock_conn.h"
#include "vioport/guest/wait.h"

namespace vioport {

struct VsockDriverOptions {
  bool seqpacket = true;           // negotiate SEQPACKET when the device offers it
  uint32_t queue_size = 256;       // 0: the device's maximum (capped at 1024)
  // Receive buffers: rx_buffers of rx_buffer bytes, header included (the
  // device cuts a larger packet to fit). 64 x 16 KiB: 1 MiB, 256 pages a
  // Xen back-end maps (its maptrack table holds 1024).
  uint32_t rx_buffers = 64;
  uint32_t rx_buffer = 16 * 1024;
  uint32_t tx_slots = 16;          // packets over 4 KiB of data in flight (and 64 of up to 4 KiB)
  uint32_t max_packet = vsock::kMaxPayload;
  uint32_t buf_alloc = 256 * 1024; // per connection: what we advertise
  uint32_t backlog = 128;          // connections waiting in Accept, per listener
  uint32_t max_conns = 4096;
  WaitPolicy wait;
};

class VsockDriver {
 public:
  using ConnId = uint64_t;
  struct RecvResult {
    size_t bytes = 0;
    bool eom = false;        // SEQPACKET: the bytes end a message
    bool truncated = false;  // SEQPACKET: the message was longer than the buffer (the rest dropped)
    bool eof = false;        // the peer sends no more and nothing is left to read
    bool reset = false;      // the connection was reset (RST, TRANSPORT_RESET, a protocol error)
  };
  struct Stats {
    uint64_t rx_packets = 0, tx_packets = 0, rx_bytes = 0, tx_bytes = 0;
    uint64_t rst_sent = 0, rst_received = 0, transport_resets = 0;
    uint64_t bad_packets = 0;  // from the device: too short, wrong CID, unknown type
    uint64_t refused = 0;      // REQUESTs answered with RST (no listener, backlog full, limit)
    // Sleeps with data waiting for a transmit slot; those that ended by
    // their timeout rather than the device's interrupt; and of those, the
    // ones after which the device had given buffers back (no interrupt
    // came for them: a lost wake-up, not a slow device).
    uint64_t tx_waits = 0, tx_wait_timeouts = 0, tx_wait_missed = 0;
  };

  explicit VsockDriver(DriverTransport& transport);
  ~VsockDriver();
  VsockDriver(const VsockDriver&) = delete;
  VsockDriver& operator=(const VsockDriver&) = delete;

  // Initialises the device (again, after a reset or a lost partner: every
  // open connection then ends as reset; listeners stay).
  absl::Status Init(uint64_t ring_features, const VsockDriverOptions& options);

  uint64_t guest_cid() const { return guest_cid_; }
  bool seqpacket() const { return seqpacket_; }
  VirtioDriver& driver() { return drv_; }
  const Stats& stats() const { return stats_; }
  size_t open_connections() const { return conns_.size(); }

  // Opens a connection to (cid, port) and waits for the peer's answer.
  // Unavailable when it answers with RST (nobody listens), DeadlineExceeded
  // when it does not answer in time.
  absl::StatusOr<ConnId> Connect(uint64_t cid, uint32_t port, uint16_t type, absl::Duration timeout);
  // Accepts REQUESTs to `port` of `type` from now on.
  absl::Status Listen(uint32_t port, uint16_t type);
  absl::Status Unlisten(uint32_t port, uint16_t type);
  // The next connection made to a listening port; DeadlineExceeded if none
  // arrives in time.
  absl::StatusOr<ConnId> Accept(uint32_t port, uint16_t type, absl::Duration timeout);

  // Sends all of `data` (one message with `eom` for SEQPACKET), waiting for
  // the peer's credit up to `timeout`. Returns what was sent: less than
  // `data` only on a timeout (then with DeadlineExceeded if nothing went)
  // or when the connection ended.
  absl::StatusOr<size_t> Send(ConnId id, std::span<const uint8_t> data, bool eom, absl::Duration timeout);
  // Receives into `buf`: for STREAM whatever is there (up to its size), for
  // SEQPACKET one message. Waits up to `timeout` for something; on a
  // timeout returns 0 bytes and no flag set.
  absl::StatusOr<RecvResult> Recv(ConnId id, std::span<uint8_t> buf, absl::Duration timeout);
  // SHUTDOWN with flags (vsock::kShutdownSend: we send no more).
  absl::Status Shutdown(ConnId id, uint32_t flags);
  // Closes: SHUTDOWN both ways, waits up to `linger` for the peer's RST
  // (the clean close, §5.10.6.6), then RST; the id is invalid afterwards.
  void Close(ConnId id, absl::Duration linger = absl::Milliseconds(500));
  // Bytes received on `id` and not read yet; whether it ended.
  size_t readable(ConnId id) const;
  bool ended(ConnId id) const;
  // Of the Endpoint: what we may still send before waiting for credit.
  uint32_t send_credit(ConnId id) const;

  // Runs the queues: takes what the device returned, answers, posts what is
  // waiting to go. Waits up to `timeout` for something to arrive when
  // nothing did. Returns an error when the device failed (needs a reset,
  // broke a ring, its transport is gone): Init again to go on.
  absl::Status Poll(absl::Duration timeout);

 private:
  // Poll; `adaptive`: spin for spin_ (adapted to how long waits take), not
  // the configured spin, before sleeping.
  absl::Status PollFor(absl::Duration timeout, bool adaptive);
  struct Chunk {
    std::vector<uint8_t> data;
    size_t off = 0;
    bool eom = false;
  };
  struct Conn {
    std::unique_ptr<vsock::Endpoint> ep;
    std::deque<Chunk> rx;
    size_t rx_bytes = 0;
    bool eof = false, reset = false, closing = false;
    uint32_t listen_port = 0;  // accepted from this listener (0: we connected)
  };
  using Key = std::tuple<uint32_t, uint64_t, uint32_t>;  // local port, peer cid, peer port
  struct Listener {
    std::deque<ConnId> backlog;
  };

  absl::Status Check() const;
  void FreeAll();
  absl::Status PostRx(uint32_t slot);
  absl::Status PostEvent(uint32_t slot);
  void Dispatch(const vsock::Hdr& h, std::span<const uint8_t> payload);
  void Apply(Conn& c, vsock::Endpoint::Output& out);
  void Queue(vsock::Packet&& p);
  void QueueRst(const vsock::Hdr& to);
  absl::Status Flush();
  // Header and payload into a free slot of transmit pool `k`, made
  // available to the device; on kOk the slot is in flight and counted.
  AddStatus PutInSlot(int k, const vsock::Hdr& h, std::span<const uint8_t> payload);
  // Stream data written straight into free transmit slots (no packet in
  // between), as far as credit and slots allow; returns the bytes taken.
  absl::StatusOr<size_t> SendDirect(Conn& c, std::span<const uint8_t> data);
  absl::Status Reap();
  void TransportReset();
  void EndAll();
  void Forget(ConnId id);
  Conn* Find(ConnId id);
  const Conn* Find(ConnId id) const;
  uint32_t EphemeralPort(uint64_t cid, uint32_t port);

  VirtioDriver drv_;
  VsockDriverOptions opts_;
  bool ready_ = false;
  absl::Status failed_;
  uint64_t guest_cid_ = 0;
  bool seqpacket_ = false;
  DmaBuffer rx_{}, ev_{};
  uint32_t rx_slot_ = 0;
  // Transmit slots by size: headers only, payloads up to 4 KiB, up to
  // max_packet. A packet takes the smallest that fits.
  struct TxPool {
    DmaBuffer buf{};
    uint32_t slot = 0;
    std::vector<uint32_t> free;
  };
  std::array<TxPool, 3> tx_{};
  uint32_t tx_in_flight_ = 0;
  uint64_t tx_reaped_ = 0;
  absl::Duration spin_;  // how long Poll polls before it sleeps (AdaptSpin)
  static constexpr absl::Duration kMaxSpin = absl::Microseconds(200);
  void AdaptSpin(absl::Duration waited);  // transmit buffers the device gave back, ever
  std::deque<vsock::Packet> pending_;  // made, not yet in the ring
  size_t pending_bytes_ = 0;           // their payload bytes
  absl::flat_hash_map<ConnId, std::unique_ptr<Conn>> conns_;
  std::map<Key, ConnId> by_key_;
  std::map<std::pair<uint32_t, uint16_t>, Listener> listeners_;  // (port, type)
  ConnId next_id_ = 1;
  uint32_t next_port_ = 0;
  Stats stats_;
};

}  // namespace vioport
