// SPDX-License-Identifier: Apache-2.0
// A real Linux guest as the driver of vios's vhost-user blk device.
//
// Each test boots Debian's cloud kernel under QEMU (TCG) with a busybox
// initramfs (tests/linux/init.sh + mkinitramfs.sh). The guest's own virtio_blk
// driver reaches the backend through QEMU's vhost-user-blk-pci front-end; the
// guest runs one workload, checks what it can and prints
// "VIOPORT-RESULT: PASS|FAIL <name>" on its serial port. This test then checks
// the backing file byte for byte against the same seeded pattern.
//
// Backend: vios by default; VIOPORT_LINUX_BACKEND=qsd uses qemu-storage-daemon
// instead (a known-good peer, for triage). docs/linux-guest-tests.md has more.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "vioport/guest/pattern.h"

namespace vioport {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
constexpr uint64_t kMiB = 1 << 20;

#ifdef VIOPORT_LINUX_SLOW
constexpr double kSlow = 3.0;
#else
constexpr double kSlow = 1.0;
#endif

std::string Env(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

// Progress lines on stdout, flushed at once so they interleave with gtest's and stderr's.
__attribute__((format(printf, 1, 2))) void Log(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vprintf(fmt, ap);
  va_end(ap);
  std::fflush(stdout);
}

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Runs `f` when the scope ends, however it ends (a failed ASSERT included).
struct AtExit {
  std::function<void()> f;
  ~AtExit() { f(); }
};

std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Finds an executable: an environment override, then PATH.
std::string FindProgram(const char* env, const std::string& name) {
  std::string v = Env(env);
  if (!v.empty()) return v;
  std::stringstream path(Env("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin");
  for (std::string dir; std::getline(path, dir, ':');)
    if (!dir.empty() && ::access((dir + "/" + name).c_str(), X_OK) == 0) return dir + "/" + name;
  return "";
}

// ---------------------------------------------------------------------------
// Child processes. Like vioport/testing/process.h (tests/support), plus: the child dies with this
// process (PR_SET_PDEATHSIG), so a ctest timeout that SIGKILLs the test leaves
// no QEMU or vios behind; and the owner kills it on destruction.
class Child {
 public:
  Child(std::vector<std::string> argv, const std::string& dir, const std::string& tag) : argv_(std::move(argv)) {
    static int counter = 0;
    const std::string base = dir + "/" + tag + "." + std::to_string(++counter);
    out_path_ = base + ".out";
    err_path_ = base + ".err";
    std::vector<char*> args;
    for (auto& a : argv_) args.push_back(a.data());
    args.push_back(nullptr);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::setpgid(0, 0);  // a terminal's ^C reaches only the test; the test then kills us
      const int in = ::open("/dev/null", O_RDONLY);
      const int out = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (in < 0 || out < 0 || err < 0) ::_exit(126);
      ::dup2(in, 0);
      ::dup2(out, 1);
      ::dup2(err, 2);
      ::execv(args[0], args.data());
      const char msg[] = "exec failed\n";
      (void)!::write(2, msg, sizeof msg - 1);
      ::_exit(127);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { Kill(); }

  bool Running() {
    if (pid_ <= 0 || exited_) return false;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      Reap(st);
      return false;
    }
    return true;
  }
  // Exit code, 128+signal if killed, -1 on timeout (the child is then killed).
  int Wait(double seconds) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (Running()) {
      if (Clock::now() > end) {
        Kill();
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return status_;
  }
  void Signal(int sig) {
    if (Running()) ::kill(pid_, sig);
  }
  void Kill() {
    if (!Running()) return;
    ::kill(pid_, SIGKILL);
    int st = 0;
    if (::waitpid(pid_, &st, 0) == pid_) Reap(st);
  }
  pid_t pid() const { return pid_; }
  int status() const { return status_; }
  bool exited() const { return exited_; }
  const std::string& out_path() const { return out_path_; }
  const std::string& err_path() const { return err_path_; }
  std::string CommandLine() const {
    std::string s;
    for (const auto& a : argv_) s += (s.empty() ? "" : " ") + a;
    return s;
  }

 private:
  void Reap(int st) {
    exited_ = true;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  std::vector<std::string> argv_;
  std::string out_path_, err_path_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = -1;
};

// True when some process has a listening Unix socket bound to `path`
// (/proc/net/unix: flag __SO_ACCEPTCON). Unlike "the file exists", this is
// also right after a kill -9, which leaves the old socket file behind.
bool UnixSocketListening(const std::string& path) {
  std::ifstream f("/proc/net/unix");
  std::string line;
  std::getline(f, line);  // header
  while (std::getline(f, line)) {
    std::istringstream s(line);
    std::string num, ref, proto, flags, type, st, inode, p;
    if (!(s >> num >> ref >> proto >> flags >> type >> st >> inode >> p)) continue;
    if (p == path && flags == "00010000") return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// Files of seeded data (vioport::pattern: byte at offset x of stream `seed`).

void WritePatternFile(const std::string& path, uint64_t seed, uint64_t offset, uint64_t len) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  std::vector<uint8_t> buf(kMiB);
  for (uint64_t done = 0; done < len;) {
    const uint64_t n = std::min<uint64_t>(buf.size(), len - done);
    pattern::Fill(seed, offset + done, {buf.data(), n});
    f.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(n));
    done += n;
  }
  ASSERT_TRUE(f.good()) << path;
}

void MakeSparseFile(const std::string& path, uint64_t bytes) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
  ::close(fd);
}

// [offset, offset+len) of `path` must hold stream `seed` at the same offsets
// (or zeros when seed is nullopt). Reports the first differing byte.
void ExpectRegion(const std::string& path, uint64_t offset, uint64_t len, std::optional<uint64_t> seed) {
  std::ifstream f(path, std::ios::binary);
  ASSERT_TRUE(f.good()) << path;
  f.seekg(static_cast<std::streamoff>(offset));
  std::vector<uint8_t> buf(kMiB);
  for (uint64_t done = 0; done < len;) {
    const uint64_t n = std::min<uint64_t>(buf.size(), len - done);
    f.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(n));
    ASSERT_EQ(static_cast<uint64_t>(f.gcount()), n) << path << " is short at " << offset + done;
    const uint64_t at = offset + done;
    int64_t bad = -1;
    if (seed) {
      bad = pattern::FirstMismatch(*seed, at, {buf.data(), n});
    } else {
      for (uint64_t i = 0; i < n; ++i)
        if (buf[i] != 0) {
          bad = static_cast<int64_t>(at + i);
          break;
        }
    }
    ASSERT_EQ(bad, -1) << path << ": byte " << bad << " (" << bad / static_cast<int64_t>(kMiB) << " MiB + "
                       << bad % static_cast<int64_t>(kMiB) << ") is not "
                       << (seed ? "the seed-" + std::to_string(*seed) + " pattern" : std::string("zero"))
                       << " (checked region " << offset << "+" << len << ")";
    done += n;
  }
}

uint64_t FileChecksum(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<uint8_t> buf(kMiB);
  pattern::Checksum64 c;
  while (f) {
    f.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    c.Add({buf.data(), static_cast<size_t>(f.gcount())});
  }
  return c.Value();
}

uint64_t AllocatedBytes(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_blocks) * 512 : 0;
}

// ---------------------------------------------------------------------------

struct BackendOptions {
  std::string image{};
  bool readonly = false;
  int queues = 1;
  int queue_size = 0;  // vios queue-size= (0: its default)
};

struct GuestOptions {
  std::string workload{};    // vioport.test=
  std::string extra_args{};  // more kernel arguments (vioport.KEY=VALUE)
  std::string data_dir{};    // becomes /data in the guest
  int queues = 1;            // vhost-user-blk-pci num-queues
  int cpus = 1;              // -smp
  int queue_size = 0;        // vhost-user-blk-pci queue-size (0: QEMU's default, 128)
  bool reconnect = false;    // chardev reconnect=1
  std::string socket{};      // the back-end's socket (default: the test's one)
  // A virtio-net-pci NIC on a vhost-user netdev with this MAC instead of the
  // blk device (queues: queue pairs, mq=on above 1).
  std::string net_mac{};
  bool failover = false;     // virtio-net-pci failover=on (STANDBY)
};

class LinuxGuest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    backend_kind_ = Env("VIOPORT_LINUX_BACKEND", "vios");
    ASSERT_TRUE(backend_kind_ == "vios" || backend_kind_ == "qsd")
        << "VIOPORT_LINUX_BACKEND must be vios or qsd, not " << backend_kind_;
    dir_ = std::string(VIOPORT_LINUX_WORK_DIR) + "/" + info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // Unix socket paths are limited to 107 bytes: keep the socket in a short /tmp folder.
    char tmpl[] = "/tmp/vioport-lg-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    sock_dir_ = tmpl;
    sock_ = sock_dir_ + "/vhost-user.sock";

    kernel_dir_ = Env("VIOPORT_GUEST_KERNEL", VIOPORT_GUEST_KERNEL_DIR);
    ASSERT_TRUE(fs::exists(kernel_dir_ + "/vmlinuz"))
        << "no guest kernel in " << kernel_dir_ << ": run scripts/guest-kernel.sh " << kernel_dir_
        << " (ctest runs it as the linux.guest_kernel fixture)";
    qemu_ = FindProgram("VIOPORT_QEMU", "qemu-system-x86_64");
    ASSERT_FALSE(qemu_.empty()) << "qemu-system-x86_64 not found: scripts/install-deps.sh installs it";
    if (backend_kind_ == "qsd") {
      backend_bin_ = FindProgram("VIOPORT_QSD", "qemu-storage-daemon");
      ASSERT_FALSE(backend_bin_.empty()) << "qemu-storage-daemon not found (package qemu-utils)";
    } else {
      backend_bin_ = Env("VIOPORT_VIOS", VIOS_BIN);
    }
    scale_ = kSlow * std::stod(Env("VIOPORT_LINUX_TIMEOUT_SCALE", "1"));
    Log("[ backend  ] %s (%s); work dir %s\n", backend_kind_.c_str(), backend_bin_.c_str(), dir_.c_str());
  }

  void TearDown() override {
    const bool failed = HasFailure();
    if (failed) DumpLogs();
    guests_.clear();    // kills any QEMU still running
    backends_.clear();  // and any backend
    std::error_code ec;
    fs::remove_all(sock_dir_, ec);
    if (!failed && Env("VIOPORT_LINUX_KEEP").empty()) fs::remove_all(dir_, ec);
    else std::fprintf(stderr, "linux guest test files kept in %s\n", dir_.c_str());
  }

  // Prints every log of this test: the guest's serial console, QEMU's stderr,
  // each backend instance's stdout and stderr.
  void DumpLogs() {
    auto dump = [](const std::string& title, const std::string& path) {
      std::string s = Slurp(path);
      constexpr size_t kMax = 24000;
      if (s.size() > kMax)
        s = "[... " + std::to_string(s.size() - kMax) + " bytes cut ...]\n" + s.substr(s.size() - kMax);
      std::fprintf(stderr, "\n----- %s (%s) -----\n%s%s----- end -----\n", title.c_str(), path.c_str(), s.c_str(),
                   s.empty() || s.back() == '\n' ? "" : "\n");
    };
    int i = 0;
    for (auto& g : guests_) {
      ++i;
      std::fprintf(stderr, "\nguest %d: %s\n", i, g->CommandLine().c_str());
      dump("guest " + std::to_string(i) + " serial console", g->out_path());
      dump("guest " + std::to_string(i) + " QEMU stderr", g->err_path());
    }
    i = 0;
    for (auto& b : backends_) {
      ++i;
      std::fprintf(stderr, "\nbackend %d (%s): %s\n", i,
                   b->exited() ? ("exit status " + std::to_string(b->status())).c_str() : "running",
                   b->CommandLine().c_str());
      dump("backend " + std::to_string(i) + " stdout", b->out_path());
      dump("backend " + std::to_string(i) + " stderr", b->err_path());
    }
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Starts the backend on sock_ and waits until it listens there.
  Child& StartBackend(const BackendOptions& o) {
    std::vector<std::string> argv{backend_bin_};
    if (backend_kind_ == "qsd") {
      argv.push_back("--blockdev");
      argv.push_back("driver=file,node-name=d0,filename=" + o.image + (o.readonly ? ",read-only=on" : ""));
      argv.push_back("--export");
      argv.push_back("type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=" + sock_ +
                     ",writable=" + (o.readonly ? "off" : "on") + ",num-queues=" + std::to_string(o.queues));
    } else {
      argv.push_back("--device");
      argv.push_back("blk,id=d0,path=" + o.image + (o.readonly ? ",readonly=on" : "") +
                     ",num-queues=" + std::to_string(o.queues) +
                     (o.queue_size ? ",queue-size=" + std::to_string(o.queue_size) : ""));
      argv.push_back("--attach");
      argv.push_back("d0,transport=vhost-user,socket=" + sock_);
    }
    backends_.push_back(std::make_unique<Child>(argv, dir_, "backend"));
    Child& b = *backends_.back();
    const auto t0 = Clock::now();
    while (!UnixSocketListening(sock_)) {
      if (!b.Running()) {
        ADD_FAILURE() << "the backend exited with status " << b.status() << " before listening on " << sock_;
        return b;
      }
      if (Since(t0) > 20 * scale_) {
        ADD_FAILURE() << "the backend did not listen on " << sock_ << " within " << 20 * scale_ << " s";
        return b;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return b;
  }

  // SIGTERM, then the exit status (the backend must drain and exit 0).
  void StopBackend(Child& b) {
    if (!b.Running()) {
      if (!HasFailure()) ADD_FAILURE() << backend_kind_ << " had exited (status " << b.status() << ") before SIGTERM";
      return;
    }
    b.Signal(SIGTERM);
    const int st = b.Wait(30 * scale_);
    EXPECT_EQ(st, 0) << backend_kind_ << " did not exit 0 after SIGTERM (-1: still running after "
                     << 30 * scale_ << " s, 128+N: signal N)";
  }

  // Builds the initramfs (busybox, modules, init.sh, opts.data_dir as /data) and starts QEMU.
  Child& StartGuest(const GuestOptions& o) {
    const std::string initrd = Path("initramfs-" + std::to_string(guests_.size() + 1) + ".cpio");
    {
      std::vector<std::string> argv{"/bin/bash", std::string(VIOPORT_LINUX_SRC_DIR) + "/mkinitramfs.sh",
                                    "--kernel", kernel_dir_, "--init",
                                    std::string(VIOPORT_LINUX_SRC_DIR) + "/init.sh", "--out", initrd};
      if (!o.data_dir.empty()) {
        argv.push_back("--data");
        argv.push_back(o.data_dir);
      }
      Child mk(argv, dir_, "mkinitramfs");
      const int st = mk.Wait(120);
      EXPECT_EQ(st, 0) << "mkinitramfs failed:\n" << Slurp(mk.err_path());
    }
    std::vector<std::string> argv{
        qemu_, "-nographic", "-no-reboot", "-m", "256", "-accel", "tcg", "-smp", std::to_string(o.cpus), "-nic",
        "none", "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-machine", "q35,memory-backend=mem",
        "-kernel", kernel_dir_ + "/vmlinuz", "-initrd", initrd, "-append",
        "console=ttyS0 quiet panic=-1 vioport.test=" + o.workload + (o.extra_args.empty() ? "" : " " + o.extra_args),
        "-chardev", "socket,id=c0,path=" + (o.socket.empty() ? sock_ : o.socket) + (o.reconnect ? ",reconnect=1" : "")};
    if (o.net_mac.empty()) {
      argv.insert(argv.end(), {"-device", "vhost-user-blk-pci,chardev=c0,num-queues=" + std::to_string(o.queues) +
                                              (o.queue_size ? ",queue-size=" + std::to_string(o.queue_size) : "")});
    } else {
      // vectors=0 (INTx): QEMU 7.2 under TCG crashes in vhost_net_start with
      // MSI-X (net-vsock.md §7); romfile= skips the iPXE option ROM.
      argv.insert(argv.end(), {"-netdev", "vhost-user,id=n0,chardev=c0,queues=" + std::to_string(o.queues), "-device",
                               "virtio-net-pci,netdev=n0,mac=" + o.net_mac + ",vectors=0,romfile=" +
                                   (o.queues > 1 ? ",mq=on" : "") + (o.failover ? ",id=nic0,failover=on" : "")});
    }
    guests_.push_back(std::make_unique<Child>(argv, dir_, "qemu"));
    return *guests_.back();
  }

  // The verdict after "VIOPORT-RESULT: ", or "" while there is none. A line still being
  // written (no end of line yet) counts only once QEMU has exited (`partial`).
  static std::string ResultLine(const std::string& serial, bool partial = false) {
    const size_t p = serial.find("VIOPORT-RESULT: ");
    if (p == std::string::npos) return "";
    const size_t e = serial.find_first_of("\r\n", p);
    if (e == std::string::npos && !partial) return "";
    return serial.substr(p + 16, e == std::string::npos ? std::string::npos : e - p - 16);
  }

  // Waits for the guest's result line and for QEMU to power off; asserts PASS.
  // A backend that exits meanwhile fails the test at once (the guest would hang on its I/O).
  void ExpectGuestPasses(Child& g, Child& backend, const std::string& workload, double seconds = 180) {
    const double limit = seconds * scale_;
    const auto t0 = Clock::now();
    std::string result;
    while (g.Running() && (result = ResultLine(Slurp(g.out_path()))).empty()) {
      if (Since(t0) > limit) {
        g.Kill();
        ADD_FAILURE() << "no VIOPORT-RESULT line from the guest within " << limit << " s (QEMU killed)";
        return;
      }
      if (!backend.Running()) {
        g.Kill();
        ADD_FAILURE() << "the backend exited with status " << backend.status()
                      << " while the guest was running (QEMU killed)";
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    const int st = g.Wait(30 * scale_);  // poweroff -f follows the result line
    if (result.empty()) result = ResultLine(Slurp(g.out_path()), /*partial=*/true);
    Log("[ guest    ] %s: \"%s\" after %.1f s, QEMU exit %d\n", workload.c_str(), result.c_str(), Since(t0), st);
    EXPECT_EQ(result, "PASS " + workload) << "the guest's verdict";
    EXPECT_EQ(st, 0) << "QEMU's exit status (-1: did not power off in time)";
  }

  // Waits until the guest's serial console shows `text`. False on timeout or QEMU exit.
  bool WaitSerial(Child& g, const std::string& text, double seconds) {
    const auto t0 = Clock::now();
    while (Slurp(g.out_path()).find(text) == std::string::npos) {
      if (!g.Running() || Since(t0) > seconds * scale_) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  }

  // Waits until `backend` listens on every socket (it must not exit first).
  void WaitListening(Child& backend, const std::vector<std::string>& sockets) {
    const auto t0 = Clock::now();
    while (!std::all_of(sockets.begin(), sockets.end(), [](const std::string& s) { return UnixSocketListening(s); })) {
      ASSERT_TRUE(backend.Running()) << "vios exited with status " << backend.status();
      ASSERT_LT(Since(t0), 20 * scale_) << "vios did not listen on every socket";
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  // Runs a command to completion (ip, for the test's network namespace).
  int Run(std::vector<std::string> argv, double seconds = 30) {
    argv[0] = Resolve(argv[0]);
    Child c(argv, dir_, "cmd");
    const int st = c.Wait(seconds);
    if (st != 0) Log("[ command  ] exit %d: %s\n%s", st, c.CommandLine().c_str(), Slurp(c.err_path()).c_str());
    return st;
  }

  // A program by name on PATH (and sbin), as given if it has a slash.
  static std::string Resolve(const std::string& prog) {
    if (prog.find('/') != std::string::npos) return prog;
    std::string p = FindProgram("VIOPORT_NO_SUCH_VARIABLE", prog);
    return p.empty() ? prog : p;
  }

  std::string backend_kind_, backend_bin_, qemu_, kernel_dir_;
  std::string dir_, sock_dir_, sock_;
  double scale_ = 1;
  std::deque<std::unique_ptr<Child>> backends_;
  std::deque<std::unique_ptr<Child>> guests_;
};

// The guest writes 8 MiB of seeded data with O_DIRECT + fsync, drops its
// caches, reads it back with O_DIRECT and compares; the backing file must hold
// exactly the pattern and nothing else.
TEST_F(LinuxGuest, VerifiedData) {
  constexpr uint64_t kDisk = 32 * kMiB, kData = 8 * kMiB, kSeed = 0x11;
  const std::string img = Path("disk.img");
  MakeSparseFile(img, kDisk);
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/pattern"), kSeed, 0, kData);
  Child& b = StartBackend({.image = img});
  if (HasFailure()) return;  // already reported
  const auto t0 = Clock::now();
  Child& g = StartGuest({.workload = "verified_data", .data_dir = Path("data")});
  ExpectGuestPasses(g, b, "verified_data");
  Log("[ timing   ] boot + workload %.1f s\n", Since(t0));
  if (HasFailure()) return;  // already reported
  // The guest's fsync completed, so the bytes are in the file now, before the backend stops.
  ExpectRegion(img, 0, kData, kSeed);
  ExpectRegion(img, kData, kDisk - kData, std::nullopt);
  StopBackend(b);
  EXPECT_EQ(fs::file_size(img), kDisk);
}

// QEMU's largest queue (a common tuning): vios takes 1024 by default, and the
// guest's verified write and read go through 1024-entry rings.
TEST_F(LinuxGuest, QueueSize1024) {
  constexpr uint64_t kDisk = 32 * kMiB, kData = 8 * kMiB, kSeed = 0x24;
  const std::string img = Path("disk.img");
  MakeSparseFile(img, kDisk);
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/pattern"), kSeed, 0, kData);
  Child& b = StartBackend({.image = img});
  if (HasFailure()) return;
  Child& g = StartGuest({.workload = "verified_data", .data_dir = Path("data"), .queue_size = 1024});
  ExpectGuestPasses(g, b, "verified_data");
  if (HasFailure()) return;
  ExpectRegion(img, 0, kData, kSeed);
  ExpectRegion(img, kData, kDisk - kData, std::nullopt);
  StopBackend(b);
}

// A queue above the device's maximum (vios queue-size=256, QEMU queue-size=512)
// is refused when the guest's driver starts the device: vios says which size
// and which maximum, and drops the front-end rather than serve a ring it
// cannot.
TEST_F(LinuxGuest, QueueAboveMaximumIsRefused) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "checks vios's log";
  const std::string img = Path("disk.img");
  MakeSparseFile(img, 32 * kMiB);
  Child& b = StartBackend({.image = img, .queue_size = 256});
  if (HasFailure()) return;
  Child& g = StartGuest({.workload = "verified_data", .queue_size = 512});
  const auto t0 = Clock::now();
  const std::string want = "queue 0 size 512 is above the device's maximum 256";
  while (Slurp(b.err_path()).find(want) == std::string::npos && Since(t0) < 120 * scale_ && b.Running())
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_NE(Slurp(b.err_path()).find(want), std::string::npos) << "vios's log should say: " << want;
  g.Kill();
  EXPECT_TRUE(b.Running()) << "vios must survive a refused front-end";
  StopBackend(b);
}

// Two queues on both sides and two CPUs in the guest: the guest checks it sees
// two hardware queues and writes two regions concurrently, one writer pinned
// to each CPU (so each queue carries one writer), then verifies both.
TEST_F(LinuxGuest, TwoQueues) {
  constexpr uint64_t kDisk = 32 * kMiB, kData = 8 * kMiB, kOffB = 16 * kMiB, kSeed = 0x22;
  const std::string img = Path("disk.img");
  MakeSparseFile(img, kDisk);
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/a"), kSeed, 0, kData);
  WritePatternFile(Path("data/b"), kSeed, kOffB, kData);
  Child& b = StartBackend({.image = img, .queues = 2});
  if (HasFailure()) return;  // already reported
  const auto t0 = Clock::now();
  Child& g = StartGuest({.workload = "two_queues",
                         .extra_args = "vioport.offb=" + std::to_string(kOffB / kMiB),
                         .data_dir = Path("data"),
                         .queues = 2,
                         .cpus = 2});
  ExpectGuestPasses(g, b, "two_queues");
  Log("[ timing   ] boot + workload %.1f s\n", Since(t0));
  if (HasFailure()) return;  // already reported
  ExpectRegion(img, 0, kData, kSeed);
  ExpectRegion(img, kData, kOffB - kData, std::nullopt);
  ExpectRegion(img, kOffB, kData, kSeed);
  ExpectRegion(img, kOffB + kData, kDisk - kOffB - kData, std::nullopt);
  StopBackend(b);
}

// A read-only backend: the guest must see ro=1, its writes must fail, and its
// reads must return the file's existing (seeded) contents; the file must not change.
TEST_F(LinuxGuest, ReadOnly) {
  constexpr uint64_t kDisk = 16 * kMiB, kData = 8 * kMiB, kSeed = 0x33;
  const std::string img = Path("disk.img");
  WritePatternFile(img, kSeed, 0, kDisk);
  if (HasFailure()) return;  // already reported
  const uint64_t before = FileChecksum(img);
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/pattern"), kSeed, 0, kData);
  Child& b = StartBackend({.image = img, .readonly = true});
  if (HasFailure()) return;  // already reported
  const auto t0 = Clock::now();
  Child& g = StartGuest({.workload = "read_only", .data_dir = Path("data")});
  ExpectGuestPasses(g, b, "read_only");
  Log("[ timing   ] boot + workload %.1f s\n", Since(t0));
  StopBackend(b);
  EXPECT_EQ(FileChecksum(img), before) << "the read-only backing file changed";
  ExpectRegion(img, 0, kDisk, kSeed);
}

// Boot 1 makes an ext2 filesystem (busybox mke2fs; the kernel's ext4 driver
// mounts it) and writes files; the backend and QEMU are then restarted and
// boot 2 checks every file byte for byte. The host checks the image too.
TEST_F(LinuxGuest, FilesystemTwoBoots) {
  constexpr uint64_t kDisk = 64 * kMiB, kSeedA = 0x44, kSeedB = 0x55;
  constexpr uint64_t kLenA = 3 * kMiB + 123, kLenB = kMiB + 4097;  // odd sizes: partial blocks
  const std::string img = Path("disk.img");
  MakeSparseFile(img, kDisk);
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/a"), kSeedA, 0, kLenA);
  WritePatternFile(Path("data/b"), kSeedB, 0, kLenB);
  const auto t0 = Clock::now();
  {
    Child& b = StartBackend({.image = img});
    if (HasFailure()) return;  // already reported
    Child& g = StartGuest({.workload = "fs_create", .data_dir = Path("data")});
    ExpectGuestPasses(g, b, "fs_create");
    StopBackend(b);
    if (HasFailure()) return;  // boot 1 failed: boot 2 would only repeat it
  }
  Log("[ timing   ] boot 1 %.1f s\n", Since(t0));
  // The host's view of the filesystem, when e2fsprogs is there: consistent, and the files match.
  const std::string e2fsck = FindProgram("VIOPORT_E2FSCK", "e2fsck");
  if (!e2fsck.empty()) {
    Child c({e2fsck, "-fn", img}, dir_, "e2fsck");
    EXPECT_EQ(c.Wait(60), 0) << "e2fsck -fn found problems:\n" << Slurp(c.out_path()) << Slurp(c.err_path());
  }
  const std::string debugfs = FindProgram("VIOPORT_DEBUGFS", "debugfs");
  if (!debugfs.empty()) {
    Child d({debugfs, "-R", "dump /dir/sub/b.bin " + Path("b.host"), img}, dir_, "debugfs");
    EXPECT_EQ(d.Wait(60), 0) << Slurp(d.err_path());
    EXPECT_EQ(Slurp(Path("b.host")), Slurp(Path("data/b"))) << "the host reads dir/sub/b.bin differently";
  }
  const auto t1 = Clock::now();
  Child& b = StartBackend({.image = img});
  if (HasFailure()) return;  // already reported
  Child& g = StartGuest({.workload = "fs_verify", .data_dir = Path("data")});
  ExpectGuestPasses(g, b, "fs_verify");
  Log("[ timing   ] boot 2 %.1f s\n", Since(t1));
  StopBackend(b);
}

// The backend is killed with SIGKILL while the guest writes 32 MiB with
// O_DIRECT, and restarted on the same socket and file half a second later.
// QEMU (chardev reconnect=1) reconnects; the guest's I/O must complete, read
// back equal, and the file must hold the pattern. Four writers, 64 KiB
// requests and a flush every 512 KiB per writer: the backend is often in the
// middle of requests when it dies (vios then logs "resubmitting N requests").
// QEMU 7.2 also rewinds the ring to the used index when GET_VRING_BASE fails,
// so requests completed in order survive even without the in-flight log.
TEST_F(LinuxGuest, Reconnect) {
  constexpr uint64_t kDisk = 64 * kMiB, kData = 32 * kMiB, kSeed = 0x66;
  const std::string img = Path("disk.img");
  MakeSparseFile(img, kDisk);
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/pattern"), kSeed, 0, kData);
  const BackendOptions bo{.image = img};
  Child& b1 = StartBackend(bo);
  if (HasFailure()) return;  // already reported
  const auto t0 = Clock::now();
  Child& g = StartGuest({.workload = "reconnect",
                         .extra_args = "vioport.bs=64k vioport.writers=4 vioport.chunk=524288",
                         .data_dir = Path("data"),
                         .reconnect = true});
  ASSERT_TRUE(WaitSerial(g, "VIOPORT-MARK: writing", 180)) << "the guest never started writing";
  // I/O in progress: the file's allocation grows as the backend writes.
  const uint64_t base = AllocatedBytes(img);
  const auto tw = Clock::now();
  while (AllocatedBytes(img) < base + 2 * kMiB) {
    ASSERT_LT(Since(tw), 120 * scale_) << "the backing file did not grow: no writes reached the backend";
    ASSERT_TRUE(g.Running()) << "QEMU exited during the write";
    ASSERT_TRUE(b1.Running()) << "the backend exited (status " << b1.status() << ") before it was killed";
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const uint64_t at_kill = AllocatedBytes(img);
  ASSERT_EQ(Slurp(g.out_path()).find("write done"), std::string::npos)
      << "the guest finished writing before the backend could be killed: the test needs more data";
  b1.Signal(SIGKILL);
  EXPECT_EQ(b1.Wait(10), 128 + SIGKILL);
  Log("[ reconnect] backend killed with %.1f of %.1f MiB allocated, %.1f s after boot\n",
      static_cast<double>(at_kill) / kMiB, static_cast<double>(kData) / kMiB, Since(t0));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  Child& b2 = StartBackend(bo);
  if (HasFailure()) return;  // already reported
  const auto tr = Clock::now();
  ExpectGuestPasses(g, b2, "reconnect");
  Log("[ timing   ] restart to guest result %.1f s; total %.1f s\n", Since(tr), Since(t0));
  if (HasFailure()) return;  // already reported
  // The first backend had not written everything: the second one wrote the rest.
  EXPECT_LT(at_kill, base + kData) << "the kill came after the last write: reconnect was not exercised";
  // For triage: what the new backend says about the requests the old one left in flight.
  std::istringstream err(Slurp(b2.err_path()));
  for (std::string line; std::getline(err, line);)
    if (line.find("in flight") != std::string::npos) Log("[ reconnect] backend 2: %s\n", line.c_str());
  ExpectRegion(img, 0, kData, kSeed);
  ExpectRegion(img, kData, kDisk - kData, std::nullopt);
  StopBackend(b2);
}

}  // namespace
}  // namespace vioport

namespace vioport {
namespace {

// Two QEMU guests at once on one vios, each with its own device and socket:
// the service-partition case. Each guest's data lands in its own file only.
TEST_F(LinuxGuest, TwoGuestsOneVios) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "one back-end process serving two guests is the vios case";
  constexpr uint64_t kDisk = 16 * kMiB, kData = 4 * kMiB;
  const std::string a = Path("a.img"), b = Path("b.img"), sa = sock_dir_ + "/a.sock", sb = sock_dir_ + "/b.sock";
  MakeSparseFile(a, kDisk);
  MakeSparseFile(b, kDisk);
  fs::create_directories(Path("data-a"));
  fs::create_directories(Path("data-b"));
  WritePatternFile(Path("data-a/pattern"), 0xa1, 0, kData);
  WritePatternFile(Path("data-b/pattern"), 0xb2, 0, kData);
  backends_.push_back(std::make_unique<Child>(
      std::vector<std::string>{backend_bin_, "--device", "blk,id=a,path=" + a, "--device", "blk,id=b,path=" + b,
                               "--attach", "a,transport=vhost-user,socket=" + sa, "--attach",
                               "b,transport=vhost-user,socket=" + sb},
      dir_, "backend"));
  Child& v = *backends_.back();
  ASSERT_NO_FATAL_FAILURE(WaitListening(v, {sa, sb}));
  Child& ga = StartGuest({.workload = "verified_data", .data_dir = Path("data-a"), .socket = sa});
  Child& gb = StartGuest({.workload = "verified_data", .data_dir = Path("data-b"), .socket = sb});
  ExpectGuestPasses(ga, v, "verified_data");
  ExpectGuestPasses(gb, v, "verified_data");
  if (HasFailure()) return;
  ExpectRegion(a, 0, kData, 0xa1);
  ExpectRegion(b, 0, kData, 0xb2);
  ExpectRegion(a, kData, kDisk - kData, std::nullopt);
  ExpectRegion(b, kData, kDisk - kData, std::nullopt);
  StopBackend(v);
}

}  // namespace
}  // namespace vioport

namespace vioport {
namespace {

// One command on vios's control socket; its whole answer.
std::string Control(const std::string& path, const std::string& command) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  std::string out;
  if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string line = command + "\n";
    if (::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    }
  }
  if (fd >= 0) ::close(fd);
  return out;
}

// The value of counter `name` in a stats answer (0 if absent).
uint64_t Counter(const std::string& stats, const std::string& name) {
  std::istringstream in(stats);
  std::string k;
  uint64_t v;
  while (in >> k) {
    if (k == name && in >> v) return v;
  }
  return 0;
}

// Whether `pid`'s network namespace has a listening Unix socket at `path`
// (a process in another namespace: /proc/PID/net/unix is its view).
bool ListeningIn(pid_t pid, const std::string& path) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/net/unix");
  std::string line;
  while (std::getline(f, line))
    if (line.size() > path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0 &&
        line.find(" 00010000 ") != std::string::npos)
      return true;
  return false;
}

// A real Linux guest's virtio_net (two queue pairs) behind QEMU's vhost-user
// netdev, through vios's switch and its tap uplink (two tap queues) to a host endpoint in a network
// namespace of the test's own: ARP and ping, then 4 MiB over TCP each way,
// checked byte for byte at both ends (the guest compares what it received,
// this test what the host received).
TEST_F(LinuxGuest, NetToHostThroughTap) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "the switch and its tap uplink are vios's";
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: a network namespace and a tap device";
  constexpr uint64_t kData = 4 * kMiB;
  const std::string ns = "vioport-ln" + std::to_string(::getpid());
  ASSERT_EQ(Run({"ip", "netns", "add", ns}), 0);
  AtExit guard{[&] {
    if (HasFailure()) DumpLogs();
    guests_.clear();
    backends_.clear();  // vios and socat live in the namespace: stop them first
    Run({"ip", "netns", "del", ns});
  }};
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/pattern"), 0x5e, 0, kData);
  WritePatternFile(Path("data/back"), 0xba, 0, kData);
  const std::string in_ns[] = {Resolve("ip"), "netns", "exec", ns};
  auto ns_argv = [&](std::vector<std::string> cmd) {
    cmd[0] = Resolve(cmd[0]);
    std::vector<std::string> v(std::begin(in_ns), std::end(in_ns));
    v.insert(v.end(), cmd.begin(), cmd.end());
    return v;
  };
  backends_.push_back(std::make_unique<Child>(
      ns_argv({backend_bin_, "--netdev", "switch,id=sw0", "--netdev", "tap,id=up0,ifname=vpt0,switch=sw0,queues=2",
               "--device", "net,id=n0,switch=sw0,mac=52:54:00:12:34:56,queues=2", "--attach",
               "n0,transport=vhost-user,socket=" + sock_, "--control", sock_dir_ + "/ctl"}),
      dir_, "backend"));
  Child& v = *backends_.back();
  const auto t0 = Clock::now();
  while (!ListeningIn(v.pid(), sock_)) {
    ASSERT_TRUE(v.Running()) << "vios exited with status " << v.status() << ":\n" << Slurp(v.err_path());
    ASSERT_LT(Since(t0), 20 * scale_) << "vios did not listen on " << sock_;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(Run(ns_argv({"ip", "link", "set", "lo", "up"})), 0);
  ASSERT_EQ(Run(ns_argv({"ip", "addr", "add", "10.77.0.1/24", "dev", "vpt0"})), 0);
  ASSERT_EQ(Run(ns_argv({"ip", "link", "set", "vpt0", "up"})), 0);
  // The uplink is a multi-queue tap (queues=2): two queues, vios reading both.
  EXPECT_EQ(Run(ns_argv({"test", "-d", "/sys/class/net/vpt0/queues/tx-1"})), 0) << "vpt0 has no second queue";
  EXPECT_NE(Run(ns_argv({"test", "-d", "/sys/class/net/vpt0/queues/tx-2"})), 0);
  // The host's ends of the two streams (socat, a real peer).
  backends_.push_back(std::make_unique<Child>(
      ns_argv({"socat", "-u", "TCP-LISTEN:5001,reuseaddr", "OPEN:" + Path("received") + ",creat,trunc"}), dir_, "socat-in"));
  Child& sink = *backends_.back();
  backends_.push_back(std::make_unique<Child>(
      ns_argv({"socat", "-u", "OPEN:" + Path("data/back"), "TCP-LISTEN:5002,reuseaddr"}), dir_, "socat-out"));
  Child& g = StartGuest({.workload = "net_host",
                         .extra_args = "vioport.addr=10.77.0.2 vioport.peer=10.77.0.1 vioport.queues=2",
                         .data_dir = Path("data"),
                         .queues = 2,
                         .cpus = 2,
                         .net_mac = "52:54:00:12:34:56"});
  ExpectGuestPasses(g, v, "net_host", 300);
  if (HasFailure()) return;
  EXPECT_EQ(sink.Wait(30 * scale_), 0) << "socat (host receiver) did not finish";
  ASSERT_EQ(fs::file_size(Path("received")), kData);
  ExpectRegion(Path("received"), 0, kData, 0x5e);
  // Offloads went through whole: the guest's TSO frames to the tap, the
  // host's TSO frames to the guest (the tap's offloads follow the guest's).
  const std::string stats = Control(sock_dir_ + "/ctl", "stats");
  Log("[ vios     ] %s", stats.c_str());
  EXPECT_GT(Counter(stats, "n0.tx_gso_frames"), 0u) << stats;
  EXPECT_GT(Counter(stats, "n0.rx_gso_frames"), 0u) << stats;
  // (up0.offload_flags is back to 0 here: the guest has gone, so no port takes offloads.)
  EXPECT_EQ(Counter(stats, "up0.offload_flags"), 0u) << stats;
  EXPECT_EQ(Counter(stats, "up0.drop_write"), 0u) << stats;
  EXPECT_GE(Counter(stats, "up0.to_host_bytes"), kData) << stats;
  StopBackend(v);
}

// Two Linux guests, each with its own virtio-net port on one vios switch:
// ARP, ping, and 4 MiB over TCP from one to the other, checked by the receiver.
// The sender's NIC is a net failover standby (QEMU failover=on, vios
// standby=on): its virtio_net is the standby slave of a failover master
// (checked in the guest), and the traffic goes through it.
TEST_F(LinuxGuest, NetTwoGuestsThroughTheSwitch) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "the switch is vios's";
  const std::string sa = sock_dir_ + "/a.sock", sb = sock_dir_ + "/b.sock";
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/pattern"), 0x77, 0, 4 * kMiB);
  backends_.push_back(std::make_unique<Child>(
      std::vector<std::string>{backend_bin_, "--netdev", "switch,id=sw0", "--device",
                               "net,id=a,switch=sw0,mac=52:54:00:00:00:0a", "--device",
                               "net,id=b,switch=sw0,mac=52:54:00:00:00:0b,standby=on", "--attach",
                               "a,transport=vhost-user,socket=" + sa, "--attach", "b,transport=vhost-user,socket=" + sb},
      dir_, "backend"));
  Child& v = *backends_.back();
  ASSERT_NO_FATAL_FAILURE(WaitListening(v, {sa, sb}));
  Child& ga = StartGuest({.workload = "net_pair",
                          .extra_args = "vioport.role=listen vioport.addr=10.77.0.3 vioport.peer=10.77.0.2",
                          .data_dir = Path("data"),
                          .socket = sa,
                          .net_mac = "52:54:00:00:00:0a"});
  Child& gb = StartGuest({.workload = "net_pair",
                          .extra_args = "vioport.role=send vioport.addr=10.77.0.2 vioport.peer=10.77.0.3 vioport.standby=1",
                          .data_dir = Path("data"),
                          .socket = sb,
                          .net_mac = "52:54:00:00:00:0b",
                          .failover = true});
  ExpectGuestPasses(gb, v, "net_pair", 400);
  ExpectGuestPasses(ga, v, "net_pair", 400);
  StopBackend(v);
}

// One vios, one switch, four transports: a real Linux guest (vhost-user) and
// three vioguest processes, over crq (crqd), Xen (xenemud) and shm, each
// joined to a tap in a network namespace of the test's own (vioguest net
// tap). The Linux guest's virtio_net reaches each of them, in turn: ping,
// then 2 MiB over TCP each way, checked by the guest (what came back) and
// by this test (what each namespace received). The vioguests reach each
// other frame by frame in tests/net_system (NetAcrossTransports).
TEST_F(LinuxGuest, NetLinuxGuestReachesEveryTransport) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "the switch is vios's";
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: network namespaces and tap devices";
#ifndef LINUX_NET_EMULATORS
  GTEST_SKIP() << "built without crqd and xenemud";
#else
  constexpr uint64_t kData = 2 * kMiB;
  struct Peer {
    std::string name, transport, attach, guest, addr, mac, ns;
  };
  const std::string crqd = sock_dir_ + "/crqd.sock", xen = sock_dir_ + "/xen.sock", shm = sock_dir_ + "/s.sock";
  std::vector<Peer> peers = {
      {"c", "crq", "crqd=" + crqd + ",partition=2,unit=0x2000,liobn=0x2000,remote-liobn=0x1000,remote-window-mib=64",
       "crq:" + crqd + ",partition=1,unit=0x1000,liobn=0x1000", "10.66.0.2", "52:54:00:00:0c:02", ""},
      {"x", "xen", "channel=emu:" + xen + ",domid=1", "xen:emu:" + xen + ",domid=1", "10.66.0.3", "52:54:00:00:0c:03", ""},
      {"s", "shm", "path=" + shm, "shm:" + shm, "10.66.0.4", "52:54:00:00:0c:04", ""},
  };
  for (Peer& p : peers) {
    p.ns = "vioport-lx" + std::to_string(::getpid()) + p.name;
    ASSERT_EQ(Run({"ip", "netns", "add", p.ns}), 0);
  }
  AtExit guard{[&] {
    if (HasFailure()) DumpLogs();
    guests_.clear();
    backends_.clear();  // the vioguests and socats live in the namespaces: stop them first
    for (const Peer& p : peers) Run({"ip", "netns", "del", p.ns});
  }};
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/pattern"), 0x3c, 0, kData);
  WritePatternFile(Path("data/back"), 0xc3, 0, kData);
  auto in_ns = [&](const Peer& p, std::vector<std::string> cmd) {
    cmd[0] = Resolve(cmd[0]);
    std::vector<std::string> v = {Resolve("ip"), "netns", "exec", p.ns};
    v.insert(v.end(), cmd.begin(), cmd.end());
    return v;
  };
  auto wait_path = [&](Child& c, const std::string& path) {
    const auto t0 = Clock::now();
    while (!fs::exists(path)) {
      ASSERT_TRUE(c.Running()) << c.CommandLine() << " exited:\n" << Slurp(c.err_path());
      ASSERT_LT(Since(t0), 20 * scale_) << c.CommandLine() << " did not create " << path;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  };
  backends_.push_back(std::make_unique<Child>(
      std::vector<std::string>{CRQD_BIN, "--socket", crqd, "--control", sock_dir_ + "/crqd.ctl", "--pair",
                               "client=1:0x1000:0x1000:64,server=2:0x2000:0x2000:1"},
      dir_, "crqd"));
  ASSERT_NO_FATAL_FAILURE(wait_path(*backends_.back(), crqd));
  backends_.push_back(std::make_unique<Child>(
      std::vector<std::string>{XENEMUD_BIN, "--xenstore", sock_dir_ + "/xs.sock", "--domains", xen}, dir_, "xenemud"));
  ASSERT_NO_FATAL_FAILURE(wait_path(*backends_.back(), xen));
  std::vector<std::string> vios = {backend_bin_, "--netdev", "switch,id=sw0", "--device",
                                   "net,id=lg,switch=sw0,mac=52:54:00:00:0c:01", "--attach",
                                   "lg,transport=vhost-user,socket=" + sock_, "--control", sock_dir_ + "/ctl"};
  for (const Peer& p : peers)
    vios.insert(vios.end(), {"--device", "net,id=" + p.name + ",switch=sw0,mac=" + p.mac, "--attach",
                             p.name + ",transport=" + p.transport + "," + p.attach});
  backends_.push_back(std::make_unique<Child>(vios, dir_, "backend"));
  Child& v = *backends_.back();
  ASSERT_NO_FATAL_FAILURE(WaitListening(v, {sock_, shm}));
  std::vector<Child*> sinks;
  for (const Peer& p : peers) {
    backends_.push_back(std::make_unique<Child>(
        in_ns(p, {VIOGUEST_BIN, "--transport", p.guest, "net", "tap", "--ifname", "vt0"}), dir_, "vioguest-" + p.name));
    Child& tap = *backends_.back();
    const auto t0 = Clock::now();
    while (Slurp(tap.err_path()).find("joined to the device") == std::string::npos) {
      ASSERT_TRUE(tap.Running()) << "vioguest over " << p.transport << " exited:\n" << Slurp(tap.err_path());
      ASSERT_LT(Since(t0), 20 * scale_) << "vioguest over " << p.transport << " did not join its tap";
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_EQ(Run(in_ns(p, {"ip", "link", "set", "lo", "up"})), 0);
    ASSERT_EQ(Run(in_ns(p, {"ip", "link", "set", "vt0", "address", p.mac})), 0);
    ASSERT_EQ(Run(in_ns(p, {"ip", "addr", "add", p.addr + "/24", "dev", "vt0"})), 0);
    ASSERT_EQ(Run(in_ns(p, {"ip", "link", "set", "vt0", "up"})), 0);
    backends_.push_back(std::make_unique<Child>(
        in_ns(p, {"socat", "-u", "TCP-LISTEN:5001,reuseaddr", "OPEN:" + Path("received-" + p.name) + ",creat,trunc"}),
        dir_, "socat-in-" + p.name));
    sinks.push_back(backends_.back().get());
    backends_.push_back(std::make_unique<Child>(
        in_ns(p, {"socat", "-u", "OPEN:" + Path("data/back"), "TCP-LISTEN:5002,reuseaddr"}), dir_, "socat-out-" + p.name));
  }
  Child& g = StartGuest({.workload = "net_peers",
                         .extra_args = "vioport.addr=10.66.0.1 vioport.peers=10.66.0.2,10.66.0.3,10.66.0.4",
                         .data_dir = Path("data"),
                         .net_mac = "52:54:00:00:0c:01"});
  ExpectGuestPasses(g, v, "net_peers", 400);
  if (HasFailure()) return;
  for (size_t i = 0; i < peers.size(); ++i) {
    SCOPED_TRACE(peers[i].transport);
    EXPECT_EQ(sinks[i]->Wait(30 * scale_), 0) << "socat (receiver) did not finish";
    ASSERT_EQ(fs::file_size(Path("received-" + peers[i].name)), kData);
    ExpectRegion(Path("received-" + peers[i].name), 0, kData, 0x3c);
  }
  const std::string stats = Control(sock_dir_ + "/ctl", "stats");
  for (const Peer& p : peers) {
    EXPECT_GE(Counter(stats, p.name + ".rx_bytes"), kData) << stats;
    EXPECT_GE(Counter(stats, p.name + ".tx_bytes"), kData) << stats;
  }
  StopBackend(v);
#endif
}

}  // namespace
}  // namespace vioport
