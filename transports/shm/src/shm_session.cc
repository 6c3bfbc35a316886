// SPDX-License-Identifier: Apache-2.0
#include "shm_session.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "vioport/core/log.h"

namespace vioport::shm {

Session::Session(std::shared_ptr<VirtioDevice> device, Host* host, std::string name, bool polled)
    : device_(std::move(device)), host_(host), name_(std::move(name)), polled_(polled) {}

Session::~Session() {
  mirror_.reset();
  ctl_.reset();  // the device's reset waits for its requests in flight
  if (irq_) irq_->Disconnect();
}  // then region_ is unmapped

absl::Status Session::Handle(ReceivedMsg& m) {
  if (!ctl_) {
    if (TypeOf(m.header) != MsgType::kHello) return absl::InvalidArgumentError("first message is not HELLO");
    return Hello(m);
  }
  if (TypeOf(m.header) != MsgType::kRegWrite)
    return absl::InvalidArgumentError(absl::StrCat("unexpected message type ", static_cast<uint32_t>(m.header.type)));
  if (!m.fds.empty()) return absl::InvalidArgumentError("a register write carries fds");
  const absl::Status s = mirror_->Write(m.header.offset, m.header.size, static_cast<uint32_t>(uint64_t{m.header.value}));
  if (!s.ok()) VIOPORT_LOG(kInfo, name_, ": register write ignored: ", s.message());
  MsgHeader ack = Header(MsgType::kRegAck);
  ack.seq = static_cast<uint32_t>(m.header.seq);
  ack.value = s.ok() ? 0 : 1;
  return host_->Send(ack, {});
}

absl::Status Session::Hello(ReceivedMsg& m) {
  const MsgHeader& h = m.header;
  if (uint64_t{h.aux} != kProtocolVersion)
    return absl::InvalidArgumentError(
        absl::StrCat("protocol version ", uint64_t{h.aux}, " (this vios speaks ", kProtocolVersion, ")"));
  const uint32_t version = h.offset;
  if (version != 1 && version != 2) return absl::InvalidArgumentError(absl::StrCat("virtio-mmio version ", version));
  const uint64_t size = h.value;
  if (size < kMinRegionSize || size > kMaxRegionSize || size % kRegisterPageSize)
    return absl::InvalidArgumentError(absl::StrCat("region size ", size, " (64 KiB to 64 GiB, whole pages)"));
  if (m.fds.size() != 1) return absl::InvalidArgumentError("HELLO must carry exactly one memfd");

  const uint16_t nq = device_->num_queues();
  std::vector<int> send = {(config_call_ = MakeEventFd()).get()};  // then the kicks, then the calls
  for (auto* fds : {&kick_, &call_})
    for (uint16_t q = 0; q < nq; ++q) send.push_back(fds->emplace_back(MakeEventFd()).get());
  if (std::find(send.begin(), send.end(), -1) != send.end()) return ErrnoStatus("eventfd");
  if (absl::Status s = Attach(version, size, std::move(m.fds[0])); !s.ok()) return s;
  std::memset(region_.data(), 0, kRegisterPageSize);
  mirror_->Publish();

  MsgHeader w = Header(MsgType::kWelcome);
  w.size = nq;
  w.aux = static_cast<uint64_t>(device_->device_id());
  if (absl::Status s = host_->Send(w, send); !s.ok()) return s;
  host_->Attached(*ctl_, std::span<const int>(send).subspan(1, nq));
  VIOPORT_LOG(kInfo, name_, ": guest attached (mmio v", version, ", ", size >> 20, " MiB shared)");
  return absl::OkStatus();
}

// Maps the region and builds the controller and the register mirror on it
// (the eventfds are already there).
absl::Status Session::Attach(uint32_t version, uint64_t size, UniqueFd memfd) {
  auto region = SharedMemory::Map(memfd.get(), size);
  if (!region.ok()) return region.status();
  region_ = std::move(*region);
  memfd_ = std::move(memfd);
  uint8_t* const map = region_.data();
  auto mem = std::make_shared<RegionMemory>();
  if (absl::Status s = mem->AddRegion(
          {kRegisterPageSize, size - kRegisterPageSize, map + kRegisterPageSize, Access::kReadWrite});
      !s.ok())
    return s;
  irq_ = std::make_shared<mmio::MirrorInterrupts>(
      map, [this](int q) { SignalEventFd(q == mmio::MirrorInterrupts::kConfig ? config_call_.get() : call_[q].get()); },
      [this] { mirror_->Publish(); });
  ctl_ = std::make_unique<DeviceController>(device_, mem, irq_);
  ctl_->SetPolled(polled_);
  ctl_->set_name(name_);
  mirror_ = std::make_unique<mmio::MmioMirror>(*ctl_, version, map);
  return absl::OkStatus();
}

absl::Status Session::Save(HandoverWriter* out) const {
  if (!ctl_) return absl::FailedPreconditionError("no guest attached");
  auto snap = ctl_->Snapshot();
  if (!snap.ok()) return snap.status();
  out->U64(mirror_->registers().version());
  out->U64(region_.size());
  out->Fd(memfd_.get());
  out->Fd(config_call_.get());
  out->U64(kick_.size());
  for (const auto* fds : {&kick_, &call_})
    for (const UniqueFd& fd : *fds) out->Fd(fd.get());
  out->U64s(mirror_->SaveState());
  out->Snapshot(*snap);
  return absl::OkStatus();
}

absl::Status Session::Restore(HandoverReader& in) {
  uint64_t version = 0, size = 0, nq = 0;
  UniqueFd memfd;
  if (absl::Status s = in.U64(&version, 2, "mmio version"); !s.ok()) return s;
  if (version != 1 && version != 2) return absl::InvalidArgumentError(absl::StrCat("virtio-mmio version ", version));
  if (absl::Status s = in.U64(&size, kMaxRegionSize, "region size"); !s.ok()) return s;
  if (size < kMinRegionSize || size % kRegisterPageSize)
    return absl::InvalidArgumentError(absl::StrCat("region size ", size));
  if (absl::Status s = in.Fd(&memfd, "region"); !s.ok()) return s;
  if (absl::Status s = in.Fd(&config_call_, "config eventfd"); !s.ok()) return s;
  if (absl::Status s = in.U64(&nq, kMaxQueues, "queue count"); !s.ok()) return s;
  if (nq != device_->num_queues())
    return absl::InvalidArgumentError(absl::StrCat(nq, " queues handed over for a device with ", device_->num_queues()));
  for (auto* fds : {&kick_, &call_})
    for (uint64_t q = 0; q < nq; ++q)
      if (absl::Status s = in.Fd(&fds->emplace_back(), "queue eventfd"); !s.ok()) return s;
  std::vector<uint64_t> mirror;
  ControllerSnapshot snap;
  if (absl::Status s = in.U64s(&mirror, 4 + 7 + 5 * kMaxQueues, "register state"); !s.ok()) return s;
  if (absl::Status s = in.Snapshot(&snap, kMaxQueues); !s.ok()) return s;
  if (absl::Status s = Attach(static_cast<uint32_t>(version), size, std::move(memfd)); !s.ok()) return s;
  if (absl::Status s = mirror_->RestoreState(mirror); !s.ok()) return s;
  if (absl::Status s = ctl_->Restore(snap); !s.ok()) return s;
  std::vector<int> kicks;
  for (const UniqueFd& fd : kick_) kicks.push_back(fd.get());
  host_->Attached(*ctl_, kicks);
  return absl::OkStatus();
}

}  // namespace vioport::shm
