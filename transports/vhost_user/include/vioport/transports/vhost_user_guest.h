// SPDX-License-Identifier: Apache-2.0
#pragma once

// Guest side of the vhost-user transport: a DriverTransport over
// emulators/kvm's VmmFrontend, so vioport's unchanged guest drivers run
// against any vhost-user back-end (vios, qemu-storage-daemon, ...), with
// this process playing both the VMM and the guest.
//
// vhost-user has no status register and no device id, so this transport
// plays the virtio device's register side the way QEMU's virtio device
// model does in front of a vhost-user back-end:
//
//   status write           what goes to the back-end
//   ACKNOWLEDGE, DRIVER    nothing (kept locally)
//   FEATURES_OK            SET_FEATURES (driver features + PROTOCOL_FEATURES);
//                          a refusal leaves FEATURES_OK clear
//   DRIVER_OK              SET_MEM_TABLE, GET/SET_INFLIGHT_FD (if negotiated),
//                          per enabled queue SET_VRING_NUM/BASE/ADDR/CALL/ERR/
//                          KICK, then SET_VRING_ENABLE(1) for each (QEMU's
//                          order); a failure sets DEVICE_NEEDS_RESET
//   0 (reset)              SET_VRING_ENABLE(0) + GET_VRING_BASE per started
//                          ring, RESET_DEVICE (if negotiated)
//
// DEVICE_NEEDS_RESET shows when the back-end disconnects or signals a ring
// error on a ring's ERR eventfd. Config reads are GET_CONFIG round trips.
// The device id comes from the options (vhost-user-blk: 2). Device features
// are presented without PROTOCOL_FEATURES (bit 30) and LOG_ALL (bit 26).
// DMA memory is the guest RAM; device addresses are guest-physical.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "vioport/core/buffer_dma.h"
#include "vioport/core/driver.h"
#include "vioport/transports/vhost_user_frontend.h"

namespace vioport {

struct VhostUserGuestOptions {
  vhost_user::VmmFrontendOptions frontend;  // socket, guest RAM, guest-physical base, timeouts
  uint32_t device_id = 2;                   // vhost-user carries none: 2 blk, 3 console, 4 rng
  uint32_t queue_size_max = 256;            // what GetQueueMaxSize reports (vhost-user carries none)
  // WaitForInterrupt polls the call eventfd this long before sleeping.
  absl::Duration interrupt_spin = absl::ZeroDuration();
};

class VhostUserDriverTransport final : public DriverTransport {
 public:
  static absl::StatusOr<std::unique_ptr<VhostUserDriverTransport>> Connect(const VhostUserGuestOptions& options);
  ~VhostUserDriverTransport() override;

  // DriverTransport.
  uint32_t GetDeviceId() override { return opts_.device_id; }
  uint8_t GetStatus() override;
  void SetStatus(uint8_t status) override;
  uint64_t GetDeviceFeatures() override;
  void SetDriverFeatures(uint64_t features) override;
  uint32_t GetConfigGeneration() override { return 0; }  // no config-change channel (no BACKEND_REQ)
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override;
  void WriteConfig(uint32_t offset, std::span<const uint8_t> in) override;
  uint32_t GetQueueMaxSize(uint16_t queue) override;
  absl::Status EnableQueue(uint16_t queue, uint32_t size, uint64_t desc, uint64_t driver, uint64_t device) override;
  void Notify(uint16_t queue, uint32_t data) override;
  DmaAllocator& dma() override { return *dma_; }
  uint64_t SupportedTransportFeatures() override;
  bool WaitForInterrupt(uint16_t queue, absl::Duration timeout) override;

  vhost_user::VmmFrontend& frontend() { return *fe_; }
  bool connected() const { return fe_->alive(); }
  std::string disconnect_reason() const { return fe_->failure(); }
  // Why the last status write did not take effect as asked (OK if it did).
  absl::Status last_error() const;
  // What GET_VRING_BASE answered for `queue` when the rings last stopped
  // (split: the back-end's next avail index, i.e. requests taken), or -1.
  int64_t last_stopped_base(uint16_t queue) const;

 private:
  explicit VhostUserDriverTransport(const VhostUserGuestOptions& o) : opts_(o) {}
  absl::Status StartDevice() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StopDevice() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetError(absl::Status s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  struct Ring {
    bool enabled = false;
    uint32_t size = 0;
    uint64_t desc = 0, driver = 0, device = 0;
  };

  VhostUserGuestOptions opts_;
  std::unique_ptr<vhost_user::VmmFrontend> fe_;
  std::unique_ptr<BufferDmaAllocator> dma_;
  std::atomic<uint8_t> status_{0};
  std::atomic<bool> failed_start_{false};  // DRIVER_OK could not be carried out: NEEDS_RESET
  mutable absl::Mutex mu_;                 // status transitions and queue set-up
  uint64_t driver_features_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Ring> rings_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> stopped_base_ ABSL_GUARDED_BY(mu_);
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vioport
