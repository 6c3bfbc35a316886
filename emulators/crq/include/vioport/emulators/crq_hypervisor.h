// SPDX-License-Identifier: Apache-2.0
#pragma once

// Hypervisor: the state and hypercall semantics of a PowerVM-like hypervisor
// for CRQ adapter pairs and H_COPY_RDMA (docs/reference/crq.md, "Design
// implications" 1-10). It is a library: usable in-process by tests, and meant
// to be wrapped by a daemon that gives each partition process its own
// connection. Every hypercall names the calling partition explicitly; the
// hypervisor never trusts anything else from the caller.
//
// Model
//   * A partition is a span of "real" memory (e.g. a mapped memfd); real
//     addresses are offsets into it. RemovePartition = the partition died.
//   * An adapter pair (configured like an HMC virtual adapter pair) is a
//     client endpoint and a server endpoint. Each endpoint has a unit address
//     (unique per partition), its own LIOBN naming its own TCE table (window
//     size / 4 KiB entries), an optional registered queue (in its own memory,
//     addressed by IOBA through its own TCEs) and an interrupt enable (signal
//     mode). The server also names the client's LIOBN as its REMOTE window:
//     it may use it in H_COPY_RDMA but cannot map it (H_PUT_TCE on it ->
//     H_PARAMETER).
//   * TCE = real page address | kTceRead (device may read) | kTceWrite
//     (device may write); 0 = invalid. H_PUT_TCE_INDIRECT lists are BE64.
//
// H_COPY_RDMA rules (checked in this order, nothing copied unless all pass):
//   len == 0 or len > kMaxCopyBytes -> H_PARAMETER; unknown s_liobn ->
//   H_SOURCE_PARM; unknown d_liobn -> H_DEST_PARM; the two windows belong to
//   different pairs, or the caller owns neither (a client owns its own window,
//   a server its LOCAL and its REMOTE) -> H_PARAMETER; a window whose owner is
//   not the caller and whose owner has died or has no registered queue is
//   revoked -> H_PERMISSION; then page by page, source: IOBA outside the
//   window or TCE invalid (0) -> H_SOURCE_PARM, valid TCE without kTceRead ->
//   H_PERMISSION; destination likewise with H_DEST_PARM / kTceWrite.
//   Overlapping source and destination in one partition's memory are copied
//   as by memmove only within each 4 KiB run; don't rely on it.
//
// Interrupts are edges: each entry landing in a queue whose endpoint has
// signal mode 1 increments the endpoint's and the partition's interrupt count,
// writes 1 to the partition's eventfd (if set) and calls its callback (if set;
// called without the hypervisor lock held, so it may make hypercalls).
//
// Thread safety: all methods may be called from any thread; one mutex guards
// the state. Entries are written as PowerVM/QEMU do: check byte 0 of the
// producer slot (acquire load) -> bytes 8-15 -> bytes 1-7 -> byte 0 with a
// release store, so a consumer in another thread or process that reads byte 0
// with acquire sees the whole entry.
//
// Return codes not pinned down by public sources (documented choices):
//   * a caller that is not a present partition, an unknown unit, or a unit
//     of another partition -> H_PARAMETER;
//   * H_FREE_CRQ with no queue registered -> H_SUCCESS (as QEMU), no event;
//   * H_ENABLE_CRQ with no migration pending -> H_SUCCESS (as QEMU);
//   * after a migration event the endpoint's queue is disabled until
//     H_ENABLE_CRQ succeeds: sends to it give H_CLOSED.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "vioport/transports/crq_hcall.h"

namespace vioport::crq {

struct AdapterPairConfig {
  PartitionId client_partition = 0;
  UnitAddress client_unit = 0;
  Liobn client_liobn = 0;
  uint64_t client_window_bytes = 0;  // multiple of 4 KiB, > 0
  PartitionId server_partition = 0;
  UnitAddress server_unit = 0;
  Liobn server_liobn = 0;  // the server's LOCAL window; its REMOTE is client_liobn
  uint64_t server_window_bytes = 0;
};

struct HcallCounters {
  uint64_t calls = 0;
  uint64_t errors = 0;        // rc < 0
  uint64_t not_success = 0;   // rc != H_SUCCESS (includes H_CLOSED, H_BUSY, H_IN_PROGRESS)
  uint64_t bytes_copied = 0;  // H_COPY_RDMA only
};

struct HypervisorStats {
  // By opcode: every known hypercall, and the first unknown opcodes called
  // (up to Hypervisor::kMaxTrackedOpcodes entries in all); calls to further
  // unknown opcodes are counted in untracked_hcalls, so that a partition
  // calling every number cannot grow this without bound.
  std::map<uint64_t, HcallCounters> per_hcall;
  HcallCounters untracked_hcalls;
  uint64_t messages_delivered = 0;              // H_SEND_CRQ entries written
  uint64_t messages_lost = 0;                   // injected drops (sender saw H_SUCCESS)
  uint64_t events_posted = 0;                   // 0xFF entries written
  uint64_t events_lost = 0;                     // 0xFF entries that found the queue full
  uint64_t interrupts = 0;
};

enum class DelayMode { kBusyWait, kSleep };

class Hypervisor {
 public:
  static constexpr uint64_t kMaxCopyBytes = 16ull << 20;  // per H_COPY_RDMA call (PAPR minimum: 128 KiB)
  static constexpr uint64_t kMaxQueueBytes = 256ull << 20;
  static constexpr size_t kMaxTrackedOpcodes = 64;  // HypervisorStats::per_hcall entries

  using InterruptCallback = std::function<void(PartitionId, UnitAddress)>;

  Hypervisor() = default;
  Hypervisor(const Hypervisor&) = delete;
  Hypervisor& operator=(const Hypervisor&) = delete;
  ~Hypervisor();

  // ---- Configuration ----------------------------------------------------------
  // `memory` stays owned by the caller and must outlive the partition's
  // membership (until RemovePartition or the Hypervisor's destruction). A
  // partition id may be added again after RemovePartition (a restart): its
  // adapters keep their configuration, with empty TCE tables and no queues.
  absl::Status AddPartition(PartitionId id, uint8_t* memory, uint64_t size);
  // The partition died: its queues are detached and each partner with a
  // registered queue receives FF 01; its TCE tables are cleared, so copies
  // naming its windows fail (H_PERMISSION).
  absl::Status RemovePartition(PartitionId id);
  absl::Status AddAdapterPair(const AdapterPairConfig& config);
  // eventfd (not owned; -1 = none) written with 1 per interrupt edge.
  absl::Status SetInterruptEventfd(PartitionId id, int fd);
  absl::Status SetInterruptCallback(PartitionId id, InterruptCallback callback);

  // ---- Hypercalls (return the PAPR code) ------------------------------------
  int64_t RegCrq(PartitionId caller, uint64_t unit, uint64_t queue_ioba, uint64_t queue_len);
  int64_t FreeCrq(PartitionId caller, uint64_t unit);
  int64_t SendCrq(PartitionId caller, uint64_t unit, uint64_t msg_hi, uint64_t msg_lo);
  int64_t EnableCrq(PartitionId caller, uint64_t unit);
  int64_t VioSignal(PartitionId caller, uint64_t unit, uint64_t mode);
  int64_t PutTce(PartitionId caller, uint64_t liobn, uint64_t ioba, uint64_t tce);
  int64_t GetTce(PartitionId caller, uint64_t liobn, uint64_t ioba, uint64_t* tce);
  int64_t StuffTce(PartitionId caller, uint64_t liobn, uint64_t ioba, uint64_t tce, uint64_t npages);
  int64_t PutTceIndirect(PartitionId caller, uint64_t liobn, uint64_t ioba, uint64_t list_real_addr,
                         uint64_t npages);
  int64_t CopyRdma(PartitionId caller, uint64_t len, uint64_t s_liobn, uint64_t s_ioba, uint64_t d_liobn,
                   uint64_t d_ioba);
  // Generic entry point for a daemon: opcode + r4.. arguments (missing ones
  // read as 0). Unknown opcode -> H_FUNCTION.
  HcallResult Hcall(PartitionId caller, uint64_t opcode, std::span<const uint64_t> args);

  // ---- Control / fault injection ----------------------------------------------
  // Post a transport event (FF reason) into the queue of (partition, unit), if
  // registered; returns NotFound for an unknown endpoint.
  absl::Status PostTransportEvent(PartitionId partition, UnitAddress unit, uint8_t reason);
  // Pretend (partition, unit)'s partition failed: FF 01 to its partner. The
  // endpoint itself is left as it is (use RemovePartition for a real death).
  absl::Status InjectPartnerFailed(PartitionId partition, UnitAddress unit);
  // Migration seen by (partition, unit): FF 06 into its queue, queue disabled;
  // its H_ENABLE_CRQ answers H_IN_PROGRESS `in_progress_calls` times, then
  // H_SUCCESS and re-enables the queue.
  absl::Status InjectMigration(PartitionId partition, UnitAddress unit, uint32_t in_progress_calls);
  // The next n H_FREE_CRQ calls on (partition, unit) return H_BUSY and do nothing.
  absl::Status InjectFreeBusy(PartitionId partition, UnitAddress unit, uint32_t n);
  // The next n H_SEND_CRQ messages addressed to (partition, unit) are lost:
  // the sender gets H_SUCCESS, nothing lands.
  absl::Status InjectDropMessages(PartitionId partition, UnitAddress unit, uint32_t n);
  // The next n H_SEND_CRQ messages addressed to (partition, unit) answer
  // H_DROPPED, as if its queue were full; nothing lands.
  absl::Status InjectFullQueue(PartitionId partition, UnitAddress unit, uint32_t n);
  // Added to every hypercall before it takes the lock (0 = none).
  void SetHcallDelay(uint64_t nanoseconds, DelayMode mode = DelayMode::kBusyWait);

  // ---- Observation ------------------------------------------------------------
  HypervisorStats Stats() const;
  uint64_t InterruptCount(PartitionId partition, UnitAddress unit) const;  // 0 for unknown
  bool QueueRegistered(PartitionId partition, UnitAddress unit) const;
  uint8_t SignalMode(PartitionId partition, UnitAddress unit) const;

 private:
  struct Endpoint;
  struct Window {
    Liobn liobn = 0;
    Endpoint* owner = nullptr;  // the endpoint whose LOCAL window this is
    std::vector<uint64_t> tces;
  };
  struct Endpoint {
    PartitionId partition = 0;
    UnitAddress unit = 0;
    size_t pair = 0;
    Endpoint* partner = nullptr;
    Window* window = nullptr;         // own (LOCAL)
    Window* remote = nullptr;         // server only: the client's window
    std::vector<uint64_t> queue_pages;  // real addresses of the queue's pages; empty = none
    uint64_t queue_bytes = 0;
    uint64_t cursor = 0;
    bool enabled = true;  // false between a migration event and H_ENABLE_CRQ success
    uint8_t signal_mode = 0;
    uint32_t enable_in_progress = 0;
    uint32_t free_busy = 0;
    uint32_t drop_next = 0;
    uint32_t full_next = 0;
    uint64_t interrupts = 0;
  };
  // Sets one of an endpoint's fault counters (free_busy, drop_next, full_next).
  absl::Status SetFault(PartitionId partition, UnitAddress unit, uint32_t Endpoint::*counter, uint32_t n);
  struct Partition {
    uint8_t* memory = nullptr;
    uint64_t size = 0;
    bool present = false;
    int eventfd = -1;
    InterruptCallback callback;
  };
  struct Pending {  // interrupt callbacks to run once the lock is released
    struct Irq {
      PartitionId partition;
      UnitAddress unit;
      InterruptCallback callback;
    };
    std::vector<Irq> irqs;
  };
  struct Key {
    PartitionId partition;
    UnitAddress unit;
    auto operator<=>(const Key&) const = default;
  };

  void Delay() const;
  template <typename F>
  int64_t Run(uint64_t opcode, F&& body);
  void Count(uint64_t opcode, int64_t rc, uint64_t bytes = 0) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Deliver(Pending& pending);
  Partition* PresentPartition(PartitionId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Endpoint* CallerEndpoint(PartitionId caller, uint64_t unit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Endpoint* FindEndpoint(PartitionId partition, UnitAddress unit) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Window* FindWindow(uint64_t liobn) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The window `liobn` if the caller may map it (its own LOCAL window), else null.
  Window* MappableWindow(PartitionId caller, uint64_t liobn) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool TceValidFor(const Window& w, uint64_t tce) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes an entry into ep's queue; false if it has no queue or the slot is busy.
  bool WriteEntry(Endpoint& ep, uint64_t hi, uint64_t lo, Pending& pending) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PostEvent(Endpoint& ep, uint8_t reason, Pending& pending) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Detach(Endpoint& ep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t CheckCopyRange(const Window& w, uint64_t ioba, uint64_t len, uint64_t perm, int64_t bad_rc) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<PartitionId, Partition> partitions_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Endpoint>> endpoints_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Window>> windows_ ABSL_GUARDED_BY(mu_);
  std::map<Key, Endpoint*> by_unit_ ABSL_GUARDED_BY(mu_);
  std::map<Liobn, Window*> by_liobn_ ABSL_GUARDED_BY(mu_);
  size_t pairs_ ABSL_GUARDED_BY(mu_) = 0;
  HypervisorStats stats_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> delay_ns_{0};
  std::atomic<DelayMode> delay_mode_{DelayMode::kBusyWait};
};

}  // namespace vioport::crq
