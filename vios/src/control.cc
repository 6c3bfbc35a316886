// SPDX-License-Identifier: Apache-2.0
// vios's control API: JSON-RPC 2.0 methods over the Server, and the Unix
// socket that carries them (one message per line, any number per
// connection). docs/api.md is the schema.
#include "control.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "boost/asio/write.hpp"
#include "vioport/core/log.h"

namespace vioport::vios {

namespace asio = boost::asio;
using rpc::json;

namespace {
const char* LevelName(LogLevel l) {
  switch (l) {
    case LogLevel::kError: return "error";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kInfo: return "info";
    case LogLevel::kDebug: return "debug";
  }
  return "info";
}
}  // namespace

// ---- methods --------------------------------------------------------------------------------

void Server::RegisterMethods() {
  // Every handler checks its parameters (rpc::Params: a missing, unknown or
  // ill-typed one is named), does the operation, and answers with a result
  // or the operation's error (its message names the option and value).
  auto ok = [](const absl::Status& s) -> absl::StatusOr<json> {
    if (!s.ok()) return s;
    return json(true);
  };
  auto id_only = [](const json& params) -> absl::StatusOr<std::string> {
    rpc::Params p(params);
    auto id = p.String("id");
    if (!id.ok()) return id.status();
    if (absl::Status s = p.CheckAllUsed(); !s.ok()) return s;
    return *id;
  };
  // type and id, as --device/--netdev take them; the rest become the options.
  auto spec_of = [](const json& params, const char* method) -> absl::StatusOr<DeviceSpec> {
    rpc::Params p(params);
    auto type = p.String("type");
    auto id = p.String("id");
    if (!type.ok()) return type.status();
    if (!id.ok()) return id.status();
    auto o = rpc::ToOptions(params, method, {"type", "id"});
    if (!o.ok()) return o.status();
    std::map<std::string, std::string> kv = o->all();
    kv["id"] = *id;
    return MakeDeviceSpec(*type, std::move(kv), absl::StrCat(method, " ", *id));
  };

  rpc_.Add("rpc_get_methods", [this](const json& params) -> absl::StatusOr<json> {
    if (absl::Status s = rpc::Params(params).CheckAllUsed(); !s.ok()) return s;
    return json(rpc_.Methods());
  });
  rpc_.Add("device_list", [this](const json& params) -> absl::StatusOr<json> {
    if (absl::Status s = rpc::Params(params).CheckAllUsed(); !s.ok()) return s;
    return DeviceList();
  });
  rpc_.Add("reactor_list", [this](const json& params) -> absl::StatusOr<json> {
    if (absl::Status s = rpc::Params(params).CheckAllUsed(); !s.ok()) return s;
    return ReactorList();
  });
  rpc_.Add("netdev_list", [this](const json& params) -> absl::StatusOr<json> {
    if (absl::Status s = rpc::Params(params).CheckAllUsed(); !s.ok()) return s;
    return NetdevList();
  });
  rpc_.Add("device_get", [this, id_only](const json& params) -> absl::StatusOr<json> {
    auto id = id_only(params);
    if (!id.ok()) return id.status();
    return DeviceGet(*id);
  });
  rpc_.Add("stats", [this](const json& params) -> absl::StatusOr<json> {
    rpc::Params p(params);
    auto id = p.String("id", "");
    if (!id.ok()) return id.status();
    if (absl::Status s = p.CheckAllUsed(); !s.ok()) return s;
    return Stats(*id);
  });
  rpc_.Add("device_add", [this, ok, spec_of](const json& params) -> absl::StatusOr<json> {
    auto d = spec_of(params, "device_add");
    if (!d.ok()) return d.status();
    return ok(AddDevice(std::move(*d)));
  });
  rpc_.Add("device_remove", [this, ok, id_only](const json& params) -> absl::StatusOr<json> {
    auto id = id_only(params);
    if (!id.ok()) return id.status();
    if (netdevs_.count(*id))
      return absl::InvalidArgumentError(absl::StrCat("params.id: '", *id, "' is a netdev (netdev_remove)"));
    return ok(Remove(*id));
  });
  rpc_.Add("netdev_add", [this, ok, spec_of](const json& params) -> absl::StatusOr<json> {
    auto d = spec_of(params, "netdev_add");
    if (!d.ok()) return d.status();
    return ok(AddNetdev(std::move(*d)));
  });
  rpc_.Add("netdev_remove", [this, ok, id_only](const json& params) -> absl::StatusOr<json> {
    auto id = id_only(params);
    if (!id.ok()) return id.status();
    if (!netdevs_.count(*id)) return absl::NotFoundError(absl::StrCat("no netdev with id '", *id, "'"));
    return ok(Remove(*id));
  });
  rpc_.Add("device_attach", [this, ok](const json& params) -> absl::StatusOr<json> {
    rpc::Params p(params);
    auto id = p.String("id");
    auto transport = p.String("transport");
    if (!id.ok()) return id.status();
    if (!transport.ok()) return transport.status();
    auto o = rpc::ToOptions(params, absl::StrCat("device_attach ", *id), {"id", "transport"});
    if (!o.ok()) return o.status();
    std::map<std::string, std::string> kv = o->all();
    kv["transport"] = *transport;
    auto a = MakeAttachSpec(*id, std::move(kv), o->origin());
    if (!a.ok()) return a.status();
    return ok(Attach(std::move(*a)));
  });
  rpc_.Add("device_detach", [this, ok, id_only](const json& params) -> absl::StatusOr<json> {
    auto id = id_only(params);
    if (!id.ok()) return id.status();
    return ok(Detach(*id));
  });
  rpc_.Add("net_set_link", [this, ok](const json& params) -> absl::StatusOr<json> {
    rpc::Params p(params);
    auto id = p.String("id");
    auto up = p.Bool("up");
    if (!id.ok()) return id.status();
    if (!up.ok()) return up.status();
    if (absl::Status s = p.CheckAllUsed(); !s.ok()) return s;
    return ok(NetAction(*id, *up ? "up" : "down"));
  });
  rpc_.Add("net_announce", [this, ok, id_only](const json& params) -> absl::StatusOr<json> {
    auto id = id_only(params);
    if (!id.ok()) return id.status();
    return ok(NetAction(*id, "announce"));
  });
  rpc_.Add("blk_resize", [this](const json& params) -> absl::StatusOr<json> {
    rpc::Params p(params);
    auto id = p.String("id");
    auto size = p.Uint("size", 0, 0, uint64_t{1} << 62);
    if (!id.ok()) return id.status();
    if (!size.ok()) return size.status();
    if (absl::Status s = p.CheckAllUsed(); !s.ok()) return s;
    auto c = ResizeBlk(*id, *size);
    if (!c.ok()) return c.status();
    return json{{"capacity", *c}};
  });
  rpc_.Add("console_attach", [this](const json& params) -> absl::StatusOr<json> {
    rpc::Params p(params);
    auto id = p.String("id");
    auto socket = p.String("socket");
    if (!id.ok()) return id.status();
    if (!socket.ok()) return socket.status();
    if (absl::Status s = p.CheckAllUsed(); !s.ok()) return s;
    auto r = AttachConsole(*id, *socket);
    if (!r.ok()) return r.status();
    return json{{"socket", *r}};
  });
  // Live upgrade (docs/upgrade.md): the new vios (vios --upgrade-from)
  // sends this with the socket it listens on; the reply comes after the
  // handover, and on success this vios then exits.
  rpc_.Add("upgrade", [this](const json& params) -> absl::StatusOr<json> {
    rpc::Params p(params);
    auto socket = p.String("socket");
    if (!socket.ok()) return socket.status();
    if (absl::Status s = p.CheckAllUsed(); !s.ok()) return s;
    return HandOver(*socket);
  });
  rpc_.Add("device_set_coalescing", [this](const json& params) -> absl::StatusOr<json> {
    rpc::Params p(params);
    auto id = p.String("id");
    auto delay = p.Uint("delay_base_us", 0, 1000000);
    auto thr = p.Uint("iops_threshold", 60000, 1, 1u << 31);
    if (!id.ok()) return id.status();
    if (!delay.ok()) return delay.status();
    if (!thr.ok()) return thr.status();
    if (absl::Status s = p.CheckAllUsed(); !s.ok()) return s;
    auto it = devices_.find(*id);
    if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("no device with id '", *id, "'"));
    DeviceStats& st = it->second.device->stats();
    st.coalesce_iops_threshold.store(static_cast<uint32_t>(*thr));
    st.coalesce_delay_us.store(static_cast<uint32_t>(*delay));
    VIOPORT_LOG(kInfo, "device ", *id, ": interrupt coalescing ",
                *delay ? absl::StrCat("delay ", *delay, " us above ", *thr, " IOPS") : std::string("off"));
    return json(true);
  });
  rpc_.Add("log_set_level", [](const json& params) -> absl::StatusOr<json> {
    rpc::Params p(params);
    auto level = p.String("level");
    if (!level.ok()) return level.status();
    if (absl::Status s = p.CheckAllUsed(); !s.ok()) return s;
    LogLevel l;
    if (!ParseLogLevel(*level, &l))
      return absl::InvalidArgumentError(
          absl::StrCat("params.level: '", *level, "' is not one of error, warning, info, debug"));
    SetLogLevel(l);
    VIOPORT_LOG(kInfo, "log level ", *level);
    return json(true);
  });
  rpc_.Add("log_get_level", [](const json& params) -> absl::StatusOr<json> {
    if (absl::Status s = rpc::Params(params).CheckAllUsed(); !s.ok()) return s;
    return json{{"level", LevelName(GetLogLevel())}};
  });
}

// ---- the socket -----------------------------------------------------------------------------

absl::Status Server::ListenControl(const std::string& path, ControlLimits limits) {
  if (adopted_control_.valid()) {
    // A live upgrade handed the old vios's socket over: same path, same
    // queue of clients, never a moment without a listener.
    control_ = std::make_unique<Control>(io_);
    control_->path = path;
    control_->limits = limits;
    boost::system::error_code ec;
    control_->acceptor.assign(asio::local::stream_protocol(), adopted_control_.get(), ec);
    if (ec) return absl::UnavailableError(absl::StrCat("--control ", path, ": taking over the socket: ", ec.message()));
    adopted_control_.release();
    AcceptControl();
    return absl::OkStatus();
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return absl::AlreadyExistsError(absl::StrCat("--control ", path, ": exists and is not a socket"));
    ::unlink(path.c_str());
  }
  control_ = std::make_unique<Control>(io_);
  control_->path = path;
  control_->limits = limits;
  boost::system::error_code ec;
  control_->acceptor.open(asio::local::stream_protocol(), ec);
  // Owner only from the start: the socket never exists with wider access.
  const mode_t old_mask = ::umask(0177);
  if (!ec) control_->acceptor.bind(asio::local::stream_protocol::endpoint(path), ec);
  ::umask(old_mask);
  if (!ec) control_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("--control ", path, ": ", ec.message()));
  ::chmod(path.c_str(), 0600);
  AcceptControl();
  return absl::OkStatus();
}

void Server::StopControl() {
  if (!control_ || !control_->acceptor.is_open()) return;
  boost::system::error_code ec;
  control_->acceptor.close(ec);
  ::unlink(control_->path.c_str());
}

void Server::AcceptControl() {
  control_->acceptor.async_accept([this](const boost::system::error_code& ec, asio::local::stream_protocol::socket sock) {
    if (ec == asio::error::operation_aborted) return;
    if (!ec) {
      auto s = std::make_shared<Session>(std::move(sock), io_);
      if (control_->clients >= control_->limits.max_clients) {
        // Told why, then closed; the clients already connected go on.
        ++control_->refused_clients;
        s->out = rpc::ErrorReply(nullptr, rpc::kTooManyClients,
                                 absl::StrCat("too many control clients (", control_->limits.max_clients, ")")) + "\n";
        asio::async_write(s->sock, asio::buffer(s->out), [s](const boost::system::error_code&, size_t) {
          boost::system::error_code ignored;
          s->sock.close(ignored);
        });
      } else {
        ++control_->clients;
        // The idle timer: a client that does not complete a message within
        // the timeout (or does not read its replies) is closed.
        auto last = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
        s->idle_mark = last;
        ArmIdle(s);
        ReadControl(s);
      }
    }
    if (!control_->acceptor.is_open()) return;
    if (ec) {
      // Out of descriptors (EMFILE) or memory: the pending connection stays
      // in the backlog; try again shortly instead of spinning on the error.
      VIOPORT_LOG(kWarning, "control: accept: ", ec.message(), DescriptorHint(ec.value()));
      auto retry = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(100));
      retry->async_wait([this, retry](const boost::system::error_code& tec) {
        if (!tec && control_ && control_->acceptor.is_open()) AcceptControl();
      });
      return;
    }
    AcceptControl();
  });
}

void Server::ArmIdle(std::shared_ptr<Session> s) {
  const auto timeout = absl::ToChronoNanoseconds(control_->limits.idle_timeout);
  s->idle.expires_at(*s->idle_mark + timeout);
  s->idle.async_wait([this, s, timeout](const boost::system::error_code& ec) {
    if (ec || s->closed) return;
    if (std::chrono::steady_clock::now() - *s->idle_mark >= timeout) {
      VIOPORT_LOG(kDebug, "control: closing a client idle for ", absl::FormatDuration(control_->limits.idle_timeout));
      CloseSession(s);
      return;
    }
    ArmIdle(s);
  });
}

void Server::CloseSession(const std::shared_ptr<Session>& s) {
  if (s->closed) return;
  s->closed = true;
  boost::system::error_code ignored;
  s->sock.close(ignored);
  s->idle.cancel();
  if (control_ && control_->clients) --control_->clients;
}

void Server::ReadControl(std::shared_ptr<Session> s) {
  if (s->closed) return;
  s->chunk.resize(4096);
  s->sock.async_read_some(asio::buffer(s->chunk), [this, s](const boost::system::error_code& ec, size_t n) {
    if (s->closed) return;
    if (ec) {
      // EOF after a last message without its newline: answer it, then close.
      if (ec == asio::error::eof && !s->in.empty()) return ServeLines(s, true);
      return CloseSession(s);
    }
    s->in.append(s->chunk.data(), n);
    ServeLines(s, false);
  });
}

void Server::ServeLines(std::shared_ptr<Session> s, bool at_eof) {
  const size_t max = control_->limits.max_message;
  size_t start = 0;
  while (!s->closing) {
    size_t nl = s->in.find('\n', start);
    if (nl == std::string::npos) {
      if (!at_eof || start == s->in.size()) break;
      nl = s->in.size();
    }
    if (nl - start > max) break;  // refused below
    std::string_view line(s->in.data() + start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    start = std::min(nl + 1, s->in.size());
    *s->idle_mark = std::chrono::steady_clock::now();
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;  // blank lines are ignored
    std::string reply = rpc_.Handle(line);
    if (!reply.empty()) s->out.append(reply).push_back('\n');
  }
  s->in.erase(0, start);
  if (s->in.size() > max) {
    s->out += rpc::ErrorReply(nullptr, rpc::kRequestTooLarge,
                              absl::StrCat("a message longer than ", max, " bytes (the connection is closed)")) + "\n";
    s->in.clear();
    s->closing = true;
  }
  if (at_eof) s->closing = true;
  if (s->out.empty()) {
    if (s->closing) return CloseSession(s);
    return ReadControl(s);
  }
  // Replies are written before more is read: a client that does not read
  // its replies stops being read (and is closed by the idle timer).
  asio::async_write(s->sock, asio::buffer(s->out), [this, s](const boost::system::error_code& ec, size_t) {
    if (s->closed) return;
    s->out.clear();
    if (ec || s->closing) return CloseSession(s);
    ReadControl(s);
  });
}

}  // namespace vioport::vios
