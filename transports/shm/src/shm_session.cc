// SPDX-License-Identifier: Apache-2.0
#include "shm_session.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "vioport/core/log.h"

namespace vioport::shm {

Session::Session(std::shared_ptr<VirtioDevice> device, Host* host, std::string name, uint64_t transport_features,
                 bool polled)
    : device_(std::move(device)), host_(host), name_(std::move(name)), transport_features_(transport_features),
      polled_(polled) {}

Session::~Session() {
  mirror_.reset();
  ctl_.reset();  // the device's reset waits for its requests in flight
  if (irq_) irq_->Disconnect();
  if (map_) ::munmap(map_, map_size_);
}

absl::Status Session::Handle(ReceivedMsg& m) {
  std::vector<UniqueFd> fds;
  for (int fd : m.fds) fds.emplace_back(fd);  // closed on return unless kept
  if (!ctl_) {
    if (TypeOf(m.header) != MsgType::kHello) return absl::InvalidArgumentError("first message is not HELLO");
    return Hello(m);
  }
  if (TypeOf(m.header) != MsgType::kRegWrite)
    return absl::InvalidArgumentError(absl::StrCat("unexpected message type ", static_cast<uint32_t>(m.header.type)));
  if (!fds.empty()) return absl::InvalidArgumentError("a register write carries fds");
  counters_.register_writes++;
  const absl::Status s = mirror_->Write(m.header.offset, m.header.size, static_cast<uint32_t>(uint64_t{m.header.value}));
  if (!s.ok()) {
    counters_.register_writes_ignored++;
    VIOPORT_LOG(kInfo, name_, ": register write ignored: ", s.message());
  }
  MsgHeader ack = Header(MsgType::kRegAck);
  ack.seq = static_cast<uint32_t>(m.header.seq);
  ack.value = s.ok() ? 0 : 1;
  return host_->Send(ack, {});
}

absl::Status Session::Hello(const ReceivedMsg& m) {
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
  // A region the guest could shrink would SIGBUS us: demand the seal.
  const int seals = ::fcntl(m.fds[0], F_GET_SEALS);
  if (seals < 0) return absl::InvalidArgumentError("shared memory is not a memfd");
  if (!(seals & F_SEAL_SHRINK)) return absl::InvalidArgumentError("memfd is not sealed against shrinking (F_SEAL_SHRINK)");
  struct stat st;
  if (::fstat(m.fds[0], &st) != 0 || static_cast<uint64_t>(st.st_size) < size)
    return absl::InvalidArgumentError("memfd is smaller than the region size");
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, m.fds[0], 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap");
  map_ = static_cast<uint8_t*>(p);
  map_size_ = size;

  const uint16_t nq = device_->num_queues();
  std::vector<int> send = {(config_call_ = MakeEventFd()).get()};
  for (uint16_t q = 0; q < nq; ++q) kick_.push_back(MakeEventFd());
  for (uint16_t q = 0; q < nq; ++q) call_.push_back(MakeEventFd());
  for (const auto& f : kick_) send.push_back(f.get());
  for (const auto& f : call_) send.push_back(f.get());
  for (int fd : send)
    if (fd < 0) return ErrnoStatus("eventfd");

  auto mem = std::make_shared<RegionMemory>();
  if (absl::Status s = mem->AddRegion(
          {kRegisterPageSize, size - kRegisterPageSize, map_ + kRegisterPageSize, Access::kReadWrite});
      !s.ok())
    return s;
  irq_ = std::make_shared<mmio::MirrorInterrupts>(
      map_, [this](int q) { SignalEventFd(q == mmio::MirrorInterrupts::kConfig ? config_call_.get() : call_[q].get()); },
      [this] { mirror_->Publish(); });
  ctl_ = std::make_unique<DeviceController>(device_, mem, irq_, transport_features_);
  ctl_->SetPolled(polled_);
  std::memset(map_, 0, kRegisterPageSize);
  mirror_ = std::make_unique<mmio::MmioMirror>(*ctl_, version, map_);
  mirror_->Publish();

  MsgHeader w = Header(MsgType::kWelcome);
  w.size = nq;
  w.aux = static_cast<uint64_t>(device_->device_id());
  if (absl::Status s = host_->Send(w, send); !s.ok()) return s;
  std::vector<int> kicks;
  for (const auto& k : kick_) kicks.push_back(k.get());
  host_->Attached(*ctl_, kicks);
  VIOPORT_LOG(kInfo, name_, ": guest attached (mmio v", version, ", ", size >> 20, " MiB shared)");
  return absl::OkStatus();
}

}  // namespace vioport::shm
