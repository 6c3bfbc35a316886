#pragma once

// A domain process connected to the Xen emulator daemon (xenemud): the
// hypervisor is its own process; grant-table and event-channel hypercalls
// are calls into it (docs/transports/xen.md, "The emulator across processes").
//
// What a domain has
//   * RAM: a memfd the domain creates, sealed F_SEAL_SHRINK|F_SEAL_GROW,
//     shared with xenemud only (never with another domain). Frames 0 ..
//     grant_frames-1 hold the domain's own v1 grant table (GNTTABOP_setup_table
//     at connect); the next page is the hypercall argument page (copy
//     segments); the rest (buffer_area) is the domain's to use, e.g. as the
//     local side of grant copies.
//   * A grant pool ("gntshr pages"): grant_pages pages that xenemud creates
//     at HELLO, each its own one-page memfd, mapped here contiguously at
//     pool(). Their frame numbers are pool_first_frame() + i, after the RAM's
//     frames. Only pool frames can be MAPPED by another domain (a memfd gives
//     whoever holds it the whole file, so a backend gets exactly the one page
//     a grant names); any frame can be copied. A domain grants a page by
//     writing its own table (grant_table(): GrantTableWriter), as on Xen: no
//     hypercall.
//   * An event-channel eventfd: xenemud adds 1 for each port newly delivered
//     to this domain; Pending() then names the ports.
//   * A xenstore socket: xenemud listens on xenstore_path() for this domain
//     (connections there act as this domid) from HELLO until the domain dies,
//     and creates /local/domain/ID owned by it (@introduceDomain).
//
// Wire protocol (Unix SOCK_SEQPACKET to xenemud --domains PATH):
//   domain -> xenemud  Hello{magic, version, domid, grant_frames,
//                      memory_bytes, grant_pages} + SCM_RIGHTS: RAM memfd
//   xenemud -> domain  HelloReply{status, error, xenstore_path} +
//                      SCM_RIGHTS: the event eventfd, the mailbox memfd and
//                      the map socket (the domain's end of a socketpair)
//   xenemud -> domain  PoolPages{first_index, count} + up to kPoolFdsPerMsg
//                      page memfds, until grant_pages are sent
// then hypercalls through the Mailbox (shared memory, polled by both sides
// for a while, then a one-byte kick on the main socket, as crqd's), and
// grant maps through the map socket (a request and an answer carrying the
// page's fd: a read-only map gets a read-only file description, so the
// backend cannot mmap it writable). The caller's identity is the
// connection's HELLO domid, never a message field. Closing the connection is
// the domain's death: its ports close (peers return to unbound), its own
// mappings are unmapped, xenstore removes /local/domain/ID and fires
// @releaseDomain; pages it granted stay valid for a backend still mapping
// them, until that backend unmaps.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "vioport/emulators/xen_evtchn.h"
#include "vioport/emulators/xen_grants.h"
#include "vioport/emulators/xen_types.h"

namespace vioport::xen {

struct RemoteDomainOptions {
  std::string socket_path;         // xenemud --domains PATH
  DomId id = 0;                    // 0 is dom0 (a backend in dom0); 1..0x7FEF
  uint64_t memory_bytes = 4 << 20; // RAM, whole 4 KiB pages
  uint32_t grant_frames = 4;       // grant-table frames at the start of RAM (512 refs each)
  uint32_t grant_pages = 0;        // the grant pool (0 for a pure backend)
  std::chrono::milliseconds connect_timeout{5000};  // connect retried until then
  std::chrono::microseconds spin{50};  // a hypercall polls this long before sleeping
};

// One page of another domain, mapped here (gntdev-like).
struct GrantMapping {
  int16_t status = gntst::kGeneralError;  // GNTST code; the rest valid when kOkay
  uint8_t* addr = nullptr;                // one 4 KiB page
  GrantHandle handle = kInvalidGrantHandle;
  bool readonly = true;
};

class RemoteDomain {
 public:
  // Creates and seals RAM, connects, HELLO, receives the eventfd, mailbox,
  // map socket and pool pages, maps the pool, sets up the grant table.
  // Fails (clear message) if xenemud refuses, e.g. the domid is connected.
  static absl::StatusOr<std::unique_ptr<RemoteDomain>> Connect(const RemoteDomainOptions& options);
  ~RemoteDomain();  // closes the connection: xenemud removes the domain
  RemoteDomain(const RemoteDomain&) = delete;
  RemoteDomain& operator=(const RemoteDomain&) = delete;

  DomId id() const;
  bool connected() const;  // false once xenemud has gone or after Disconnect
  void Disconnect();       // the domain "dies" now; memory stays mapped until destruction

  // ---- Memory --------------------------------------------------------------
  uint8_t* memory() const;
  uint64_t memory_bytes() const;
  uint8_t* buffer_area() const;        // RAM after the table and the argument page
  uint64_t buffer_area_bytes() const;
  // The RAM frame (GMFN) holding `p`, or nullopt if p is not in RAM.
  std::optional<uint32_t> RamFrame(const uint8_t* p) const;
  uint8_t* pool() const;
  uint32_t pool_pages() const;
  uint32_t pool_first_frame() const;
  // This domain's grant table (entries in its RAM); size() refs.
  GrantTableWriter& grant_table();

  // ---- Grants, as a grantee (backend) -------------------------------------
  // Maps page `ref` of `granter` (GNTTABOP_map_grant_ref through the map
  // socket) read-only or read-write; status is Xen's (bad_domain, bad_gntref,
  // general_error for wrong domid / readonly / not permitted, no_space when
  // out of handles, bad_page for a frame that is not a pool page).
  GrantMapping Map(DomId granter, GrantRef ref, bool readonly);
  // Unmaps (munmap, then GNTTABOP_unmap_grant_ref); returns the GNTST code.
  int16_t Unmap(const GrantMapping& m);
  // GNTTABOP_copy. The local side of each segment is a RAM frame of this
  // domain (domid kDomidSelf, gmfn = RamFrame(p)); each segment gets its
  // status. Any number of segments (batched through the argument page).
  void Copy(std::span<CopySegment> segments);

  // ---- Event channels ------------------------------------------------------
  int event_fd() const;
  int64_t AllocUnbound(DomId remote);                           // port or -errno
  int64_t BindInterdomain(DomId remote, EvtchnPort remote_port);  // port or -errno
  int64_t Send(EvtchnPort port);                                // 0 or -errno
  int64_t Unmask(EvtchnPort port);
  int64_t Close(EvtchnPort port);
  // Delivered ports (each left masked until Unmask), at most out.size();
  // returns how many were written. Read event_fd() first to clear it.
  size_t Pending(std::span<EvtchnPort> out);

  // ---- xenstore ------------------------------------------------------------
  // The socket whose connections act as this domain (XENSTORED_PATH for
  // libxenstore). dom0's is xenemud's --xenstore path.
  const std::string& xenstore_path() const;

  // Hypercalls made (for tests and benchmarks).
  uint64_t hypercalls() const;

 private:
  RemoteDomain();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vioport::xen
