// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: the xenstore wire codec and XenStore state machine
// against a hostile byte stream.
//
// Input: byte 0 selects the domain identity of the unprivileged connection
// (domid 1 + byte0 % 8; domid 1..8, 5 is introduced); the rest is a raw
// stream of xsd_sockmsg messages fed in chunks through XsStreamParser. Each
// message goes to the dom0 connection if its req_id is even, to the domain
// connection if odd (a third connection watches "/" throughout). A header
// with len > 4096 ends the stream, as xenstored closes that connection.
//
// Checked for every message the store emits: it is well-formed (payload
// <= 4096; an ERROR names a known errno, NUL-terminated), replies echo the
// request's req_id / tx_id and each request gets exactly one; events carry
// req_id = tx_id = 0 and two strings.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "vioport/emulators/xenstore.h"
#include "vioport/emulators/xenstore_wire.h"

using namespace vioport::xen;

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

struct Sink {
  int replies = 0;
  XsHeader last{};
  void operator()(const XsHeader& h, std::string_view p) {
    Check(h.len == p.size() && p.size() <= kXsPayloadMax);
    if (h.type == kXsWatchEvent) {
      Check(h.req_id == 0 && h.tx_id == 0);
      Check(XsStrings(p).size() == 2);
      return;
    }
    if (h.type == kXsError) Check(!p.empty() && p.back() == '\0' && XsErrorFromName(p.substr(0, p.size() - 1)) != 0);
    ++replies;
    last = h;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  XenStore store(XenStoreLimits{.nodes_per_domain = 64, .node_size = 2048, .perms_per_node = 5,
                                .watches_per_connection = 8, .transactions_per_connection = 4});
  store.IntroduceDomain(5);
  const uint32_t domid = 1 + data[0] % 8;
  Sink s0, s1, sw;
  const auto c0 = store.Connect(0, [&s0](const XsHeader& h, std::string_view p) { s0(h, p); });
  const auto c1 = store.Connect(domid, [&s1](const XsHeader& h, std::string_view p) { s1(h, p); });
  const auto cw = store.Connect(5, [&sw](const XsHeader& h, std::string_view p) { sw(h, p); });
  store.HandleMessage(cw, XsHeader{kXsWatch, 1, 0, 7}, std::string_view("/\0all\0", 7));

  XsStreamParser parser;
  size_t pos = 1;
  size_t chunk = 7;
  XsMessage m;
  bool done = false;
  while (!done && pos < size) {
    const size_t n = std::min(chunk, size - pos);
    parser.Feed({data + pos, n});
    pos += n;
    chunk = chunk * 3 % 61 + 1;  // varied split points
    for (;;) {
      const auto r = parser.Next(&m);
      if (r == XsStreamParser::Result::kNeedMore) break;
      if (r == XsStreamParser::Result::kOversized) {
        done = true;
        break;
      }
      Check(m.payload.size() == m.hdr.len && m.hdr.len <= kXsPayloadMax);
      Sink& s = (m.hdr.req_id & 1) ? s1 : s0;
      const int before = s.replies;
      store.HandleMessage((m.hdr.req_id & 1) ? c1 : c0, m.hdr, m.payload);
      Check(s.replies == before + 1);
      Check(s.last.req_id == m.hdr.req_id && s.last.tx_id == m.hdr.tx_id);
    }
  }
  // Quota bookkeeping stays sane.
  Check(store.NodesOwnedBy(domid) <= 64 + 1);
  store.Disconnect(c1);
  store.Disconnect(c0);
  store.Disconnect(cw);
  return 0;
}
