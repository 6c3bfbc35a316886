// xenemud: the Xen channel emulator as a daemon. For now it plays
// xenstored: the real xenstore wire protocol on Unix sockets, one socket per
// identity (see vioport/emulators/xenstore_server.h). Grant tables and event
// channels will be served by this same process.

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include "vioport/emulators/xenstore.h"
#include "vioport/emulators/xenstore_server.h"

namespace {

const char kUsage[] = R"(xenemud: the Xen channel emulator, as a daemon (xenstore for now).

usage: xenemud --xenstore PATH [--domain ID=PATH ...] [--max-output BYTES] [--verbose]

  --xenstore PATH    the privileged xenstore socket (acts as domid 0). Point
                     Xen's own tools at it: XENSTORED_PATH=PATH xenstore-ls,
                     or xs_open() in a program linked with libxenstore.
  --domain ID=PATH   a socket whose connections act as domain ID (1..65535),
                     speaking the same protocol: relative paths are rooted at
                     /local/domain/ID and node permissions and quotas apply.
                     The domain is introduced at start: /local/domain/ID is
                     created, owned by ID, and @introduceDomain fires.
                     Repeatable.
  --max-output BYTES a connection whose unsent replies and watch events
                     exceed BYTES is closed (default 1048576).
  --verbose          log connects and drops to stderr.
  --help             this text.

Protocol: xen/io/xs_wire.h (xsd_sockmsg header, payload <= 4096 bytes; a
larger len closes that connection). Errors are XS_ERROR replies naming the
errno ("ENOENT"). Quotas for domains other than 0: 1000 nodes, 2048-byte
nodes, 5 permissions per node, 128 watches and 10 transactions per
connection. The store lives in memory and is lost at exit.

SIGTERM / SIGINT stop xenemud (exit status 0).
)";

bool ParseDomid(const std::string& s, uint32_t* out) {
  if (s.empty() || s.size() > 5) return false;
  uint32_t v = 0;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return false;
    v = v * 10 + static_cast<uint32_t>(ch - '0');
  }
  if (v == 0 || v > 65535) return false;
  *out = v;
  return true;
}

int Fail(const char* msg) {
  std::fprintf(stderr, "xenemud: %s (see xenemud --help)\n", msg);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string xenstore_path;
  std::vector<std::pair<uint32_t, std::string>> domains;
  vioport::xen::XenStoreServerOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string v;
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (arg == "--xenstore") {
      if (!value(&xenstore_path)) return Fail("--xenstore needs a path");
    } else if (arg == "--domain") {
      if (!value(&v)) return Fail("--domain needs ID=PATH");
      const size_t eq = v.find('=');
      uint32_t id = 0;
      if (eq == std::string::npos || eq + 1 == v.size() || !ParseDomid(v.substr(0, eq), &id))
        return Fail("--domain wants ID=PATH with ID in 1..65535");
      for (const auto& d : domains)
        if (d.first == id) return Fail("--domain: the same ID twice");
      domains.emplace_back(id, v.substr(eq + 1));
    } else if (arg == "--max-output") {
      if (!value(&v)) return Fail("--max-output needs a byte count");
      char* end = nullptr;
      errno = 0;
      const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
      if (errno || end == v.c_str() || *end || n < 4096 + 16) return Fail("--max-output: bad value (>= 4112)");
      options.max_queued_output = n;
    } else if (arg == "--verbose") {
      options.log_connections = true;
    } else {
      std::fprintf(stderr, "xenemud: unknown argument '%s'\n", arg.c_str());
      return Fail("bad usage");
    }
  }
  if (xenstore_path.empty()) return Fail("--xenstore PATH is required");

  boost::asio::io_context io;
  vioport::xen::XenStore store;
  vioport::xen::XenStoreServer server(io, store, options);
  if (auto st = server.Listen(xenstore_path, 0); !st.ok()) {
    std::fprintf(stderr, "xenemud: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  for (const auto& [id, path] : domains) {
    store.IntroduceDomain(id);
    if (auto st = server.Listen(path, id); !st.ok()) {
      std::fprintf(stderr, "xenemud: %s\n", std::string(st.message()).c_str());
      return 1;
    }
  }
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code&, int) {
    server.Close();
    io.stop();
  });
  std::fprintf(stderr, "xenemud: xenstore on %s (%zu domain socket(s))\n", xenstore_path.c_str(), domains.size());
  io.run();
  return 0;
}
