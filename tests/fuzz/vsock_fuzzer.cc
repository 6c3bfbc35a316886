// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for virtio-vsock's byte-level parts (backends/vsock and core/vsock_conn):
// the checks on a packet a guest transmits (CheckGuestPacket) and one end
// of a connection (Endpoint), driven by hostile packets and host actions in
// any order.
//
// Input: [0] bit 0 SEQPACKET negotiated, bit 1 NO_IMPLIED_STREAM, bit 2
// STREAM, bit 3 the connection is SEQPACKET, bit 4 the host opened it
// (Connect) rather than the guest (Accept); [1..4] the buf_alloc we
// advertise, [5..6] our largest packet (taken into 1..65536); then steps,
// each a byte whose value % 6 picks:
//   0  a raw guest packet: 44 header bytes, le16 readable bytes after the
//      header, then the payload (hdr.len bytes, cut to what is left);
//      checked, then handed to the endpoint whatever the check said
//   1  a packet addressed to the endpoint: [op, flags, le32 buf_alloc,
//      le32 fwd_cnt, le16 len] then len payload bytes
//   2  host data: le16 length, a byte (bit 0: end of message), the bytes
//   3  the host consumed le32 bytes
//   4  the host shuts down (flags from the step byte's bits 3-4)
//   5  the host resets
// Two more modes, picked by [0]'s bits 5 and 6 (the rest of the input is
// theirs):
//  bit 5: the hybrid handshake's CONNECT line as a host process sends it,
//    in pieces ([le8 length][bytes]...), parsed after each as vios's hub
//    does (ParseConnectLine); checked: a line is accepted only with its
//    \n within 64 bytes and "connect " before a decimal port, and what
//    follows it is left for the stream.
//  bit 6: packets pushed into a device inbox ([port, type, flags, length,
//    payload]...) and taken back; checked: what the inbox accepted comes
//    out per connection byte for byte, in order, STREAM RW joined only
//    within one connection and up to 64 KiB, nothing else joined.
// Checked besides ASan/UBSan: held() never exceeds the buf_alloc we
// advertised and equals what reached the host minus what it consumed; a
// packet we make is addressed as the connection is, its len is its
// payload's and at most our largest packet; RW goes out only when
// established and never beyond the peer's credit as it stood; a refusal
// closes the connection with an RST; a closed connection produces nothing.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include <map>
#include <string>
#include <tuple>

#include "vioport/backends/vsock_device.h"
#include "vioport/backends/vsock_packet.h"

using namespace vioport::vsock;

namespace {

#define CHECK(c)      \
  do {                \
    if (!(c)) abort(); \
  } while (0)

struct Reader {
  const uint8_t* p;
  size_t n;
  bool Take(void* out, size_t k) {
    if (n < k) return false;
    std::memcpy(out, p, k);
    p += k;
    n -= k;
    return true;
  }
  std::span<const uint8_t> Bytes(size_t k) {
    k = std::min(k, n);
    std::span<const uint8_t> s(p, k);
    p += k;
    n -= k;
    return s;
  }
};

constexpr uint64_t kGuest = 3;
constexpr uint32_t kHostPort = 1234, kGuestPort = 50000;

struct Model {
  Endpoint& e;
  uint16_t type;
  uint32_t buf_alloc, max_packet;
  uint64_t held = 0;

  void Check(const Endpoint::Output& o, bool was_closed, bool was_established) {
    if (was_closed) {
      CHECK(o.to_peer.empty());
      CHECK(o.to_host.empty());
    }
    for (const Packet& p : o.to_peer) {
      CHECK(p.hdr.src_cid == kCidHost && p.hdr.dst_cid == kGuest);
      CHECK(p.hdr.src_port == kHostPort && p.hdr.dst_port == kGuestPort);
      CHECK(p.hdr.type == type);
      CHECK(p.hdr.len == p.payload.size());
      CHECK(p.hdr.len <= max_packet);
      CHECK(p.hdr.buf_alloc == buf_alloc);
      CHECK(p.hdr.op >= kOpRequest && p.hdr.op <= kOpCreditRequest);
      if (p.hdr.op == kOpRw) CHECK(was_established);
      if (p.hdr.op != kOpRw) CHECK(p.hdr.len == 0);
    }
    if (o.refused != Refusal::kNone) {
      CHECK(e.closed());
      if (!was_closed) CHECK(!o.to_peer.empty() && o.to_peer.back().hdr.op == kOpRst);
    }
    held += o.to_host.size();
    CHECK(e.held() <= buf_alloc);
    CHECK(e.held() == held);
  }
};

}  // namespace

namespace {

void FuzzConnectLine(Reader& r) {
  std::string line;
  uint8_t n = 0;
  while (r.Take(&n, 1)) {
    const std::span<const uint8_t> piece = r.Bytes(std::min<size_t>(n, kMaxConnectLine - line.size()));
    line.append(reinterpret_cast<const char*>(piece.data()), piece.size());
    const ConnectLine c = ParseConnectLine(line);
    if (c.result == ConnectLine::Result::kNeedMore) {
      CHECK(line.size() < kMaxConnectLine && line.find('\n') == std::string::npos);
      continue;
    }
    if (c.result == ConnectLine::Result::kBad) return;
    CHECK(c.consumed >= 10 && c.consumed <= line.size() && c.consumed <= kMaxConnectLine);
    CHECK(line[c.consumed - 1] == '\n' && line.find('\n') == c.consumed - 1);
    std::string word = line.substr(0, 8);
    for (char& ch : word) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    CHECK(word == "connect ");
    return;
  }
}

void FuzzInbox(Reader& r) {
  Inbox in(Inbox::Limits{8, 4096, 4});
  // Order holds within one source's queue (sources are taken round robin):
  // a connection's bytes are compared per source. The source is kept in
  // dst_port, which the inbox does not look at.
  using Key = std::tuple<uint32_t, uint32_t, uint16_t>;
  std::map<Key, std::vector<uint8_t>> pushed, taken;
  std::vector<Packet> out;
  uint8_t h[4];
  while (r.Take(h, 4)) {
    Packet p;
    p.hdr.src_cid = 3;
    p.hdr.dst_cid = 2;
    p.hdr.src_port = h[0] & 3;
    p.hdr.dst_port = h[0] >> 4;
    p.hdr.type = (h[1] & 1) ? kTypeSeqpacket : kTypeStream;
    p.hdr.op = (h[1] & 2) ? kOpCreditUpdate : kOpRw;
    p.hdr.flags = h[2] & 3;
    const std::span<const uint8_t> b = r.Bytes(size_t{h[3]} * 8);
    p.payload.assign(b.begin(), b.end());
    p.hdr.len = static_cast<uint32_t>(p.payload.size());
    const Key k{p.hdr.dst_port, p.hdr.src_port, p.hdr.type};
    const std::vector<uint8_t> copy = p.payload;
    if (in.Push(h[0] >> 4, {&p, 1}) == 1) pushed[k].insert(pushed[k].end(), copy.begin(), copy.end());
    if (h[1] & 4) {
      out.clear();
      in.Take(&out, h[2] >> 4);
      for (const Packet& q : out) {
        CHECK(q.hdr.len == q.payload.size() && q.payload.size() <= kMaxPayload);
        taken[{q.hdr.dst_port, q.hdr.src_port, q.hdr.type}].insert(taken[{q.hdr.dst_port, q.hdr.src_port, q.hdr.type}].end(), q.payload.begin(),
                                                   q.payload.end());
      }
    }
  }
  out.clear();
  while (in.Take(&out, 64) > 0) {
  }
  for (const Packet& q : out) {
    CHECK(q.hdr.len == q.payload.size() && q.payload.size() <= kMaxPayload);
    taken[{q.hdr.dst_port, q.hdr.src_port, q.hdr.type}].insert(taken[{q.hdr.dst_port, q.hdr.src_port, q.hdr.type}].end(), q.payload.begin(),
                                               q.payload.end());
  }
  for (const auto& [k, v] : pushed) CHECK(taken[k] == v);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r{data, size};
  if (size > 0 && (data[0] & 0x20)) {
    r.p++;
    r.n--;
    FuzzConnectLine(r);
    return 0;
  }
  if (size > 0 && (data[0] & 0x40)) {
    r.p++;
    r.n--;
    FuzzInbox(r);
    return 0;
  }
  uint8_t mode = 0;
  uint32_t buf_alloc = 0;
  uint16_t max_packet = 0;
  if (!r.Take(&mode, 1) || !r.Take(&buf_alloc, 4) || !r.Take(&max_packet, 2)) return 0;
  uint64_t features = 0;
  if (mode & 1) features |= uint64_t{1} << feature::kSeqpacket;
  if (mode & 2) features |= uint64_t{1} << feature::kNoImpliedStream;
  if (mode & 4) features |= uint64_t{1} << feature::kStream;
  const uint16_t type = (mode & 8) ? kTypeSeqpacket : kTypeStream;
  Endpoint::Limits lim;
  lim.buf_alloc = buf_alloc;
  lim.max_packet = max_packet == 0 ? 65536u : max_packet;
  Endpoint e(kCidHost, kHostPort, kGuest, kGuestPort, type, lim);
  Model m{e, type, lim.buf_alloc, lim.max_packet};
  if (mode & 16) {
    const Packet req = e.Connect();
    CHECK(req.hdr.op == kOpRequest);
  } else {
    Hdr req{};
    req.src_cid = kGuest;
    req.dst_cid = kCidHost;
    req.src_port = kGuestPort;
    req.dst_port = kHostPort;
    req.type = type;
    req.op = kOpRequest;
    req.buf_alloc = 65536;
    const Packet resp = e.Accept(req);
    CHECK(resp.hdr.op == kOpResponse);
  }
  uint8_t step;
  for (int steps = 0; steps < 256 && r.Take(&step, 1); ++steps) {
    const bool was_closed = e.closed();
    const bool was_established = e.state() == Endpoint::State::kEstablished;
    Endpoint::Output out;
    switch (step % 6) {
      case 0: {
        Hdr h;
        uint16_t chain = 0;
        if (!r.Take(&h, sizeof h) || !r.Take(&chain, 2)) return 0;
        std::span<const uint8_t> payload = r.Bytes(std::min<uint32_t>(h.len, chain));
        const Refusal why = CheckGuestPacket(h, kGuest, features, chain);
        if (why == Refusal::kNone) {
          CHECK(h.len <= kMaxPayload && h.len <= chain && h.src_cid == kGuest && h.dst_cid != kGuest);
          CHECK(h.op >= kOpRequest && h.op <= kOpCreditRequest && (h.op == kOpRw || h.len == 0));
          CHECK(h.type == kTypeStream || h.type == kTypeSeqpacket);
        }
        e.OnPacket(h, payload, &out);
        break;
      }
      case 1: {
        uint8_t op = 0;
        uint8_t flags = 0;
        uint32_t ba = 0, fc = 0;
        uint16_t len = 0;
        if (!r.Take(&op, 1) || !r.Take(&flags, 1) || !r.Take(&ba, 4) || !r.Take(&fc, 4) || !r.Take(&len, 2)) return 0;
        Hdr h{};
        h.src_cid = kGuest;
        h.dst_cid = kCidHost;
        h.src_port = kGuestPort;
        h.dst_port = kHostPort;
        h.type = type;
        h.op = op % 8;
        h.flags = flags;
        h.buf_alloc = ba;
        h.fwd_cnt = fc;
        std::span<const uint8_t> payload = r.Bytes(len);
        h.len = static_cast<uint32_t>(payload.size());
        e.OnPacket(h, payload, &out);
        break;
      }
      case 2: {
        uint16_t len = 0;
        uint8_t eom = 0;
        if (!r.Take(&len, 2) || !r.Take(&eom, 1)) return 0;
        std::span<const uint8_t> bytes = r.Bytes(len);
        const uint32_t credit = e.peer_free();
        const size_t took = e.Send(bytes, eom & 1, &out);
        CHECK(took <= bytes.size());
        CHECK(took <= credit);
        size_t rw = 0;
        for (const Packet& p : out.to_peer) {
          CHECK(p.hdr.op == kOpRw);
          CHECK(std::equal(p.payload.begin(), p.payload.end(), bytes.begin() + static_cast<ptrdiff_t>(rw)));
          rw += p.payload.size();
        }
        CHECK(rw == took);
        break;
      }
      case 3: {
        uint32_t n = 0;
        if (!r.Take(&n, 4)) return 0;
        e.Consumed(n, &out);
        m.held -= std::min<uint64_t>(n, m.held);
        for (const Packet& p : out.to_peer) CHECK(p.hdr.op == kOpCreditUpdate);
        break;
      }
      case 4:
        e.Shutdown((step >> 3) & 3, &out);  // no flag, SEND, RECV or both
        break;
      case 5:
        e.Reset(&out);
        CHECK(e.closed());
        break;
    }
    m.Check(out, was_closed, was_established);
  }
  return 0;
}
