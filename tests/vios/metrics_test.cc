// SPDX-License-Identifier: Apache-2.0
// vios --metrics against real Prometheus tools (Debian's prometheus package):
// promtool lints the exposition (names, types, units, _total), and a real
// Prometheus server started by the test on 127.0.0.1 scrapes vios; a query
// through its HTTP API must return exactly the bytes a real vioguest wrote,
// per device and per queue. Also: the endpoint is read-only and serves
// nothing but /metrics, and survives hostile HTTP clients.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "nlohmann/json.hpp"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"

namespace vioport {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using json = nlohmann::json;
using testproc::Proc;

// GET (or another verb) http://127.0.0.1:port/target: {status, body}; status 0 if unreachable.
std::pair<int, std::string> HttpGet(uint16_t port, const std::string& target, http::verb verb = http::verb::get) {
  try {
    asio::io_context io;
    beast::tcp_stream stream(io);
    stream.expires_after(std::chrono::seconds(10));
    stream.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    http::request<http::empty_body> req{verb, target, 11};
    req.set(http::field::host, "127.0.0.1");
    http::write(stream, req);
    beast::flat_buffer buf;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    if (verb == http::verb::head) parser.skip(true);  // a HEAD response has no body
    http::read(stream, buf, parser);
    return {static_cast<int>(parser.get().result_int()), parser.get().body()};
  } catch (const std::exception&) {
    return {0, ""};
  }
}

uint16_t FreePort() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

class Metrics : public testproc::ProcessTest {
 protected:
  Metrics() : ProcessTest("vioport-metrics") {}

  void StartVios() {
    MakeDisk(Path("d0.img"), 8 << 20);
    vios_ = &Start({VIOS_BIN, "--netdev", "switch,id=sw0", "--device", "net,id=n0,switch=sw0", "--device",
                    "blk,id=d0,path=" + Path("d0.img") + ",num-queues=2", "--attach",
                    "d0,transport=shm,path=" + Path("d0.sock"), "--metrics", "127.0.0.1:0"},
                   "vios");
    std::smatch m;
    const std::regex re("metrics at http://127\\.0\\.0\\.1:([0-9]+)/metrics");
    ASSERT_TRUE(testproc::WaitFor(
        [&] {
          const std::string log = vios_->err();
          return std::regex_search(log, m, re) || !vios_->Running();
        },
        10));
    ASSERT_TRUE(vios_->Running()) << vios_->err();
    const std::string log = vios_->err();
    ASSERT_TRUE(std::regex_search(log, m, re)) << log;
    port_ = static_cast<uint16_t>(std::stoi(m[1].str()));
  }
  // A real guest writes `len` bytes at `offset`.
  void GuestWrite(uint64_t offset, uint64_t len) {
    Proc p = testproc::Spawn({VIOGUEST_BIN, "--quiet", "--transport", "shm:" + Path("d0.sock"), "--queues", "2",
                              "blk", "write", "--seed", "4", "--offset", std::to_string(offset), "--length",
                              std::to_string(len)},
                             dir_, "vioguest");
    ASSERT_EQ(p.Wait(120), 0) << p.err();
  }
  // The value of the sample whose line starts with `prefix` (a name and its labels), or -1.
  static double Value(const std::string& text, const std::string& prefix) {
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (!absl::StartsWith(line, prefix + " ")) continue;
      double v;
      if (absl::SimpleAtod(line.substr(prefix.size() + 1), &v)) return v;
    }
    return -1;
  }

  Proc* vios_ = nullptr;
  uint16_t port_ = 0;
};

TEST_F(Metrics, PromtoolLintsCleanAndTheCountersMatchTheGuest) {
  ASSERT_NO_FATAL_FAILURE(StartVios());
  ASSERT_NO_FATAL_FAILURE(GuestWrite(0, 3 << 20));
  auto [code, text] = HttpGet(port_, "/metrics");
  ASSERT_EQ(code, 200);
  std::ofstream(Path("metrics.txt")) << text;
  // promtool check metrics: the exposition parses and follows the naming rules.
  Proc lint = testproc::Spawn({"/usr/bin/promtool", "check", "metrics"}, dir_, "promtool", Path("metrics.txt"));
  EXPECT_EQ(lint.Wait(60), 0) << lint.out() << lint.err();
  EXPECT_EQ(lint.out() + lint.err(), "") << "promtool found problems";
  EXPECT_EQ(Value(text, R"(vios_blk_bytes_written_total{device="d0"})"), 3 << 20) << text;
  // The two queues' bytes in add up to the data plus the request headers (16 B each) ...
  const double q0 = Value(text, R"(vios_queue_bytes_total{device="d0",transport="shm",queue="0",direction="in"})");
  const double q1 = Value(text, R"(vios_queue_bytes_total{device="d0",transport="shm",queue="1",direction="in"})");
  const double reqs = Value(text, R"(vios_transport_requests_total{device="d0",transport="shm"})");
  // (vioguest's blk write submits on queue 0; queue 1 exists and is counted apart.)
  EXPECT_GT(q0, 0);
  EXPECT_EQ(q1, 0);
  EXPECT_EQ(q0 + q1, (3 << 20) + 16 * reqs) << text;
  // ... and the queues' requests are the transport's, all timed.
  EXPECT_EQ(Value(text, R"(vios_queue_requests_total{device="d0",transport="shm",queue="0"})") +
                Value(text, R"(vios_queue_requests_total{device="d0",transport="shm",queue="1"})"),
            reqs);
  EXPECT_EQ(Value(text, R"(vios_request_duration_seconds_count{device="d0",transport="shm"})"), reqs);
  EXPECT_EQ(Value(text, R"(vios_request_duration_seconds_bucket{device="d0",transport="shm",le="+Inf"})"), reqs);
  EXPECT_GT(Value(text, R"(vios_request_duration_seconds_sum{device="d0",transport="shm"})"), 0);
  EXPECT_EQ(Value(text, R"(vios_net_drops_total{device="n0",cause="rx_full"})"), 0) << "errors carry a cause label";
  // Adaptive polling: shm's default threshold (spin-us 20) and the episodes the writes caused.
  EXPECT_EQ(Value(text, R"(vios_device_poll_spin_seconds{device="d0"})"), 2e-05) << text;
  EXPECT_GT(Value(text, R"(vios_device_polls_total{device="d0"})"), 0) << text;
  EXPECT_GT(Value(text, R"(vios_device_poll_seconds_total{device="d0"})"), 0) << text;
  EXPECT_EQ(Value(text, R"(vios_switch_ports{netdev="sw0"})"), 1);
}

TEST_F(Metrics, ARealPrometheusScrapesAndAnswersTheQuery) {
  ASSERT_NO_FATAL_FAILURE(StartVios());
  ASSERT_NO_FATAL_FAILURE(GuestWrite(1 << 20, 2 << 20));
  const uint16_t prom_port = FreePort();
  std::ofstream(Path("prometheus.yml")) << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                                        << "scrape_configs:\n  - job_name: vios\n    static_configs:\n"
                                        << "      - targets: ['127.0.0.1:" << port_ << "']\n";
  Proc& prom = Start({"/usr/bin/prometheus", "--config.file=" + Path("prometheus.yml"),
                      "--storage.tsdb.path=" + Path("tsdb"), "--web.listen-address=127.0.0.1:" + std::to_string(prom_port),
                      "--log.level=warn"},
                     "prometheus");
  ASSERT_TRUE(testproc::WaitFor([&] { return HttpGet(prom_port, "/-/ready").first == 200 || !prom.Running(); }, 60))
      << prom.err();
  ASSERT_TRUE(prom.Running()) << prom.err();
  // The query returns the counter this test drove: 2 MiB written to d0.
  const std::string query = "/api/v1/query?query=vios_blk_bytes_written_total%7Bdevice%3D%22d0%22%7D";
  json last;
  const bool got = testproc::WaitFor(
      [&] {
        auto [code, body] = HttpGet(prom_port, query);
        if (code != 200) return false;
        last = json::parse(body, nullptr, false);
        if (last.is_discarded() || last["status"] != "success" || last["data"]["result"].empty()) return false;
        return last["data"]["result"][0]["value"][1] == std::to_string(2 << 20);
      },
      60);
  EXPECT_TRUE(got) << last.dump();
  if (got) {
    const json& metric = last["data"]["result"][0]["metric"];
    EXPECT_EQ(metric["job"], "vios");
    EXPECT_EQ(metric["device"], "d0");
  }
  // The target is healthy (every scrape parsed).
  auto [tcode, targets] = HttpGet(prom_port, "/api/v1/targets");
  ASSERT_EQ(tcode, 200);
  const json t = json::parse(targets, nullptr, false);
  ASSERT_FALSE(t.is_discarded());
  ASSERT_FALSE(t["data"]["activeTargets"].empty()) << targets;
  EXPECT_EQ(t["data"]["activeTargets"][0]["health"], "up") << targets;
  EXPECT_EQ(t["data"]["activeTargets"][0]["lastError"], "") << targets;
  // More I/O shows in the next scrapes: rate() over the histogram works too.
  ASSERT_NO_FATAL_FAILURE(GuestWrite(0, 1 << 20));
  EXPECT_TRUE(testproc::WaitFor(
      [&] {
        auto [code, body] = HttpGet(prom_port, query);
        json j = json::parse(body, nullptr, false);
        return code == 200 && !j.is_discarded() && !j["data"]["result"].empty() &&
               j["data"]["result"][0]["value"][1] == std::to_string(3 << 20);
      },
      60));
  auto [hcode, hist] = HttpGet(prom_port,
                               "/api/v1/query?query=sum(vios_request_duration_seconds_count%7Bdevice%3D%22d0%22%7D)");
  EXPECT_EQ(hcode, 200);
  EXPECT_TRUE(absl::StrContains(hist, "\"success\"")) << hist;
}

TEST_F(Metrics, ReadOnlyAndOnlyMetrics) {
  ASSERT_NO_FATAL_FAILURE(StartVios());
  EXPECT_EQ(HttpGet(port_, "/").first, 404);
  EXPECT_EQ(HttpGet(port_, "/metrics/../etc/passwd").first, 404);
  EXPECT_EQ(HttpGet(port_, "/metrics", http::verb::post).first, 405);
  EXPECT_EQ(HttpGet(port_, "/metrics", http::verb::put).first, 405);
  EXPECT_EQ(HttpGet(port_, "/metrics", http::verb::delete_).first, 405);
  auto [hcode, hbody] = HttpGet(port_, "/metrics", http::verb::head);
  EXPECT_EQ(hcode, 200);
  EXPECT_EQ(hbody, "");
  // Hostile clients: garbage, a huge header, many silent connections; then a scrape still works.
  auto raw = [&](const std::string& bytes) {
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port_);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return s;
    (void)!::write(s, bytes.data(), bytes.size());
    return s;
  };
  std::vector<int> held;
  held.push_back(raw("\x16\x03\x01garbage\r\n\r\n"));
  held.push_back(raw("GET /metrics HTTP/1.1\r\nX-Big: " + std::string(64 << 10, 'a') + "\r\n\r\n"));
  for (int i = 0; i < 100; ++i) held.push_back(raw(""));  // connect, say nothing, stay
  // At most 64 connections are served at once, each for at most 10 s: the
  // silent ones time out and a scrape gets through while they still hold on.
  EXPECT_TRUE(testproc::WaitFor([&] { return HttpGet(port_, "/metrics").first == 200; }, 30));
  EXPECT_TRUE(vios_->Running());
  for (int fd : held) ::close(fd);
}

}  // namespace
}  // namespace vioport
