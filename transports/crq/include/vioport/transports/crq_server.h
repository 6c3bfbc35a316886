// SPDX-License-Identifier: Apache-2.0
// The device side of virtio over CRQ (docs/transports/crq.md): CrqServer,
// which owns one server adapter of a Partition and turns its messages into
// DeviceController calls, and CrqDispatcher, which serves every adapter of
// one partition from one thread. The memory is crq_copy_memory.h's.
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
#include "vioport/transports/crq_channel.h"
#include "vioport/transports/crq_copy_memory.h"
#include "vioport/transports/crq_protocol.h"

namespace vioport::crq {

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

  // `handover`: restore what Save() wrote in the old vios instead of
  // registering the queue afresh (the client sees nothing).
  static absl::StatusOr<std::unique_ptr<CrqServer>> Create(Partition& p, std::shared_ptr<VirtioDevice> device,
                                                           const CrqServerOptions& options,
                                                           HandoverReader* handover = nullptr);
  ~CrqServer();  // H_FREE_CRQ (the client sees FF 02), unless Abandon()ed
  // Live upgrade: the connection state (generation, queue cursor, flow
  // control, sends still pending) and the controller's, after the device
  // drained. Abandon: the new vios has the adapter; never free it.
  absl::Status Save(HandoverWriter* out) const;
  void Abandon() { abandoned_ = true; }

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
  absl::Status Load(HandoverReader& in);
  bool abandoned_ = false;
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
  // One pass over everything pending; returns how much was handled. Held
  // (coalesced) interrupts whose delay ran out go at its end.
  size_t Work();
  // Sends every held interrupt: before the loop sleeps, nothing stays held.
  void FlushInterrupts() {
    if (ctl_) ctl_->FlushInterrupts(true);
  }
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
  // Every server's held (coalesced) interrupts go now: call before sleeping.
  void FlushInterrupts();
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
