// SPDX-License-Identifier: Apache-2.0
#pragma once

// xenemud's hypervisor half: domains as processes (the client side and the
// wire protocol are in vioport/emulators/xen_remote.h). One thread per
// domain serves its hypercall mailbox (grant copy and unmap, setup_table,
// event channels) and one its map socket (grant maps answered with the one
// page's fd); what each message means is decided by the domain's
// DomainSession (xen_domain_session.h, no sockets in it), and the models
// and the registry of domains (Domains) are shared by all. This file gives
// sessions their sockets, memfds, mappings and threads. xenstore work (a
// domain's socket, /local/domain/ID, @introduceDomain and @releaseDomain,
// closing its backends) is posted to the io_context thread that runs the
// XenStore, which is not thread-safe.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <boost/asio/io_context.hpp>

#include "absl/status/status.h"
#include "vioport/emulators/hcall_mailbox.h"
#include "vioport/emulators/xen_evtchn.h"
#include "vioport/emulators/xen_grants.h"
#include "vioport/emulators/xenstore.h"
#include "vioport/emulators/xenstore_server.h"
#include "xen_domain_session.h"

namespace vioport::xen {

struct DomainServiceOptions {
  std::string socket_path;    // --domains: domains connect here (SOCK_SEQPACKET)
  std::string xenstore_path;  // --xenstore: domain ID's own socket is PATH.dID (dom0 uses PATH)
  // The pool cap over all domains (gntalloc's system-wide limit). Each pool
  // page is one mapping here (pages of different memfds never merge), and
  // vm.max_map_count is 65530 by default: keep the cap well below it.
  uint64_t max_grant_pages = 32768;
  uint32_t max_grant_frames = 64;               // per domain (gnttab_max_frames)
  // Live map handles per grantee: Xen's default, 1024 maptrack frames of
  // 256 handles each (struct grant_mapping is 16 bytes).
  uint32_t max_maptrack = 1024 * 256;
  uint64_t max_memory_bytes = uint64_t{4} << 30;  // RAM per domain
  std::chrono::microseconds spin{50};           // mailbox polling before sleeping
};

class DomainService {
 public:
  // `io` must keep running (on one thread, the XenStore's) until Shutdown
  // has returned: domain threads post xenstore work there and wait for it.
  DomainService(boost::asio::io_context& io, XenStore& store, XenStoreServer& xs_server,
                DomainServiceOptions options);
  ~DomainService();
  DomainService(const DomainService&) = delete;
  DomainService& operator=(const DomainService&) = delete;

  // Listens on options.socket_path and starts accepting domains.
  absl::Status Start();
  // Stops accepting, shuts every domain's connection (each dies as if its
  // process had gone) and joins their threads. Not on the io thread.
  void Shutdown();

 private:
  class ConnectionHost;

  void AcceptLoop();
  void Serve(int fd);
  bool Refuse(int fd, const std::string& why);
  // Serves one domain's map socket until it closes.
  void ServeMaps(DomainSession& session, int fd);
  bool stopping();
  // Runs `f` on the io thread and waits for it.
  void OnIo(std::function<void()> f);
  // The toolstack's part of a death: every backend directory `dom` owned
  // gets state 6 (Closed), so its frontends notice. On the io thread.
  void CloseBackendsOf(DomId dom);

  boost::asio::io_context& io_;
  XenStore& store_;
  XenStoreServer& xs_server_;
  const DomainServiceOptions options_;
  Domains domains_;
  int listen_fd_ = -1, wake_fd_ = -1;
  std::thread acceptor_;
  uint64_t toolstack_conn_ = 0;  // a dom0 XenStore connection (io thread only)
  bool toolstack_open_ = false;

  std::mutex mu_;
  bool stopping_ = false;  // guarded by mu_
  emu::ConnectionThreads conns_;  // last: its threads use the members above
};

}  // namespace vioport::xen
