// SPDX-License-Identifier: Apache-2.0
// virtio-vsock connections (§5.10.6): packets, the refusals a connection
// end or a relay counts, and one end of a connection (Endpoint) with the
// spec's credit-based flow control. Shared by vios's host endpoints
// (vios/src/vsock_hub.*) and the guest driver: each is an end. Pure
// functions of bytes and state: no sockets, no threads, so the fuzzer
// drives them directly.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vioport/core/vsock_spec.h"

namespace vioport::vsock {

// The largest payload taken in one packet (Linux's and Firecracker's
// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
inline constexpr uint32_t kMaxPayload = 64 * 1024;

struct Packet {
  Hdr hdr{};
  std::vector<uint8_t> payload;
};

// Why a packet was refused (each counted by cause).
enum class Refusal : uint8_t {
  kNone = 0,
  kLenBeyondBuffer,  // hdr.len is more than the chain holds after the header
  kTooBig,           // hdr.len above kMaxPayload
  kLenNotRw,         // a payload on an op that carries none
  kBadType,          // a type the spec does not define or the guest did not negotiate
  kBadOp,            // op 0 or above CREDIT_REQUEST
  kSpoofedSrc,       // src_cid is not the guest's own
  kBadDst,           // dst_cid reserved, or the guest's own
  kNoRoute,          // no guest with that CID on this vios
  kGroup,            // the destination is outside the sender's groups
  kCredit,           // more data than the receiver's advertised credit
  kTooManyConns,     // the guest's connection limit
  kNoListener,       // nothing listens on the destination port
  kNoConnection,     // a packet for a connection that does not exist
  kCount,
};
const char* RefusalName(Refusal r);

// The RST that answers `to` (addresses swapped, same type). Never sent in
// answer to an RST.
Hdr RstFor(const Hdr& to);

// One end of a connection: vios's end of a host-side connection, or a
// guest driver's end of any connection ("the host" below is whoever uses
// the end: a host socket, an application). Every packet it makes carries
// its buf_alloc and fwd_cnt; it sends RW only within the peer's credit,
// and refuses (RST) a peer that sends more than its own.
class Endpoint {
 public:
  enum class State : uint8_t {
    kRequestSent,  // we sent REQUEST, waiting for RESPONSE
    kEstablished,
    kClosing,      // we shut both directions, waiting for the peer's RST
    kClosed,
  };
  struct Limits {
    uint32_t buf_alloc = 256 * 1024;  // what we advertise: data we hold for the host, at most
    uint32_t max_packet = kMaxPayload;
  };
  // What handling a packet or a host action produced.
  struct Output {
    std::vector<Packet> to_peer;      // packets for the guest, in order
    std::vector<uint8_t> to_host;     // bytes for the host socket
    // (PeekPacket) bytes for the host socket, in the caller's buffer: the
    // caller writes or copies them before that buffer goes.
    std::span<const uint8_t> to_host_in_place;
    bool eom = false;                 // (SEQPACKET) to_host ends a message
    bool host_eof = false;            // the peer will send no more
    Refusal refused = Refusal::kNone; // the peer broke the protocol: RST sent, closed
  };

  Endpoint(uint64_t local_cid, uint32_t local_port, uint64_t peer_cid, uint32_t peer_port, uint16_t type, Limits limits);

  // A connection we open: the REQUEST to send.
  Packet Connect();
  // A connection the peer opened with `request`: the RESPONSE to send.
  Packet Accept(const Hdr& request);

  // A packet from the peer for this connection (addresses already matched).
  void OnPacket(const Hdr& hdr, std::span<const uint8_t> payload, Output* out);
  // The same, for a payload the caller gives up: data for the host is
  // moved into out->to_host rather than copied.
  void TakePacket(const Hdr& hdr, std::vector<uint8_t>&& payload, Output* out);
  // The same, leaving the payload where it is: data for the host is
  // out->to_host_in_place, a view of `payload` (to_host stays empty).
  void PeekPacket(const Hdr& hdr, std::span<const uint8_t> payload, Output* out);
  // Host data to send. Takes what the peer's credit allows (all of it, or
  // none, for SEQPACKET: a message is not split across credit waits) and
  // returns how many bytes it took; `eom` ends a SEQPACKET message.
  size_t Send(std::span<const uint8_t> data, bool eom, Output* out);
  // Send for a STREAM caller that writes the payload into its own buffer:
  // the header of the next RW packet, carrying up to `max` bytes (as many
  // as the peer's credit and max_packet allow), counted as sent; returns
  // its length, 0 (and no header) when nothing may go now.
  size_t NextRw(size_t max, Hdr* h);
  // The host took `n` bytes of what OnPacket delivered: our fwd_cnt grows,
  // and a CREDIT_UPDATE goes out when the peer may be waiting for it.
  void Consumed(uint32_t n, Output* out);
  // SHUTDOWN with `flags`: kShutdownSend, the host will send no more (its
  // socket read EOF: the peer may still send); kShutdownRecv, it takes no
  // more (what arrives is dropped); both, the connection is closing and
  // waits for the peer's RST.
  void Shutdown(uint32_t flags, Output* out);
  // Ends the connection now: the RST to send (none if closed already).
  void Reset(Output* out);

  State state() const { return state_; }
  bool closed() const { return state_ == State::kClosed; }
  uint32_t peer_free() const { return PeerFree(peer_buf_alloc_, peer_fwd_cnt_, tx_cnt_); }
  // Bytes received and not yet consumed by the host (at most buf_alloc).
  uint32_t held() const { return rx_cnt_ - fwd_cnt_; }
  uint32_t local_port() const { return local_port_; }
  uint32_t peer_port() const { return peer_port_; }
  uint64_t peer_cid() const { return peer_cid_; }
  uint16_t type() const { return type_; }

 private:
  Packet Make(uint16_t op, uint32_t flags = 0);
  enum class Hand : uint8_t { kCopy, kMove, kView };
  void Receive(const Hdr& h, std::span<const uint8_t> payload, Hand hand, std::vector<uint8_t>* owned, Output* out);
  void Refuse(Refusal why, Output* out);
  void CreditUpdate(Output* out);

  const uint64_t local_cid_;
  const uint32_t local_port_;
  const uint64_t peer_cid_;
  const uint32_t peer_port_;
  const uint16_t type_;
  const Limits limits_;
  State state_ = State::kEstablished;
  uint32_t peer_buf_alloc_ = 0, peer_fwd_cnt_ = 0;
  uint32_t tx_cnt_ = 0;                   // bytes we sent
  uint32_t rx_cnt_ = 0, fwd_cnt_ = 0;     // bytes received, bytes the host took
  uint32_t advertised_fwd_ = 0;           // the fwd_cnt the peer last heard from us
  bool peer_shut_send_ = false, peer_shut_recv_ = false;
  uint32_t shut_sent_ = 0;  // SHUTDOWN flags we sent
};

}  // namespace vioport::vsock
