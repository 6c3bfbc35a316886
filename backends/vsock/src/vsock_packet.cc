// SPDX-License-Identifier: Apache-2.0
#include "vioport/backends/vsock_packet.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"

namespace vioport::vsock {

Refusal CheckGuestPacket(const Hdr& h, uint64_t guest_cid, uint64_t features, uint32_t chain_payload) {
  if (h.len > kMaxPayload) return Refusal::kTooBig;
  if (h.len > chain_payload) return Refusal::kLenBeyondBuffer;
  if (h.src_cid != guest_cid) return Refusal::kSpoofedSrc;
  if ((h.dst_cid != kCidHost && !IsGuestCid(h.dst_cid)) || h.dst_cid == guest_cid) return Refusal::kBadDst;
  // §5.10.3: STREAM is implied unless the driver negotiated NO_IMPLIED_STREAM.
  const bool stream_ok = vioport::feature::Has(features, feature::kStream) || !vioport::feature::Has(features, feature::kNoImpliedStream);
  const bool seq_ok = vioport::feature::Has(features, feature::kSeqpacket);
  if (!((h.type == kTypeStream && stream_ok) || (h.type == kTypeSeqpacket && seq_ok))) return Refusal::kBadType;
  if (h.op == kOpInvalid || h.op > kOpCreditRequest) return Refusal::kBadOp;
  if (h.op != kOpRw && h.len != 0) return Refusal::kLenNotRw;
  return Refusal::kNone;
}

ConnectLine ParseConnectLine(absl::string_view received) {
  ConnectLine r;
  const size_t nl = received.find('\n');
  if (nl == absl::string_view::npos) {
    r.result = received.size() >= kMaxConnectLine ? ConnectLine::Result::kBad : ConnectLine::Result::kNeedMore;
    return r;
  }
  if (nl >= kMaxConnectLine) {
    r.result = ConnectLine::Result::kBad;
    return r;
  }
  absl::string_view cmd = received.substr(0, nl);
  if (!cmd.empty() && cmd.back() == '\r') cmd.remove_suffix(1);
  uint32_t port = 0;
  if (!absl::StartsWithIgnoreCase(cmd, "CONNECT ") || !absl::SimpleAtoi(cmd.substr(8), &port)) {
    r.result = ConnectLine::Result::kBad;
    return r;
  }
  r.result = ConnectLine::Result::kOk;
  r.port = port;
  r.consumed = nl + 1;
  return r;
}

}  // namespace vioport::vsock
