// SPDX-License-Identifier: Apache-2.0
#include "control_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vioport::vios {

using json = nlohmann::json;

absl::StatusOr<std::string> ControlSend(const std::string& socket, const std::string& line, double timeout_s) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket.size() >= sizeof addr.sun_path) return absl::InvalidArgumentError(absl::StrCat("control path too long: ", socket));
  std::memcpy(addr.sun_path, socket.c_str(), socket.size() + 1);
  // A vios that is starting has its socket file before it listens (bind,
  // then listen): a refused connection is tried again for a short while.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  int fd = -1;
  for (;;) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) break;
    const int err = errno;
    ::close(fd);
    if (err != ECONNREFUSED || std::chrono::steady_clock::now() > give_up)
      return absl::UnavailableError(absl::StrCat("cannot reach vios at ", socket, ": ", std::strerror(err)));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const std::string msg = line + "\n";
  for (size_t off = 0; off < msg.size();) {
    const ssize_t n = ::send(fd, msg.data() + off, msg.size() - off, MSG_NOSIGNAL);
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      return absl::UnavailableError(absl::StrCat("write to ", socket, ": ", std::strerror(err)));
    }
    off += static_cast<size_t>(n);
  }
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  std::string in;
  char buf[16384];
  while (in.find('\n') == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000))) <= 0) continue;
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  const size_t nl = in.find('\n');
  if (nl == std::string::npos)
    return absl::UnavailableError(absl::StrCat("vios at ", socket, " sent no whole reply", in.empty() ? "" : ": ", in));
  return in.substr(0, nl);
}

absl::StatusOr<json> ControlCall(const std::string& socket, const std::string& method, const json& params,
                                 double timeout_s) {
  json req = {{"jsonrpc", "2.0"}, {"id", 1}, {"method", method}};
  if (!params.is_null()) req["params"] = params;
  auto line = ControlSend(socket, req.dump(), timeout_s);
  if (!line.ok()) return line.status();
  json reply = json::parse(*line, nullptr, false);
  if (reply.is_discarded() || !reply.is_object() || (!reply.contains("result") && !reply.contains("error")))
    return absl::UnavailableError(absl::StrCat("vios sent a reply that is not JSON-RPC: ", *line));
  return reply;
}

namespace {
std::string Str(const json& j, const char* key, const char* absent = "-") {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absent;
  return it->is_string() ? it->get<std::string>() : it->dump();
}
}  // namespace

std::string RenderList(const json& netdevs, const json& devices) {
  // WHERE is as wide as the longest (some name a socket, a partition and a unit).
  int where = 44;
  for (const json& d : devices) where = std::max(where, static_cast<int>(Str(d, "where").size()));
  std::string out = absl::StrFormat("%-10s %-8s %-10s %-*s %-10s %s\n", "ID", "TYPE", "TRANSPORT", where, "WHERE",
                                    "GUEST", "STATUS");
  for (const json& n : netdevs) {
    const std::string desc = n.contains("ports")
                                 ? absl::StrCat(Str(n, "ports"), " port(s), ", Str(n, "learnt"), " MAC(s) learnt")
                                 : absl::StrCat("tap ", Str(n, "ifname"), " on ", Str(n, "switch"));
    absl::StrAppendFormat(&out, "%-10s %-8s %-10s %-*s %-10s %s\n", Str(n, "id"), Str(n, "type"), "-", where, desc,
                          "-", "-");
  }
  for (const json& d : devices)
    absl::StrAppendFormat(&out, "%-10s %-8s %-10s %-*s %-10s %s\n", Str(d, "id"), Str(d, "type"), Str(d, "mode"),
                          where, Str(d, "where"), Str(d, "guest"), Str(d, "status"));
  return out;
}

std::string RenderStats(const json& stats) {
  std::string out;
  if (!stats.is_object()) return out;
  for (const auto& [id, counters] : stats.items()) {
    if (!counters.is_object()) continue;
    for (const auto& [name, v] : counters.items())
      absl::StrAppend(&out, id, ".", name, " ", v.is_string() ? v.get<std::string>() : v.dump(), "\n");
  }
  return out;
}

std::string StatsText(const std::string& socket, const std::string& id, double timeout_s) {
  auto r = ControlCall(socket, "stats", json{{"id", id}}, timeout_s);
  if (!r.ok()) return absl::StrCat("error: ", r.status().message(), "\n");
  if (r->contains("error")) return absl::StrCat("error: ", Str((*r)["error"], "message"), "\n");
  return RenderStats((*r)["result"]) + "ok\n";
}

}  // namespace vioport::vios
