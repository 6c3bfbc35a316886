// SPDX-License-Identifier: Apache-2.0
// Frames for the virtio-net tests, built byte by byte (Ethernet, optional
// 802.1Q tag, IPv4 or IPv6, TCP with options or UDP), and checksums
// computed here from scratch: a plain RFC 1071 sum over an explicitly built
// pseudo-header, so the verification path shares no code with net_frame.cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "vioport/core/net_spec.h"

namespace vioport::net::testing {

inline uint16_t Get16(const std::vector<uint8_t>& v, size_t at) {
  return static_cast<uint16_t>((v.at(at) << 8) | v.at(at + 1));
}
inline uint32_t Get32(const std::vector<uint8_t>& v, size_t at) {
  return (uint32_t{v.at(at)} << 24) | (uint32_t{v.at(at + 1)} << 16) | (uint32_t{v.at(at + 2)} << 8) | v.at(at + 3);
}
inline void Set16(std::vector<uint8_t>& v, size_t at, uint16_t x) {
  v.at(at) = static_cast<uint8_t>(x >> 8);
  v.at(at + 1) = static_cast<uint8_t>(x);
}
inline void Set32(std::vector<uint8_t>& v, size_t at, uint32_t x) {
  for (int i = 0; i < 4; ++i) v.at(at + i) = static_cast<uint8_t>(x >> (24 - 8 * i));
}

// The one's-complement sum of big-endian 16-bit words, an odd last byte
// padded with a zero byte, carries folded back in; not complemented.
inline uint16_t OnesSum(const std::vector<uint8_t>& bytes) {
  uint64_t s = 0;
  for (size_t i = 0; i < bytes.size(); i += 2) {
    uint32_t w = uint32_t{bytes[i]} << 8;
    if (i + 1 < bytes.size()) w |= bytes[i + 1];
    s += w;
  }
  while (s > 0xffff) s = (s & 0xffff) + (s >> 16);
  return static_cast<uint16_t>(s);
}

// Seeded payload bytes.
inline std::vector<uint8_t> Pattern(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

inline constexpr uint8_t kFin = 0x01, kPsh = 0x08, kAck = 0x10, kEce = 0x40, kCwr = 0x80;

// What to build.
struct Packet {
  bool ipv6 = false;
  bool udp = false;
  int vlan = -1;  // >= 0: an 802.1Q tag with this TCI
  Mac dst = 0x525400000002ULL;
  Mac src = 0x525400000001ULL;
  uint8_t src_ip[16] = {10, 0, 0, 1};
  uint8_t dst_ip[16] = {10, 0, 0, 2};
  uint16_t ip_id = 0x1234;
  uint16_t sport = 40000, dport = 5201;
  uint32_t seq = 1000000, ack = 777;
  uint8_t tcp_flags = kAck | kPsh;
  uint16_t window = 501;
  size_t tcp_options = 12;  // NOP NOP TIMESTAMP (a multiple of 4, <= 40)
  uint8_t ip_proto_override = 0;  // non-zero: the IP protocol byte says this instead
  std::vector<uint8_t> payload;

  // Switches to IPv6 with two unique local addresses.
  void UseIpv6() {
    ipv6 = true;
    const uint8_t s[16] = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x01};
    const uint8_t d[16] = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0, 0, 0x9a, 0xbc, 0xde, 0xf2};
    for (int i = 0; i < 16; ++i) src_ip[i] = s[i], dst_ip[i] = d[i];
  }
};

struct Offsets {
  size_t l3, l4, payload;
};

inline Offsets OffsetsOf(const Packet& p) {
  Offsets o;
  o.l3 = kEthHeader + (p.vlan >= 0 ? kVlanTagLen : 0);
  o.l4 = o.l3 + (p.ipv6 ? 40 : 20);
  o.payload = o.l4 + (p.udp ? 8 : 20 + p.tcp_options);
  return o;
}

inline uint8_t Proto(const Packet& p) { return p.udp ? 17 : 6; }

// The pseudo-header (RFC 793/768, RFC 8200 §8.1) as bytes.
inline std::vector<uint8_t> PseudoHeader(const std::vector<uint8_t>& frame, const Offsets& o, bool ipv6,
                                         uint8_t proto, uint32_t l4_len) {
  std::vector<uint8_t> ph;
  if (!ipv6) {
    for (size_t i = 12; i < 20; ++i) ph.push_back(frame.at(o.l3 + i));  // source, destination
    ph.push_back(0);
    ph.push_back(proto);
    ph.push_back(static_cast<uint8_t>(l4_len >> 8));
    ph.push_back(static_cast<uint8_t>(l4_len));
  } else {
    for (size_t i = 8; i < 40; ++i) ph.push_back(frame.at(o.l3 + i));
    for (int i = 0; i < 4; ++i) ph.push_back(static_cast<uint8_t>(l4_len >> (24 - 8 * i)));
    for (uint8_t b : {uint8_t{0}, uint8_t{0}, uint8_t{0}, proto}) ph.push_back(b);
  }
  return ph;
}

// Whether the layer-4 checksum of `frame` (from o.l4 to the end) is valid.
inline bool L4ChecksumValid(const std::vector<uint8_t>& frame, const Offsets& o, bool ipv6, uint8_t proto) {
  const uint32_t l4_len = static_cast<uint32_t>(frame.size() - o.l4);
  std::vector<uint8_t> all = PseudoHeader(frame, o, ipv6, proto, l4_len);
  all.insert(all.end(), frame.begin() + o.l4, frame.end());
  return OnesSum(all) == 0xffff;
}

// The checksum the layer-4 field should hold, computed with the field zeroed
// (UDP's 0 sent as 0xffff, RFC 768).
inline uint16_t L4Checksum(std::vector<uint8_t> frame, const Offsets& o, bool ipv6, uint8_t proto) {
  const size_t field = o.l4 + (proto == 17 ? 6 : 16);
  frame[field] = frame[field + 1] = 0;
  const uint32_t l4_len = static_cast<uint32_t>(frame.size() - o.l4);
  std::vector<uint8_t> all = PseudoHeader(frame, o, ipv6, proto, l4_len);
  all.insert(all.end(), frame.begin() + o.l4, frame.end());
  uint16_t c = static_cast<uint16_t>(~OnesSum(all));
  if (proto == 17 && c == 0) c = 0xffff;
  return c;
}

// The pseudo-header sum as Linux leaves it in the field of a CHECKSUM_PARTIAL
// packet: folded, not complemented.
inline uint16_t PseudoSumField(const std::vector<uint8_t>& frame, const Offsets& o, bool ipv6, uint8_t proto) {
  const uint32_t l4_len = static_cast<uint32_t>(frame.size() - o.l4);
  return OnesSum(PseudoHeader(frame, o, ipv6, proto, l4_len));
}

enum class Csum { kPartial, kFull, kZero };

// The frame's bytes; the L4 checksum field per `csum`.
inline std::vector<uint8_t> BuildBytes(const Packet& p, Csum csum) {
  const Offsets o = OffsetsOf(p);
  std::vector<uint8_t> f(o.payload + p.payload.size(), 0);
  for (int i = 0; i < 6; ++i) {
    f[i] = static_cast<uint8_t>(p.dst >> (40 - 8 * i));
    f[6 + i] = static_cast<uint8_t>(p.src >> (40 - 8 * i));
  }
  size_t at = 12;
  if (p.vlan >= 0) {
    Set16(f, 12, kEtherTypeVlan);
    Set16(f, 14, static_cast<uint16_t>(p.vlan));
    at = 16;
  }
  Set16(f, at, p.ipv6 ? kEtherTypeIpv6 : kEtherTypeIpv4);
  const uint8_t proto = p.ip_proto_override ? p.ip_proto_override : Proto(p);
  const size_t l4_len = f.size() - o.l4;
  if (!p.ipv6) {
    f[o.l3] = 0x45;
    f[o.l3 + 1] = 0;
    Set16(f, o.l3 + 2, static_cast<uint16_t>(f.size() - o.l3));
    Set16(f, o.l3 + 4, p.ip_id);
    Set16(f, o.l3 + 6, 0x4000);  // DF
    f[o.l3 + 8] = 64;
    f[o.l3 + 9] = proto;
    for (int i = 0; i < 4; ++i) f[o.l3 + 12 + i] = p.src_ip[i], f[o.l3 + 16 + i] = p.dst_ip[i];
    std::vector<uint8_t> ip(f.begin() + o.l3, f.begin() + o.l3 + 20);
    Set16(f, o.l3 + 10, static_cast<uint16_t>(~OnesSum(ip)));
  } else {
    Set32(f, o.l3, 0x60012345);  // version 6, a traffic class and flow label
    Set16(f, o.l3 + 4, static_cast<uint16_t>(l4_len));
    f[o.l3 + 6] = proto;
    f[o.l3 + 7] = 64;
    for (int i = 0; i < 16; ++i) f[o.l3 + 8 + i] = p.src_ip[i], f[o.l3 + 24 + i] = p.dst_ip[i];
  }
  Set16(f, o.l4, p.sport);
  Set16(f, o.l4 + 2, p.dport);
  if (p.udp) {
    Set16(f, o.l4 + 4, static_cast<uint16_t>(l4_len));
  } else {
    Set32(f, o.l4 + 4, p.seq);
    Set32(f, o.l4 + 8, p.ack);
    f[o.l4 + 12] = static_cast<uint8_t>(((20 + p.tcp_options) / 4) << 4);
    f[o.l4 + 13] = p.tcp_flags;
    Set16(f, o.l4 + 14, p.window);
    Set16(f, o.l4 + 18, 0);
    // NOPs, then a timestamp option per 10 more bytes (kind 8, length 10).
    size_t opt = o.l4 + 20;
    const size_t end = opt + p.tcp_options;
    while (end - opt >= 12) {
      f[opt] = 1;
      f[opt + 1] = 1;
      f[opt + 2] = 8;
      f[opt + 3] = 10;
      Set32(f, opt + 4, 0x01020304);
      Set32(f, opt + 8, 0x0a0b0c0d);
      opt += 12;
    }
    while (opt < end) f[opt++] = 1;
  }
  std::copy(p.payload.begin(), p.payload.end(), f.begin() + o.payload);
  const size_t field = o.l4 + (p.udp ? 6 : 16);
  switch (csum) {
    case Csum::kPartial: Set16(f, field, PseudoSumField(f, o, p.ipv6, proto)); break;
    case Csum::kFull: Set16(f, field, L4Checksum(f, o, p.ipv6, proto)); break;
    case Csum::kZero: break;
  }
  return f;
}

// A GSO frame as a Linux guest sends it: NEEDS_CSUM, csum_start at layer
// 4, the pseudo-header sum (over the whole layer-4 length) in the field.
inline Frame GsoFrame(const Packet& p, uint8_t gso_type, uint16_t gso_size) {
  Frame fr;
  fr.data = BuildBytes(p, Csum::kPartial);
  const Offsets o = OffsetsOf(p);
  fr.hdr.flags = kHdrFlagNeedsCsum;
  fr.hdr.gso_type = gso_type;
  fr.hdr.gso_size = gso_size;
  fr.hdr.hdr_len = static_cast<uint16_t>(o.payload);
  fr.hdr.csum_start = static_cast<uint16_t>(o.l4);
  fr.hdr.csum_offset = p.udp ? 6 : 16;
  return fr;
}

// A single NEEDS_CSUM frame (no GSO).
inline Frame PartialFrame(const Packet& p) {
  Frame fr = GsoFrame(p, kGsoNone, 0);
  fr.hdr.hdr_len = 0;
  return fr;
}

}  // namespace vioport::net::testing
