// SPDX-License-Identifier: Apache-2.0
// vioguest vsock: connect, listen and bench over the vsock guest driver.
// Test data is the seeded pattern (pattern.h): both ends regenerate it and
// check every byte; SEQPACKET messages have seeded sizes too, so a merged
// or split message shows.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "vioguest.h"
#include "vioport/guest/pattern.h"
#include "vioport/guest/vsock_bench.h"
#include "vioport/guest/vsock_driver.h"

namespace vioport::vioguest {

const char* const kVsockUsage = R"(  vsock info                        guest CID, socket types, features
  vsock connect --cid C[,C...] --port P[,P...] [--connections K]
             [--seed N --length B] [--expect-seed N --expect-length B]
             [--echo] [--size B] [--seqpacket] [--timeout SECONDS]
                                    open K connections (default 1) to each
                                    C:P (lists pair up; one P serves every C);
                                    connection i in that order sends B seeded
                                    bytes (seed N+i; writes, or SEQPACKET
                                    messages of seeded sizes up to --size,
                                    default 4096), shuts down sending, reads
                                    to EOF and checks every byte against seed
                                    N+i (--echo: sends back what arrives,
                                    message by message, instead of sending)
  vsock listen  --port P[,P...] [--count K] [--reconnect-timeout SECONDS]
             [same data options as connect]
                                    accept K connections (default 1) on each
                                    port and run the same exchange on each:
                                    connection i of port k uses seed N+k*K+i;
                                    with --reconnect-timeout a device that
                                    fails (vios restarted) is initialised
                                    again: its open connections end (counted
                                    as resets=) and are waited for again
  vsock bench   --cid C --port P --mode tx|rx|rr [--size B] [--time SECONDS]
                                    against tests/vsock's vsock-peer serve:
                                    tx/rx stream throughput with --size writes
                                    (default 65536; both ends count the bytes),
                                    rr round trips of --size bytes (default
                                    64) with latency percentiles
  vsock options: [--queue-size N] [--rx-buffers N] [--buf-alloc B]
)";

namespace {

using ConnId = VsockDriver::ConnId;

using vsock_bench::MessageSize;

struct FlowSpec {
  uint64_t send_seed = 0, send_len = 0;
  bool verify = false;
  uint64_t expect_seed = 0, expect_len = 0;
  bool echo = false;
  uint32_t size = 4096;
  bool seqpacket = false;
};

// One connection's exchange, advanced without blocking by Step().
struct Flow {
  ConnId id = 0;
  FlowSpec s;
  uint64_t sent = 0, recvd = 0;
  uint64_t msg_sent = 0, msg_off = 0, msg_recvd = 0;
  bool shut = false, eof = false, done = false;
  std::string error;
  pattern::Checksum64 sum;
  std::vector<std::vector<uint8_t>> echo;  // messages (or stream pieces) to send back
  size_t port_index = 0;                   // listen: which of the --port list
  size_t echo_off = 0;
};

class Runner {
 public:
  Runner(VsockDriver& d, uint32_t size) : d_(d), buf_(std::max<uint32_t>(size, 64 * 1024) + 1) {}

  // Advances `f`; true if anything moved.
  bool Step(Flow& f) {
    if (f.done) return false;
    bool moved = false;
    // Receive what is there (until EOF: after it, reads only say EOF again).
    for (int round = 0; round < 16 && !f.eof; ++round) {
      auto r = d_.Recv(f.id, {buf_.data(), buf_.size()}, absl::ZeroDuration());
      if (!r.ok()) return Finish(f, absl::StrCat("recv: ", r.status().message()));
      if (r->bytes == 0 && !r->eom && !r->eof) break;
      moved = true;
      std::span<const uint8_t> got(buf_.data(), r->bytes);
      if (r->bytes || r->eom) {
        if (f.s.seqpacket && f.s.verify) {
          const uint64_t left = f.s.expect_len - std::min(f.s.expect_len, f.recvd);
          const uint64_t want = std::min<uint64_t>(MessageSize(f.s.expect_seed, f.msg_recvd, f.s.size), left);
          if (r->truncated || r->bytes != want)
            return Finish(f, absl::StrCat("message ", f.msg_recvd, " has ", r->bytes, r->truncated ? "+" : "",
                                          " bytes, ", want, " expected: a boundary was lost"));
        }
        if (f.s.verify) {
          if (f.recvd + r->bytes > f.s.expect_len)
            return Finish(f, absl::StrCat("more than the ", f.s.expect_len, " bytes expected arrived"));
          const int64_t bad = pattern::FirstMismatch(f.s.expect_seed, f.recvd, got);
          if (bad >= 0) return Finish(f, absl::StrCat("MISMATCH at byte ", bad, " of the received stream"));
        }
        if (f.s.echo) f.echo.emplace_back(got.begin(), got.end());
        f.sum.Add(got);
        f.recvd += r->bytes;
        ++f.msg_recvd;
      }
      if (r->eof) {
        if (r->reset && !f.shut) return Finish(f, "the connection was reset");
        f.eof = true;
        if (f.s.verify && f.recvd != f.s.expect_len)
          return Finish(f, absl::StrCat("EOF after ", f.recvd, " of ", f.s.expect_len, " bytes"));
        break;
      }
    }
    // Send: seeded data, or the echo.
    if (!f.s.echo && f.sent < f.s.send_len) {
      const uint64_t left = f.s.send_len - f.sent;
      const uint64_t msg = f.s.seqpacket ? std::min<uint64_t>(MessageSize(f.s.send_seed, f.msg_sent, f.s.size), left + f.msg_off)
                                         : std::min<uint64_t>(f.s.size, left + f.msg_off);
      const size_t n = static_cast<size_t>(msg - f.msg_off);
      std::span<uint8_t> out(buf_.data(), n);
      pattern::Fill(f.s.send_seed, f.sent, out);
      auto k = d_.Send(f.id, out, /*eom=*/true, absl::ZeroDuration());
      if (k.ok()) {
        moved = moved || *k > 0;
        f.sent += *k;
        f.msg_off += *k;
        if (f.msg_off == msg) {
          f.msg_off = 0;
          ++f.msg_sent;
        }
      } else if (!absl::IsDeadlineExceeded(k.status())) {
        return Finish(f, absl::StrCat("send: ", k.status().message()));
      }
    }
    if (f.s.echo) {
      while (f.echo_off < f.echo.size()) {
        std::vector<uint8_t>& m = f.echo[f.echo_off];
        auto k = d_.Send(f.id, {m.data() + f.msg_off, m.size() - f.msg_off}, true, absl::ZeroDuration());
        if (!k.ok()) {
          if (absl::IsDeadlineExceeded(k.status())) break;
          return Finish(f, absl::StrCat("echo: ", k.status().message()));
        }
        moved = true;
        f.sent += *k;
        f.msg_off += *k;
        if (f.msg_off < m.size()) break;
        f.msg_off = 0;
        m.clear();
        m.shrink_to_fit();
        ++f.echo_off;
      }
    }
    const bool sending_done = f.s.echo ? (f.eof && f.echo_off == f.echo.size()) : f.sent == f.s.send_len;
    if (sending_done && !f.shut) {
      if (absl::Status s = d_.Shutdown(f.id, vsock::kShutdownSend); !s.ok()) return Finish(f, std::string(s.message()));
      f.shut = true;
      moved = true;
    }
    if (f.shut && f.eof) {
      f.done = true;
      moved = true;
    }
    return moved;
  }

 private:
  bool Finish(Flow& f, std::string why) {
    f.error = std::move(why);
    f.done = true;
    return true;
  }
  VsockDriver& d_;
  std::vector<uint8_t> buf_;
};

// --key A,B,C as numbers.
std::vector<uint64_t> List(const Args& a, const std::string& key) {
  std::vector<uint64_t> out;
  for (absl::string_view v : absl::StrSplit(a.opts.at(key), ',')) {
    uint64_t n;
    if (!absl::SimpleAtoi(v, &n)) Usage(absl::StrCat("--", key, " ", a.opts.at(key), ": numbers, comma-separated"));
    out.push_back(n);
  }
  return out;
}

FlowSpec SpecFrom(const Args& a, uint64_t i) {
  FlowSpec s;
  s.size = static_cast<uint32_t>(Size(a, "size", 4096));
  if (s.size == 0 || s.size > (1u << 20)) Usage("--size must be 1..1M");
  s.seqpacket = a.flags.count("seqpacket") > 0;
  s.echo = a.flags.count("echo") > 0;
  if (a.opts.count("seed")) {
    s.send_seed = Size(a, "seed", 0) + i;
    s.send_len = Size(a, "length", 1 << 20);
  }
  if (a.opts.count("expect-seed")) {
    s.verify = true;
    s.expect_seed = Size(a, "expect-seed", 0) + i;
    s.expect_len = Size(a, "expect-length", 1 << 20);
  }
  if (s.echo && a.opts.count("seed")) Usage("--echo sends back what arrives: no --seed");
  return s;
}

int Report(const char* op, std::vector<Flow>& flows, absl::Time start, const VsockDriver& d, uint64_t resets) {
  uint64_t sent = 0, recvd = 0;
  int bad = 0;
  bool verify = false;
  for (size_t i = 0; i < flows.size(); ++i) {
    const Flow& f = flows[i];
    sent += f.sent;
    recvd += f.recvd;
    verify = verify || f.s.verify;
    if (!f.error.empty()) {
      ++bad;
      std::fprintf(stderr, "vioguest: connection %zu: %s\n", i, f.error.c_str());
    }
    if (flows.size() <= 8)
      std::printf("connection %zu: sent %" PRIu64 " received %" PRIu64 " checksum %016" PRIx64 "%s\n", i, f.sent, f.recvd,
                  f.sum.Value(), f.error.empty() ? "" : " FAILED");
  }
  const double secs = Seconds(start);
  std::printf("result device=vsock op=%s connections=%zu sent=%" PRIu64 " received=%" PRIu64
              " seconds=%.3f checksum=%016" PRIx64 " failed=%d verified=%s rst_received=%" PRIu64
              " resets=%" PRIu64 " transport_resets=%" PRIu64 "\n",
              op, flows.size(), sent, recvd, secs, flows.size() == 1 ? flows[0].sum.Value() : 0, bad,
              bad ? "no" : (verify ? "yes" : "n/a"), d.stats().rst_received, resets, d.stats().transport_resets);
  return bad ? 1 : 0;
}

// Runs the flows until all are done (and `more`, which may add flows and
// move the deadline, says no more will come) or the deadline passes. When
// the device fails, `recover` may bring it back (true) or not (exit).
void RunFlows(VsockDriver& d, std::vector<Flow>& flows, uint32_t size, absl::Time* deadline,
              const std::function<bool()>& more = nullptr, const std::function<bool()>& recover = nullptr) {
  Runner r(d, size);
  for (;;) {
    const bool coming = more && more();
    bool moved = false, all = true;
    for (Flow& f : flows) {
      moved = r.Step(f) || moved;
      all = all && f.done;
    }
    if (all && !coming) break;
    if (absl::Now() >= *deadline) {
      for (Flow& f : flows)
        if (!f.done) {
          f.error = absl::StrCat("timed out: sent ", f.sent, ", received ", f.recvd, f.eof ? ", EOF seen" : "");
          f.done = true;
        }
      break;
    }
    if (!moved)
      if (absl::Status s = d.Poll(absl::Milliseconds(5)); !s.ok())
        if (!recover || !recover()) Fail(s, "vsock");
  }
}

int Bench(VsockDriver& d, const Args& a) {
  if (!a.opts.count("cid") || !a.opts.count("port")) Usage("vsock bench needs --cid and --port");
  const std::string mode = a.opts.count("mode") ? a.opts.at("mode") : "tx";
  vsock_bench::Header h;
  h.mode = mode == "tx" ? 'T' : mode == "rx" ? 'R' : mode == "rr" ? 'E' : 0;
  if (!h.mode) Usage("--mode: tx, rx or rr");
  h.size = static_cast<uint32_t>(Size(a, "size", h.mode == 'E' ? 64 : 65536));
  const double secs = static_cast<double>(Size(a, "time", 5));
  h.duration_ms = static_cast<uint32_t>(secs * 1000);
  if (h.size == 0 || h.size > (1u << 20)) Usage("--size must be 1..1M");
  auto id = d.Connect(Size(a, "cid", 2), static_cast<uint32_t>(Size(a, "port", 0)), vsock::kTypeStream, absl::Seconds(10));
  if (!id.ok()) Fail(id.status(), "vsock connect");
  uint8_t hb[vsock_bench::kHeaderSize];
  vsock_bench::Encode(h, hb);
  const absl::Duration io = absl::Seconds(30);
  auto send_all = [&](std::span<const uint8_t> b) {
    auto n = d.Send(*id, b, false, io);
    if (!n.ok()) Fail(n.status(), "vsock send");
    if (*n != b.size()) Fail(absl::DataLossError("the connection ended"), "vsock send");
  };
  send_all({hb, sizeof hb});
  std::vector<uint8_t> buf(std::max<uint32_t>(h.size, 65536));
  pattern::Fill(1, 0, {buf.data(), buf.size()});
  const absl::Time start = absl::Now();
  uint64_t bytes = 0, peer_bytes = 0;
  std::vector<double> lat_us;
  bool ok = true;
  if (h.mode == 'T') {
    while (Seconds(start) < secs) {
      send_all({buf.data(), h.size});
      bytes += h.size;
    }
    if (absl::Status s = d.Shutdown(*id, vsock::kShutdownSend); !s.ok()) Fail(s, "vsock shutdown");
    uint8_t cnt[8];
    size_t got = 0;
    while (got < sizeof cnt) {
      auto r = d.Recv(*id, {cnt + got, sizeof cnt - got}, io);
      if (!r.ok()) Fail(r.status(), "vsock recv");
      if (r->bytes == 0) Fail(absl::DataLossError("the server closed before it said how many bytes it read"), "bench");
      got += r->bytes;
    }
    for (int i = 7; i >= 0; --i) peer_bytes = (peer_bytes << 8) | cnt[i];
    ok = peer_bytes == bytes;
  } else if (h.mode == 'R') {
    for (;;) {
      auto r = d.Recv(*id, {buf.data(), buf.size()}, io);
      if (!r.ok()) Fail(r.status(), "vsock recv");
      bytes += r->bytes;
      if (r->eof) {
        ok = !r->reset;
        break;
      }
      if (r->bytes == 0) Fail(absl::DeadlineExceededError("nothing from the server"), "bench");
    }
  } else {
    std::vector<uint8_t> back(h.size);
    while (Seconds(start) < secs) {
      const absl::Time t0 = absl::Now();
      send_all({buf.data(), h.size});
      size_t got = 0;
      while (got < h.size) {
        auto r = d.Recv(*id, {back.data() + got, h.size - got}, io);
        if (!r.ok()) Fail(r.status(), "vsock recv");
        if (r->bytes == 0) Fail(absl::DataLossError("the echo ended early"), "bench");
        got += r->bytes;
      }
      lat_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
      if (std::memcmp(back.data(), buf.data(), h.size) != 0) ok = false;
      bytes += h.size;
    }
  }
  const double elapsed = Seconds(start);
  d.Close(*id);
  if (h.mode == 'E') {
    std::sort(lat_us.begin(), lat_us.end());
    auto pct = [&](double p) { return lat_us.empty() ? 0.0 : lat_us[std::min(lat_us.size() - 1, static_cast<size_t>(p * lat_us.size()))]; };
    std::printf("vsock rr %u B over %s: %zu round trips, %.0f/s, lat us: p50 %.1f  p99 %.1f  p99.9 %.1f\n", h.size,
                a.opts.at("transport").c_str(), lat_us.size(), lat_us.size() / elapsed, pct(0.5), pct(0.99), pct(0.999));
    std::printf("result device=vsock op=rr size=%u ops=%zu rps=%.0f p50_us=%.1f p99_us=%.1f p999_us=%.1f verified=%s\n", h.size,
                lat_us.size(), lat_us.size() / elapsed, pct(0.5), pct(0.99), pct(0.999), ok ? "yes" : "no");
  } else {
    std::printf("vsock %s %u B writes over %s: %" PRIu64 " bytes in %.2f s, %.1f MB/s (%.2f Gbit/s)%s\n", mode.c_str(), h.size,
                a.opts.at("transport").c_str(), bytes, elapsed, bytes / elapsed / 1e6, bytes * 8 / elapsed / 1e9,
                h.mode == 'T' ? absl::StrCat(", server counted ", peer_bytes).c_str() : "");
    std::printf("result device=vsock op=%s size=%u bytes=%" PRIu64 " seconds=%.3f mbps=%.1f tx_waits=%" PRIu64
                " tx_wait_timeouts=%" PRIu64 " tx_wait_missed=%" PRIu64 " verified=%s\n",
                mode.c_str(), h.size, bytes, elapsed, bytes / elapsed / 1e6, d.stats().tx_waits, d.stats().tx_wait_timeouts,
                d.stats().tx_wait_missed, ok ? "yes" : "no");
  }
  return ok ? 0 : 1;
}

}  // namespace

int Vsock(Guest& g, const Args& a) {
  if (a.positional.size() < 2) Usage("vsock needs a command: info, connect, listen, bench");
  const std::string& cmd = a.positional[1];
  VsockDriver d(*g.transport);
  VsockDriverOptions o;
  o.wait = g.wait;
  o.queue_size = static_cast<uint32_t>(Size(a, "queue-size", 256));
  o.rx_buffers = static_cast<uint32_t>(Size(a, "rx-buffers", o.rx_buffers));
  o.buf_alloc = static_cast<uint32_t>(Size(a, "buf-alloc", o.buf_alloc));
  if (absl::Status s = d.Init(g.ring_features, o); !s.ok()) Fail(s, "vsock init");
  if (cmd == "info") {
    std::printf("guest cid  %" PRIu64 "\nseqpacket  %s\nfeatures   0x%016" PRIx64 "\n", d.guest_cid(),
                d.seqpacket() ? "yes" : "no", d.driver().features());
    return 0;
  }
  if (cmd == "bench") return Bench(d, a);
  const uint16_t type = a.flags.count("seqpacket") ? vsock::kTypeSeqpacket : vsock::kTypeStream;
  const uint32_t size = static_cast<uint32_t>(Size(a, "size", 4096));
  const absl::Duration timeout = absl::Seconds(static_cast<int64_t>(Size(a, "timeout", 60)));
  if (!a.opts.count("port")) Usage(absl::StrCat("vsock ", cmd, " needs --port"));
  const std::vector<uint64_t> ports = List(a, "port");
  for (uint64_t p : ports)
    if (p > 0xffffffffull) Usage(absl::StrCat("--port ", p, ": ports are 32-bit"));
  (void)SpecFrom(a, 0);  // bad data options fail now, not at the first connection
  std::vector<Flow> flows;
  const absl::Time start = absl::Now();
  if (cmd == "connect") {
    if (!a.opts.count("cid")) Usage("vsock connect needs --cid");
    const std::vector<uint64_t> cids = List(a, "cid");
    if (cids.size() != ports.size() && ports.size() != 1)
      Usage("--cid and --port: lists of the same length (or one port for every CID)");
    const uint64_t n = Size(a, "connections", 1);
    for (size_t j = 0; j < cids.size(); ++j) {
      const uint32_t port = static_cast<uint32_t>(ports.size() == 1 ? ports[0] : ports[j]);
      for (uint64_t i = 0; i < n; ++i) {
        auto id = d.Connect(cids[j], port, type, absl::Seconds(10));
        if (!id.ok()) Fail(id.status(), absl::StrCat("vsock connect to ", cids[j], ":", port));
        Flow f;
        f.id = *id;
        f.s = SpecFrom(a, j * n + i);
        flows.push_back(std::move(f));
      }
    }
    absl::Time deadline = start + timeout;
    RunFlows(d, flows, size, &deadline);
    const int rc = Report("connect", flows, start, d, 0);
    for (Flow& f : flows) d.Close(f.id);
    return rc;
  }
  if (cmd == "listen") {
    for (uint64_t p : ports)
      if (absl::Status s = d.Listen(static_cast<uint32_t>(p), type); !s.ok()) Fail(s, "vsock listen");
    const uint64_t count = Size(a, "count", 1);  // per port
    const absl::Duration reconnect = absl::Seconds(static_cast<int64_t>(Size(a, "reconnect-timeout", 0)));
    std::printf("listening on %" PRIu64 ":%s\n", d.guest_cid(), a.opts.at("port").c_str());
    std::fflush(stdout);
    std::vector<uint64_t> accepted(ports.size(), 0);
    uint64_t resets = 0;
    // The deadline starts at the first connection.
    absl::Time deadline = absl::InfiniteFuture();
    RunFlows(
        d, flows, size, &deadline,
        [&] {
          bool more = false;
          for (size_t k = 0; k < ports.size(); ++k) {
            while (accepted[k] < count) {
              auto id = d.Accept(static_cast<uint32_t>(ports[k]), type, flows.empty() ? absl::Milliseconds(5) : absl::ZeroDuration());
              if (!id.ok()) {
                if (absl::IsDeadlineExceeded(id.status())) break;
                Fail(id.status(), "vsock accept");
              }
              if (flows.empty()) deadline = absl::Now() + timeout;
              Flow f;
              f.id = *id;
              f.s = SpecFrom(a, k * count + accepted[k]);
              f.port_index = k;
              flows.push_back(std::move(f));
              ++accepted[k];
            }
            more = more || accepted[k] < count;
          }
          return more;
        },
        [&]() -> bool {
          // The device failed (a restarted vios, a lost transport): with
          // --reconnect-timeout, initialise it again. Open connections end
          // as reset and may come again; the listeners stay.
          if (reconnect <= absl::ZeroDuration()) return false;
          const absl::Time give_up = absl::Now() + reconnect;
          while (!d.Init(g.ring_features, o).ok()) {
            if (absl::Now() > give_up) return false;
            absl::SleepFor(absl::Milliseconds(50));
          }
          for (auto it = flows.begin(); it != flows.end();) {
            if (!it->done) {
              d.Close(it->id, absl::ZeroDuration());
              --accepted[it->port_index];
              ++resets;
              if (!g.quiet) std::fprintf(stderr, "vioguest: connection reset by the device's reset; listening again\n");
              it = flows.erase(it);
            } else {
              ++it;
            }
          }
          return true;
        });
    const int rc = Report("listen", flows, start, d, resets);
    for (Flow& f : flows) d.Close(f.id);
    return rc;
  }
  Usage(absl::StrCat("unknown vsock command '", cmd, "'"));
}

}  // namespace vioport::vioguest
