// SPDX-License-Identifier: Apache-2.0
#pragma once

// vios's vsock hub: every vsock device of a vios is a guest on it, by CID.
// A packet a guest sends to another guest goes straight to that guest's
// device (their drivers keep the connection, credit included) if the two
// share a group; one to the host (CID 2) goes to the hub's host endpoints,
// which end the connection on Unix sockets in the "hybrid vsock" style
// other VMMs' vsock devices speak (docs/vsock.md names them):
//   host-initiated: a host process connects to the guest's uds_path and
//     writes "CONNECT <port>\n"; once the guest accepts, the hub writes
//     "OK <host-port>\n" (the port the guest sees the connection come
//     from, allocated from 2^30 up, as those VMMs do) and the socket
//     carries the stream; if the guest refuses, the socket is closed.
//   guest-initiated: a guest connecting to host port P reaches a process
//     listening on "<uds_path>_<P>" (SOCK_STREAM, or SOCK_SEQPACKET for a
//     SEQPACKET connection); nobody listening: RST.
// Every refusal is counted by cause and answered with an RST. A guest
// whose device is reset (its driver or front-end gone) loses its host
// connections: each host socket is closed once what the guest had sent is
// written to it.
// Locking: each guest has its own lock over its host connections, so
// guests on different reactors never wait for each other. A guest's
// packets are routed on its device's thread: to another guest's inbox
// under the routing table's reader lock, to the host endpoints under that
// guest's own lock (the host socket written there, no hand-over). The
// hub's own thread accepts, reads the host sockets and waits for them to
// take more, each under its guest's lock. Lock order: the routing table
// (or the sibling table) before a guest's lock, never after; a guest's
// lock before the hub's watch lists.

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "vioport/backends/vsock_device.h"

namespace vioport::vios {

class VsockHub final : public vsock::PacketSink {
 public:
  struct Options {
    uint32_t max_conns = 1024;          // host connections per guest
    vsock::Endpoint::Limits limits;     // each host connection's
    absl::Duration close_timeout = absl::Seconds(2);  // SHUTDOWN without the peer's RST; REQUEST unanswered
  };
  struct Guest {
    std::string id;
    uint64_t cid = 0;
    std::shared_ptr<vsock::Inbox> inbox;  // the device's
    std::string uds_path;                 // "": no host side
    std::vector<std::string> groups;      // guests sharing one reach each other
    uint32_t buf_alloc = 0;               // per host connection; 0: Options::limits
    // What vios may hold for this guest's host connections (data the guest
    // sent that a host process has not read): a new connection's window is
    // at most budget / (connections open + 1), at least one packet. 0: none.
    uint64_t budget = 0;
  };
  static absl::StatusOr<std::shared_ptr<VsockHub>> Create(Options options);
  ~VsockHub() override;

  // Binds the guest's uds_path (an existing socket file there is replaced).
  absl::Status AddGuest(Guest g);
  // Closes its host connections and its uds_path; its packets are refused.
  void RemoveGuest(uint64_t cid);
  bool HasCid(uint64_t cid) const;

  // PacketSink: a device's checked packets (any device thread).
  void Send(uint64_t from_cid, std::vector<vsock::Packet>& packets) override;
  // PacketSink: an RW for an open host connection, written to its socket
  // from the guest's buffer (what the socket does not take is copied).
  bool SendInPlace(uint64_t from_cid, const vsock::Hdr& h, std::span<const uint8_t> payload) override;
  // PacketSink: the device was reset; its guest's host connections end.
  void DriverGone(uint64_t cid) override;

  // hub.* counters of one guest.
  void AppendCounters(uint64_t cid, std::vector<std::pair<std::string, uint64_t>>* out) const;

  // Host connections open now, over all guests (tests).
  size_t host_connections() const { return open_.load(); }
  // Tests: guest `cid`'s lock, held until the result goes (as a thread
  // busy with that guest's connections holds it); nullptr if no such guest.
  std::unique_ptr<absl::MutexLock> HoldGuestForTesting(uint64_t cid);

 private:
  struct GuestState;
  // A host connection: reading the CONNECT line (host-initiated), waiting
  // for the guest's RESPONSE, or carrying the stream.
  enum class Phase : uint8_t { kConnectLine, kWaitResponse, kOpen };
  struct Conn;
  explicit VsockHub(Options options);
  void Run();
  void Wake();
  std::shared_ptr<GuestState> Find(uint64_t cid) const;
  // The hub thread: drivers gone, stalled guests retried, deadlines.
  void DropGone();
  void RetryStalled();
  void CheckDeadlines();

  // The rest run under the guest's lock (the hub thread, or the guest's
  // device thread in Send/SendInPlace).
  // A packet for the host: its payload given up (`payload`) or in the
  // caller's buffer (`in_place`, payload nullptr).
  void HandleGuestPacket(GuestState& g, const vsock::Hdr& h, std::vector<uint8_t>* payload,
                         std::span<const uint8_t> in_place);
  // The same, for the connection `c` it belongs to.
  void HandleConnPacket(GuestState& g, Conn& c, const vsock::Hdr& h, std::vector<uint8_t>* payload,
                        std::span<const uint8_t> in_place);
  void GuestConnect(GuestState& g, const vsock::Hdr& h);
  void Accept(GuestState& g);
  void OnHostReadable(Conn& c);
  void OnHostWritable(Conn& c);
  // A host socket read that returned `r` <= 0: nothing yet, an error (the
  // guest's end is reset) or the host's end of the stream.
  void HostReadEnd(Conn& c, ssize_t r);
  void Apply(Conn& c, vsock::Endpoint::Output& out);
  // A new host connection's limits for guest `g` (its buf_alloc, if set,
  // within its budget's share).
  vsock::Endpoint::Limits LimitsOf(const GuestState& g) const;
  void Flush(Conn& c);
  // Writes what waits for the host socket until it takes no more; false on
  // a write error (left for Flush to handle).
  bool WriteOut(Conn& c);
  // (STREAM) bytes for the host socket, after what waits already.
  void QueueOut(Conn& c, std::span<const uint8_t> d);
  // `n` bytes of the guest's reached the host socket: its credit.
  void Wrote(Conn& c, uint64_t n);
  void UpdateInterest(Conn& c);
  // The connection has room for host data (the guest's credit) and reads.
  bool WantsRead(const Conn& c) const;
  // A connection on `fd`, registered with epoll (no events until
  // UpdateInterest), and its binding to (guest port, host port) once its
  // endpoint exists; Close undoes both.
  Conn& AddConn(GuestState& g, int fd, Phase phase);
  void Bind(GuestState& g, Conn& c);
  // A finite deadline puts the guest on the hub thread's watch list.
  void SetDeadline(Conn& c, absl::Time t);
  // Resets the connection's endpoint, its RST to the guest (if still open).
  void ResetToGuest(Conn& c);
  void Close(GuestState& g, uint32_t id);
  void ToGuest(GuestState& g, vsock::Packet p);
  // What waits for the guest into its inbox; a guest whose inbox is full
  // is stalled (its host reads paused) and retried by the hub thread.
  void PushBacklog(GuestState& g);
  void SetStalled(GuestState& g, bool stalled);
  void Refuse(GuestState& g, const vsock::Hdr& h, vsock::Refusal why);
  void DropConnections(GuestState& g);
  // Send's routing: packets for other guests go to their inboxes, those
  // for the host to `host`; the sender's state when there are any.
  std::shared_ptr<GuestState> Route(uint64_t from_cid, std::vector<vsock::Packet>& packets,
                                    std::vector<vsock::Packet>& host);

  const Options opts_;
  int ep_ = -1;
  int wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;

  // Routing table, read by device threads.
  mutable absl::Mutex mu_;
  std::map<uint64_t, std::shared_ptr<GuestState>> guests_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> gone_ ABSL_GUARDED_BY(mu_);  // CIDs whose driver went: connections to drop
  // Connections between guests, from their REQUEST to an RST either way:
  // when one guest's driver goes, the other end gets the RST its peer can
  // no longer send. Keyed (lower cid, its port, higher cid, its port); the
  // value is the socket type. At most max_conns per guest.
  using SibKey = std::tuple<uint64_t, uint32_t, uint64_t, uint32_t>;
  static SibKey SibKeyOf(const vsock::Hdr& h);
  void TrackSibling(const vsock::Hdr& h, bool* refuse);
  void EndSiblings(uint64_t cid);
  absl::Mutex sib_mu_;
  std::map<SibKey, uint16_t> siblings_ ABSL_GUARDED_BY(sib_mu_);
  std::map<uint64_t, uint32_t> sib_count_ ABSL_GUARDED_BY(sib_mu_);

  // What the hub thread watches besides its sockets: guests whose inbox is
  // full (retried every millisecond) and guests with a connection that has
  // a deadline. With neither, the hub thread sleeps until a socket wakes it.
  absl::Mutex watch_mu_;
  std::set<uint64_t> stalled_ ABSL_GUARDED_BY(watch_mu_);
  std::set<uint64_t> timed_ ABSL_GUARDED_BY(watch_mu_);
  std::atomic<size_t> open_{0};
};

}  // namespace vioport::vios
