// SPDX-License-Identifier: Apache-2.0
#pragma once

// The frontend of virtio over Xen grants (docs/transports/xen.md): a
// DriverTransport whose device is reached through xenstore (the XenbusState
// handshake), a granted control page (virtio-mmio mirror + register-write
// mailbox on an event channel), one event channel per queue, and DMA
// memory made of pages granted to the backend, named by grant-encoded
// addresses. vioport's unchanged drivers run on it.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "vioport/core/mmio.h"
#include "vioport/transports/xen_channel.h"
#include "vioport/transports/xen_protocol.h"
#include "vioport/transports/xs_client.h"

namespace vioport::xen {

struct XenGuestOptions {
  uint32_t devid = 0;  // device/virtio/<devid> under this domain's xenstore home
  absl::Duration timeout = absl::Seconds(10);  // handshake steps and register writes
  uint32_t spin_us = 20;  // a register write polls for its answer this long before sleeping
};

class XenDriverTransport final : public mmio::MmioMirrorDriver {
 public:
  // Walks the handshake to Connected. The channel must outlive the transport.
  static absl::StatusOr<std::unique_ptr<XenDriverTransport>> Connect(XenChannel& channel, const XenGuestOptions& o);
  ~XenDriverTransport() override;  // Closing, wait for the backend's Closed (bounded), Closed

  uint32_t GetDeviceId() override { return device_id_; }
  void Notify(uint16_t queue, uint32_t data) override;
  DmaAllocator& dma() override;
  bool WaitForInterrupt(uint16_t queue, absl::Duration timeout) override;
  // A status of 0 (reset) while the backend has gone walks the handshake
  // again first, so a driver's re-initialisation reconnects.
  void SetStatus(uint8_t status) override;
  bool WriteRegister(uint32_t offset, uint32_t value, uint32_t size = 4) override;

  bool connected() const { return !gone(); }
  uint64_t reconnects() const { return reconnects_.load(); }
  DomId backend() const { return backend_; }
  uint32_t ctrl_ref() const { return ctrl_.refs.empty() ? 0 : ctrl_.refs[0]; }

 private:
  class Dma;
  XenDriverTransport(XenChannel& ch, const XenGuestOptions& o);
  absl::Status Handshake();
  absl::StatusOr<XenbusState> WaitBackend(std::initializer_list<XenbusState> wanted);
  absl::StatusOr<XenbusState> BackendState();
  void BackendGone(const std::string& why);
  // Drains the event channel into per-port flags; wakes other waiters.
  void CollectEvents();
  // Unmasks the ports CollectEvents left masked (the driver is about to sleep).
  void UnmaskAll();

  XenChannel& ch_;
  XenGuestOptions o_;
  std::unique_ptr<XsClient> xs_;
  std::string dir_, backend_dir_;
  DomId backend_ = 0;
  uint32_t device_id_ = 0;
  uint32_t num_queues_ = 0;
  SharedPages ctrl_;
  EvtchnPort ctrl_port_ = 0;
  std::vector<EvtchnPort> queue_ports_;
  std::unique_ptr<Dma> dma_;
  absl::Mutex reg_mu_;  // one register write in flight
  uint32_t seq_ = 0;
  std::atomic<uint64_t> reconnects_{0};
  // Events: ports seen pending, by index (0 = control, 1 + q = queue q).
  absl::Mutex ev_mu_;
  std::vector<std::atomic<bool>> fired_;
  int wake_fd_ = -1;  // written when a waiter collected someone else's event
  std::vector<EvtchnPort> masked_ ABSL_GUARDED_BY(ev_mu_);  // delivered, not yet unmasked
};

}  // namespace vioport::xen
