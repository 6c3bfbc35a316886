// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/crq_copy_memory.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vioport::crq {

CrqCopyMemory::CrqCopyMemory(Partition& p, Liobn local, Liobn remote, uint64_t bounce_ioba, uint8_t* bounce_host,
                             uint32_t bounce_bytes, uint64_t remote_window_bytes)
    : GuestMemory(false),
      p_(p),
      local_(local),
      remote_(remote),
      bounce_ioba_(bounce_ioba),
      bounce_(bounce_host),
      bounce_bytes_(bounce_bytes),
      window_(remote_window_bytes),
      max_transfer_(bounce_bytes) {}

absl::Status CrqCopyMemory::Map(int64_t rc, uint64_t addr, uint64_t len, const char* what) {
  failures_.fetch_add(1, std::memory_order_relaxed);
  const std::string msg = absl::StrFormat("crq: H_COPY_RDMA %s %#x+%u: %s", what, addr, len, std::string(ReturnCodeName(rc)));
  switch (rc) {
    case kHPermission:
      if (client_gone_ && client_gone_()) return absl::UnavailableError(absl::StrCat(msg, ": the client is gone"));
      return absl::PermissionDeniedError(msg);
    case kHSourceParm:
    case kHDestParm:
    case kHParameter:
      return absl::OutOfRangeError(msg);
    default:
      return absl::UnavailableError(msg);
  }
}

void CrqCopyMemory::SetStaging(uint64_t staging_ioba, uint8_t* staging_host, uint32_t count) {
  staging_ioba_ = staging_ioba;
  staging_ = staging_host;
  staging_count_ = count;
  staging_free_.clear();
  for (uint32_t i = count; i > 0; --i) staging_free_.push_back(i - 1);
}

uint8_t* CrqCopyMemory::AcquireStaging(size_t bytes) {
  if (bytes > kMaxStaging || staging_free_.empty()) return nullptr;
  const uint32_t i = staging_free_.back();
  staging_free_.pop_back();
  return staging_ + uint64_t{i} * kMaxStaging;
}

void CrqCopyMemory::ReleaseStaging(uint8_t* buffer) {
  if (buffer == nullptr || buffer < staging_) return;
  const uint64_t off = static_cast<uint64_t>(buffer - staging_);
  if (off % kMaxStaging == 0 && off / kMaxStaging < staging_count_)
    staging_free_.push_back(static_cast<uint32_t>(off / kMaxStaging));
}

uint64_t CrqCopyMemory::StagingIoba(const void* p, uint64_t len) const {
  const auto* b = static_cast<const uint8_t*>(p);
  if (staging_count_ == 0 || b < staging_ || b >= staging_ + uint64_t{staging_count_} * kMaxStaging) return 0;
  const uint64_t off = static_cast<uint64_t>(b - staging_);
  if (off % kMaxStaging + len > kMaxStaging) return 0;  // must stay inside one slot
  return staging_ioba_ + off;
}

absl::Status CrqCopyMemory::Copy(bool to_client, uint64_t addr, uint64_t len, uint64_t local_ioba, uint8_t* bounce_from) {
  // Through the bounce buffer (bounce_from: our side of the data) a step is
  // at most the buffer; straight from/to a staging slot it is the transfer
  // size, and the slot's IOBA advances with the data.
  const bool bounced = bounce_from != nullptr;
  const uint64_t step = bounced ? std::min<uint64_t>(max_transfer_, bounce_bytes_) : max_transfer_;
  for (uint64_t off = 0; off < len;) {
    const uint64_t n = std::min(step, len - off);
    const uint64_t local = bounced ? local_ioba : local_ioba + off;
    if (bounced && to_client) std::memcpy(bounce_, bounce_from + off, n);
    copies_.fetch_add(1, std::memory_order_relaxed);
    const int64_t rc = to_client ? p_.CopyRdma(n, local_, local, remote_, addr + off)
                                 : p_.CopyRdma(n, remote_, addr + off, local_, local);
    if (rc != kHSuccess) return Map(rc, addr + off, n, to_client ? "write" : "read");
    if (bounced && !to_client) std::memcpy(bounce_from + off, bounce_, n);
    bytes_.fetch_add(n, std::memory_order_relaxed);
    off += n;
  }
  return absl::OkStatus();
}

absl::Status CrqCopyMemory::Read(uint64_t addr, void* dst, uint64_t len) {
  reads_.fetch_add(1, std::memory_order_relaxed);
  if (const uint64_t ioba = StagingIoba(dst, len); ioba != 0) {
    // Straight into the backend's buffer: no bounce, no memcpy.
    direct_.fetch_add(1, std::memory_order_relaxed);
    return Copy(false, addr, len, ioba, nullptr);
  }
  return Copy(false, addr, len, bounce_ioba_, static_cast<uint8_t*>(dst));
}

absl::Status CrqCopyMemory::ReadBuffer(uint64_t addr, void* dst, uint64_t len) {
  const uint64_t page = addr & ~(kTcePageSize - 1);
  if (!read_ahead_ || len == 0 || len > kReadAheadMax || ((addr + len - 1) & ~(kTcePageSize - 1)) != page ||
      page + kTcePageSize > window_)
    return Read(addr, dst, len);
  ReadAhead& ra = ra_[(page / kTcePageSize) % kReadAheadPages];
  if (!ra.valid || ra.page != page) {
    // One copy of the page: its TCE is one entry, so the permission that
    // allows these bytes allows all of it. A failure: the exact read reports it.
    ra.valid = false;
    if (!Read(page, ra.data, kTcePageSize).ok()) return Read(addr, dst, len);
    ra.valid = true;
    ra.page = page;
  } else {
    ra_hits_.fetch_add(1, std::memory_order_relaxed);
  }
  std::memcpy(dst, ra.data + (addr - page), len);
  return absl::OkStatus();
}

void CrqCopyMemory::NewAvailableBatch() {
  for (size_t i = 0; i < kReadAheadPages; ++i) ra_[i].valid = false;
}

absl::Status CrqCopyMemory::Write(uint64_t addr, const void* src, uint64_t len) {
  writes_.fetch_add(1, std::memory_order_relaxed);
  for (size_t i = 0; i < kReadAheadPages; ++i)  // a page we wrote is no longer what we read
    if (ra_[i].valid && ra_[i].page < addr + len && addr < ra_[i].page + kTcePageSize) ra_[i].valid = false;
  if (const uint64_t ioba = StagingIoba(src, len); ioba != 0) {
    direct_.fetch_add(1, std::memory_order_relaxed);
    return Copy(true, addr, len, ioba, nullptr);
  }
  return Copy(true, addr, len, bounce_ioba_, const_cast<uint8_t*>(static_cast<const uint8_t*>(src)));
}

bool CrqCopyMemory::Accessible(uint64_t addr, uint64_t len, Access) {
  // Permissions are per page in the client's TCEs, which we cannot read:
  // the copies report them.
  return addr <= window_ && len <= window_ - addr;
}

}  // namespace vioport::crq
