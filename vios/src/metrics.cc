// SPDX-License-Identifier: Apache-2.0
#include "metrics.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "vioport/core/log.h"

namespace vioport::vios {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// ---- Exposition ---------------------------------------------------------------------------------

std::string Exposition::Sanitize(const std::string& s) {
  std::string out = s;
  for (char& c : out)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':')) c = '_';
  if (!out.empty() && std::isdigit(static_cast<unsigned char>(out[0]))) out.insert(out.begin(), '_');
  return out;
}

void Exposition::Family(const std::string& name, const std::string& type, const std::string& help) {
  if (families_.count(name)) return;
  order_.push_back(name);
  families_[name] = Fam{type, help, ""};
}

namespace {
// Label values escape backslash, double quote and newline; HELP escapes
// backslash and newline (exposition format 0.0.4).
std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}
std::string EscapeHelp(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}
std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrCat(static_cast<int64_t>(v));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
}  // namespace

void Exposition::Sample(const std::string& family, const std::string& sample_name, const Labels& labels, double value) {
  auto it = families_.find(family);
  if (it == families_.end()) return;  // a family must be declared first
  std::string& out = it->second.samples;
  out += sample_name;
  if (!labels.empty()) {
    out += '{';
    for (size_t i = 0; i < labels.size(); ++i)
      absl::StrAppend(&out, i ? "," : "", labels[i].first, "=\"", EscapeLabel(labels[i].second), "\"");
    out += '}';
  }
  absl::StrAppend(&out, " ", Number(value), "\n");
}

std::string Exposition::Text() const {
  std::string out;
  for (const std::string& name : order_) {
    const Fam& f = families_.at(name);
    if (f.samples.empty()) continue;
    absl::StrAppend(&out, "# HELP ", name, " ", EscapeHelp(f.help), "\n# TYPE ", name, " ", f.type, "\n", f.samples);
  }
  return out;
}

// ---- HTTP -----------------------------------------------------------------------------------------

struct MetricsServer::Impl : std::enable_shared_from_this<Impl> {
  explicit Impl(asio::io_context& io) : io(io), acceptor(io) {}
  asio::io_context& io;
  tcp::acceptor acceptor;
  std::function<std::string()> render;
  size_t connections = 0;
  uint64_t scrapes = 0;

  void Accept() {
    acceptor.async_accept([self = shared_from_this()](const boost::system::error_code& ec, tcp::socket sock) {
      if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
      if (!ec) {
        if (self->connections >= kMaxConnections) {
          boost::system::error_code ignored;
          sock.close(ignored);  // a scraper retries; a flood gets nothing
        } else {
          self->Serve(std::move(sock));
        }
        self->Accept();
        return;
      }
      // Out of descriptors: the connection waits in the backlog; retry shortly.
      auto retry = std::make_shared<asio::steady_timer>(self->io, std::chrono::milliseconds(100));
      retry->async_wait([self, retry](const boost::system::error_code& tec) {
        if (!tec && self->acceptor.is_open()) self->Accept();
      });
    });
  }

  struct Conn {
    explicit Conn(tcp::socket s) : stream(std::move(s)) {
      parser.header_limit(8192);
      parser.body_limit(0);
    }
    beast::tcp_stream stream;
    beast::flat_buffer buffer{8192};
    http::request_parser<http::empty_body> parser;
    http::response<http::string_body> res;
  };

  void Serve(tcp::socket sock) {
    ++connections;
    auto c = std::make_shared<Conn>(std::move(sock));
    c->stream.expires_after(std::chrono::seconds(10));
    http::async_read(c->stream, c->buffer, c->parser,
                     [self = shared_from_this(), c](const beast::error_code& ec, size_t) {
                       if (ec) return self->Done(c);
                       self->Respond(c);
                     });
  }

  void Respond(const std::shared_ptr<Conn>& c) {
    const auto& req = c->parser.get();
    auto& res = c->res;
    res.version(req.version());
    res.keep_alive(false);
    res.set(http::field::server, "vios");
    std::string target(req.target());
    if (auto q = target.find('?'); q != std::string::npos) target.resize(q);
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
      res.result(http::status::method_not_allowed);
      res.set(http::field::allow, "GET, HEAD");
      res.set(http::field::content_type, "text/plain; charset=utf-8");
      res.body() = "only GET and HEAD\n";
    } else if (target != "/metrics") {
      res.result(http::status::not_found);
      res.set(http::field::content_type, "text/plain; charset=utf-8");
      res.body() = "vios serves /metrics only\n";
    } else {
      ++scrapes;
      res.result(http::status::ok);
      res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      res.body() = render();
    }
    res.prepare_payload();
    if (req.method() == http::verb::head) res.body().clear();
    c->stream.expires_after(std::chrono::seconds(10));
    http::async_write(c->stream, res, [self = shared_from_this(), c](const beast::error_code&, size_t) {
      self->Done(c);
    });
  }

  void Done(const std::shared_ptr<Conn>& c) {
    beast::error_code ignored;
    c->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    c->stream.close();
    --connections;
  }
};

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() {
  boost::system::error_code ignored;
  impl_->acceptor.close(ignored);
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(asio::io_context& io, const std::string& address,
                                                                   std::function<std::string()> render) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos)
    return absl::InvalidArgumentError(absl::StrCat("--metrics ", address, ": not ADDR:PORT (e.g. 127.0.0.1:9187)"));
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  uint32_t port;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port > 65535)
    return absl::InvalidArgumentError(absl::StrCat("--metrics ", address, ": port is not 0..65535"));
  boost::system::error_code ec;
  const asio::ip::address ip = asio::ip::make_address(host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("--metrics ", address, ": '", host, "' is not an IP address"));
  auto impl = std::make_unique<Impl>(io);
  impl->render = std::move(render);
  const tcp::endpoint ep(ip, static_cast<uint16_t>(port));
  impl->acceptor.open(ep.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(ep, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("--metrics ", address, ": ", ec.message()));
  std::unique_ptr<MetricsServer> s(new MetricsServer(std::move(impl)));
  s->impl_->Accept();
  return s;
}

std::string MetricsServer::where() const {
  boost::system::error_code ec;
  const tcp::endpoint ep = impl_->acceptor.local_endpoint(ec);
  if (ec) return "?";
  return ep.address().is_v6() ? absl::StrCat("[", ep.address().to_string(), "]:", ep.port())
                              : absl::StrCat(ep.address().to_string(), ":", ep.port());
}

uint64_t MetricsServer::scrapes() const { return impl_->scrapes; }

}  // namespace vioport::vios
