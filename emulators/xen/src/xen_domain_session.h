// SPDX-License-Identifier: Apache-2.0
#pragma once

// xenemud's hypervisor half without sockets, threads or polling. Domains
// holds what every domain shares: the grant-table and event-channel models
// and the registry of domains (live, and dead ones whose pages others still
// map: zombies) with the grant-pool cap. A DomainSession is one domain's
// connection as a state machine: Hello() takes the HELLO's bytes, Call()
// each mailbox request as loaded from shared memory, Map() each map-socket
// request, Close() the death; each returns what to answer. What needs the
// kernel or the xenstore thread (the memfd, the domain's memory and pool
// pages, its mailbox and eventfd, xenstore introduction and release) goes
// through the Host and DomainMemory. DomainService (xen_domain_service.h)
// wraps sessions with xenemud's sockets and threads; fuzz_xenemud drives
// them directly. Wire protocol: vioport/emulators/xen_remote.h.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "vioport/emulators/xen_evtchn.h"
#include "vioport/emulators/xen_grants.h"
#include "vioport/emulators/xen_remote.h"

namespace vioport::xen {

struct DomainLimits {
  // The pool cap over all domains (gntalloc's system-wide limit).
  uint64_t max_grant_pages = 32768;
  uint32_t max_grant_frames = 64;                 // per domain (gnttab_max_frames)
  uint32_t max_maptrack = 1024 * 256;             // live map handles per grantee (Xen's default)
  uint64_t max_memory_bytes = uint64_t{4} << 30;  // RAM per domain
  // Domain ID's xenstore socket is PATH.dID (dom0: PATH).
  std::string xenstore_path;
};

// A domain's memory as the host made it: RAM, then the grant pool's pages,
// as one range (GrantTables' frame numbers index it). Destroying it releases
// it; Domains does so only once no one maps its pages.
class DomainMemory {
 public:
  virtual ~DomainMemory() = default;
  virtual uint8_t* base() const = 0;
  // A descriptor of pool page `index` to send with a map reply; read-only
  // when asked (a read-only description cannot be mapped writable). -1 on
  // failure. *owned: the caller closes it once sent.
  virtual int PageFd(uint32_t index, bool readonly, bool* owned) = 0;
};

// xenemud's end of a domain's event ring (wire::EventRing, in the second
// half of its mailbox page): the only producer. The model's deliveries to
// the domain are moved into the ring, then `signal` runs (xenemud: the
// domain's eventfd). The domain's consumer index is untrusted. Deliveries
// for one domain can come from several threads at once (every domain's
// hypercalls), hence the lock.
class EventRingProducer {
 public:
  // `mailbox` is kMailboxBytes long and stays valid while `keep` lives.
  EventRingProducer(uint8_t* mailbox, std::function<void()> signal, std::shared_ptr<void> keep)
      : map_(mailbox), signal_(std::move(signal)), keep_(std::move(keep)) {}
  void Deliver(EventChannels& ev, DomId dom);

 private:
  std::mutex mu_;
  uint8_t* map_;
  uint32_t prod_ = 0;
  std::function<void()> signal_;
  std::shared_ptr<void> keep_;
};

class DomainSession;

class Domains {
 public:
  // `log` gets one line per death and per zombie released (xenemud: stderr).
  explicit Domains(DomainLimits limits, std::function<void(const std::string&)> log = {});
  ~Domains();
  Domains(const Domains&) = delete;
  Domains& operator=(const Domains&) = delete;

  const DomainLimits& limits() const { return limits_; }
  GrantTables& grants() { return grants_; }
  EventChannels& evtchn() { return evtchn_; }

  // Frees every domain's memory, zombies' too: nobody will unmap any more
  // (the daemon is stopping, every session closed).
  void FreeAll();

  // Observation.
  uint64_t pool_in_use() const;
  size_t size() const;  // domains known, live and zombie
  bool Known(DomId id) const;
  bool Zombie(DomId id) const;

 private:
  friend class DomainSession;
  struct Domain {
    DomId id = 0;
    std::string xs_path;  // its xenstore socket (dom0: the main one)
    uint64_t ram_bytes = 0;
    uint32_t ram_pages = 0;
    uint32_t grant_frames = 0;
    uint32_t pool_pages = 0;
    std::unique_ptr<DomainMemory> memory;  // null until mapped and once freed (guarded by mu_)
    uint8_t* base = nullptr;               // memory->base(), set once
    std::shared_ptr<EventRingProducer> ring;
    bool in_grants = false, in_evtchn = false, in_xenstore = false;
    bool zombie = false;  // dead, memory kept while others map its pages (guarded by mu_)
    uint8_t* arg_page() const { return base + uint64_t{grant_frames} * kXenPageSize; }
  };
  enum class Claim { kClaimed, kTaken, kPoolFull };
  // Registers `d` under its id if no domain (live or zombie) holds it and
  // the pool cap allows its pages; *left: pool pages left, *zombie: whether
  // the holder is a zombie.
  Claim TryClaim(const std::shared_ptr<Domain>& d, uint64_t* left, bool* zombie);
  std::shared_ptr<Domain> Find(DomId id) const;
  // The end of a death: the memory goes now, or once others stop mapping it.
  void Bury(const std::shared_ptr<Domain>& d, bool log);
  // Frees the memory of zombies no one maps any more.
  void Reap();
  void Log(const std::string& line) const {
    if (log_) log_(line);
  }
  static void FreeMemory(Domain& d) { d.memory.reset(); }

  const DomainLimits limits_;
  std::function<void(const std::string&)> log_;
  GrantTables grants_;
  EventChannels evtchn_;
  mutable std::mutex mu_;
  std::map<DomId, std::shared_ptr<Domain>> domains_;  // guarded by mu_
  uint64_t pool_in_use_ = 0;                          // guarded by mu_
};

class DomainSession {
 public:
  // What the session needs from its connection; called on the thread of the
  // session method that needs it.
  class Host {
   public:
    virtual ~Host() = default;
    // The RAM fd that came with HELLO: "" if it is sealed against
    // shrinking and holds `bytes`, else why not.
    virtual std::string CheckMemory(uint64_t bytes) = 0;
    // Another connection or a zombie holds the id: true to try again after
    // a pause, false to refuse.
    virtual bool RetryClaim() = 0;
    // The domain's memory: `ram_bytes` of the RAM fd, then `pool_pages`
    // fresh pages, in one range.
    virtual absl::StatusOr<std::unique_ptr<DomainMemory>> MapMemory(DomId id, uint64_t ram_bytes,
                                                                    uint32_t pool_pages) = 0;
    // The connection's mailbox, event signal and map channel for an admitted
    // domain; returns where the domain's event deliveries go.
    virtual absl::StatusOr<std::shared_ptr<EventRingProducer>> OpenChannels(DomId id) = 0;
    // The domain's xenstore identity: its socket at `xs_path` (not dom0's),
    // /local/domain/ID, @introduceDomain; Release undoes it at its death
    // (and closes the backends it owned).
    virtual absl::Status Introduce(DomId id, const std::string& xs_path) = 0;
    virtual void Release(DomId id, const std::string& xs_path) = 0;
  };

  struct HelloResult {
    bool accepted = false;
    std::string error;  // when refused: the HelloReply's text
  };
  struct MapAnswer {
    wire::MapReply reply;
    int fd = -1;            // the page's, sent with an okay reply
    bool close_fd = false;  // the caller closes `fd` once sent
  };

  DomainSession(Domains& domains, Host* host) : domains_(domains), host_(host) {}
  ~DomainSession() { Close(false); }
  DomainSession(const DomainSession&) = delete;
  DomainSession& operator=(const DomainSession&) = delete;

  // The HELLO as received (anything but sizeof(wire::Hello) bytes is
  // refused) and whether an fd came with it. Refused: nothing is left
  // behind. Once per connection.
  HelloResult Hello(std::span<const uint8_t> bytes, bool memfd_passed);
  // One mailbox request (opcode, then the kMailboxArgs words as loaded;
  // fewer read as 0): the rc to answer, -errno or a GNTST code. Array
  // arguments are read once from, and results written to, the domain's
  // argument page. Without an accepted HELLO: -ENOSYS.
  int64_t Call(uint64_t opcode, std::span<const uint64_t> args);
  // One map-socket request (anything but sizeof(wire::MapRequest) bytes is
  // GNTST_general_error). Call and Map may run on two threads at once.
  MapAnswer Map(std::span<const uint8_t> bytes);
  // The okay answer could not be sent: the mapping is undone.
  void MapNotDelivered(const MapAnswer& a);
  // The domain died: its ports close (peers return to unbound), its own
  // mappings go, its xenstore identity is released, and its memory is freed
  // unless others still map its pages (then it is a zombie until they
  // unmap). `log`: one line about it. Idempotent.
  void Close(bool log);

  bool attached() const { return d_ != nullptr; }
  DomId id() const { return d_ ? d_->id : 0; }
  const std::string& xs_path() const { return xs_path_; }
  uint32_t pool_pages() const { return d_ ? d_->pool_pages : 0; }
  uint8_t* memory() const { return d_ ? d_->base : nullptr; }

 private:
  HelloResult Refuse(std::string why) { return HelloResult{false, std::move(why)}; }
  // Undoes a Hello that failed after the domain was registered.
  HelloResult Fail(const std::shared_ptr<Domains::Domain>& d, std::string why);
  // The model and registry part of a death (no xenstore: Release did that).
  void Die(const std::shared_ptr<Domains::Domain>& d, bool log);

  Domains& domains_;
  Host* host_;
  bool said_hello_ = false;
  std::shared_ptr<Domains::Domain> d_;  // once admitted, until Close
  std::string xs_path_;
};

}  // namespace vioport::xen
