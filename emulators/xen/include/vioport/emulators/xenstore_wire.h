// SPDX-License-Identifier: Apache-2.0
// The xenstore wire protocol (xen/io/xs_wire.h): the 16-byte xsd_sockmsg
// header, a stream parser that never trusts the header's len, and helpers
// that split a payload into its NUL-terminated strings.
//
// Every message is a header {type, req_id, tx_id, len} (host byte order, as
// on a Unix socket or a shared ring) followed by len payload bytes; len may
// not exceed XENSTORE_PAYLOAD_MAX (4096) - a peer that sends more is killed.
// Payload strings are NUL-terminated, except the value of a WRITE (the bytes
// after the path's NUL) and the value in a READ reply.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace vioport::xen {

// The message types, numbered as enum xsd_sockmsg_type in xs_wire.h (the
// values are static_assert-ed against the real header in xenstore_wire.cc).
enum XsType : uint32_t {
  kXsControl = 0,
  kXsDirectory = 1,
  kXsRead = 2,
  kXsGetPerms = 3,
  kXsWatch = 4,
  kXsUnwatch = 5,
  kXsTransactionStart = 6,
  kXsTransactionEnd = 7,
  kXsIntroduce = 8,
  kXsRelease = 9,
  kXsGetDomainPath = 10,
  kXsWrite = 11,
  kXsMkdir = 12,
  kXsRm = 13,
  kXsSetPerms = 14,
  kXsWatchEvent = 15,
  kXsError = 16,
  kXsIsDomainIntroduced = 17,
  kXsResume = 18,
  kXsSetTarget = 19,
  // 20 was XS_RESTRICT, removed.
  kXsResetWatches = 21,
  kXsDirectoryPart = 22,
  kXsTypeCount = 23,
};

inline constexpr size_t kXsHeaderSize = 16;
inline constexpr uint32_t kXsPayloadMax = 4096;   // XENSTORE_PAYLOAD_MAX
inline constexpr size_t kXsAbsPathMax = 3072;     // XENSTORE_ABS_PATH_MAX
inline constexpr size_t kXsRelPathMax = 2048;     // XENSTORE_REL_PATH_MAX

struct XsHeader {
  uint32_t type = 0;
  uint32_t req_id = 0;
  uint32_t tx_id = 0;
  uint32_t len = 0;
};

struct XsMessage {
  XsHeader hdr;
  std::string payload;  // exactly hdr.len bytes
};

// Header + payload as bytes on the wire (len is taken from payload.size()).
std::string EncodeXsMessage(uint32_t type, uint32_t req_id, uint32_t tx_id, std::string_view payload);
XsHeader DecodeXsHeader(const uint8_t* bytes);  // kXsHeaderSize bytes

// Reassembles messages from a byte stream. Feed() appends bytes; Next()
// yields complete messages in order. A header whose len exceeds
// kXsPayloadMax makes the parser fail for good (the connection must be
// closed, as C xenstored does): nothing after it is trusted.
class XsStreamParser {
 public:
  enum class Result { kNeedMore, kMessage, kOversized };
  void Feed(std::span<const uint8_t> bytes);
  Result Next(XsMessage* out);
  bool failed() const { return failed_; }
  size_t buffered() const { return buf_.size() - pos_; }

 private:
  std::vector<uint8_t> buf_;
  size_t pos_ = 0;
  bool failed_ = false;
};

// The complete NUL-terminated strings at the start of a payload, in order;
// bytes after the last NUL are not returned (as C xenstored's get_strings).
std::vector<std::string_view> XsStrings(std::string_view payload);
// The payload's only string: it must hold exactly one NUL, as its last byte.
std::optional<std::string_view> XsOneArg(std::string_view payload);

// errno value -> the name xenstored sends in an XS_ERROR reply ("ENOENT").
// Unknown values map to "EINVAL", as in C xenstored.
const char* XsErrorName(int err);
// The reverse (for clients and tests); 0 if the name is not in the table.
int XsErrorFromName(std::string_view name);

// A human-readable name of a message type ("WRITE"), "UNKNOWN" if none.
const char* XsTypeName(uint32_t type);

}  // namespace vioport::xen
