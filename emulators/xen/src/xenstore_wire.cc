// SPDX-License-Identifier: Apache-2.0
// The xenstore wire format; see xenstore_wire.h.
#include "vioport/emulators/xenstore_wire.h"

#include <cerrno>
#include <cstring>

#include <xen/io/xs_wire.h>

namespace vioport::xen {

namespace {
constexpr uint32_t U(uint32_t v) { return v; }
}  // namespace

static_assert(U(kXsControl) == U(XS_CONTROL) && U(kXsDirectory) == U(XS_DIRECTORY) && U(kXsRead) == U(XS_READ) &&
              U(kXsGetPerms) == U(XS_GET_PERMS) && U(kXsWatch) == U(XS_WATCH) && U(kXsUnwatch) == U(XS_UNWATCH) &&
              U(kXsTransactionStart) == U(XS_TRANSACTION_START) && U(kXsTransactionEnd) == U(XS_TRANSACTION_END) &&
              U(kXsIntroduce) == U(XS_INTRODUCE) && U(kXsRelease) == U(XS_RELEASE) &&
              U(kXsGetDomainPath) == U(XS_GET_DOMAIN_PATH) && U(kXsWrite) == U(XS_WRITE) && U(kXsMkdir) == U(XS_MKDIR) &&
              U(kXsRm) == U(XS_RM) && U(kXsSetPerms) == U(XS_SET_PERMS) && U(kXsWatchEvent) == U(XS_WATCH_EVENT) &&
              U(kXsError) == U(XS_ERROR) && U(kXsIsDomainIntroduced) == U(XS_IS_DOMAIN_INTRODUCED) &&
              U(kXsResume) == U(XS_RESUME) && U(kXsSetTarget) == U(XS_SET_TARGET) &&
              U(kXsResetWatches) == U(XS_RESET_WATCHES) && U(kXsDirectoryPart) == U(XS_DIRECTORY_PART) &&
              U(kXsTypeCount) == U(XS_TYPE_COUNT),
              "message types must match xen/io/xs_wire.h");
static_assert(sizeof(xsd_sockmsg) == kXsHeaderSize);
static_assert(kXsPayloadMax == XENSTORE_PAYLOAD_MAX && kXsAbsPathMax == XENSTORE_ABS_PATH_MAX &&
              kXsRelPathMax == XENSTORE_REL_PATH_MAX);

std::string EncodeXsMessage(uint32_t type, uint32_t req_id, uint32_t tx_id, std::string_view payload) {
  xsd_sockmsg h{type, req_id, tx_id, static_cast<uint32_t>(payload.size())};
  std::string out(kXsHeaderSize + payload.size(), '\0');
  std::memcpy(out.data(), &h, sizeof(h));
  if (!payload.empty()) std::memcpy(out.data() + kXsHeaderSize, payload.data(), payload.size());
  return out;
}

XsHeader DecodeXsHeader(const uint8_t* bytes) {
  xsd_sockmsg h;
  std::memcpy(&h, bytes, sizeof(h));
  return XsHeader{h.type, h.req_id, h.tx_id, h.len};
}

void XsStreamParser::Feed(std::span<const uint8_t> bytes) {
  if (failed_) return;
  // Compact once the consumed prefix dominates, so the buffer stays bounded.
  if (pos_ > 0 && pos_ >= buf_.size() / 2) {
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(pos_));
    pos_ = 0;
  }
  buf_.insert(buf_.end(), bytes.begin(), bytes.end());
}

XsStreamParser::Result XsStreamParser::Next(XsMessage* out) {
  if (failed_) return Result::kOversized;
  const size_t avail = buf_.size() - pos_;
  if (avail < kXsHeaderSize) return Result::kNeedMore;
  const XsHeader h = DecodeXsHeader(buf_.data() + pos_);
  if (h.len > kXsPayloadMax) {
    failed_ = true;
    buf_.clear();
    pos_ = 0;
    return Result::kOversized;
  }
  if (avail - kXsHeaderSize < h.len) return Result::kNeedMore;
  out->hdr = h;
  const char* p = reinterpret_cast<const char*>(buf_.data() + pos_ + kXsHeaderSize);
  out->payload.assign(p, h.len);
  pos_ += kXsHeaderSize + h.len;
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  }
  return Result::kMessage;
}

std::vector<std::string_view> XsStrings(std::string_view payload) {
  std::vector<std::string_view> out;
  size_t off = 0;
  while (off < payload.size()) {
    const size_t nul = payload.find('\0', off);
    if (nul == std::string_view::npos) break;
    out.push_back(payload.substr(off, nul - off));
    off = nul + 1;
  }
  return out;
}

std::optional<std::string_view> XsOneArg(std::string_view payload) {
  if (payload.empty()) return std::nullopt;
  const size_t nul = payload.find('\0');
  if (nul != payload.size() - 1) return std::nullopt;
  return payload.substr(0, nul);
}

namespace {
struct ErrName {
  int err;
  const char* name;
};
// Same order as xsd_errors[] in xs_wire.h (EINVAL first: the fallback).
constexpr ErrName kErrors[] = {
    {EINVAL, "EINVAL"}, {EACCES, "EACCES"},   {EEXIST, "EEXIST"},       {EISDIR, "EISDIR"},
    {ENOENT, "ENOENT"}, {ENOMEM, "ENOMEM"},   {ENOSPC, "ENOSPC"},       {EIO, "EIO"},
    {ENOTEMPTY, "ENOTEMPTY"}, {ENOSYS, "ENOSYS"}, {EROFS, "EROFS"},     {EBUSY, "EBUSY"},
    {EAGAIN, "EAGAIN"}, {EISCONN, "EISCONN"}, {E2BIG, "E2BIG"},         {EPERM, "EPERM"},
};
constexpr const char* kTypeNames[] = {
    "CONTROL", "DIRECTORY", "READ", "GET_PERMS", "WATCH", "UNWATCH", "TRANSACTION_START",
    "TRANSACTION_END", "INTRODUCE", "RELEASE", "GET_DOMAIN_PATH", "WRITE", "MKDIR", "RM",
    "SET_PERMS", "WATCH_EVENT", "ERROR", "IS_DOMAIN_INTRODUCED", "RESUME", "SET_TARGET",
    "RESTRICT(removed)", "RESET_WATCHES", "DIRECTORY_PART"};
static_assert(sizeof(kTypeNames) / sizeof(kTypeNames[0]) == kXsTypeCount);
}  // namespace

const char* XsErrorName(int err) {
  for (const auto& e : kErrors)
    if (e.err == err) return e.name;
  return "EINVAL";
}

int XsErrorFromName(std::string_view name) {
  for (const auto& e : kErrors)
    if (name == e.name) return e.err;
  return 0;
}

const char* XsTypeName(uint32_t type) { return type < kXsTypeCount ? kTypeNames[type] : "UNKNOWN"; }

}  // namespace vioport::xen
