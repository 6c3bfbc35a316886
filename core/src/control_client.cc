// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/control_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace vioport {

int RunControlClient(int argc, char** argv, const char* program, const char* server, const char* usage) {
  std::string control, command;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
    if (a == "--control" && i + 1 < argc) {
      control = argv[++i];
    } else if (a.rfind("--control=", 0) == 0) {
      control = a.substr(10);
    } else {
      if (!command.empty()) command += ' ';
      command += a;
    }
  }
  if (control.empty() || command.empty()) {
    std::fprintf(stderr, "%s: need --control PATH and a command (see %s --help)\n", program, program);
    return 2;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (control.size() >= sizeof addr.sun_path) {
    std::fprintf(stderr, "%s: control path too long: %s\n", program, control.c_str());
    return 2;
  }
  std::memcpy(addr.sun_path, control.c_str(), control.size() + 1);
  const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0 || ::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::fprintf(stderr, "%s: cannot reach %s at %s: %s\n", program, server, control.c_str(), std::strerror(errno));
    if (s >= 0) ::close(s);
    return 2;
  }
  command += '\n';
  for (size_t off = 0; off < command.size();) {
    const ssize_t n = ::write(s, command.data() + off, command.size() - off);
    if (n <= 0) {
      std::fprintf(stderr, "%s: write: %s\n", program, std::strerror(errno));
      ::close(s);
      return 2;
    }
    off += static_cast<size_t>(n);
  }
  std::string answer;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(s, buf, sizeof buf)) > 0) answer.append(buf, static_cast<size_t>(n));
  ::close(s);
  std::fputs(answer.c_str(), stdout);
  const size_t last = answer.rfind('\n', answer.size() >= 2 ? answer.size() - 2 : 0);
  const std::string tail = answer.substr(last == std::string::npos ? 0 : last + 1);
  if (tail == "ok\n") return 0;
  return tail.rfind("error:", 0) == 0 ? 1 : 2;
}

}  // namespace vioport
