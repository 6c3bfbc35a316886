// SPDX-License-Identifier: Apache-2.0
// The device side of virtio over CRQ (docs/transports/crq.md): a copy-only
// GuestMemory over H_COPY_RDMA, and CrqServer, which owns one server adapter
// of a Partition and turns its messages into DeviceController calls.
#pragma once

#include <atomic>
#include <deque>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "vioport/core/device_controller.h"
#include "vioport/core/guest_memory.h"
#include "vioport/transports/crq_channel.h"
#include "vioport/transports/crq_protocol.h"

namespace vioport::crq {

inline constexpr uint32_t kMaxTransfer = 128 * 1024;

// The client's DMA window seen from the server: every access is H_COPY_RDMA
// between REMOTE (the client's LIOBN) and a bounce buffer in the server's own
// memory, mapped read|write in its LOCAL window. Errors: H_PERMISSION ->
// PermissionDenied, H_SOURCE_PARM / H_DEST_PARM / H_PARAMETER -> OutOfRange,
// anything else -> Unavailable. Used from the device's thread only.
class CrqCopyMemory final : public GuestMemory {
 public:
  CrqCopyMemory(Partition& p, Liobn local, Liobn remote, uint64_t bounce_ioba, uint8_t* bounce_host,
                uint32_t bounce_bytes, uint64_t remote_window_bytes);
  absl::Status Read(uint64_t addr, void* dst, uint64_t len) override;
  absl::Status Write(uint64_t addr, const void* src, uint64_t len) override;
  bool Accessible(uint64_t addr, uint64_t len, Access access) override;
  // Staging buffers: `count` slots of kMaxStaging bytes at staging_host,
  // mapped read|write at staging_ioba.. in LOCAL. A Read() into / Write()
  // from a slot copies between the client's window and the slot directly.
  void SetStaging(uint64_t staging_ioba, uint8_t* staging_host, uint32_t count);
  // Reads of up to kReadAheadMax bytes inside one 4 KiB page copy the whole
  // page once (one TCE: the same permission for all of it) and serve later
  // small reads in it from here until NewAvailableBatch() or a write to it.
  absl::Status ReadBuffer(uint64_t addr, void* dst, uint64_t len) override;
  void NewAvailableBatch() override;
  void set_read_ahead(bool on) { read_ahead_ = on; }
  uint64_t read_ahead_hits() const { return ra_hits_.load(std::memory_order_relaxed); }
  static constexpr uint64_t kReadAheadMax = 512;
  uint8_t* AcquireStaging(size_t bytes) override;
  void ReleaseStaging(uint8_t* buffer) override;
  uint32_t staging_slots() const { return staging_count_; }
  uint64_t direct_copies() const { return direct_.load(std::memory_order_relaxed); }  // no memcpy

  void set_max_transfer(uint32_t n) { max_transfer_ = n; }
  uint64_t reads() const { return reads_.load(std::memory_order_relaxed); }    // Read() calls
  uint64_t writes() const { return writes_.load(std::memory_order_relaxed); }  // Write() calls
  uint64_t copies() const { return copies_.load(std::memory_order_relaxed); }  // H_COPY_RDMA calls
  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }    // bytes copied
  uint64_t failures() const { return failures_.load(std::memory_order_relaxed); }

 private:
  absl::Status Map(int64_t rc, uint64_t addr, uint64_t len, const char* what);
  // H_COPY_RDMA between the client's [addr, addr + len) and our LOCAL window
  // at local_ioba, split at the transfer size; with bounce_from, through the
  // bounce buffer from/to that host memory (never written when to_client).
  absl::Status Copy(bool to_client, uint64_t addr, uint64_t len, uint64_t local_ioba, uint8_t* bounce_from);
  // The IOBA of [p, p + len) if it lies in one staging slot, else 0.
  uint64_t StagingIoba(const void* p, uint64_t len) const;
  Partition& p_;
  Liobn local_, remote_;
  uint64_t bounce_ioba_;
  uint8_t* bounce_;
  uint32_t bounce_bytes_;
  uint64_t window_;
  uint32_t max_transfer_;
  uint64_t staging_ioba_ = 0;
  uint8_t* staging_ = nullptr;
  uint32_t staging_count_ = 0;
  std::vector<uint32_t> staging_free_;
  std::atomic<uint64_t> direct_{0};
  struct ReadAhead {
    bool valid = false;
    uint64_t page = 0;
    uint8_t data[4096];
  };
  static constexpr size_t kReadAheadPages = 4;
  std::unique_ptr<ReadAhead[]> ra_ = std::make_unique<ReadAhead[]>(kReadAheadPages);
  bool read_ahead_ = true;
  std::atomic<uint64_t> ra_hits_{0};
  std::atomic<uint64_t> reads_{0}, writes_{0}, copies_{0}, bytes_{0}, failures_{0};
};

struct CrqServerOptions {
  UnitAddress unit = 0;
  Liobn liobn = 0;                 // LOCAL: the server's own window
  Liobn remote_liobn = 0;          // REMOTE: the client's window
  uint64_t remote_window_bytes = 0;  // its size (ibm,my-dma-window); ring IOBAs beyond it are refused
  // This adapter's area of the partition's memory (real address, page
  // aligned): one queue page, then the bounce buffer, then the staging
  // slots. Mapped at IOBA window_ioba.. in LOCAL, so the window needs
  // 4 KiB + max_transfer (+ 256 KiB per staging slot). AreaBytes() is its size.
  uint64_t memory_offset = 0;
  uint64_t window_ioba = 0;
  uint32_t max_transfer = kMaxTransfer;
  // Staging slots (GuestMemory::kMaxStaging each) after the bounce buffer,
  // for backends' bounce buffers (GuestMemory::AcquireStaging): 0 = none.
  // Slots whose pages do not fit in the LOCAL window are left out.
  uint32_t staging_slots = 0;
  // Page read-ahead for small buffer reads (CrqCopyMemory::ReadBuffer).
  bool read_ahead = true;
  uint16_t crq_entries = 256;  // one page
  std::string name = "crq";
};

// Bytes of partition memory (and LOCAL window) a server with these options uses.
uint64_t AreaBytes(const CrqServerOptions& o);

struct CrqServerCounters {
  std::atomic<uint64_t> messages{0}, requests{0}, notifies{0}, used_sent{0}, dropped_retries{0};
  std::atomic<uint64_t> stale_generation{0}, closes{0}, partner_resets{0}, connections{0};
  // Sends held back because the client had half its queue unconsumed, and
  // CREDIT messages sent / received.
  std::atomic<uint64_t> flow_blocked{0}, credits_sent{0}, credits_received{0};
  // A control request that came while our response to the previous one was
  // still undelivered (one control request in flight): answered status 2.
  std::atomic<uint64_t> protocol_errors{0};
};

class CrqServer {
 public:
  enum class State : uint8_t { kWaitInit, kWaitVersion, kConnected };

  static absl::StatusOr<std::unique_ptr<CrqServer>> Create(Partition& p, std::shared_ptr<VirtioDevice> device,
                                                           const CrqServerOptions& options);
  ~CrqServer();

  // Handles whatever is pending (messages, device completions, retries),
  // waiting up to `timeout` for something if there was nothing. One thread.
  // The wait is on the partition's interrupt_fd, which is shared by all of
  // its adapters: when one partition has several servers, serve them with a
  // CrqDispatcher instead. Poll never depends on the wake-up being its own
  // (it checks its queue before and after waiting, and waits at most
  // kMaxUnsignalledWait), but a wake-up taken by another reader costs up to
  // that much latency.
  void Poll(absl::Duration timeout);
  static constexpr absl::Duration kMaxUnsignalledWait = absl::Milliseconds(10);

  State state() const { return state_.load(std::memory_order_acquire); }
  const std::string& last_close_reason() const { return last_close_; }
  DeviceController& controller() { return *ctl_; }
  CrqCopyMemory& memory() { return *mem_; }
  const CrqServerCounters& counters() const { return counters_; }

 private:
  struct Sink;
  friend class CrqDispatcher;
  CrqServer(Partition& p, const CrqServerOptions& o) : p_(p), o_(o) {}
  absl::Status Register();
  void Handle(const Message& m);
  void HandleCommand(const Message& m);
  void Respond(const Message& req, MsgStatus st, uint16_t a = 0, uint16_t b = 0, uint64_t value = 0);
  // Uncounted (INIT, CREDIT): false if closed; H_DROPPED queues it (true).
  bool Send(const Message& m);
  // Counted: now if the flow-control window and the client's queue allow;
  // false = keep it pending (the caller queues or marks it).
  bool TrySend(const Message& m);
  // Our own finding (malformed message, bad version): free, re-register, INIT.
  void Close(const std::string& why);
  // The partner reset (FF 01/02): drop the connection, keep our queue.
  void PartnerGone(const std::string& why);
  void ResetDevice();
  // Sends what is pending, in order, as far as credit and the queue allow.
  void RetryPending();
  bool HasPending() const;
  // Starts (or keeps) the backoff after an H_DROPPED.
  void BackOff();
  // CREDIT with our consumed count, when an eighth of our queue was consumed
  // since the last one.
  void ReportCredit();
  void SendInterrupt(uint16_t queue, bool config);
  // One pass over everything pending; returns how much was handled.
  size_t Work();
  // When a retry is due (InfiniteFuture: none).
  absl::Time RetryAt() const { return backoff_ == absl::ZeroDuration() ? absl::InfiniteFuture() : retry_at_; }
  // The device's event eventfd (-1: it has none).
  int DeviceEventFd();

  Partition& p_;
  CrqServerOptions o_;
  CrqQueue queue_;
  std::shared_ptr<CrqCopyMemory> mem_;
  std::shared_ptr<Sink> sink_;
  std::unique_ptr<DeviceController> ctl_;
  std::atomic<State> state_{State::kWaitInit};
  uint8_t generation_ = 0;
  uint32_t max_transfer_ = kMaxTransfer;
  uint16_t partner_entries_ = 0;
  std::string last_close_;
  CrqServerCounters counters_;
  // Responses, USED and CONFIG_CHANGED that met H_DROPPED, retried with
  // backoff from the poll loop (never by sleeping: other adapters share it).
  struct Outgoing {
    Message m;
    bool counted;  // under flow control (not INIT / CREDIT)
  };
  std::deque<Outgoing> pending_responses_;
  FlowControl flow_;
  std::vector<bool> pending_used_;
  bool pending_config_ = false;
  absl::Duration backoff_ = absl::ZeroDuration();
  absl::Time retry_at_ = absl::InfinitePast();
  absl::Time stuck_since_ = absl::InfiniteFuture();
};

// Serves every CrqServer of one partition from one thread. The partition has
// ONE interrupt eventfd for all its adapters (an edge of any of them makes it
// readable and the reader drains it), so it must have one reader that then
// looks at every adapter: the dispatcher waits on the interrupt_fd and on the
// devices' completion eventfds, drains the interrupt_fd and runs every
// server's pending work, so no adapter's message waits for a wake-up that
// another adapter's reader consumed. Servers are not owned; Add/Remove and
// Poll from the polling thread only.
class CrqDispatcher {
 public:
  explicit CrqDispatcher(Partition& p) : p_(p) {}
  void Add(CrqServer* s);
  void Remove(CrqServer* s);
  // Runs all pending work; if there was none, waits up to `timeout` (less if
  // a server has a retry due) for an interrupt or a completion, then runs
  // all pending work again.
  void Poll(absl::Duration timeout);
  // One pass over every server's pending work, no waiting; returns how much
  // was handled (an event loop spinning briefly before it sleeps calls this).
  size_t Work();
  size_t size() const { return servers_.size(); }
  // The earliest retry deadline of any server (InfiniteFuture: none), for an
  // event loop that calls Poll(ZeroDuration()) on readiness and needs to
  // schedule a timer for backed-off USED / CONFIG_CHANGED retries.
  absl::Time NextDeadline() const;

 private:
  Partition& p_;
  std::vector<CrqServer*> servers_;
};

}  // namespace vioport::crq
