// SPDX-License-Identifier: Apache-2.0
// xenemud: the Xen channel emulator as a daemon. It plays xenstored (the
// real xenstore wire protocol on Unix sockets, one socket per identity: see
// vioport/emulators/xenstore_server.h) and, with --domains, the hypervisor:
// domains are processes that connect with a sealed RAM memfd, get a grant
// pool, an event eventfd and a hypercall mailbox, and make grant-table and
// event-channel hypercalls into the models here (wire protocol:
// vioport/emulators/xen_remote.h; this side: src/xen_domain_service.h).

#include <sys/resource.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>

#include "xen_domain_service.h"

#include "vioport/emulators/xenstore.h"
#include "vioport/emulators/xenstore_server.h"

namespace {

const char kUsage[] = R"(xenemud: the Xen channel emulator, as a daemon: xenstored and, with
--domains, the hypervisor's grant tables and event channels for domains
that are processes.

usage: xenemud --xenstore PATH [--domain ID=PATH ...] [--max-output BYTES] [--verbose]
               [--domains SOCKET [--max-grant-pages N] [--max-grant-frames N]
                [--max-maptrack N] [--spin-us N]]

xenstore:
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
  --verbose          log xenstore connects and drops to stderr.

domains as processes (vioport::xen::RemoteDomain is the client):
  --domains SOCKET   domains connect here (SOCK_SEQPACKET): HELLO with their
                     domid (0..32751, one connection per id), a RAM memfd
                     sealed F_SEAL_SHRINK (its first frames are the domain's
                     grant table, then the hypercall argument page), the
                     grant-table size and the grant-pool size. xenemud
                     answers with an event-channel eventfd, a hypercall
                     mailbox and a map socket, then the pool's pages (one
                     memfd each: only pool pages can be mapped by another
                     domain, and a backend gets exactly the granted page; a
                     read-only grant gets a read-only fd). Domain ID gets
                     its own xenstore socket, PATH.dID (dom0 uses PATH), and
                     /local/domain/ID (@introduceDomain). A closed connection
                     is the domain's death: its ports close (peers return to
                     unbound), its mappings are unmapped, every backend
                     directory it owned (/local/domain/ID/backend/*/*/*) gets
                     state 6 (Closed), /local/domain/ID goes and
                     @releaseDomain fires; its pages stay valid for backends
                     still mapping them until they unmap (and its id stays
                     taken until then). One stderr line per connect and death.
  --max-grant-pages N  the grant pool cap over all domains, as gntalloc's
                     system-wide limit (default 32768 pages, fewer if the
                     open-file limit is lower: each pool page is one file
                     descriptor in xenemud, 1024 are kept for the rest).
                     Each is also one memory mapping: the kernel's
                     vm.max_map_count (65530 by default) bounds the total.
  --max-grant-frames N grant-table frames per domain, 512 refs each (default
                     64, Xen's gnttab_max_frames).
  --max-maptrack N   live grant maps per grantee (default 262144: Xen's
                     1024 maptrack frames of 256 handles); beyond,
                     GNTST_no_space.
  --spin-us N        after answering a hypercall, poll that domain's mailbox
                     N microseconds for the next one before sleeping
                     (default 50; 0: sleep at once).
  --help             this text.

Protocol: xen/io/xs_wire.h (xsd_sockmsg header, payload <= 4096 bytes; a
larger len closes that connection). Errors are XS_ERROR replies naming the
errno ("ENOENT"). Quotas for domains other than 0: 1000 nodes, 2048-byte
nodes, 5 permissions per node, 128 watches and 10 transactions per
connection. The store lives in memory and is lost at exit.

SIGTERM / SIGINT stop xenemud (exit status 0): every domain dies first.
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

bool ParseNumber(const std::string& s, uint64_t max, uint64_t* out) {
  if (s.empty() || s[0] < '0' || s[0] > '9') return false;
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno || *end || v > max) return false;
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
  vioport::xen::DomainServiceOptions domain_options;
  bool grant_pages_given = false;
  uint64_t n = 0;
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
    } else if (arg == "--domains") {
      if (!value(&domain_options.socket_path)) return Fail("--domains needs a socket path");
    } else if (arg == "--max-grant-pages") {
      if (!value(&v) || !ParseNumber(v, uint64_t{1} << 24, &n)) return Fail("--max-grant-pages: a number up to 16777216");
      domain_options.max_grant_pages = n;
      grant_pages_given = true;
    } else if (arg == "--max-grant-frames") {
      if (!value(&v) || !ParseNumber(v, 4096, &n) || n == 0) return Fail("--max-grant-frames: 1..4096");
      domain_options.max_grant_frames = static_cast<uint32_t>(n);
    } else if (arg == "--max-maptrack") {
      if (!value(&v) || !ParseNumber(v, uint64_t{1} << 20, &n) || n == 0) return Fail("--max-maptrack: 1..1048576");
      domain_options.max_maptrack = static_cast<uint32_t>(n);
    } else if (arg == "--spin-us") {
      if (!value(&v) || !ParseNumber(v, 1000000, &n)) return Fail("--spin-us: microseconds up to 1000000");
      domain_options.spin = std::chrono::microseconds(n);
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
  // Each grant-pool page is an fd here: take every descriptor allowed. With
  // CAP_SYS_RESOURCE that is the kernel's per-process ceiling (fs.nr_open),
  // else the hard limit.
  if (rlimit rl{}; ::getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rlim_t ceiling = rl.rlim_max;
    if (FILE* f = std::fopen("/proc/sys/fs/nr_open", "r")) {
      unsigned long long n = 0;
      if (std::fscanf(f, "%llu", &n) == 1 && n > ceiling) ceiling = static_cast<rlim_t>(n);
      std::fclose(f);
    }
    rlimit want{ceiling, ceiling};
    if (::setrlimit(RLIMIT_NOFILE, &want) != 0 && rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      (void)::setrlimit(RLIMIT_NOFILE, &rl);
    }
    // The pool cannot outgrow the descriptors: keep 1024 for everything else.
    rlimit now{};
    if (!grant_pages_given && ::getrlimit(RLIMIT_NOFILE, &now) == 0 && now.rlim_cur > 2048 &&
        now.rlim_cur - 1024 < domain_options.max_grant_pages)
      domain_options.max_grant_pages = now.rlim_cur - 1024;
  }
  std::unique_ptr<vioport::xen::DomainService> service;
  if (!domain_options.socket_path.empty()) {
    domain_options.xenstore_path = xenstore_path;
    service = std::make_unique<vioport::xen::DomainService>(io, store, server, domain_options);
    if (auto st = service->Start(); !st.ok()) {
      std::fprintf(stderr, "xenemud: %s\n", std::string(st.message()).c_str());
      return 1;
    }
  }
  // Stopping: the domains die first, which needs the io thread (their
  // xenstore work runs there), so a separate thread waits for them and
  // only then closes the xenstore server and stops the io_context.
  std::thread stopper;
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code&, int) {
    stopper = std::thread([&] {
      if (service) service->Shutdown();
      boost::asio::post(io, [&] {
        server.Close();
        io.stop();
      });
    });
  });
  std::fprintf(stderr, "xenemud: xenstore on %s (%zu domain socket(s))%s%s\n", xenstore_path.c_str(), domains.size(),
               domain_options.socket_path.empty() ? "" : "; domains connect at ", domain_options.socket_path.c_str());
  io.run();
  if (stopper.joinable()) stopper.join();
  return 0;
}
