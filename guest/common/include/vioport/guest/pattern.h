// SPDX-License-Identifier: Apache-2.0
#pragma once

// Seeded test data that anyone can regenerate from (seed, byte offset):
// vioguest writes and verifies it, tests check backing files with it.
// Each aligned 8-byte word is splitmix64(seed, word index), little-endian.

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <span>

namespace vioport::pattern {

inline uint64_t Word(uint64_t seed, uint64_t word_index) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + word_index + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Fills `out` with the pattern bytes for [offset, offset + out.size()).
inline void Fill(uint64_t seed, uint64_t offset, std::span<uint8_t> out) {
  size_t i = 0;
  // Head up to a word boundary, then whole words, then the tail.
  while (i < out.size() && (offset + i) % 8 != 0) {
    const uint64_t pos = offset + i;
    out[i++] = static_cast<uint8_t>(Word(seed, pos / 8) >> (8 * (pos % 8)));
  }
  for (; i + 8 <= out.size(); i += 8) {
    const uint64_t w = Word(seed, (offset + i) / 8);
    uint8_t b[8];
    for (int k = 0; k < 8; ++k) b[k] = static_cast<uint8_t>(w >> (8 * k));
    std::memcpy(out.data() + i, b, 8);
  }
  for (; i < out.size(); ++i) {
    const uint64_t pos = offset + i;
    out[i] = static_cast<uint8_t>(Word(seed, pos / 8) >> (8 * (pos % 8)));
  }
}

// Offset of the first byte that differs from the pattern, or -1.
inline int64_t FirstMismatch(uint64_t seed, uint64_t offset, std::span<const uint8_t> data) {
  uint8_t buf[4096];
  for (size_t i = 0; i < data.size(); i += sizeof buf) {
    const size_t n = std::min(sizeof buf, data.size() - i);
    Fill(seed, offset + i, {buf, n});
    if (std::memcmp(buf, data.data() + i, n) != 0)
      for (size_t k = 0; k < n; ++k)
        if (buf[k] != data[i + k]) return static_cast<int64_t>(offset + i + k);
  }
  return -1;
}

// A 64-bit checksum of a byte stream that both sides can print: FNV-1a's
// xor-multiply step applied to little-endian 8-byte words (8x fewer steps
// than byte-wise FNV-1a), the final partial word zero-padded and the length
// mixed in. Independent of how the stream is cut into Add() calls.
struct Checksum64 {
  uint64_t h = 0xcbf29ce484222325ull;
  uint64_t len = 0;
  uint8_t carry[8] = {};
  size_t ncarry = 0;

  void Add(std::span<const uint8_t> d) {
    size_t i = 0;
    len += d.size();
    while (ncarry && ncarry < 8 && i < d.size()) carry[ncarry++] = d[i++];
    if (ncarry == 8) {
      Mix(carry);
      ncarry = 0;
    }
    for (; i + 8 <= d.size(); i += 8) Mix(d.data() + i);
    while (i < d.size() && ncarry < 8) carry[ncarry++] = d[i++];  // fewer than 8 left: the bound only says so
  }
  uint64_t Value() const {
    Checksum64 c = *this;
    if (c.ncarry) {
      std::memset(c.carry + c.ncarry, 0, 8 - c.ncarry);
      c.Mix(c.carry);
    }
    return (c.h ^ c.len) * 0x100000001b3ull;
  }

 private:
  void Mix(const uint8_t* p) {
    uint64_t w = 0;
    for (int k = 7; k >= 0; --k) w = (w << 8) | p[k];
    h = (h ^ w) * 0x100000001b3ull;
  }
};

}  // namespace vioport::pattern
