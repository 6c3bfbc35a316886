// SPDX-License-Identifier: Apache-2.0
// xen::XenStoreServer: serves a XenStore over Unix stream sockets with the
// real xenstore wire protocol, on a Boost.Asio io_context (single-threaded:
// run the io_context on one thread; the XenStore is not locked).
//
// Each listening socket carries one identity: the privileged socket
// (domid 0; what libxenstore's xs_open and xenstore-utils reach through
// $XENSTORED_PATH) and optional per-domain sockets whose connections act as
// that domid, so permissions and quotas can be exercised. In real Xen all
// socket clients are dom0 and guests use a shared ring; this is the
// emulator's substitute for the ring.
//
// A client that sends a header with len > 4096 loses its connection (as with
// C xenstored); so does one whose unsent output (replies + watch events)
// exceeds max_queued_output, i.e. a reader too slow for its watches. Other
// connections are unaffected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>

#include "absl/status/status.h"
#include "vioport/emulators/xenstore.h"

namespace vioport::xen {

struct XenStoreServerOptions {
  size_t max_queued_output = 1 << 20;  // bytes per connection
  bool log_connections = false;        // one stderr line per connect / drop
};

class XenStoreServer {
 public:
  XenStoreServer(boost::asio::io_context& io, XenStore& store, XenStoreServerOptions options = {});
  ~XenStoreServer();
  XenStoreServer(const XenStoreServer&) = delete;
  XenStoreServer& operator=(const XenStoreServer&) = delete;

  // Listens on `path` (a stale socket file there is replaced); connections
  // accepted there act as `domid`.
  absl::Status Listen(const std::string& path, uint32_t domid);
  // Stops accepting on `path` (one Listen's socket) and removes its socket
  // file; connections already accepted stay. NotFound if not listening there.
  absl::Status StopListening(const std::string& path);
  // Closes every connection acting as `domid` (a domain that died: its
  // watches and transactions go away). Returns how many.
  size_t CloseConnectionsOf(uint32_t domid);
  // Stops accepting, closes every connection (their watches and
  // transactions go away) and removes the socket files.
  void Close();

  size_t connection_count() const;
  // Connections closed for protocol violations or output overflow.
  uint64_t dropped_connections() const;

  struct Impl;  // implementation detail (xenstore_server.cc)

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace vioport::xen
