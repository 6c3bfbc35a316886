// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/vsock_conn.h"

#include <algorithm>

namespace vioport::vsock {

const char* OpName(uint16_t op) {
  switch (op) {
    case kOpInvalid: return "INVALID";
    case kOpRequest: return "REQUEST";
    case kOpResponse: return "RESPONSE";
    case kOpRst: return "RST";
    case kOpShutdown: return "SHUTDOWN";
    case kOpRw: return "RW";
    case kOpCreditUpdate: return "CREDIT_UPDATE";
    case kOpCreditRequest: return "CREDIT_REQUEST";
    default: return "?";
  }
}

const char* RefusalName(Refusal r) {
  switch (r) {
    case Refusal::kNone: return "none";
    case Refusal::kLenBeyondBuffer: return "len_beyond_buffer";
    case Refusal::kTooBig: return "too_big";
    case Refusal::kLenNotRw: return "len_not_rw";
    case Refusal::kBadType: return "bad_type";
    case Refusal::kBadOp: return "bad_op";
    case Refusal::kSpoofedSrc: return "spoofed_src";
    case Refusal::kBadDst: return "bad_dst";
    case Refusal::kNoRoute: return "no_route";
    case Refusal::kGroup: return "group";
    case Refusal::kCredit: return "credit";
    case Refusal::kTooManyConns: return "too_many_conns";
    case Refusal::kNoListener: return "no_listener";
    case Refusal::kNoConnection: return "no_connection";
    case Refusal::kCount: break;
  }
  return "?";
}

Hdr RstFor(const Hdr& to) {
  Hdr h{};
  h.src_cid = to.dst_cid;
  h.dst_cid = to.src_cid;
  h.src_port = to.dst_port;
  h.dst_port = to.src_port;
  h.type = to.type;
  h.op = kOpRst;
  return h;
}

Endpoint::Endpoint(uint64_t local_cid, uint32_t local_port, uint64_t peer_cid, uint32_t peer_port, uint16_t type,
                   Limits limits)
    : local_cid_(local_cid),
      local_port_(local_port),
      peer_cid_(peer_cid),
      peer_port_(peer_port),
      type_(type),
      limits_(limits) {}

Packet Endpoint::Make(uint16_t op, uint32_t flags) {
  Packet p;
  p.hdr.src_cid = local_cid_;
  p.hdr.dst_cid = peer_cid_;
  p.hdr.src_port = local_port_;
  p.hdr.dst_port = peer_port_;
  p.hdr.type = type_;
  p.hdr.op = op;
  p.hdr.flags = flags;
  p.hdr.buf_alloc = limits_.buf_alloc;
  p.hdr.fwd_cnt = fwd_cnt_;
  advertised_fwd_ = fwd_cnt_;
  return p;
}

Packet Endpoint::Connect() {
  state_ = State::kRequestSent;
  return Make(kOpRequest);
}

Packet Endpoint::Accept(const Hdr& request) {
  peer_buf_alloc_ = request.buf_alloc;
  peer_fwd_cnt_ = request.fwd_cnt;
  state_ = State::kEstablished;
  return Make(kOpResponse);
}

void Endpoint::Refuse(Refusal why, Output* out) {
  out->refused = why;
  Reset(out);
  out->host_eof = true;
}

void Endpoint::Reset(Output* out) {
  if (state_ == State::kClosed) return;
  out->to_peer.push_back(Make(kOpRst));
  state_ = State::kClosed;
}

void Endpoint::CreditUpdate(Output* out) { out->to_peer.push_back(Make(kOpCreditUpdate)); }

void Endpoint::OnPacket(const Hdr& h, std::span<const uint8_t> payload, Output* out) {
  Receive(h, payload, Hand::kCopy, nullptr, out);
}

void Endpoint::TakePacket(const Hdr& h, std::vector<uint8_t>&& payload, Output* out) {
  Receive(h, payload, Hand::kMove, &payload, out);
}

void Endpoint::PeekPacket(const Hdr& h, std::span<const uint8_t> payload, Output* out) {
  Receive(h, payload, Hand::kView, nullptr, out);
}

void Endpoint::Receive(const Hdr& h, std::span<const uint8_t> payload, Hand hand, std::vector<uint8_t>* owned,
                       Output* out) {
  if (state_ == State::kClosed) return;
  if (h.type != type_) return Refuse(Refusal::kBadType, out);
  if (h.op == kOpRst) {
    state_ = State::kClosed;
    out->host_eof = true;
    return;
  }
  // Every packet carries the sender's credit (§5.10.6.3).
  peer_buf_alloc_ = h.buf_alloc;
  peer_fwd_cnt_ = h.fwd_cnt;
  if (state_ == State::kRequestSent) {
    if (h.op != kOpResponse) return Refuse(Refusal::kBadOp, out);
    state_ = State::kEstablished;
    return;
  }
  switch (h.op) {
    case kOpRw: {
      if (peer_shut_send_) return Refuse(Refusal::kBadOp, out);  // it said it would send no more
      // Beyond the credit we advertised: the peer ignores flow control.
      if (uint64_t{held()} + payload.size() > limits_.buf_alloc) return Refuse(Refusal::kCredit, out);
      rx_cnt_ += static_cast<uint32_t>(payload.size());
      if (shut_sent_ & kShutdownRecv) {
        // We said we receive no more: these bytes are dropped, and count
        // as consumed (what the host still holds from before stays held).
        fwd_cnt_ += static_cast<uint32_t>(payload.size());
        return;
      }
      if (hand == Hand::kView)
        out->to_host_in_place = payload;
      else if (hand == Hand::kMove && out->to_host.empty())
        out->to_host = std::move(*owned);  // the caller's buffer, not a copy of it
      else
        out->to_host.insert(out->to_host.end(), payload.begin(), payload.end());
      if (type_ == kTypeSeqpacket && (h.flags & kSeqEom)) out->eom = true;
      return;
    }
    case kOpShutdown:
      if (h.flags & kShutdownSend) {
        peer_shut_send_ = true;
        out->host_eof = true;
      }
      if (h.flags & kShutdownRecv) peer_shut_recv_ = true;
      // Both halves shut: the clean close ends with our RST (§5.10.6.6).
      if (peer_shut_send_ && peer_shut_recv_) Reset(out);
      return;
    case kOpCreditUpdate:
      return;  // the credit above is all it says
    case kOpCreditRequest:
      return CreditUpdate(out);
    default:  // REQUEST or RESPONSE on an open connection
      return Refuse(Refusal::kBadOp, out);
  }
}

size_t Endpoint::Send(std::span<const uint8_t> data, bool eom, Output* out) {
  if (state_ != State::kEstablished || peer_shut_recv_ || (shut_sent_ & kShutdownSend)) return 0;
  const uint32_t free = peer_free();
  const size_t n = std::min<size_t>(data.size(), free);
  const bool seq = type_ == kTypeSeqpacket;
  if (n == 0 && !(seq && eom && data.empty())) return 0;
  size_t done = 0;
  do {
    const size_t part = std::min<size_t>(n - done, limits_.max_packet);
    const bool last = done + part == data.size();
    Packet p = Make(kOpRw, seq && eom && last ? (kSeqEom | kSeqEor) : 0);
    p.hdr.len = static_cast<uint32_t>(part);
    p.payload.assign(data.begin() + static_cast<ptrdiff_t>(done), data.begin() + static_cast<ptrdiff_t>(done + part));
    out->to_peer.push_back(std::move(p));
    done += part;
  } while (done < n);
  tx_cnt_ += static_cast<uint32_t>(n);
  return n;
}

size_t Endpoint::NextRw(size_t max, Hdr* h) {
  if (type_ != kTypeStream || state_ != State::kEstablished || peer_shut_recv_ || (shut_sent_ & kShutdownSend)) return 0;
  const size_t n = std::min<size_t>({max, peer_free(), limits_.max_packet});
  if (n == 0) return 0;
  *h = Make(kOpRw).hdr;
  h->len = static_cast<uint32_t>(n);
  tx_cnt_ += static_cast<uint32_t>(n);
  return n;
}

void Endpoint::Consumed(uint32_t n, Output* out) {
  n = std::min(n, held());
  fwd_cnt_ += n;
  if (state_ == State::kClosed || n == 0) return;
  // What the peer thinks we have free: if it is below one packet, or a
  // quarter of the buffer was freed since it last heard, tell it.
  const uint32_t peer_view_held = rx_cnt_ - advertised_fwd_;
  const uint32_t peer_view_free = peer_view_held >= limits_.buf_alloc ? 0 : limits_.buf_alloc - peer_view_held;
  if (peer_view_free < limits_.max_packet || fwd_cnt_ - advertised_fwd_ >= limits_.buf_alloc / 4) CreditUpdate(out);
}

void Endpoint::Shutdown(uint32_t flags, Output* out) {
  if (state_ == State::kRequestSent) return Reset(out);
  flags &= kShutdownBoth;
  if (state_ != State::kEstablished || flags == 0 || (shut_sent_ | flags) == shut_sent_) return;
  shut_sent_ |= flags;
  out->to_peer.push_back(Make(kOpShutdown, shut_sent_));
  if (shut_sent_ == kShutdownBoth) state_ = State::kClosing;
}

}  // namespace vioport::vsock
