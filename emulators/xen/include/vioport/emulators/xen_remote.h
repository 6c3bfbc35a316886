// SPDX-License-Identifier: Apache-2.0
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
// Wire protocol (Unix SOCK_SEQPACKET to xenemud --domains PATH; structs in
// namespace wire below, host byte order):
//   domain -> xenemud  Hello{magic, version, domid, grant_frames,
//                      memory_bytes, grant_pages} + SCM_RIGHTS: RAM memfd
//                      (sealed F_SEAL_SHRINK, at least memory_bytes long)
//   xenemud -> domain  HelloReply{status, error, mailbox_bytes,
//                      xenstore_path} + SCM_RIGHTS: the event eventfd, the
//                      mailbox memfd and the map socket (the domain's end of
//                      a socketpair); on refusal only status and error
//   xenemud -> domain  PoolPages{first_index, count} + up to kPoolFdsPerMsg
//                      page memfds, until grant_pages are sent
// xenemud refuses: a bad magic or version; a domid >= DOMID_SELF or one
// connected (after waiting up to a second for a dying connection of that
// id) or still a zombie (below); grant_frames outside 1..--max-grant-frames;
// RAM not whole pages, not holding the table, the argument page and one
// more page, or beyond its limit; grant_pages over what is left of the pool
// cap (--max-grant-pages, over all domains).
// Then hypercalls through the Mailbox (emu::Mailbox, hcall_mailbox.h:
// shared memory polled by both sides for a while, then a one-byte kick on
// the main socket, as crqd's; opcodes in wire::Op), and grant maps through
// the map socket (MapRequest, answered by MapReply + the page's fd when
// okay: a read-only map gets a read-only file description, so the backend
// cannot mmap it writable; a granted frame that is RAM, not a pool page, is
// GNTST_bad_page). Array arguments (copy segments, pending ports) sit in
// the caller's argument page, as guest handles do on Xen: xenemud reads
// them once and validates them. The caller's identity is the connection's
// HELLO domid, never a message field.
// xenstore: domain ID's socket is xenemud's --xenstore PATH with ".dID"
// appended (dom0: PATH itself), listening from HELLO until the domain dies.
// Closing the connection is the domain's death: its ports close (peers
// return to unbound), its own mappings are unmapped, every backend
// directory it owned (/local/domain/ID/backend/*/*/*) gets state 6
// (Closed), xenstore removes /local/domain/ID (not dom0's) and fires
// @releaseDomain, and its xenstore socket and connections go. Pages it
// granted stay valid for a backend still mapping them, until that backend
// unmaps; until then the dead domain is a zombie and its id cannot connect
// again (as on Xen, where a dying domain keeps its id).

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
#include "vioport/transports/handover.h"

namespace vioport::xen {

namespace wire {
inline constexpr uint32_t kHelloMagic = 0x58454E44;  // "XEND"
inline constexpr uint32_t kWireVersion = 1;
// Pool page fds per PoolPages message (SCM_RIGHTS carries at most 253).
inline constexpr uint32_t kPoolFdsPerMsg = 250;

struct Hello {
  uint32_t magic = kHelloMagic;
  uint32_t version = kWireVersion;
  uint32_t domid = 0;
  uint32_t grant_frames = 0;
  uint64_t memory_bytes = 0;
  uint32_t grant_pages = 0;
  uint32_t reserved = 0;
};
struct HelloReply {
  uint32_t magic = kHelloMagic;
  int32_t status = 0;     // 0 = accepted
  uint32_t mailbox_bytes = 0;
  uint32_t reserved = 0;
  char error[120] = {};
  char xenstore_path[108] = {};  // sockaddr_un.sun_path
};
struct PoolPages {
  uint32_t magic = kHelloMagic;
  uint32_t first_index = 0;  // pool page index of the first fd
  uint32_t count = 0;        // fds in this message
  uint32_t reserved = 0;
};
// The map socket: one request, one answer (+ the page's fd when okay).
struct MapRequest {
  uint32_t magic = kHelloMagic;
  uint32_t granter = 0;
  uint32_t ref = 0;
  uint32_t readonly = 1;
};
struct MapReply {
  uint32_t magic = kHelloMagic;
  int32_t status = 0;  // GNTST code
  uint32_t handle = 0;
  uint32_t reserved = 0;
};

// Mailbox opcodes (emu::Mailbox; args[] as listed; rc as listed, -errno or
// a GNTST code). The argument page is RAM frame grant_frames.
enum Op : uint64_t {
  kSetupTable = 1,             // first_frame, nr_frames -> GNTST
  kGrantCopy = 2,              // count: CopySegmentWire[count] in the argument page, statuses written back -> GNTST_okay or -errno
  kGrantUnmap = 3,             // handle -> GNTST
  kEvtchnAllocUnbound = 4,     // remote -> port or -errno
  kEvtchnBindInterdomain = 5,  // remote, remote_port -> port or -errno
  kEvtchnSend = 6,             // port -> 0 or -errno
  kEvtchnClose = 7,            // port
  kEvtchnUnmask = 8,           // port
  kEvtchnPending = 9,          // max -> n: n ports (u32) in the argument page
};
// struct gnttab_copy as it sits in the argument page.
struct CopySegmentWire {
  uint32_t source_ref_or_gmfn = 0;
  uint16_t source_domid = 0;
  uint16_t source_offset = 0;
  uint32_t dest_ref_or_gmfn = 0;
  uint16_t dest_domid = 0;
  uint16_t dest_offset = 0;
  uint16_t len = 0;
  uint16_t flags = 0;
  int16_t status = 0;  // written by xenemud
  uint16_t reserved = 0;
};
static_assert(sizeof(CopySegmentWire) == 24);
inline constexpr uint32_t kCopySegmentsPerCall = 4096 / sizeof(CopySegmentWire);  // 170
inline constexpr uint32_t kPendingPortsPerCall = 4096 / sizeof(uint32_t);

// Delivered ports, without a hypercall: xenemud (the only producer) moves
// each port the model delivers to the domain into this ring, in the
// mailbox's second half, before it signals the eventfd. The domain pops
// them; when the ring was full xenemud sets `overflow` and leaves the rest
// in the model, where the kEvtchnPending hypercall finds them. xenemud keeps
// its own producer index and never trusts what the domain writes here (as
// Xen's shared_info pending bits: a guest can only confuse itself).
inline constexpr size_t kEventRingOffset = 2048;
inline constexpr uint32_t kEventRingSlots = 256;
struct EventRing {
  std::atomic<uint32_t> prod;      // xenemud
  std::atomic<uint32_t> cons;      // the domain
  std::atomic<uint32_t> overflow;  // set by xenemud, cleared by the domain
  uint32_t reserved;
  std::atomic<uint32_t> ports[kEventRingSlots];
};
static_assert(kEventRingOffset + sizeof(EventRing) <= 4096);
}  // namespace wire

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
  // map socket and pool pages, maps the pool. xenemud has set up the grant
  // table (GNTTABOP_setup_table on frames 0..grant_frames-1) before it
  // answers, so grant_table() can be written at once.
  // Fails (clear message) if xenemud refuses, e.g. the domid is connected.
  static absl::StatusOr<std::unique_ptr<RemoteDomain>> Connect(const RemoteDomainOptions& options);
  ~RemoteDomain();  // closes the connection: xenemud removes the domain
  RemoteDomain(const RemoteDomain&) = delete;
  RemoteDomain& operator=(const RemoteDomain&) = delete;

  DomId id() const;
  // False once xenemud has gone or after Disconnect. From then on every call
  // fails at once (GNTST_general_error, -ENODEV, Pending 0) and event_fd() is
  // readable, so waiters wake and find out.
  bool connected() const;
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
  // `at`: where to map it (MAP_FIXED over a page of address space the
  // caller reserved, e.g. to lay several grants out contiguously), or
  // nullptr for anywhere. Unmap releases that page of address space.
  GrantMapping Map(DomId granter, GrantRef ref, bool readonly, uint8_t* at = nullptr);
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
  // returns how many were written (at most wire::kPendingPortsPerCall per
  // call; call again for the rest). Read event_fd() first to clear it.
  size_t Pending(std::span<EvtchnPort> out);

  // ---- xenstore ------------------------------------------------------------
  // The socket whose connections act as this domain (XENSTORED_PATH for
  // libxenstore). dom0's is xenemud's --xenstore path.
  const std::string& xenstore_path() const;
  // Live upgrade (a backend domain, no grant pool): the connection, map
  // socket, memory, event eventfd and hypercall mailbox go to another
  // process (Adopt there); xenemud never notices.
  absl::Status Export(HandoverWriter* out) const;
  static absl::StatusOr<std::unique_ptr<RemoteDomain>> Adopt(HandoverReader& in);

  // Hypercalls made (for tests and benchmarks).
  uint64_t hypercalls() const;

 private:
  RemoteDomain();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vioport::xen
