// SPDX-License-Identifier: Apache-2.0
// xen::XenStore (no I/O) and the wire codec: every request type, every error
// name, permissions, watches, transactions and quotas, asserting on the
// exact reply and event bytes a client would receive.
#include <algorithm>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "vioport/emulators/xenstore.h"
#include "vioport/emulators/xenstore_wire.h"

// GCC 12 reports -Wrestrict false positives inside std::string's operator+
// at -O3 (GCC bug 105329); the concatenations here are ordinary.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

namespace vioport::xen {
namespace {

using namespace std::string_literals;

struct Msg {
  XsHeader hdr;
  std::string payload;
};

// One connection: sends requests, collects replies and events.
class Client {
 public:
  Client(XenStore& store, uint32_t domid) : store_(store) {
    id_ = store.Connect(domid, [this](const XsHeader& h, std::string_view p) { inbox_.push_back({h, std::string(p)}); });
  }
  ~Client() { store_.Disconnect(id_); }

  // Sends one request and returns its reply (events are kept aside).
  Msg Request(uint32_t type, std::string_view payload, uint32_t tx = 0) {
    const uint32_t req = ++req_;
    store_.HandleMessage(id_, XsHeader{type, req, tx, static_cast<uint32_t>(payload.size())}, payload);
    Msg reply{};
    int replies = 0;
    for (auto& m : inbox_) {
      if (m.hdr.type == kXsWatchEvent) {
        events_.push_back(m);
      } else {
        EXPECT_EQ(m.hdr.req_id, req);
        EXPECT_EQ(m.hdr.tx_id, tx);
        reply = m;
        ++replies;
      }
    }
    inbox_.clear();
    EXPECT_EQ(replies, 1) << "exactly one reply per request";
    return reply;
  }
  // "OK", the value, or "ERR:<name>".
  std::string Call(uint32_t type, std::string_view payload, uint32_t tx = 0) {
    Msg m = Request(type, payload, tx);
    if (m.hdr.type == kXsError) return "ERR:" + std::string(m.payload.c_str());
    EXPECT_EQ(m.hdr.type, type);
    if (m.payload == "OK\0"s) return "OK";
    return m.payload;
  }
  std::string Write(std::string_view path, std::string_view value, uint32_t tx = 0) {
    return Call(kXsWrite, std::string(path) + '\0' + std::string(value), tx);
  }
  std::string Read(std::string_view path, uint32_t tx = 0) { return Call(kXsRead, Z(path), tx); }
  std::string Mkdir(std::string_view path, uint32_t tx = 0) { return Call(kXsMkdir, Z(path), tx); }
  std::string Rm(std::string_view path, uint32_t tx = 0) { return Call(kXsRm, Z(path), tx); }
  std::string Dir(std::string_view path, uint32_t tx = 0) { return Call(kXsDirectory, Z(path), tx); }
  std::string GetPerms(std::string_view path) { return Call(kXsGetPerms, Z(path)); }
  std::string SetPerms(std::string_view path, std::vector<std::string> perms, uint32_t tx = 0) {
    std::string p = Z(path);
    for (auto& s : perms) p += s + '\0';
    return Call(kXsSetPerms, p, tx);
  }
  std::string Watch(std::string_view path, std::string_view token) {
    return Call(kXsWatch, Z(path) + Z(token));
  }
  std::string Unwatch(std::string_view path, std::string_view token) {
    return Call(kXsUnwatch, Z(path) + Z(token));
  }
  uint32_t Start() {
    std::string r = Call(kXsTransactionStart, "\0"s);
    EXPECT_FALSE(r.starts_with("ERR")) << r;
    return static_cast<uint32_t>(std::stoul(r));
  }
  std::string End(uint32_t tx, bool commit) { return Call(kXsTransactionEnd, commit ? "T\0"s : "F\0"s, tx); }

  // Events received so far as "path|token", and forget them.
  std::vector<std::string> TakeEvents() {
    for (auto& m : inbox_) events_.push_back(m);
    inbox_.clear();
    std::vector<std::string> out;
    for (auto& e : events_) {
      EXPECT_EQ(e.hdr.type, kXsWatchEvent);
      EXPECT_EQ(e.hdr.req_id, 0u);
      EXPECT_EQ(e.hdr.tx_id, 0u);
      auto parts = XsStrings(e.payload);
      EXPECT_EQ(parts.size(), 2u);
      out.push_back(std::string(parts[0]) + "|" + std::string(parts.size() > 1 ? parts[1] : ""));
    }
    events_.clear();
    return out;
  }
  XenStore::ConnId id() const { return id_; }
  static std::string Z(std::string_view s) { return std::string(s) + '\0'; }

 private:
  XenStore& store_;
  XenStore::ConnId id_;
  uint32_t req_ = 100;
  std::vector<Msg> inbox_;
  std::vector<Msg> events_;
};

std::string Strs(std::vector<std::string> v) {
  std::string out;
  for (auto& s : v) out += s + '\0';
  return out;
}

// ---- codec ----------------------------------------------------------------

TEST(XsWire, EncodeDecodeRoundTrip) {
  const std::string wire = EncodeXsMessage(kXsWrite, 7, 3, "a\0b"s);
  ASSERT_EQ(wire.size(), kXsHeaderSize + 3);
  XsHeader h = DecodeXsHeader(reinterpret_cast<const uint8_t*>(wire.data()));
  EXPECT_EQ(h.type, uint32_t{kXsWrite});
  EXPECT_EQ(h.req_id, 7u);
  EXPECT_EQ(h.tx_id, 3u);
  EXPECT_EQ(h.len, 3u);
}

TEST(XsWire, StreamParserReassemblesAndRejectsOversized) {
  XsStreamParser p;
  const std::string a = EncodeXsMessage(kXsRead, 1, 0, "/x\0"s);
  const std::string b = EncodeXsMessage(kXsRead, 2, 0, "");
  std::string both = a + b;
  XsMessage m;
  for (size_t i = 0; i < both.size(); ++i) {  // byte by byte
    p.Feed({reinterpret_cast<const uint8_t*>(both.data()) + i, 1});
    if (i + 1 < a.size()) {
      EXPECT_EQ(p.Next(&m), XsStreamParser::Result::kNeedMore);
    }
    if (i + 1 == a.size()) {  // complete
      ASSERT_EQ(p.Next(&m), XsStreamParser::Result::kMessage);
      EXPECT_EQ(m.payload, "/x\0"s);
    }
  }
  ASSERT_EQ(p.Next(&m), XsStreamParser::Result::kMessage);
  EXPECT_EQ(m.hdr.req_id, 2u);
  EXPECT_TRUE(m.payload.empty());
  // len 4096 is fine, 4097 kills the stream for good.
  std::string ok = EncodeXsMessage(kXsWrite, 3, 0, std::string(4096, 'a'));
  p.Feed({reinterpret_cast<const uint8_t*>(ok.data()), ok.size()});
  ASSERT_EQ(p.Next(&m), XsStreamParser::Result::kMessage);
  std::string big = EncodeXsMessage(kXsWrite, 4, 0, std::string(4097, 'a'));
  p.Feed({reinterpret_cast<const uint8_t*>(big.data()), kXsHeaderSize});
  EXPECT_EQ(p.Next(&m), XsStreamParser::Result::kOversized);
  EXPECT_TRUE(p.failed());
  p.Feed({reinterpret_cast<const uint8_t*>(b.data()), b.size()});
  EXPECT_EQ(p.Next(&m), XsStreamParser::Result::kOversized);
}

TEST(XsWire, StringsAndOneArg) {
  EXPECT_EQ(XsStrings("a\0bc\0tail"s), (std::vector<std::string_view>{"a", "bc"}));
  EXPECT_TRUE(XsStrings("").empty());
  EXPECT_EQ(XsOneArg("/a\0"s), std::optional<std::string_view>("/a"));
  EXPECT_FALSE(XsOneArg("/a"s));        // unterminated
  EXPECT_FALSE(XsOneArg("/a\0b\0"s));   // two strings
  EXPECT_FALSE(XsOneArg(""s));
  EXPECT_STREQ(XsErrorName(ENOENT), "ENOENT");
  EXPECT_STREQ(XsErrorName(12345), "EINVAL");
  EXPECT_EQ(XsErrorFromName("EAGAIN"), EAGAIN);
  EXPECT_STREQ(XsTypeName(kXsDirectoryPart), "DIRECTORY_PART");
}

TEST(XsPerms, ParseAndFormat) {
  EXPECT_EQ(ParseXsPerm("b5"), (XsPerm{5, kPermBoth}));
  EXPECT_EQ(ParseXsPerm("n0"), (XsPerm{0, kPermNone}));
  EXPECT_FALSE(ParseXsPerm("x1"));
  EXPECT_FALSE(ParseXsPerm("r"));
  EXPECT_FALSE(ParseXsPerm("r-1"));
  EXPECT_FALSE(ParseXsPerm("r70000"));
  EXPECT_EQ(FormatXsPerm({7, kPermWrite}), "w7");
}

// ---- basic operations ---------------------------------------------------------

TEST(XenStore, InitialTree) {
  XenStore s;
  Client d0(s, 0);
  EXPECT_EQ(d0.Dir("/"), Strs({"local", "tool"}));
  EXPECT_EQ(d0.Dir("/local"), Strs({"domain"}));
  EXPECT_EQ(d0.Dir("/local/domain"), "");
  EXPECT_EQ(d0.Read("/"), "");
  EXPECT_EQ(d0.GetPerms("/"), Strs({"n0"}));
  EXPECT_EQ(d0.GetPerms("@introduceDomain"), Strs({"n0"}));
}

TEST(XenStore, WriteReadCreatesParentsAndKeepsBinaryValues) {
  XenStore s;
  Client d0(s, 0);
  EXPECT_EQ(d0.Write("/a/b/c", "v\0\xff"s), "OK");
  EXPECT_EQ(d0.Read("/a/b/c"), "v\0\xff"s);
  EXPECT_EQ(d0.Read("/a/b"), "");
  EXPECT_EQ(d0.Dir("/a"), Strs({"b"}));
  EXPECT_EQ(d0.Write("/a/b/c", ""), "OK");
  EXPECT_EQ(d0.Read("/a/b/c"), "");
  EXPECT_EQ(d0.Write("/a/x", "1"), "OK");
  EXPECT_EQ(d0.Dir("/a"), Strs({"b", "x"}));  // creation order
  EXPECT_EQ(d0.Read("/nope"), "ERR:ENOENT");
  EXPECT_EQ(d0.Dir("/nope"), "ERR:ENOENT");
  // Relative paths of dom0 are rooted at /local/domain/0.
  EXPECT_EQ(d0.Write("rel", "r"), "OK");
  EXPECT_EQ(s.Read("/local/domain/0/rel"), "r");
}

TEST(XenStore, InvalidPathsAreEinval) {
  XenStore s;
  Client d0(s, 0);
  for (const char* p : {"/a/", "/a//b", "/a b", "/a\x01", "@x", "", "/a.b"}) {
    EXPECT_EQ(d0.Write(p, "v"), "ERR:EINVAL") << p;
    EXPECT_EQ(d0.Read(p), "ERR:EINVAL") << p;
  }
  EXPECT_EQ(d0.Write("/" + std::string(kXsAbsPathMax, 'a'), "v"), "ERR:EINVAL");
  EXPECT_EQ(d0.Write("/" + std::string(kXsAbsPathMax - 1, 'a'), "v"), "OK");
  // Malformed payloads: not NUL-terminated, two args where one is expected.
  EXPECT_EQ(d0.Call(kXsRead, "/a"), "ERR:EINVAL");
  EXPECT_EQ(d0.Call(kXsRead, "/a\0/b\0"s), "ERR:EINVAL");
  EXPECT_EQ(d0.Call(kXsRead, ""), "ERR:EINVAL");
  EXPECT_EQ(d0.Call(kXsWrite, "/nonul"), "ERR:EINVAL");
  EXPECT_EQ(d0.Call(kXsMkdir, "/a"), "ERR:EINVAL");
  EXPECT_EQ(d0.Call(kXsRm, ""), "ERR:EINVAL");
}

TEST(XenStore, UnknownAndReplyOnlyTypesAreEnosys) {
  XenStore s;
  Client d0(s, 0);
  for (uint32_t t : {uint32_t{kXsWatchEvent}, uint32_t{kXsError}, 20u, 23u, 0xffffu, 0xffffffffu})
    EXPECT_EQ(d0.Call(t, "x\0"s), "ERR:ENOSYS") << t;
  EXPECT_EQ(d0.Call(kXsSetTarget, "1\0"s "2\0"s), "ERR:ENOSYS");
  EXPECT_EQ(d0.Call(kXsControl, "print\0"s), "ERR:EINVAL");
}

TEST(XenStore, MkdirAndRm) {
  XenStore s;
  Client d0(s, 0);
  EXPECT_EQ(d0.Mkdir("/m/n"), "OK");
  EXPECT_EQ(d0.Read("/m/n"), "");
  EXPECT_EQ(d0.Write("/m/n", "keep"), "OK");
  EXPECT_EQ(d0.Mkdir("/m/n"), "OK");  // existing: untouched
  EXPECT_EQ(d0.Read("/m/n"), "keep");
  EXPECT_EQ(d0.Write("/m/n/deep/er", "x"), "OK");
  const size_t before = s.NodeCount();
  EXPECT_EQ(d0.Rm("/m/n"), "OK");  // whole subtree
  EXPECT_EQ(s.NodeCount(), before - 3);
  EXPECT_EQ(d0.Read("/m/n/deep/er"), "ERR:ENOENT");
  EXPECT_EQ(d0.Dir("/m"), "");
  EXPECT_EQ(d0.Rm("/m/n"), "OK");            // missing, parent exists
  EXPECT_EQ(d0.Rm("/m/n/x"), "ERR:ENOENT");  // parent missing too
  EXPECT_EQ(d0.Rm("/"), "ERR:EINVAL");
}

TEST(XenStore, DirectoryPartPagesLargeDirectories) {
  XenStore s;
  Client d0(s, 0);
  // 300 children of 20 chars: 6300 bytes, more than one payload.
  std::string all;
  for (int i = 0; i < 300; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "child-%014d", i);
    ASSERT_EQ(d0.Write(std::string("/big/") + name, ""), "OK");
    all += std::string(name) + '\0';
  }
  EXPECT_EQ(d0.Dir("/big"), "ERR:E2BIG");
  std::string got;
  std::string gen;
  for (int guard = 0; guard < 10; ++guard) {
    std::string r = d0.Call(kXsDirectoryPart, "/big\0"s + std::to_string(got.size()) + '\0');
    ASSERT_FALSE(r.starts_with("ERR")) << r;
    ASSERT_LE(r.size(), kXsPayloadMax);
    const size_t nul = r.find('\0');
    if (gen.empty()) gen = r.substr(0, nul);
    EXPECT_EQ(r.substr(0, nul), gen);
    std::string part = r.substr(nul + 1);
    if (part.size() >= 1 && part.back() == '\0' && (part.size() == 1 || part[part.size() - 2] == '\0')) {
      got += part.substr(0, part.size() - 1);  // final empty string: done
      break;
    }
    got += part;
  }
  EXPECT_EQ(got, all);
  EXPECT_EQ(d0.Call(kXsDirectoryPart, "/big\0"s), "ERR:EINVAL");
}

TEST(XenStore, GetDomainPathAndIntroduce) {
  XenStore s;
  Client d0(s, 0);
  EXPECT_EQ(d0.Call(kXsGetDomainPath, "7\0"s), "/local/domain/7\0"s);
  EXPECT_EQ(d0.Call(kXsGetDomainPath, "x\0"s), "ERR:EINVAL");
  EXPECT_EQ(d0.Call(kXsIsDomainIntroduced, "7\0"s), "F\0"s);
  EXPECT_EQ(d0.Call(kXsIsDomainIntroduced, "0\0"s), "T\0"s);
  EXPECT_EQ(d0.Watch("@introduceDomain", "in"), "OK");
  EXPECT_EQ(d0.Watch("@releaseDomain", "out"), "OK");
  EXPECT_EQ(d0.TakeEvents(), (std::vector<std::string>{"@introduceDomain|in", "@releaseDomain|out"}));
  EXPECT_EQ(d0.Call(kXsIntroduce, "7\0"s "123\0"s "4\0"s), "OK");
  EXPECT_EQ(d0.Call(kXsIsDomainIntroduced, "7\0"s), "T\0"s);
  EXPECT_EQ(d0.TakeEvents(), (std::vector<std::string>{"@introduceDomain|in"}));
  EXPECT_EQ(d0.Call(kXsResume, "7\0"s), "OK");
  EXPECT_EQ(d0.Call(kXsRelease, "7\0"s), "OK");
  EXPECT_EQ(d0.TakeEvents(), (std::vector<std::string>{"@releaseDomain|out"}));
  EXPECT_EQ(d0.Call(kXsRelease, "7\0"s), "ERR:ENOENT");
  EXPECT_EQ(d0.Call(kXsIntroduce, "7\0"s), "ERR:EINVAL");
  // The API version also creates the home directory, owned by the domain.
  s.IntroduceDomain(9);
  EXPECT_EQ(d0.GetPerms("/local/domain/9"), Strs({"n9"}));
  s.ReleaseDomain(9);
  EXPECT_EQ(d0.Read("/local/domain/9"), "ERR:ENOENT");
}

// ---- permissions ----------------------------------------------------------------

TEST(XenStore, PrivilegedOperationsNeedDom0) {
  XenStore s;
  Client d5(s, 5);
  for (uint32_t t : {uint32_t{kXsControl}, uint32_t{kXsIntroduce}, uint32_t{kXsRelease},
                     uint32_t{kXsIsDomainIntroduced}, uint32_t{kXsResume}, uint32_t{kXsSetTarget}})
    EXPECT_EQ(d5.Call(t, "5\0"s), "ERR:EACCES") << t;
}

TEST(XenStore, DomainIdentityAndPermissions) {
  XenStore s;
  s.IntroduceDomain(5);
  s.IntroduceDomain(6);
  Client d0(s, 0), d5(s, 5), d6(s, 6);
  // Relative paths are rooted at the domain's home, which it owns.
  EXPECT_EQ(d5.Write("data/key", "v5"), "OK");
  EXPECT_EQ(s.Read("/local/domain/5/data/key"), "v5");
  EXPECT_EQ(d5.Read("data/key"), "v5");
  EXPECT_EQ(d5.GetPerms("data/key"), Strs({"n5"}));  // created by 5: owned by 5
  // Another domain: EACCES, for the node and for names below it.
  EXPECT_EQ(d6.Read("/local/domain/5/data/key"), "ERR:EACCES");
  EXPECT_EQ(d6.Read("/local/domain/5/data/missing"), "ERR:EACCES");  // no existence leak
  EXPECT_EQ(d6.Write("/local/domain/5/data/key", "x"), "ERR:EACCES");
  EXPECT_EQ(d6.Write("/local/domain/5/new", "x"), "ERR:EACCES");
  EXPECT_EQ(d6.Rm("/local/domain/5/data"), "ERR:EACCES");
  EXPECT_EQ(d6.Dir("/local/domain/5"), "ERR:EACCES");
  // Own missing node: ENOENT.
  EXPECT_EQ(d5.Read("data/missing"), "ERR:ENOENT");
  // dom0 bypasses everything.
  EXPECT_EQ(d0.Read("/local/domain/5/data/key"), "v5");
  // Grant read to 6: it can read, not write; the default (first entry) is none.
  EXPECT_EQ(d5.SetPerms("data/key", {"n5", "r6"}), "OK");
  EXPECT_EQ(d6.Read("/local/domain/5/data/key"), "v5");
  EXPECT_EQ(d6.Write("/local/domain/5/data/key", "x"), "ERR:EACCES");
  Client d7(s, 7);
  EXPECT_EQ(d7.Read("/local/domain/5/data/key"), "ERR:EACCES");
  // Default entry r: everyone not listed may read.
  EXPECT_EQ(d5.SetPerms("data/key", {"r5", "n6"}), "OK");
  EXPECT_EQ(d7.Read("/local/domain/5/data/key"), "v5");
  EXPECT_EQ(d6.Read("/local/domain/5/data/key"), "ERR:EACCES");
  // The owner always has RW, whatever its entry says.
  EXPECT_EQ(d5.SetPerms("data/key", {"n5"}), "OK");
  EXPECT_EQ(d5.Write("data/key", "w"), "OK");
  EXPECT_EQ(d5.Read("data/key"), "w");
  // Write-only for 6: write yes, read no; SET_PERMS needs ownership.
  EXPECT_EQ(d5.SetPerms("data/key", {"n5", "w6"}), "OK");
  EXPECT_EQ(d6.Write("/local/domain/5/data/key", "from6"), "OK");
  EXPECT_EQ(d6.Read("/local/domain/5/data/key"), "ERR:EACCES");
  EXPECT_EQ(d6.SetPerms("/local/domain/5/data/key", {"b6"}), "ERR:EACCES");
  // An unprivileged owner cannot give the node away; dom0 can.
  EXPECT_EQ(d5.SetPerms("data/key", {"n6"}), "ERR:EPERM");
  EXPECT_EQ(d0.SetPerms("/local/domain/5/data/key", {"b6"}), "OK");
  EXPECT_EQ(d6.Read("/local/domain/5/data/key"), "from6");
  EXPECT_EQ(s.NodesOwnedBy(6), 2u);  // its home and the key
  // Malformed SET_PERMS.
  EXPECT_EQ(d0.SetPerms("/local/domain/5/data/key", {"x1"}), "ERR:EINVAL");
  EXPECT_EQ(d0.Call(kXsSetPerms, "/local/domain/5/data/key\0"s), "ERR:EINVAL");
  EXPECT_EQ(d0.SetPerms("/nope", {"n0"}), "ERR:ENOENT");
}

TEST(XenStore, ImplicitParentsInheritPermsAndCreatorOwns) {
  XenStore s;
  Client d0(s, 0), d5(s, 5);
  EXPECT_EQ(d0.Mkdir("/shared"), "OK");
  EXPECT_EQ(d0.SetPerms("/shared", {"n0", "b5"}), "OK");
  EXPECT_EQ(d0.Write("/shared/p/q", "x"), "OK");  // dom0-created: inherits as is
  EXPECT_EQ(d0.GetPerms("/shared/p/q"), Strs({"n0", "b5"}));
  EXPECT_EQ(d5.Write("/shared/a/b", "y"), "OK");  // domain-created: owner becomes 5
  EXPECT_EQ(d0.GetPerms("/shared/a"), Strs({"n5", "b5"}));
  EXPECT_EQ(d0.GetPerms("/shared/a/b"), Strs({"n5", "b5"}));
  EXPECT_EQ(s.NodesOwnedBy(5), 2u);
  EXPECT_EQ(d5.Rm("/shared/a"), "OK");
  EXPECT_EQ(s.NodesOwnedBy(5), 0u);
}

// ---- watches ----------------------------------------------------------------------

TEST(XenStore, WatchFiresInitiallyThenOnSubtree) {
  XenStore s;
  Client d0(s, 0), w(s, 0);
  EXPECT_EQ(w.Watch("/w", "tok"), "OK");
  EXPECT_EQ(w.TakeEvents(), (std::vector<std::string>{"/w|tok"}));  // fires at once, node need not exist
  d0.Write("/w/a/b", "1");
  d0.Write("/wx", "1");  // not below /w
  d0.Write("/w", "2");
  EXPECT_EQ(w.TakeEvents(), (std::vector<std::string>{"/w/a/b|tok", "/w|tok"}));
  d0.SetPerms("/w/a", {"r0"});
  EXPECT_EQ(w.TakeEvents(), (std::vector<std::string>{"/w/a|tok"}));
  d0.Mkdir("/w/a");  // exists: no change, no event
  EXPECT_TRUE(w.TakeEvents().empty());
  // RM fires for the removed root (watches on it and above) and, for each
  // node below it, the watches set on exactly that node (as C xenstored).
  EXPECT_EQ(w.Watch("/w/a/b", "deep"), "OK");
  w.TakeEvents();
  d0.Rm("/w/a");
  auto ev = w.TakeEvents();
  std::sort(ev.begin(), ev.end());
  EXPECT_EQ(ev, (std::vector<std::string>{"/w/a/b|deep", "/w/a|tok"}));
  // Same path, other token: a second watch; the same pair: EEXIST.
  EXPECT_EQ(w.Watch("/w", "tok2"), "OK");
  EXPECT_EQ(w.Watch("/w", "tok"), "ERR:EEXIST");
  w.TakeEvents();
  EXPECT_EQ(w.Unwatch("/w", "tok"), "OK");
  EXPECT_EQ(w.Unwatch("/w", "tok"), "ERR:ENOENT");
  EXPECT_EQ(w.Unwatch("/never", "x"), "ERR:ENOENT");
  d0.Write("/w", "3");
  EXPECT_EQ(w.TakeEvents(), (std::vector<std::string>{"/w|tok2"}));
  EXPECT_EQ(w.Call(kXsWatch, "/only-path\0"s), "ERR:EINVAL");
  EXPECT_EQ(w.Call(kXsWatch, "/a\0t\0depth\0"s), "ERR:EINVAL");
  EXPECT_EQ(w.Watch("/bad//path", "t"), "ERR:EINVAL");
  EXPECT_EQ(w.Call(kXsResetWatches, ""), "OK");
  EXPECT_EQ(s.WatchCount(w.id()), 0u);
  d0.Write("/w", "4");
  EXPECT_TRUE(w.TakeEvents().empty());
}

TEST(XenStore, RelativeWatchReportsRelativePaths) {
  XenStore s;
  s.IntroduceDomain(5);
  Client d0(s, 0), d5(s, 5);
  EXPECT_EQ(d5.Watch("device", "t"), "OK");
  EXPECT_EQ(d5.Watch("/local/domain/5/device", "abs"), "OK");
  EXPECT_EQ(d5.TakeEvents(), (std::vector<std::string>{"device|t", "/local/domain/5/device|abs"}));
  d0.Write("/local/domain/5/device/vbd/state", "1");
  EXPECT_EQ(d5.TakeEvents(), (std::vector<std::string>{"device/vbd/state|t", "/local/domain/5/device/vbd/state|abs"}));
}

TEST(XenStore, WatchEventsRespectReadPermission) {
  XenStore s;
  s.IntroduceDomain(5);
  Client d0(s, 0), d5(s, 5);
  EXPECT_EQ(d5.Watch("/secret", "t"), "OK");
  d5.TakeEvents();
  d0.Write("/secret/x", "1");  // perms n0: 5 may not read
  EXPECT_TRUE(d5.TakeEvents().empty());
  d0.SetPerms("/secret/x", {"n0", "r5"});  // now it may: the perm change fires
  EXPECT_EQ(d5.TakeEvents(), (std::vector<std::string>{"/secret/x|t"}));
  // Special events go to unprivileged watchers only if the node allows it.
  EXPECT_EQ(d5.Watch("@releaseDomain", "r"), "OK");
  d5.TakeEvents();
  s.IntroduceDomain(8);
  s.ReleaseDomain(8);
  EXPECT_TRUE(d5.TakeEvents().empty());
  d0.SetPerms("@releaseDomain", {"n0", "r5"});  // a perm change fires too
  s.IntroduceDomain(8);
  s.ReleaseDomain(8);
  EXPECT_EQ(d5.TakeEvents(), (std::vector<std::string>{"@releaseDomain|r", "@releaseDomain|r"}));
}

TEST(XenStore, WatchQuotaIsE2big) {
  XenStore s;
  Client d5(s, 5), d0(s, 0);
  for (int i = 0; i < 128; ++i) ASSERT_EQ(d5.Watch("/q" + std::to_string(i), "t"), "OK") << i;
  EXPECT_EQ(d5.Watch("/one-more", "t"), "ERR:E2BIG");
  for (int i = 0; i < 200; ++i) ASSERT_EQ(d0.Watch("/q" + std::to_string(i), "t"), "OK");  // dom0: no quota
}

// ---- transactions ------------------------------------------------------------------

TEST(XenStore, TransactionCommitIsAtomicAndEventsWaitForIt) {
  XenStore s;
  Client d0(s, 0), w(s, 0);
  w.Watch("/t", "tok");
  w.TakeEvents();
  const uint32_t tx = d0.Start();
  EXPECT_NE(tx, 0u);
  EXPECT_EQ(d0.Write("/t/a", "1", tx), "OK");
  EXPECT_EQ(d0.Write("/t/b", "2", tx), "OK");
  EXPECT_EQ(d0.Read("/t/a", tx), "1");          // visible inside
  EXPECT_EQ(d0.Read("/t/a"), "ERR:ENOENT");     // not outside
  EXPECT_EQ(d0.Dir("/t", tx), Strs({"a", "b"}));
  EXPECT_TRUE(w.TakeEvents().empty());          // no events before commit
  EXPECT_EQ(d0.End(tx, true), "OK");
  EXPECT_EQ(d0.Read("/t/a"), "1");
  EXPECT_EQ(d0.Read("/t/b"), "2");
  EXPECT_EQ(w.TakeEvents(), (std::vector<std::string>{"/t/a|tok", "/t/b|tok"}));
  EXPECT_EQ(d0.End(tx, true), "ERR:ENOENT");    // gone
  EXPECT_EQ(d0.Read("/t/a", 999), "ERR:ENOENT");  // unknown transaction id
}

TEST(XenStore, TransactionAbortDiscards) {
  XenStore s;
  Client d0(s, 0), w(s, 0);
  w.Watch("/t", "tok");
  w.TakeEvents();
  const uint32_t tx = d0.Start();
  d0.Write("/t/a", "1", tx);
  d0.Rm("/local", tx);
  EXPECT_EQ(d0.End(tx, false), "OK");
  EXPECT_EQ(d0.Read("/t/a"), "ERR:ENOENT");
  EXPECT_EQ(d0.Dir("/local"), Strs({"domain"}));
  EXPECT_TRUE(w.TakeEvents().empty());
  const uint32_t tx2 = d0.Start();
  EXPECT_EQ(d0.Call(kXsTransactionEnd, "X\0"s, tx2), "ERR:EINVAL");
  EXPECT_EQ(d0.Call(kXsTransactionEnd, "T\0"s, 0), "ERR:ENOENT");
}

TEST(XenStore, TransactionConflictIsEagain) {
  XenStore s;
  Client a(s, 0), b(s, 0);
  a.Write("/c/x", "0");
  // a reads x inside a transaction; b changes x outside; a's commit fails.
  uint32_t tx = a.Start();
  EXPECT_EQ(a.Read("/c/x", tx), "0");
  EXPECT_EQ(a.Write("/c/y", "from-a", tx), "OK");
  EXPECT_EQ(b.Write("/c/x", "1"), "OK");
  EXPECT_EQ(a.End(tx, true), "ERR:EAGAIN");
  EXPECT_EQ(a.Read("/c/y"), "ERR:ENOENT");  // nothing applied
  EXPECT_EQ(s.TransactionCount(a.id()), 0u);
  // Retry succeeds.
  tx = a.Start();
  EXPECT_EQ(a.Read("/c/x", tx), "1");
  EXPECT_EQ(a.Write("/c/y", "from-a", tx), "OK");
  EXPECT_EQ(a.End(tx, true), "OK");
  // Two transactions writing the same node: the second commit conflicts.
  uint32_t t1 = a.Start(), t2 = b.Start();
  a.Write("/c/z", "1", t1);
  b.Write("/c/z", "2", t2);
  EXPECT_EQ(a.End(t1, true), "OK");
  EXPECT_EQ(b.End(t2, true), "ERR:EAGAIN");
  EXPECT_EQ(a.Read("/c/z"), "1");
  // Deleting a node another transaction read conflicts too.
  t1 = a.Start();
  EXPECT_EQ(a.Read("/c/z", t1), "1");
  b.Rm("/c/z");
  EXPECT_EQ(a.End(t1, true), "ERR:EAGAIN");
  // Disjoint transactions both commit.
  t1 = a.Start();
  t2 = b.Start();
  a.Write("/c/p/1", "a", t1);
  b.Write("/c/q/1", "b", t2);
  EXPECT_EQ(a.End(t1, true), "OK");
  EXPECT_EQ(b.End(t2, true), "ERR:EAGAIN");  // both added a child to /c: C xenstored conflicts as well
}

TEST(XenStore, TransactionNestingAndLimit) {
  XenStore s;
  Client d5(s, 5), d0(s, 0);
  const uint32_t tx = d5.Start();
  EXPECT_EQ(d5.Call(kXsTransactionStart, "\0"s, tx), "ERR:EBUSY");  // no nesting
  EXPECT_EQ(d5.Call(kXsTransactionStart, "\0"s, tx + 100), "ERR:ENOENT");
  for (int i = 1; i < 10; ++i) d5.Start();
  EXPECT_EQ(s.TransactionCount(d5.id()), 10u);
  EXPECT_EQ(d5.Call(kXsTransactionStart, "\0"s), "ERR:ENOSPC");
  EXPECT_EQ(d5.End(tx, false), "OK");
  d5.Start();
  for (int i = 0; i < 20; ++i) d0.Start();  // dom0: no limit
  // Watches ignore the transaction id.
  EXPECT_EQ(d0.Call(kXsWatch, "/x\0t\0"s, 4242), "OK");
}

// ---- quotas ------------------------------------------------------------------------

TEST(XenStore, NodeQuotaPerDomain) {
  XenStore s(XenStoreLimits{.nodes_per_domain = 20});
  s.IntroduceDomain(5);  // home owned by 5: one node
  Client d5(s, 5), d0(s, 0);
  for (int i = 0; i < 19; ++i) ASSERT_EQ(d5.Write("n" + std::to_string(i), "v"), "OK") << i;
  EXPECT_EQ(s.NodesOwnedBy(5), 20u);
  EXPECT_EQ(d5.Write("more", "v"), "ERR:ENOSPC");
  EXPECT_EQ(d5.Mkdir("more"), "ERR:ENOSPC");
  EXPECT_EQ(d5.Write("n0", "modify is fine"), "OK");
  EXPECT_EQ(d5.Rm("n0"), "OK");
  EXPECT_EQ(d5.Write("a/b", "two new nodes do not fit"), "ERR:ENOSPC");
  EXPECT_EQ(d5.Read("a"), "ERR:ENOENT");  // nothing half-created
  EXPECT_EQ(d5.Write("a", "one fits"), "OK");
  // Inside a transaction the count includes the transaction's own nodes.
  EXPECT_EQ(d5.Rm("a"), "OK");
  const uint32_t tx = d5.Start();
  EXPECT_EQ(d5.Write("t1", "v", tx), "OK");
  EXPECT_EQ(d5.Write("t2", "v", tx), "ERR:ENOSPC");
  EXPECT_EQ(d5.End(tx, true), "OK");
  for (int i = 0; i < 50; ++i) ASSERT_EQ(d0.Write("/dom0/" + std::to_string(i), "v"), "OK");
}

TEST(XenStore, DefaultNodeQuotaIs1000) {
  XenStore s;
  s.IntroduceDomain(5);
  Client d5(s, 5);
  // Spread over directories: a node's size includes its children's names.
  for (int g = 0; g < 34; ++g) ASSERT_EQ(d5.Mkdir("g" + std::to_string(g)), "OK");
  for (int i = 0; s.NodesOwnedBy(5) < 1000; ++i)
    ASSERT_EQ(d5.Write("g" + std::to_string(i / 30) + "/n" + std::to_string(i % 30), ""), "OK") << i;
  EXPECT_EQ(d5.Write("g0/x", ""), "ERR:ENOSPC");
  EXPECT_EQ(s.NodesOwnedBy(5), 1000u);
}

TEST(XenStore, NodeSizeAndPermCountQuotas) {
  XenStore s;
  s.IntroduceDomain(5);
  Client d5(s, 5), d0(s, 0);
  // 24 header + 8 per perm + value must stay <= 2048 for a domain.
  EXPECT_EQ(d5.Write("big", std::string(2048 - 32, 'x')), "OK");
  EXPECT_EQ(d5.Write("big", std::string(2048 - 31, 'x')), "ERR:ENOSPC");
  EXPECT_EQ(d5.Read("big").size(), 2048u - 32);
  EXPECT_EQ(d0.Write("/big", std::string(4000, 'x')), "OK");  // dom0: no node-size quota
  EXPECT_EQ(d0.Read("/big").size(), 4000u);
  EXPECT_EQ(d5.SetPerms("big", {"n5", "r1"}), "ERR:ENOSPC");  // 8 more bytes of perms
  // The child names count too: the home dir holds "big" and "small".
  EXPECT_EQ(d5.Write("small", ""), "OK");
  EXPECT_EQ(d5.SetPerms("small", {"n5", "r1", "r2", "r3", "r4"}), "OK");
  EXPECT_EQ(d5.SetPerms("small", {"n5", "r1", "r2", "r3", "r4", "r6"}), "ERR:ENOSPC");
  // A reply that would exceed the payload limit: E2BIG.
  EXPECT_EQ(d0.Write("/huge", std::string(4096 - 6, 'y')), "OK");
  EXPECT_EQ(d0.Read("/huge").size(), 4090u);
}

TEST(XenStore, RelativePathLengthLimitForDomains) {
  XenStore s;
  s.IntroduceDomain(5);
  Client d5(s, 5);
  std::string rel;
  for (int i = 0; i < 19; ++i) rel += std::string(100, 'a') + "/";
  rel += std::string(kXsRelPathMax - rel.size(), 'b');
  ASSERT_EQ(rel.size(), kXsRelPathMax);
  EXPECT_EQ(d5.Write(rel, "v"), "OK");
  EXPECT_EQ(d5.Read("/local/domain/5/" + rel), "v");
  EXPECT_EQ(d5.Write(rel + "c", ""), "ERR:EINVAL");
  EXPECT_EQ(d5.Write("/local/domain/5/" + rel + "c", ""), "ERR:EINVAL");
}

TEST(XenStore, DisconnectDropsWatchesAndTransactions) {
  XenStore s;
  Client d0(s, 0);
  {
    Client w(s, 0);
    w.Watch("/d", "t");
    w.Start();
    EXPECT_EQ(s.ConnectionCount(), 2u);
  }
  EXPECT_EQ(s.ConnectionCount(), 1u);
  EXPECT_EQ(d0.Write("/d", "x"), "OK");  // no sink of a dead connection is called
}

}  // namespace
}  // namespace vioport::xen
