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
  for (size_t i = 0; i < out.size();) {
    const uint64_t pos = offset + i;
    const uint64_t w = Word(seed, pos / 8);
    const size_t in_word = pos % 8;
    const size_t n = std::min<size_t>(8 - in_word, out.size() - i);
    uint8_t b[8];
    for (int k = 0; k < 8; ++k) b[k] = static_cast<uint8_t>(w >> (8 * k));
    std::memcpy(out.data() + i, b + in_word, n);
    i += n;
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

// FNV-1a 64 over a byte stream (a checksum both sides can print).
struct Fnv64 {
  uint64_t h = 0xcbf29ce484222325ull;
  void Add(std::span<const uint8_t> d) {
    for (uint8_t b : d) h = (h ^ b) * 0x100000001b3ull;
  }
};

}  // namespace vioport::pattern
