// SPDX-License-Identifier: Apache-2.0
// vioport_memcpy: the machine's memcpy bandwidth, for the bench scripts that
// compare a transport's data rate with it in the same run (no Google
// Benchmark needed). One thread copies BLOCK-byte blocks from one buffer of
// SET bytes to another, block after block, for SECONDS, so the copies stream
// through memory the way a transport's data does (a 64 MiB working set is
// far larger than the caches) rather than re-copying one hot block.
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void Usage(int rc) {
  std::fputs(
      "usage: vioport_memcpy [--block BYTES] [--set BYTES] [--seconds S]\n"
      "  memcpy bandwidth of BLOCK-byte copies (default 65536) streaming through\n"
      "  a SET-byte working set (default 67108864) for S seconds (default 1).\n"
      "  Prints: result memcpy block=B set=S mbps=M\n",
      rc == 0 ? stdout : stderr);
  std::exit(rc);
}

uint64_t Number(const char* s) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s, &end, 0);
  if (end == s || *end != 0 || v == 0) Usage(2);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t block = 64 << 10, set = 64 << 20;
  double seconds = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") Usage(0);
    if (i + 1 >= argc) Usage(2);
    if (a == "--block") block = Number(argv[++i]);
    else if (a == "--set") set = Number(argv[++i]);
    else if (a == "--seconds") seconds = static_cast<double>(Number(argv[++i]));
    else Usage(2);
  }
  if (block > set) Usage(2);
  std::vector<uint8_t> src(set, 0x5a), dst(set, 0);  // touched: no page faults in the timing
  const uint64_t blocks = set / block;
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  uint64_t copied = 0, sink = 0;
  for (uint64_t i = 0;; ++i) {
    const uint64_t b = i % blocks;
    std::memcpy(dst.data() + b * block, src.data() + b * block, block);
    sink += dst[b * block + (i % block)];
    copied += block;
    if ((i & 255) == 255 && std::chrono::duration<double>(Clock::now() - t0).count() >= seconds) break;
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("result memcpy block=%" PRIu64 " set=%" PRIu64 " mbps=%.0f%s\n", block, set, copied / s / 1e6,
              sink == 1 ? " " : "");
  return 0;
}
