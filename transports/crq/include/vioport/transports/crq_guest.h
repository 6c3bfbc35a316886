// SPDX-License-Identifier: Apache-2.0
// The guest side of virtio over CRQ (docs/transports/crq.md): a
// DriverTransport over a client adapter of a crq::Partition. Control requests
// are CRQ messages answered one at a time; device addresses are IOBAs in the
// client's own DMA window, mapped page by page with the permission asked.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "vioport/core/buffer_dma.h"
#include "vioport/core/driver.h"
#include "vioport/transports/crq_channel.h"
#include "vioport/transports/crq_protocol.h"

namespace vioport::crq {

struct CrqGuestOptions {
  UnitAddress unit = 0;
  Liobn liobn = 0;
  uint64_t window_bytes = 0;  // the client's window; IOBA = real address - memory_offset
  // The client's area of the partition's memory: one queue page, then the
  // DMA pool. The window must cover it (window_bytes >= memory_bytes).
  uint64_t memory_offset = 0;
  uint64_t memory_bytes = 0;
  uint32_t max_transfer = 128 * 1024;
  absl::Duration timeout = absl::Seconds(5);  // per control request / handshake
  // The CRQ entries advertised in VERSION (0: what the queue page holds). A
  // client may advertise fewer; the server then keeps fewer of its
  // messages outstanding (half of these).
  uint16_t advertised_entries = 0;
};

class CrqDriverTransport final : public DriverTransport {
 public:
  // Registers the queue and completes INIT + VERSION.
  static absl::StatusOr<std::unique_ptr<CrqDriverTransport>> Connect(Partition& p, const CrqGuestOptions& o);
  ~CrqDriverTransport() override;

  uint32_t GetDeviceId() override;
  uint8_t GetStatus() override;
  void SetStatus(uint8_t status) override;
  uint64_t GetDeviceFeatures() override;
  void SetDriverFeatures(uint64_t features) override;
  uint32_t GetConfigGeneration() override;
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override;
  void WriteConfig(uint32_t offset, std::span<const uint8_t> in) override;
  uint32_t GetQueueMaxSize(uint16_t queue) override;
  absl::Status EnableQueue(uint16_t queue, uint32_t size, uint64_t desc, uint64_t driver, uint64_t device) override;
  void Notify(uint16_t queue, uint32_t data) override;
  DmaAllocator& dma() override;
  uint64_t SupportedTransportFeatures() override { return feature::kCoreSupported; }
  bool WaitForInterrupt(uint16_t queue, absl::Duration timeout) override;

  // Our own reset: H_FREE_CRQ, zero the page, H_REG_CRQ, INIT, VERSION.
  absl::Status Reconnect();
  bool connected() const { return state_.load() == State::kConnected; }
  uint8_t generation() const { return generation_; }
  uint32_t max_transfer() const { return max_transfer_; }
  uint64_t used_messages() const { return used_.load(); }
  uint64_t control_requests() const { return requests_.load(); }
  const std::vector<std::string>& errors() const { return errors_; }
  // Flow control: sends that waited for the server's CREDIT, CREDITs sent,
  // and the most server messages found in our queue at once.
  uint64_t flow_waits() const { return flow_waits_.load(); }
  uint64_t credits_sent() const { return credits_sent_.load(); }
  uint64_t max_backlog() const { return max_backlog_.load(); }

 private:
  enum class State : uint8_t { kWaitInit, kWaitVersion, kConnected };
  class Dma;
  CrqDriverTransport(Partition& p, const CrqGuestOptions& o);
  absl::Status Register() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Handshake() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DrainLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Handle(const Message& m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends a request and waits for its response.
  absl::StatusOr<Message> Request(Op op, uint16_t a = 0, uint16_t b = 0, uint64_t value = 0);
  absl::StatusOr<Message> RequestLocked(const Message& m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // GET_STATUS, answered from the cache while no CONFIG_CHANGED came since.
  absl::StatusOr<Message> GetStatusLocked(bool need_generation) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t SendWithRetry(const Message& m);
  // A message under flow control: false (nothing sent) if the window is full.
  bool SendCountedLocked(const Message& m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // NOTIFYs and a PING answer that waited for credit.
  void FlushLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint16_t AdvertisedEntries() const {
    const uint64_t real = queue_entries_;
    return static_cast<uint16_t>(o_.advertised_entries && o_.advertised_entries < real ? o_.advertised_entries : real);
  }
  void WaitIrq(absl::Duration timeout);
  void Error(const std::string& why);

  Partition& p_;
  CrqGuestOptions o_;
  absl::Mutex mu_;
  CrqQueue queue_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Dma> dma_;
  std::atomic<State> state_{State::kWaitInit};
  std::atomic<bool> needs_reset_{false};
  uint8_t generation_ = 0;
  uint32_t max_transfer_ = 0;
  bool have_response_ ABSL_GUARDED_BY(mu_) = false;
  Message response_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> used_{0}, config_changed_{0}, events_{0}, requests_{0};
  std::atomic<uint64_t> seen_{0};
  uint64_t resets_ ABSL_GUARDED_BY(mu_) = 0;  // partner events and INITs received
  uint64_t queue_entries_ = 0;
  FlowControl flow_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> pending_notify_ ABSL_GUARDED_BY(mu_);
  bool pending_ping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t backlog_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> flow_waits_{0}, credits_sent_{0}, max_backlog_{0};
  std::vector<std::string> errors_;
  // The device status and config generation last read or written, valid
  // while config_changed_ == seen (see GetStatusLocked).
  struct StatusCache {
    bool status_valid = false, generation_valid = false;
    uint8_t status = 0;
    uint16_t generation = 0;
    uint64_t seen = 0;
    absl::Time until = absl::InfinitePast();
  };
  static constexpr absl::Duration kStatusCacheLife = absl::Milliseconds(50);
  StatusCache cache_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vioport::crq
