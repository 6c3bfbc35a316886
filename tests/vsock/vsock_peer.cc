// SPDX-License-Identifier: Apache-2.0
// vsock-peer: the host end of the vsock tests and benchmarks, on Unix
// sockets (vios's hybrid vsock). See Usage().
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "vioport/guest/pattern.h"
#include "vioport/guest/vsock_bench.h"

namespace {

namespace pattern = vioport::pattern;
namespace vb = vioport::vsock_bench;

const char kUsage[] = R"(vsock-peer: the host end of vioport's vsock tests and benchmarks, on Unix sockets.

usage:
  vsock-peer serve --listen PATH [--seqpacket]
      the benchmark server (protocol in guest/common/include/vioport/guest/vsock_bench.h),
      a thread per connection, until killed. PATH is a vsock device's uds-path_PORT
      (guests connect to host port PORT) or any socket (the baseline)
  vsock-peer bench --connect PATH --mode tx|rx|rr [--size B] [--time SECONDS] [--port P]
      the benchmark client, as `vioguest vsock bench`, over a Unix socket: directly to
      a serve (the baseline), or with --port to a guest's listener through vios's
      uds-path (CONNECT P)
  vsock-peer exchange (--connect PATH --port P | --listen PATH) [--count K]
      [--seed N --length B] [--expect-seed N --expect-length B] [--size B] [--seqpacket]
      [--timeout SECONDS]
      K connections (default 1), each sending B seeded bytes (seed N+i; writes of
      --size, default 4096, or SEQPACKET messages of seeded sizes up to --size), then
      shutting down writing, and reading to EOF checking every byte (and each message's
      size) against seed N+i; --connect goes to a guest's port P through vios's
      uds-path (CONNECT P, then OK), --listen accepts K guest connections. Prints one
      result line; exit 0 only if everything was verified.

Sizes take K, M suffixes.
)";

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "vsock-peer: %s\n", why.c_str());
  std::exit(2);
}

struct Args {
  std::string cmd;
  std::map<std::string, std::string> opts;
  bool seqpacket = false;
  std::string get(const std::string& k, const std::string& d = "") const {
    auto it = opts.find(k);
    return it == opts.end() ? d : it->second;
  }
  uint64_t num(const std::string& k, uint64_t d) const {
    auto it = opts.find(k);
    if (it == opts.end()) return d;
    std::string v = it->second;
    uint64_t mult = 1;
    if (!v.empty() && (v.back() == 'K' || v.back() == 'k')) mult = 1024, v.pop_back();
    else if (!v.empty() && (v.back() == 'M' || v.back() == 'm')) mult = 1 << 20, v.pop_back();
    char* end = nullptr;
    const unsigned long long n = std::strtoull(v.c_str(), &end, 0);
    if (v.empty() || *end) Die("--" + k + " " + it->second + ": not a number");
    return n * mult;
  }
};

sockaddr_un Addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) Die("socket path too long: " + path);
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

int Listen(const std::string& path, int type) {
  ::unlink(path.c_str());
  const int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  sockaddr_un a = Addr(path);
  // The kernel's whole backlog: vios connects without blocking, and a full
  // backlog (EAGAIN) is a refusal (RST) to the guest, not a wait.
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, SOMAXCONN) != 0)
    Die("listen on " + path + ": " + std::strerror(errno));
  return fd;
}

int Connect(const std::string& path, int type) {
  const int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  sockaddr_un a = Addr(path);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    Die("connect to " + path + ": " + std::strerror(errno));
  return fd;
}

bool WriteAll(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// Reads exactly n bytes; false on EOF or error first.
bool ReadAll(int fd, uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t k = ::read(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// The hybrid handshake of a host-initiated connection: CONNECT P, then OK.
void HybridConnect(int fd, uint64_t port) {
  const std::string line = "CONNECT " + std::to_string(port) + "\n";
  if (!WriteAll(fd, reinterpret_cast<const uint8_t*>(line.data()), line.size())) Die("CONNECT: write failed");
  std::string reply;
  char c;
  while (reply.size() < 64 && ::read(fd, &c, 1) == 1) {
    reply.push_back(c);
    if (c == '\n') break;
  }
  if (reply.rfind("OK ", 0) != 0) Die("CONNECT " + std::to_string(port) + ": no OK (got '" + reply + "')");
}

// ---- serve ---------------------------------------------------------------------

void Serve(int fd) {
  uint8_t hb[vb::kHeaderSize];
  vb::Header h;
  if (!ReadAll(fd, hb, sizeof hb) || !vb::Decode(hb, &h)) {
    ::close(fd);
    return;
  }
  std::vector<uint8_t> buf(std::max<uint32_t>(h.size, 256 * 1024));
  if (h.mode == 'T') {
    uint64_t n = 0;
    for (;;) {
      const ssize_t k = ::read(fd, buf.data(), buf.size());
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) break;
      n += static_cast<uint64_t>(k);
    }
    uint8_t cnt[8];
    for (int i = 0; i < 8; ++i) cnt[i] = static_cast<uint8_t>(n >> (8 * i));
    WriteAll(fd, cnt, sizeof cnt);
  } else if (h.mode == 'R') {
    pattern::Fill(1, 0, {buf.data(), h.size});
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(h.duration_ms);
    while (std::chrono::steady_clock::now() < end)
      if (!WriteAll(fd, buf.data(), h.size)) break;
  } else {
    for (;;) {
      const ssize_t k = ::read(fd, buf.data(), buf.size());
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0 || !WriteAll(fd, buf.data(), static_cast<size_t>(k))) break;
    }
  }
  ::close(fd);
}

int CmdServe(const Args& a) {
  const std::string path = a.get("listen");
  if (path.empty()) Die("serve needs --listen PATH");
  const int l = Listen(path, SOCK_STREAM);
  std::printf("serving on %s\n", path.c_str());
  std::fflush(stdout);
  for (;;) {
    const int fd = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      Die(std::string("accept: ") + std::strerror(errno));
    }
    std::thread(Serve, fd).detach();
  }
}

// ---- bench ---------------------------------------------------------------------

int CmdBench(const Args& a) {
  const std::string path = a.get("connect");
  if (path.empty()) Die("bench needs --connect PATH");
  const std::string mode = a.get("mode", "tx");
  vb::Header h;
  h.mode = mode == "tx" ? 'T' : mode == "rx" ? 'R' : mode == "rr" ? 'E' : 0;
  if (!h.mode) Die("--mode: tx, rx or rr");
  h.size = static_cast<uint32_t>(a.num("size", h.mode == 'E' ? 64 : 65536));
  const double secs = static_cast<double>(a.num("time", 5));
  h.duration_ms = static_cast<uint32_t>(secs * 1000);
  const int fd = Connect(path, SOCK_STREAM);
  if (a.opts.count("port")) HybridConnect(fd, a.num("port", 0));
  uint8_t hb[vb::kHeaderSize];
  vb::Encode(h, hb);
  if (!WriteAll(fd, hb, sizeof hb)) Die("write failed");
  std::vector<uint8_t> buf(std::max<uint32_t>(h.size, 65536));
  pattern::Fill(1, 0, {buf.data(), buf.size()});
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  uint64_t bytes = 0, peer = 0;
  bool ok = true;
  std::vector<double> lat;
  if (h.mode == 'T') {
    while (elapsed() < secs) {
      if (!WriteAll(fd, buf.data(), h.size)) Die("write failed");
      bytes += h.size;
    }
    ::shutdown(fd, SHUT_WR);
    uint8_t cnt[8];
    if (!ReadAll(fd, cnt, 8)) Die("the server did not say how many bytes it read");
    for (int i = 7; i >= 0; --i) peer = (peer << 8) | cnt[i];
    ok = peer == bytes;
  } else if (h.mode == 'R') {
    for (;;) {
      const ssize_t k = ::read(fd, buf.data(), buf.size());
      if (k <= 0) break;
      bytes += static_cast<uint64_t>(k);
    }
  } else {
    std::vector<uint8_t> back(h.size);
    while (elapsed() < secs) {
      const auto t0 = Clock::now();
      if (!WriteAll(fd, buf.data(), h.size) || !ReadAll(fd, back.data(), h.size)) Die("echo ended early");
      lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      ok = ok && std::memcmp(back.data(), buf.data(), h.size) == 0;
      bytes += h.size;
    }
  }
  const double t = elapsed();
  ::close(fd);
  if (h.mode == 'E') {
    std::sort(lat.begin(), lat.end());
    auto pct = [&](double p) { return lat.empty() ? 0.0 : lat[std::min(lat.size() - 1, static_cast<size_t>(p * lat.size()))]; };
    std::printf("result device=unix op=rr size=%u ops=%zu rps=%.0f p50_us=%.1f p99_us=%.1f p999_us=%.1f verified=%s\n", h.size,
                lat.size(), lat.size() / t, pct(0.5), pct(0.99), pct(0.999), ok ? "yes" : "no");
  } else {
    std::printf("result device=unix op=%s size=%u bytes=%" PRIu64 " seconds=%.3f mbps=%.1f verified=%s\n", mode.c_str(), h.size,
                bytes, t, bytes / t / 1e6, ok ? "yes" : "no");
  }
  return ok ? 0 : 1;
}

// ---- exchange ------------------------------------------------------------------

struct Result {
  uint64_t sent = 0, recvd = 0;
  std::string error;
  pattern::Checksum64 sum;
};

void Exchange(int fd, const Args& a, uint64_t i, bool seq, Result* r) {
  const uint32_t size = static_cast<uint32_t>(a.num("size", 4096));
  const bool send = a.opts.count("seed") > 0, verify = a.opts.count("expect-seed") > 0;
  const uint64_t seed = a.num("seed", 0) + i, len = send ? a.num("length", 1 << 20) : 0;
  const uint64_t eseed = a.num("expect-seed", 0) + i, elen = a.num("expect-length", 1 << 20);
  std::atomic<bool> write_failed{false};
  std::thread writer([&] {
    std::vector<uint8_t> b(size);
    uint64_t off = 0;
    for (uint64_t m = 0; off < len; ++m) {
      const size_t n = static_cast<size_t>(seq ? std::min<uint64_t>(vb::MessageSize(seed, m, size), len - off)
                                               : std::min<uint64_t>(size, len - off));
      pattern::Fill(seed, off, {b.data(), n});
      if (seq ? ::send(fd, b.data(), n, MSG_NOSIGNAL) != static_cast<ssize_t>(n) : !WriteAll(fd, b.data(), n)) {
        write_failed = true;
        break;
      }
      off += n;
    }
    r->sent = off;
    ::shutdown(fd, SHUT_WR);
  });
  std::vector<uint8_t> b(std::max<uint32_t>(size, 65536) + 1);
  for (uint64_t m = 0;; ++m) {
    const ssize_t k = ::recv(fd, b.data(), b.size(), 0);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      r->error = std::string("read: ") + std::strerror(errno);
      break;
    }
    if (k == 0) break;
    const std::span<const uint8_t> got(b.data(), static_cast<size_t>(k));
    if (verify) {
      if (seq) {
        const uint64_t want = std::min<uint64_t>(vb::MessageSize(eseed, m, size), elen - std::min(elen, r->recvd));
        if (static_cast<uint64_t>(k) != want) {
          r->error = "message " + std::to_string(m) + " has " + std::to_string(k) + " bytes, " + std::to_string(want) +
                     " expected: a boundary was lost";
          break;
        }
      }
      if (r->recvd + static_cast<uint64_t>(k) > elen) {
        r->error = "more than the expected bytes arrived";
        break;
      }
      const int64_t bad = pattern::FirstMismatch(eseed, r->recvd, got);
      if (bad >= 0) {
        r->error = "MISMATCH at byte " + std::to_string(bad);
        break;
      }
    }
    r->sum.Add(got);
    r->recvd += static_cast<uint64_t>(k);
  }
  if (!r->error.empty()) ::shutdown(fd, SHUT_RDWR);
  writer.join();
  if (r->error.empty() && write_failed) r->error = "write failed after " + std::to_string(r->sent) + " bytes";
  if (r->error.empty() && verify && r->recvd != elen)
    r->error = "EOF after " + std::to_string(r->recvd) + " of " + std::to_string(elen) + " bytes";
  ::close(fd);
}

int CmdExchange(const Args& a) {
  const uint64_t count = a.num("count", 1);
  const int type = a.seqpacket ? SOCK_SEQPACKET : SOCK_STREAM;
  std::vector<Result> results(count);
  std::vector<std::thread> threads;
  const auto start = std::chrono::steady_clock::now();
  if (a.opts.count("listen")) {
    const int l = Listen(a.get("listen"), type);
    std::printf("listening on %s\n", a.get("listen").c_str());
    std::fflush(stdout);
    for (uint64_t i = 0; i < count; ++i) {
      pollfd p{l, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(a.num("timeout", 60) * 1000)) != 1) Die("no guest connected in time");
      const int fd = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) Die(std::string("accept: ") + std::strerror(errno));
      threads.emplace_back(Exchange, fd, std::cref(a), i, a.seqpacket, &results[i]);
    }
  } else {
    if (!a.opts.count("connect") || !a.opts.count("port")) Die("exchange needs --connect PATH --port P, or --listen PATH");
    if (a.seqpacket) Die("a host-initiated connection is a stream (CONNECT over SOCK_STREAM)");
    for (uint64_t i = 0; i < count; ++i) {
      const int fd = Connect(a.get("connect"), SOCK_STREAM);
      HybridConnect(fd, a.num("port", 0));
      threads.emplace_back(Exchange, fd, std::cref(a), i, false, &results[i]);
    }
  }
  for (std::thread& t : threads) t.join();
  uint64_t sent = 0, recvd = 0;
  int failed = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    sent += results[i].sent;
    recvd += results[i].recvd;
    if (!results[i].error.empty()) {
      ++failed;
      std::fprintf(stderr, "vsock-peer: connection %zu: %s\n", i, results[i].error.c_str());
    }
  }
  const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("result device=unix op=exchange connections=%zu sent=%" PRIu64 " received=%" PRIu64
              " seconds=%.3f checksum=%016" PRIx64 " failed=%d verified=%s\n",
              results.size(), sent, recvd, t, results.size() == 1 ? results[0].sum.Value() : 0, failed,
              failed ? "no" : (a.opts.count("expect-seed") ? "yes" : "n/a"));
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "-h" || s == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (s == "--seqpacket") {
      a.seqpacket = true;
      continue;
    }
    if (s.rfind("--", 0) == 0) {
      if (i + 1 >= argc) Die(s + " needs a value");
      a.opts[s.substr(2)] = argv[++i];
      continue;
    }
    if (!a.cmd.empty()) Die("unexpected argument " + s);
    a.cmd = s;
  }
  if (a.cmd == "serve") return CmdServe(a);
  if (a.cmd == "bench") return CmdBench(a);
  if (a.cmd == "exchange") return CmdExchange(a);
  std::fputs(kUsage, stderr);
  return 2;
}
