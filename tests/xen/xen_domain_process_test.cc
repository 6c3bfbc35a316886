// SPDX-License-Identifier: Apache-2.0
// xenemud serving domains as processes: a real xenemud process, domains as
// RemoteDomain clients (in this process, or in a forked child), checked on
// data: granted bytes seen through maps and copies, Xen's GNTST codes, end
// of access refused while mapped, a dying frontend's pages kept for its
// backend, event channels, xenstore (the domain's node, @releaseDomain, its
// backends closed) and xenemud's own death. Then the transport's emulator
// channel (OpenEmulatorChannel) over the same daemon. Every wait is bounded;
// nothing asserts on time.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

extern "C" {
#include <xenstore.h>
}

#include "vioport/emulators/xen_remote.h"
#include "xenemud_child.h"
#include "vioport/emulators/xen_emu_channel.h"
#include "vioport/transports/xen_channel.h"

namespace vioport::xen {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kPage = 4096;

class Xenemud {
 public:
  explicit Xenemud(std::vector<std::string> extra = {}) {
    char tmpl[] = "/tmp/xenemud-dom-XXXXXX";
    dir_ = mkdtemp(tmpl);
    xs_ = dir_ + "/xs";
    domains_ = dir_ + "/domains";
    std::vector<std::string> args = {"--xenstore", xs_, "--domains", domains_};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = child::SpawnXenemud(args);
  }
  ~Xenemud() {
    if (pid_ > 0) {
      child::StopXenemud(pid_, 20);
    }
    std::system(("rm -rf " + dir_).c_str());
  }
  void Kill() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  std::unique_ptr<RemoteDomain> Connect(DomId id, uint32_t pool = 0, uint32_t frames = 1) {
    auto d = TryConnect(id, pool, frames);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? std::move(*d) : nullptr;
  }
  absl::StatusOr<std::unique_ptr<RemoteDomain>> TryConnect(DomId id, uint32_t pool = 0, uint32_t frames = 1) {
    RemoteDomainOptions o;
    o.socket_path = domains_;
    o.id = id;
    o.memory_bytes = 1 << 20;
    o.grant_frames = frames;
    o.grant_pages = pool;
    o.connect_timeout = std::chrono::seconds(10);
    return RemoteDomain::Connect(o);
  }
  const std::string& xs() const { return xs_; }
  const std::string& domains() const { return domains_; }

 private:
  std::string dir_, xs_, domains_;
  pid_t pid_ = -1;
};

// A libxenstore handle on `path` (XENSTORED_PATH is read at xs_open).
struct Xs {
  explicit Xs(const std::string& path) {
    setenv("XENSTORED_PATH", path.c_str(), 1);
    h = xs_open(0);
    EXPECT_NE(h, nullptr) << "xs_open " << path;
  }
  ~Xs() {
    if (h) xs_close(h);
  }
  std::optional<std::string> Read(const std::string& p) {
    unsigned len = 0;
    char* v = static_cast<char*>(xs_read(h, XBT_NULL, p.c_str(), &len));
    if (!v) return std::nullopt;
    std::string s(v, len);
    free(v);
    return s;
  }
  bool Write(const std::string& p, const std::string& v) { return xs_write(h, XBT_NULL, p.c_str(), v.data(), v.size()); }
  // Waits (bounded) for a watch event with `token`; true if one came.
  bool WaitEvent(const std::string& token, int timeout_ms = 10000) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (Clock::now() < deadline) {
      pollfd p{xs_fileno(h), POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      unsigned n = 0;
      char** ev = xs_read_watch(h, &n);
      if (!ev) continue;
      const bool match = token == ev[XS_WATCH_TOKEN];
      free(ev);
      if (match) return true;
    }
    return false;
  }
  xs_handle* h = nullptr;
};

bool Readable(int fd, int timeout_ms = 10000) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, timeout_ms) == 1;
}

// Grants pool page `page` of `f` to `grantee` at ref 8 + page.
GrantRef GrantPool(RemoteDomain& f, uint32_t page, DomId grantee, bool readonly) {
  const GrantRef ref = kGrantReservedEntries + page;
  EXPECT_TRUE(f.grant_table().GrantAccess(ref, grantee, f.pool_first_frame() + page, readonly));
  return ref;
}

// Maps until `want` (the granter's death is asynchronous in xenemud).
int16_t MapUntil(RemoteDomain& b, DomId granter, GrantRef ref, int16_t want) {
  int16_t got = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  do {
    GrantMapping m = b.Map(granter, ref, true);
    got = m.status;
    if (got == gntst::kOkay) b.Unmap(m);
    if (got == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  } while (Clock::now() < deadline);
  return got;
}

TEST(XenDomainProcess, BackendMapsExactlyTheGrantedBytesBothWays) {
  Xenemud x;
  auto f = x.Connect(1, 4);
  auto b = x.Connect(2);
  ASSERT_TRUE(f && b);
  ASSERT_EQ(f->pool_pages(), 4u);
  uint8_t* page = f->pool() + kPage;
  for (uint64_t i = 0; i < kPage; ++i) page[i] = static_cast<uint8_t>(i * 7 + 3);
  const GrantRef ref = GrantPool(*f, 1, 2, false);
  GrantMapping m = b->Map(1, ref, false);
  ASSERT_EQ(m.status, gntst::kOkay);
  EXPECT_EQ(std::memcmp(m.addr, page, kPage), 0);
  // The flags xenemud set in the frontend's own table while mapped.
  EXPECT_TRUE(f->grant_table().Read(ref).flags & gtf::kReading);
  EXPECT_TRUE(f->grant_table().Read(ref).flags & gtf::kWriting);
  std::memcpy(m.addr + 100, "written by the backend", 22);
  EXPECT_EQ(std::memcmp(page + 100, "written by the backend", 22), 0);
  EXPECT_EQ(b->Unmap(m), gntst::kOkay);
  EXPECT_EQ(f->grant_table().Read(ref).flags & (gtf::kReading | gtf::kWriting), 0);
}

TEST(XenDomainProcess, GrantFromAForkedFrontendProcess) {
  Xenemud x;
  int to_parent[2], to_child[2];
  ASSERT_EQ(pipe(to_parent), 0);
  ASSERT_EQ(pipe(to_child), 0);
  const pid_t child = fork();
  if (child == 0) {
    close(to_parent[0]);
    close(to_child[1]);
    RemoteDomainOptions o;
    o.socket_path = x.domains();
    o.id = 7;
    o.memory_bytes = 1 << 20;
    o.grant_pages = 2;
    o.connect_timeout = std::chrono::seconds(10);
    auto f = RemoteDomain::Connect(o);
    if (!f.ok()) _exit(1);
    std::memcpy((*f)->pool(), "from another process", 21);
    (*f)->grant_table().GrantAccess(kGrantReservedEntries, 3, (*f)->pool_first_frame(), true);
    const uint32_t ref = kGrantReservedEntries;
    if (write(to_parent[1], &ref, sizeof ref) != sizeof ref) _exit(2);
    char c;
    (void)!read(to_child[0], &c, 1);  // until the parent is done
    _exit(0);
  }
  close(to_parent[1]);
  close(to_child[0]);
  auto b = x.Connect(3);
  ASSERT_TRUE(b);
  uint32_t ref = 0;
  ASSERT_EQ(read(to_parent[0], &ref, sizeof ref), static_cast<ssize_t>(sizeof ref));
  GrantMapping m = b->Map(7, ref, true);
  ASSERT_EQ(m.status, gntst::kOkay);
  EXPECT_EQ(std::memcmp(m.addr, "from another process", 21), 0);
  EXPECT_EQ(b->Unmap(m), gntst::kOkay);
  close(to_child[1]);
  int st = 0;
  waitpid(child, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  close(to_parent[0]);
}

TEST(XenDomainProcess, ReadOnlyGrantIsReadOnlyEverywhere) {
  Xenemud x;
  auto f = x.Connect(1, 2);
  auto b = x.Connect(2);
  ASSERT_TRUE(f && b);
  std::memcpy(f->pool(), "read me", 7);
  const GrantRef ref = GrantPool(*f, 0, 2, true);
  EXPECT_EQ(b->Map(1, ref, false).status, gntst::kGeneralError);
  GrantMapping m = b->Map(1, ref, true);
  ASSERT_EQ(m.status, gntst::kOkay);
  EXPECT_EQ(std::memcmp(m.addr, "read me", 7), 0);
  // The fd behind it was a read-only file description: the mapping cannot
  // be made writable.
  EXPECT_NE(mprotect(m.addr, kPage, PROT_READ | PROT_WRITE), 0);
  EXPECT_EQ(errno, EACCES);
  EXPECT_TRUE(f->grant_table().Read(ref).flags & gtf::kReading);
  EXPECT_FALSE(f->grant_table().Read(ref).flags & gtf::kWriting);
  EXPECT_EQ(b->Unmap(m), gntst::kOkay);
}

TEST(XenDomainProcess, MapErrorsAreXensCodes) {
  Xenemud x;
  auto f = x.Connect(1, 2);
  auto b = x.Connect(2);
  ASSERT_TRUE(f && b);
  // Granted to domain 3, mapped by 2.
  const GrantRef ref = GrantPool(*f, 0, 3, false);
  EXPECT_EQ(b->Map(1, ref, true).status, gntst::kGeneralError);
  // Beyond the table (1 frame = 512 refs).
  EXPECT_EQ(b->Map(1, 512, true).status, gntst::kBadGntref);
  // A ref never granted.
  EXPECT_EQ(b->Map(1, 100, true).status, gntst::kGeneralError);
  // A RAM frame: only pool pages can be handed out.
  ASSERT_TRUE(f->grant_table().GrantAccess(20, 2, *f->RamFrame(f->buffer_area()), false));
  EXPECT_EQ(b->Map(1, 20, false).status, gntst::kBadPage);
  // ... and it left no pin behind: the frontend can end access.
  EXPECT_TRUE(f->grant_table().EndAccess(20));
  // An unknown domain, and DOMID_SELF.
  EXPECT_EQ(b->Map(9, ref, true).status, gntst::kBadDomain);
  EXPECT_EQ(b->Map(kDomidSelf, ref, true).status, gntst::kBadDomain);
}

TEST(XenDomainProcess, CopyBothWaysWithPerSegmentStatus) {
  Xenemud x;
  auto f = x.Connect(1, 2);
  auto b = x.Connect(2);
  ASSERT_TRUE(f && b);
  uint8_t* fp = f->pool();
  for (uint64_t i = 0; i < kPage; ++i) fp[i] = static_cast<uint8_t>(i ^ 0x5A);
  const GrantRef rw = GrantPool(*f, 0, 2, false);
  const GrantRef ro = GrantPool(*f, 1, 2, true);
  uint8_t* local = b->buffer_area();
  const uint32_t local_frame = *b->RamFrame(local);
  std::memset(local, 0, 2 * kPage);
  std::memcpy(local + kPage, "to the frontend", 15);

  std::vector<CopySegment> segs(5);
  // 0: read 4096 bytes of the grant into local page 0.
  segs[0].source = CopyPtr{rw, 1, 0};
  segs[0].dest = CopyPtr{local_frame, kDomidSelf, 0};
  segs[0].len = kPage;
  segs[0].flags = kGntcopySourceGref;
  // 1: write 15 bytes from local page 1 into the grant at 2000.
  segs[1].source = CopyPtr{local_frame + 1, kDomidSelf, 0};
  segs[1].dest = CopyPtr{rw, 1, 2000};
  segs[1].len = 15;
  segs[1].flags = kGntcopyDestGref;
  // 2: crosses the grant's page.
  segs[2] = segs[1];
  segs[2].dest.offset = 4090;
  // 3: the local side names another domain.
  segs[3] = segs[1];
  segs[3].source.domid = 1;
  // 4: a write through a read-only grant.
  segs[4] = segs[1];
  segs[4].dest.ref_or_gmfn = ro;
  b->Copy(segs);
  EXPECT_EQ(segs[0].status, gntst::kOkay);
  EXPECT_EQ(segs[1].status, gntst::kOkay);
  EXPECT_EQ(segs[2].status, gntst::kBadCopyArg);
  EXPECT_EQ(segs[3].status, gntst::kPermissionDenied);
  EXPECT_EQ(segs[4].status, gntst::kGeneralError);
  for (uint64_t i = 0; i < kPage; ++i) ASSERT_EQ(local[i], static_cast<uint8_t>(i ^ 0x5A)) << i;
  EXPECT_EQ(std::memcmp(fp + 2000, "to the frontend", 15), 0);
  EXPECT_NE(std::memcmp(f->pool() + kPage, "to the frontend", 15), 0);

  // More segments than one argument page holds: one byte each.
  std::vector<CopySegment> many(400);
  for (size_t i = 0; i < many.size(); ++i) {
    many[i].source = CopyPtr{rw, 1, static_cast<uint16_t>(i)};
    many[i].dest = CopyPtr{local_frame + 1, kDomidSelf, static_cast<uint16_t>(i)};
    many[i].len = 1;
    many[i].flags = kGntcopySourceGref;
  }
  b->Copy(many);
  for (size_t i = 0; i < many.size(); ++i) {
    ASSERT_EQ(many[i].status, gntst::kOkay) << i;
    ASSERT_EQ(local[kPage + i], fp[i]) << i;
  }
}

TEST(XenDomainProcess, EndAccessFailsWhileMapped) {
  Xenemud x;
  auto f = x.Connect(1, 1);
  auto b = x.Connect(2);
  ASSERT_TRUE(f && b);
  const GrantRef ref = GrantPool(*f, 0, 2, false);
  GrantMapping m = b->Map(1, ref, false);
  ASSERT_EQ(m.status, gntst::kOkay);
  EXPECT_FALSE(f->grant_table().EndAccess(ref));
  EXPECT_EQ(b->Unmap(m), gntst::kOkay);
  EXPECT_TRUE(f->grant_table().EndAccess(ref));
  EXPECT_EQ(b->Map(1, ref, true).status, gntst::kGeneralError);
  // A stale handle.
  EXPECT_EQ(b->Unmap(m), gntst::kBadHandle);
}

TEST(XenDomainProcess, MaptrackExhaustionIsNoSpace) {
  Xenemud x({"--max-maptrack", "3"});
  auto f = x.Connect(1, 4);
  auto b = x.Connect(2);
  ASSERT_TRUE(f && b);
  std::vector<GrantMapping> maps;
  for (uint32_t i = 0; i < 4; ++i) GrantPool(*f, i, 2, true);
  for (uint32_t i = 0; i < 3; ++i) {
    maps.push_back(b->Map(1, kGrantReservedEntries + i, true));
    ASSERT_EQ(maps.back().status, gntst::kOkay);
  }
  EXPECT_EQ(b->Map(1, kGrantReservedEntries + 3, true).status, gntst::kNoSpace);
  EXPECT_EQ(b->Unmap(maps[0]), gntst::kOkay);
  GrantMapping again = b->Map(1, kGrantReservedEntries + 3, true);
  EXPECT_EQ(again.status, gntst::kOkay);
}

TEST(XenDomainProcess, RefusesDuplicateIdsAndPoolsOverTheCap) {
  Xenemud x({"--max-grant-pages", "16"});
  auto f = x.Connect(1, 10);
  ASSERT_TRUE(f);
  auto dup = x.TryConnect(1);
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(std::string(dup.status().message()).find("already connected"), std::string::npos) << dup.status();
  auto big = x.TryConnect(2, 7);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(std::string(big.status().message()).find("pool cap"), std::string::npos) << big.status();
  EXPECT_TRUE(x.TryConnect(2, 6).ok());
}

TEST(XenDomainProcess, DyingFrontendsPagesStayForItsBackend) {
  Xenemud x;
  auto f = x.Connect(1, 2);
  auto b = x.Connect(2);
  ASSERT_TRUE(f && b);
  std::memcpy(f->pool(), "still here", 10);
  const GrantRef ref = GrantPool(*f, 0, 2, false);
  GrantMapping m = b->Map(1, ref, false);
  ASSERT_EQ(m.status, gntst::kOkay);
  f->Disconnect();
  f.reset();  // the frontend process's memory is gone too
  EXPECT_EQ(MapUntil(*b, 1, ref, gntst::kBadDomain), gntst::kBadDomain);
  EXPECT_EQ(std::memcmp(m.addr, "still here", 10), 0);
  std::memcpy(m.addr, "written after death", 19);
  EXPECT_EQ(std::memcmp(m.addr, "written after death", 19), 0);
  EXPECT_EQ(b->Unmap(m), gntst::kOkay);
  // Its id is free again once nobody maps its pages (Connect waits a moment).
  auto again = x.TryConnect(1, 2);
  EXPECT_TRUE(again.ok()) << again.status();
}

TEST(XenDomainProcess, EventChannelsAcrossDomains) {
  Xenemud x;
  auto f = x.Connect(1);
  auto b = x.Connect(2);
  ASSERT_TRUE(f && b);
  const int64_t pf = f->AllocUnbound(2);
  ASSERT_GT(pf, 0);
  // Reserved for domain 2: a third domain cannot bind it.
  auto c = x.Connect(3);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->BindInterdomain(1, static_cast<EvtchnPort>(pf)), -EINVAL);
  const int64_t pb = b->BindInterdomain(1, static_cast<EvtchnPort>(pf));
  ASSERT_GT(pb, 0);
  uint64_t v;
  EvtchnPort ports[8];
  // Binding marks the binder's port pending.
  ASSERT_TRUE(Readable(b->event_fd()));
  (void)!read(b->event_fd(), &v, sizeof v);
  ASSERT_EQ(b->Pending(ports), 1u);
  EXPECT_EQ(ports[0], static_cast<EvtchnPort>(pb));
  EXPECT_EQ(b->Unmask(static_cast<EvtchnPort>(pb)), 0);
  // Three sends before the frontend looks: one event.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(b->Send(static_cast<EvtchnPort>(pb)), 0);
  ASSERT_TRUE(Readable(f->event_fd()));
  (void)!read(f->event_fd(), &v, sizeof v);
  ASSERT_EQ(f->Pending(ports), 1u);
  EXPECT_EQ(ports[0], static_cast<EvtchnPort>(pf));
  EXPECT_EQ(f->Pending(ports), 0u);
  // Delivered masked: another send only sets pending; unmask delivers it.
  EXPECT_EQ(b->Send(static_cast<EvtchnPort>(pb)), 0);
  EXPECT_EQ(f->Pending(ports), 0u);
  EXPECT_EQ(f->Unmask(static_cast<EvtchnPort>(pf)), 0);
  ASSERT_EQ(f->Pending(ports), 1u);
  EXPECT_EQ(f->Unmask(static_cast<EvtchnPort>(pf)), 0);
  // Closing returns the peer to unbound, reserved for the closer's domain.
  EXPECT_EQ(f->Close(static_cast<EvtchnPort>(pf)), 0);
  EXPECT_EQ(f->Send(static_cast<EvtchnPort>(pf)), -EINVAL);
  EXPECT_EQ(b->Send(static_cast<EvtchnPort>(pb)), 0);  // dropped
  EXPECT_EQ(c->BindInterdomain(2, static_cast<EvtchnPort>(pb)), -EINVAL);
  const int64_t pf2 = f->BindInterdomain(2, static_cast<EvtchnPort>(pb));
  ASSERT_GT(pf2, 0);
  // A domain's death returns its peers' ports to unbound too.
  b->Disconnect();
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  int64_t rebound = -1;
  auto b2 = x.Connect(2);  // waits for the old 2 to be gone
  ASSERT_TRUE(b2);
  while (Clock::now() < deadline && (rebound = b2->BindInterdomain(1, static_cast<EvtchnPort>(pf2))) < 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_GT(rebound, 0);
}

TEST(XenDomainProcess, XenstoreSeesDomainsComeAndGo) {
  Xenemud x;
  auto dom0 = x.Connect(0);  // dom0's xenstore socket is the main one
  ASSERT_TRUE(dom0);
  EXPECT_EQ(dom0->xenstore_path(), x.xs());
  Xs xs(x.xs());
  ASSERT_TRUE(xs.h);
  ASSERT_TRUE(xs_watch(xs.h, "@releaseDomain", "rel"));
  ASSERT_TRUE(xs.WaitEvent("rel"));  // the initial firing
  auto f = x.Connect(4);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->xenstore_path(), x.xs() + ".d4");
  EXPECT_TRUE(xs.Read("/local/domain/4").has_value());
  {
    // The domain's own socket acts as domain 4: relative paths, its home.
    Xs mine(f->xenstore_path());
    ASSERT_TRUE(mine.h);
    EXPECT_TRUE(mine.Write("data/hello", "from 4"));
    EXPECT_EQ(xs.Read("/local/domain/4/data/hello").value_or(""), "from 4");
    EXPECT_FALSE(mine.Write("/local/domain/0/forbidden", "x"));
  }
  // A backend directory domain 4 owns, with a frontend watching its state.
  const std::string be = "/local/domain/4/backend/virtio/5/0";
  ASSERT_TRUE(xs.Write(be + "/state", "4"));
  xs_permissions perms[2] = {{4, XS_PERM_NONE}, {5, XS_PERM_READ}};
  ASSERT_TRUE(xs_set_permissions(xs.h, XBT_NULL, be.c_str(), perms, 2));
  ASSERT_TRUE(xs_set_permissions(xs.h, XBT_NULL, (be + "/state").c_str(), perms, 2));
  Xs watcher(x.xs());
  ASSERT_TRUE(xs_watch(watcher.h, (be + "/state").c_str(), "state"));
  ASSERT_TRUE(watcher.WaitEvent("state"));
  f->Disconnect();
  ASSERT_TRUE(watcher.WaitEvent("state"));  // closed (6), then removed with /local/domain/4
  ASSERT_TRUE(xs.WaitEvent("rel"));
  EXPECT_FALSE(xs.Read("/local/domain/4").has_value());
  EXPECT_EQ(access(f->xenstore_path().c_str(), F_OK), -1);  // its socket is gone
}

TEST(XenDomainProcess, BackendStateClosedWhenItsOwnerDies) {
  Xenemud x;
  auto b = x.Connect(0);  // a dom0 backend: its directory stays, state becomes 6
  ASSERT_TRUE(b);
  Xs xs(x.xs());
  ASSERT_TRUE(xs.h);
  const std::string be = "/local/domain/0/backend/virtio/9/1";
  ASSERT_TRUE(xs.Write(be + "/state", "4"));
  ASSERT_TRUE(xs.Write(be + "/frontend", "/local/domain/9/device/virtio/1"));
  ASSERT_TRUE(xs_watch(xs.h, (be + "/state").c_str(), "st"));
  ASSERT_TRUE(xs.WaitEvent("st"));
  b->Disconnect();
  std::string state;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < deadline && (state = xs.Read(be + "/state").value_or("")) != "6") xs.WaitEvent("st", 200);
  EXPECT_EQ(state, "6");
  EXPECT_EQ(xs.Read(be + "/frontend").value_or(""), "/local/domain/9/device/virtio/1");
}

TEST(XenDomainProcess, XenemudDeathFailsEveryCallAndWakesWaiters) {
  auto x = std::make_unique<Xenemud>();
  auto f = x->Connect(1, 1);
  auto b = x->Connect(2);
  ASSERT_TRUE(f && b);
  const GrantRef ref = GrantPool(*f, 0, 2, false);
  const int64_t port = f->AllocUnbound(2);
  ASSERT_GT(port, 0);
  x->Kill();
  EXPECT_TRUE(Readable(b->event_fd()));  // the watcher wakes waiters
  EXPECT_FALSE(b->connected());
  EXPECT_EQ(b->Map(1, ref, true).status, gntst::kGeneralError);
  EXPECT_EQ(f->Send(static_cast<EvtchnPort>(port)), -ENODEV);
  EXPECT_EQ(b->AllocUnbound(1), -ENODEV);
  std::vector<CopySegment> segs(1);
  segs[0].source = CopyPtr{ref, 1, 0};
  segs[0].dest = CopyPtr{*b->RamFrame(b->buffer_area()), kDomidSelf, 0};
  segs[0].len = 8;
  segs[0].flags = kGntcopySourceGref;
  b->Copy(segs);
  EXPECT_EQ(segs[0].status, gntst::kGeneralError);
  EvtchnPort ports[4];
  EXPECT_EQ(f->Pending(ports), 0u);
}

// ---- The transport's emulator channel ------------------------------------------

std::unique_ptr<XenChannel> Open(const Xenemud& x, DomId self, uint32_t pool) {
  ChannelOptions o;
  o.address = x.domains();
  o.self = self;
  o.memory_bytes = 1 << 20;
  o.grant_pages = pool;
  auto c = OpenEmulatorChannel(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

TEST(XenEmulatorChannel, SharedPagesHaveConsecutiveRefsAndDeferredEndOfAccess) {
  Xenemud x;
  auto f = Open(x, 1, 8);
  auto b = Open(x, 2, 0);
  ASSERT_TRUE(f && b);
  EXPECT_EQ(f->self(), 1);
  auto s = f->SharePages(2, 3, true);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->refs.size(), 3u);
  EXPECT_EQ(s->refs[1], s->refs[0] + 1);
  EXPECT_EQ(s->refs[2], s->refs[0] + 2);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(s->addr[i * kPage], 0);  // zeroed
  std::memcpy(s->addr + kPage, "page one", 8);
  auto m = b->MapGrant(1, s->refs[1], true);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(std::memcmp(*m, "page one", 8), 0);
  std::memcpy(*m + 8, "+backend", 8);
  EXPECT_EQ(std::memcmp(s->addr + kPage + 8, "+backend", 8), 0);
  // Unshared while page 1 is mapped: pages 0 and 2 come back, page 1 waits.
  f->UnsharePages(*s);
  EXPECT_FALSE(f->SharePages(2, 8, true).ok());
  auto small = f->SharePages(2, 1, false);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->refs[0], s->refs[0]);  // first fit: page 0 again
  f->UnsharePages(*small);
  ASSERT_TRUE(b->UnmapGrant(*m).ok());
  auto all = f->SharePages(2, 8, true);  // the deferred page was ended on the way
  ASSERT_TRUE(all.ok()) << all.status();
  for (uint32_t i = 0; i < 8; ++i) EXPECT_EQ(all->addr[i * kPage + 8], 0);
  f->UnsharePages(*all);
  // Errors name the GNTST code.
  auto bad = b->MapGrant(1, all->refs[0], false);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("GNTST_general_error (-1)"), std::string::npos) << bad.status();
}

TEST(XenEmulatorChannel, MapGrantsLaysPagesOutContiguously) {
  Xenemud x;
  auto f = Open(x, 1, 8);
  auto b = Open(x, 2, 0);
  ASSERT_TRUE(f && b);
  auto s = f->SharePages(2, 3, true);
  ASSERT_TRUE(s.ok());
  for (int i = 0; i < 3; ++i) std::snprintf(reinterpret_cast<char*>(s->addr + i * kPage), 16, "page %d", i);
  // Not in order: refs[i] lands at addr + i * 4096 whatever the refs are.
  const std::vector<GrantRef> refs = {s->refs[2], s->refs[0], s->refs[1]};
  auto m = b->MapGrants(1, refs, true);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_STREQ(reinterpret_cast<char*>(*m), "page 2");
  EXPECT_STREQ(reinterpret_cast<char*>(*m + kPage), "page 0");
  EXPECT_STREQ(reinterpret_cast<char*>(*m + 2 * kPage), "page 1");
  std::memcpy(*m + kPage + 100, "via the range", 13);
  EXPECT_EQ(std::memcmp(s->addr + 100, "via the range", 13), 0);
  // All or nothing: one bad ref and nothing stays mapped.
  const std::vector<GrantRef> bad = {s->refs[0], 4000};
  auto no = b->MapGrants(1, bad, true);
  ASSERT_FALSE(no.ok());
  EXPECT_NE(std::string(no.status().message()).find("GNTST_"), std::string::npos) << no.status();
  EXPECT_FALSE(b->UnmapGrants(*m, 2).ok());  // wrong count
  ASSERT_TRUE(b->UnmapGrants(*m, 3).ok());
  f->UnsharePages(*s);
  auto all = f->SharePages(2, 8, true);  // every page's access ended: nothing mapped any more
  EXPECT_TRUE(all.ok()) << all.status();
}

TEST(XenEmulatorChannel, GrantCopyWithAnyLocalBuffer) {
  Xenemud x;
  auto f = Open(x, 1, 4);
  auto b = Open(x, 2, 0);
  ASSERT_TRUE(f && b);
  auto s = f->SharePages(2, 1, true);
  ASSERT_TRUE(s.ok());
  for (uint64_t i = 0; i < kPage; ++i) s->addr[i] = static_cast<uint8_t>(i * 13);
  // A heap buffer (not the domain's RAM: bounced), and a copy buffer whose
  // local side crosses a page (split).
  std::vector<uint8_t> heap(kPage, 0);
  uint8_t* cb = b->AllocCopyBuffer(2 * kPage);
  ASSERT_NE(cb, nullptr);
  std::memset(cb, 0, 2 * kPage);
  std::vector<GrantCopySegment> segs(3);
  segs[0] = GrantCopySegment{false, 1, s->refs[0], 0, heap.data(), static_cast<uint16_t>(kPage), 0};
  segs[1] = GrantCopySegment{false, 1, s->refs[0], 100, cb + kPage - 50, 200, 0};
  segs[2] = GrantCopySegment{false, 1, s->refs[0], 4000, cb, 200, 0};  // crosses the grant's page
  b->GrantCopy(segs);
  EXPECT_EQ(segs[0].status, gntst::kOkay);
  EXPECT_EQ(segs[1].status, gntst::kOkay);
  EXPECT_EQ(segs[2].status, gntst::kBadCopyArg);
  EXPECT_EQ(std::memcmp(heap.data(), s->addr, kPage), 0);
  EXPECT_EQ(std::memcmp(cb + kPage - 50, s->addr + 100, 200), 0);
  // Writes from a stack buffer.
  char msg[] = "written by grant copy";
  GrantCopySegment w{true, 1, s->refs[0], 3000, msg, sizeof msg, 0};
  b->GrantCopy(std::span<GrantCopySegment>(&w, 1));
  EXPECT_EQ(w.status, gntst::kOkay);
  EXPECT_EQ(std::memcmp(s->addr + 3000, msg, sizeof msg), 0);
  // The copy-buffer allocator runs dry and recovers.
  std::vector<uint8_t*> bufs;
  while (uint8_t* p = b->AllocCopyBuffer(64 * 1024)) bufs.push_back(p);
  EXPECT_FALSE(bufs.empty());
  for (uint8_t* p : bufs) b->FreeCopyBuffer(p);
  b->FreeCopyBuffer(cb);
  EXPECT_NE(b->AllocCopyBuffer(64 * 1024), nullptr);
}

TEST(XenEmulatorChannel, EventChannelsAndXenstorePath) {
  Xenemud x;
  auto f = Open(x, 1, 0);
  auto b = Open(x, 2, 0);
  ASSERT_TRUE(f && b);
  EXPECT_EQ(f->xenstore_path(), x.xs() + ".d1");
  auto pf = f->BindUnboundPort(2);
  ASSERT_TRUE(pf.ok());
  auto pb = b->BindInterdomain(1, *pf);
  ASSERT_TRUE(pb.ok());
  std::vector<EvtchnPort> ports;
  ASSERT_TRUE(Readable(b->event_fd()));
  b->PendingPorts(ports);
  EXPECT_EQ(ports, std::vector<EvtchnPort>{*pb});
  ASSERT_TRUE(b->Unmask(*pb).ok());
  ASSERT_TRUE(b->Notify(*pb).ok());
  ASSERT_TRUE(Readable(f->event_fd()));
  ports.clear();
  f->PendingPorts(ports);
  EXPECT_EQ(ports, std::vector<EvtchnPort>{*pf});
  EXPECT_FALSE(Readable(f->event_fd(), 0));
  EXPECT_FALSE(b->BindInterdomain(1, 999).ok());
  EXPECT_FALSE(f->Notify(12345).ok());
  ASSERT_TRUE(f->Unbind(*pf).ok());
}

}  // namespace
}  // namespace vioport::xen
