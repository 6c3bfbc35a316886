// crqctl: talks to a running crqd over its control socket (one command per
// connection, answered with text and a last line "ok" or "error: ...").
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

const char kUsage[] = R"(crqctl: control a running crqd (the CRQ hypervisor emulator).

usage: crqctl --control PATH COMMAND [ARGS]

commands (PID, UNIT, N: decimal or 0x-hex):
  fail PID UNIT          pretend PID failed: FF 01 to the partner of (PID, UNIT)
  migrate PID UNIT N     FF 06 into (PID, UNIT)'s queue, queue disabled; its
                         H_ENABLE_CRQ answers H_IN_PROGRESS N times, then succeeds
  free-busy PID UNIT N   the next N H_FREE_CRQ on (PID, UNIT) return H_BUSY
  drop PID UNIT N        the next N messages to (PID, UNIT) are lost (sender: H_SUCCESS)
  event PID UNIT REASON  post transport event FF REASON into (PID, UNIT)'s queue
  delay NS [busy|sleep]  add NS nanoseconds to every hypercall (0 = none)
  stats                  per-hypercall counters, messages, events, interrupts
  partitions             the partition ids connected now

Exit status: 0 if crqd answered ok, 1 if it answered an error, 2 if it could
not be reached.
)";

}  // namespace

int main(int argc, char** argv) {
  std::string control, command;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
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
    std::fputs("crqctl: need --control PATH and a command (see crqctl --help)\n", stderr);
    return 2;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (control.size() >= sizeof addr.sun_path) {
    std::fprintf(stderr, "crqctl: control path too long: %s\n", control.c_str());
    return 2;
  }
  std::memcpy(addr.sun_path, control.c_str(), control.size() + 1);
  const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0 || ::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::fprintf(stderr, "crqctl: cannot reach crqd at %s: %s\n", control.c_str(), std::strerror(errno));
    return 2;
  }
  command += '\n';
  for (size_t off = 0; off < command.size();) {
    const ssize_t n = ::write(s, command.data() + off, command.size() - off);
    if (n <= 0) {
      std::fprintf(stderr, "crqctl: write: %s\n", std::strerror(errno));
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
