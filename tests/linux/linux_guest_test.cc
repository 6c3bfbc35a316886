// SPDX-License-Identifier: Apache-2.0
// A real Linux guest as the driver of vios's vhost-user blk, net and vsock
// devices (the vsock tests are at the end: LinuxGuestVsock).
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
#include <poll.h>
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
#include <atomic>
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
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "control_client.h"
#include "vioport/guest/pattern.h"
#include "vioport/testing/emulated_ports.h"
#include "vioport/testing/tool_output.h"

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
  std::string control{};  // vios --control (empty: none)
};

struct GuestOptions {
  std::string workload{};    // vioport.test=
  std::string extra_args{};  // more kernel arguments (vioport.KEY=VALUE)
  std::string data_dir{};    // becomes /data in the guest
  int queues = 1;            // vhost-user-blk-pci num-queues
  int cpus = 1;              // -smp
  int queue_size = 0;        // vhost-user-blk-pci queue-size (0: QEMU's default, 128)
  bool reconnect = false;    // chardev reconnect=1
  bool packed = false;       // vhost-user-blk-pci packed=on (packed virtqueues)
  std::string socket{};      // the back-end's socket (default: the test's one)
  // A virtio-net-pci NIC on a vhost-user netdev with this MAC instead of the
  // blk device (queues: queue pairs, mq=on above 1).
  std::string net_mac{};
  bool failover = false;     // virtio-net-pci failover=on (STANDBY)
  // A vhost-user-vsock-pci device instead of the blk device (its CID is the back-end's).
  bool vsock = false;
  std::vector<std::string> programs{};  // static executables, put into the initramfs as /bin/NAME
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
    vioguest_bin_ = Env("VIOPORT_VIOGUEST", VIOGUEST_BIN);
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
      if (!o.control.empty()) {
        argv.push_back("--control");
        argv.push_back(o.control);
      }
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
  // LinuxGuest.Reconnect and its packed-ring twin.
  void RunReconnect(bool packed);
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
      for (const std::string& p : o.programs) argv.insert(argv.end(), {"--bin", p});
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
    if (o.vsock) {
      // vectors=0 (INTx), as for net: MSI-X with a vhost-user device crashes
      // QEMU 7.2 under TCG (net-vsock.md §7). QEMU keeps the event queue; only
      // receive and transmit go to the back-end.
      argv.insert(argv.end(), {"-device", "vhost-user-vsock-pci,chardev=c0,vectors=0"});
    } else if (o.net_mac.empty()) {
      argv.insert(argv.end(), {"-device", "vhost-user-blk-pci,chardev=c0,num-queues=" + std::to_string(o.queues) +
                                              (o.queue_size ? ",queue-size=" + std::to_string(o.queue_size) : "") +
                                              (o.packed ? ",packed=on" : "")});
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

  // Waits until `c` (a channel emulator) has created every one of `paths`; it must not exit first.
  void WaitPaths(Child& c, const std::vector<std::string>& paths) {
    const auto t0 = Clock::now();
    while (!std::all_of(paths.begin(), paths.end(), [](const std::string& p) { return fs::exists(p); })) {
      ASSERT_TRUE(c.Running()) << c.CommandLine() << " exited:\n" << Slurp(c.err_path());
      ASSERT_LT(Since(t0), 20 * scale_) << c.CommandLine() << " did not create " << paths.front() << " ...";
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  // crqd and xenemud as `ports`' attachments need them, each waited for until it serves.
  void StartEmulators(const testproc::EmulatedPorts& ports) {
#ifdef LINUX_NET_EMULATORS
    if (ports.needs_crqd()) {
      backends_.push_back(std::make_unique<Child>(ports.CrqdArgv(CRQD_BIN), dir_, "crqd"));
      ASSERT_NO_FATAL_FAILURE(WaitPaths(*backends_.back(), ports.CrqdPaths()));
    }
    if (ports.needs_xen()) {
      backends_.push_back(std::make_unique<Child>(ports.XenemudArgv(XENEMUD_BIN), dir_, "xenemud"));
      ASSERT_NO_FATAL_FAILURE(WaitPaths(*backends_.back(), ports.XenemudPaths()));
    }
#else
    ASSERT_FALSE(ports.needs_crqd() || ports.needs_xen()) << "built without crqd and xenemud";
#endif
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

  std::string backend_kind_, backend_bin_, vioguest_bin_, qemu_, kernel_dir_;
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
// vios grows the disk at run time (blk_resize on its control socket): the
// guest's own virtio_blk driver takes the config interrupt, re-reads the
// capacity and /dev/vda grows; data written into the new space lands in
// the grown file.
TEST_F(LinuxGuest, ResizeSeenByTheGuest) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "the resize is vios's control API";
  constexpr uint64_t kDisk = 32 * kMiB, kGrown = 48 * kMiB, kData = 4 * kMiB, kSeed = 0x52;
  const std::string img = Path("disk.img");
  MakeSparseFile(img, kDisk);
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/pattern"), kSeed, kDisk, kData);  // the pattern as it is at 32 MiB
  Child& b = StartBackend({.image = img, .control = Path("vios.ctl")});
  if (HasFailure()) return;  // already reported
  Child& g = StartGuest({.workload = "resize",
                         .extra_args = absl::StrCat("vioport.oldsectors=", kDisk / 512, " vioport.newsectors=",
                                                    kGrown / 512),
                         .data_dir = Path("data")});
  ASSERT_TRUE(WaitSerial(g, "VIOPORT-MARK: resize-now", 180)) << "the guest never got to the resize";
  auto r = vios::ControlCall(Path("vios.ctl"), "blk_resize", {{"id", "d0"}, {"size", kGrown}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->contains("result")) << r->dump();
  ExpectGuestPasses(g, b, "resize");
  if (HasFailure()) return;  // already reported
  EXPECT_EQ(fs::file_size(img), kGrown);
  ExpectRegion(img, kDisk, kData, kSeed);
  auto stats = vios::ControlCall(Path("vios.ctl"), "stats", {{"id", "d0"}});
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ((*stats)["result"]["d0"]["resizes"], 1);
  EXPECT_GE((*stats)["result"]["d0"]["vhost-user.interrupts"], 1);
  StopBackend(b);
}

// Interrupt coalescing with the guest it is for: Linux's virtio_blk, which
// sleeps until an interrupt for every completion. Four readers in the guest
// (4 KiB, O_DIRECT, every pass compared with the pattern) run while the test
// counts requests and interrupts over a window without coalescing and a
// window with it (device_set_coalescing at run time). What it measures is
// printed (docs/performance.md); it asserts that the held interrupts are
// counted and that every read still completes and verifies.
TEST_F(LinuxGuest, CoalescingUnderLinuxVirtioBlk) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "interrupt coalescing is vios's";
  constexpr uint64_t kDisk = 16 * kMiB, kSeed = 0x5c;
  const std::string img = Path("disk.img"), ctl = Path("vios.ctl");
  WritePatternFile(img, kSeed, 0, kDisk);
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/pattern"), kSeed, 0, kDisk);
  Child& b = StartBackend({.image = img, .control = ctl});
  if (HasFailure()) return;  // already reported
  Child& g = StartGuest({.workload = "coalesce", .extra_args = "vioport.seconds=6", .data_dir = Path("data")});
  ASSERT_TRUE(WaitSerial(g, "VIOPORT-MARK: reading", 180)) << "the guest never started reading";
  auto stats = [&] {
    auto r = vios::ControlCall(ctl, "stats", {{"id", "d0"}});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? (*r)["result"]["d0"] : nlohmann::json();
  };
  // One window: requests a second, interrupts per request, held interrupts.
  struct Window {
    double iops = 0, irq_per_req = 0;
    uint64_t held = 0;
  };
  auto window = [&](double seconds) {
    const nlohmann::json a = stats();
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(seconds * 1000)));
    const nlohmann::json z = stats();
    const double dt = Since(t0);
    Window w;
    const double reqs = z["vhost-user.requests"].get<double>() - a["vhost-user.requests"].get<double>();
    const double irqs = z["vhost-user.interrupts"].get<double>() - a["vhost-user.interrupts"].get<double>();
    w.iops = reqs / dt;
    w.irq_per_req = irqs / std::max(reqs, 1.0);
    w.held = z["coalescing.interrupts_held"].get<uint64_t>() - a["coalescing.interrupts_held"].get<uint64_t>();
    return w;
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the readers under way
  const Window off = window(2);
  auto set = vios::ControlCall(ctl, "device_set_coalescing", {{"id", "d0"}, {"delay_base_us", 100}, {"iops_threshold", 1000}});
  ASSERT_TRUE(set.ok() && (*set)["result"] == true) << (set.ok() ? set->dump() : set.status().ToString());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // one 10 ms rate window and more
  const Window on = window(2);
  Log("[ coalesce ] without: %.0f IOPS, %.3f interrupts/request; with (100 us above 1000 IOPS): %.0f IOPS, "
      "%.3f interrupts/request, %llu held\n",
      off.iops, off.irq_per_req, on.iops, on.irq_per_req, static_cast<unsigned long long>(on.held));
  EXPECT_EQ(off.held, 0u);
  EXPECT_GT(off.iops, 0);
  EXPECT_GT(on.iops, 0);
  ExpectGuestPasses(g, b, "coalesce");
  StopBackend(b);
}

// Live upgrade under a real Linux guest: while the guest zeroes, writes (four
// writers, O_DIRECT, a flush every 512 KiB) and reads back 32 MiB pass after
// pass (init.sh test_upgrade), vios is replaced ten times by `vios
// --upgrade-from`. QEMU runs without reconnect=1, so a dropped socket would
// end the guest's disk: the guest must see nothing at all (no I/O error, no
// reset), every pass must read back verified, and the file must hold the
// pattern.
TEST_F(LinuxGuest, LiveUpgradeTenTimes) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "the live upgrade is vios's";
  constexpr uint64_t kDisk = 64 * kMiB, kData = 32 * kMiB, kSeed = 0x77;
  const std::string img = Path("disk.img"), ctl = Path("vios.ctl");
  MakeSparseFile(img, kDisk);
  fs::create_directories(Path("data"));
  WritePatternFile(Path("data/pattern"), kSeed, 0, kData);
  Child* b = &StartBackend({.image = img, .control = ctl});
  if (HasFailure()) return;  // already reported
  Child& g = StartGuest({.workload = "upgrade", .extra_args = "vioport.seconds=15", .data_dir = Path("data")});
  ASSERT_TRUE(WaitSerial(g, "VIOPORT-MARK: writing", 180)) << "the guest never started writing";
  std::vector<double> pauses;
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(g.Running()) << "QEMU exited during the upgrades";
    backends_.push_back(std::make_unique<Child>(std::vector<std::string>{backend_bin_, "--upgrade-from", ctl}, dir_,
                                                "backend"));
    Child& next = *backends_.back();
    ASSERT_EQ(b->Wait(60 * scale_), 0) << "upgrade " << i + 1 << ": the old vios did not hand over and exit: "
                                       << Slurp(next.err_path());
    std::string log;
    const auto t0 = Clock::now();
    while ((log = Slurp(next.err_path())).find("vios ready") == std::string::npos && next.Running() &&
           Since(t0) < 30 * scale_)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ASSERT_TRUE(next.Running()) << log;
    const size_t at = log.find("guests waited ");
    ASSERT_NE(at, std::string::npos) << log;
    pauses.push_back(std::stod(log.substr(at + 14)));
    b = &next;
  }
  const bool written_during = Slurp(g.out_path()).find("write done") == std::string::npos;
  std::string line;
  for (double p : pauses) line += absl::StrFormat(" %.2f", p);
  Log("[ upgrade  ] pause per upgrade (ms):%s; the guest was %s writing\n", line.c_str(),
      written_during ? "still" : "no longer");
  EXPECT_TRUE(written_during) << "the guest finished writing before the tenth upgrade: the test needs more time";
  ExpectGuestPasses(g, *b, "upgrade");
  if (HasFailure()) return;  // already reported
  ExpectRegion(img, 0, kData, kSeed);
  ExpectRegion(img, kData, kDisk - kData, std::nullopt);
  // Nothing reached QEMU as a disconnect.
  EXPECT_EQ(Slurp(g.err_path()).find("vhost"), std::string::npos) << Slurp(g.err_path());
  StopBackend(*b);
}

void LinuxGuest::RunReconnect(bool packed) {
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
                         .reconnect = true,
                         .packed = packed});
  ASSERT_TRUE(WaitSerial(g, "VIOPORT-MARK: writing", 180)) << "the guest never started writing";
  ASSERT_NE(Slurp(g.out_path()).find(packed ? "ring=packed" : "ring=split"), std::string::npos)
      << "the guest's virtio_blk did not negotiate the ring format asked for";
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
    if (line.find("in flight") != std::string::npos || line.find("in-flight log") != std::string::npos) Log("[ reconnect] backend 2: %s\n", line.c_str());
  ExpectRegion(img, 0, kData, kSeed);
  ExpectRegion(img, kData, kDisk - kData, std::nullopt);
  StopBackend(b2);
}

TEST_F(LinuxGuest, Reconnect) { RunReconnect(/*packed=*/false); }

// The same with packed virtqueues. Here QEMU 7.2 cannot rewind the ring: a
// packed ring keeps no used index in memory, so after the crash it re-sends
// the position of the last start, and the in-flight log's copies of the
// requests in flight and its used position are what the new vios resumes from.
TEST_F(LinuxGuest, ReconnectPackedRing) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "the packed in-flight log is vios's";
  RunReconnect(/*packed=*/true);
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
// `stats [ID]` on vios's control socket (JSON-RPC), as viosctl prints it:
// "ID.NAME VALUE" lines, then "ok" (or "error: ...").
std::string Control(const std::string& path, const std::string& command) {
  if (command == "list") {  // the table viosctl list prints
    auto n = vios::ControlCall(path, "netdev_list", nlohmann::json::object(), 10);
    auto d = vios::ControlCall(path, "device_list", nlohmann::json::object(), 10);
    if (!n.ok() || !d.ok() || !n->contains("result") || !d->contains("result")) return "error: list\n";
    return vios::RenderList((*n)["result"], (*d)["result"]) + "ok\n";
  }
  const std::string id = command.size() > 6 ? command.substr(6) : "";
  auto r = vios::ControlCall(path, "stats", id.empty() ? nlohmann::json::object() : nlohmann::json{{"id", id}}, 10);
  if (!r.ok()) return absl::StrCat("error: ", r.status().message(), "\n");
  if (r->contains("error")) return absl::StrCat("error: ", (*r)["error"].value("message", ""), "\n");
  return vios::RenderStats((*r)["result"]) + "ok\n";
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
  testproc::EmulatedPorts ports([this](const std::string& n) { return sock_dir_ + "/" + n; });
  struct Peer {
    std::string name;
    testproc::PortAttach at;
    std::string addr, mac, ns;
  };
  std::vector<Peer> peers = {
      {"c", ports.Attach("c", "crq"), "10.66.0.2", "52:54:00:00:0c:02", ""},
      {"x", ports.Attach("x", "xen"), "10.66.0.3", "52:54:00:00:0c:03", ""},
      {"s", ports.Attach("s", "shm"), "10.66.0.4", "52:54:00:00:0c:04", ""},
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
  ASSERT_NO_FATAL_FAILURE(StartEmulators(ports));
  std::vector<std::string> vios = {backend_bin_, "--netdev", "switch,id=sw0", "--device",
                                   "net,id=lg,switch=sw0,mac=52:54:00:00:0c:01", "--attach",
                                   "lg,transport=vhost-user,socket=" + sock_, "--control", sock_dir_ + "/ctl"};
  for (const Peer& p : peers)
    vios.insert(vios.end(), {"--device", "net,id=" + p.name + ",switch=sw0,mac=" + p.mac, "--attach",
                             testproc::EmulatedPorts::AttachArg(p.name, p.at)});
  backends_.push_back(std::make_unique<Child>(vios, dir_, "backend"));
  Child& v = *backends_.back();
  ASSERT_NO_FATAL_FAILURE(WaitListening(v, {sock_, sock_dir_ + "/s.sock"}));
  std::vector<Child*> sinks;
  for (const Peer& p : peers) {
    backends_.push_back(std::make_unique<Child>(
        in_ns(p, {vioguest_bin_, "--transport", p.at.guest, "net", "tap", "--ifname", "vt0"}), dir_, "vioguest-" + p.name));
    Child& tap = *backends_.back();
    const auto t0 = Clock::now();
    while (Slurp(tap.err_path()).find("joined to the device") == std::string::npos) {
      ASSERT_TRUE(tap.Running()) << "vioguest over " << p.at.transport << " exited:\n" << Slurp(tap.err_path());
      ASSERT_LT(Since(t0), 20 * scale_) << "vioguest over " << p.at.transport << " did not join its tap";
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
    SCOPED_TRACE(peers[i].at.transport);
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

// ---------------------------------------------------------------------------
// virtio-vsock: the guest kernel's own vsock core and virtio transport
// (vmw_vsock_virtio_transport) behind QEMU's vhost-user-vsock-pci, served by
// vios's vsock device and hub. The guest's end is tests/linux/vsock_peer.c
// (static, in the initramfs); the host's ends are this test's own Unix
// sockets, as the hybrid-vsock protocol has them (docs/vsock.md), and socat.
namespace vioport {
namespace {

// The SEQPACKET message sizes, cycled: the same table as kSeqSizes in vsock_peer.c.
constexpr size_t kSeqSizes[] = {1, 2, 3, 44, 100, 1000, 4052, 4096, 4097, 8192, 12345, 65536, 65537, 100000, 7};

int UnixListen(const std::string& path, int type) {
  ::unlink(path.c_str());
  const int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 || ::listen(fd, 256) < 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  return fd;
}

void SetNonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// The first connection on listener `lfd` (-1 after `seconds` or once `stop` is set).
int AcceptOne(int lfd, double seconds, const std::atomic<bool>& stop) {
  const auto t0 = Clock::now();
  while (!stop.load() && Since(t0) < seconds) {
    pollfd p{lfd, POLLIN, 0};
    if (::poll(&p, 1, 100) > 0) {
      const int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) return fd;
    }
  }
  return -1;
}

// The host's CONNECT: connects to `uds`, writes "CONNECT <port>\n" and reads
// "OK <host-port>\n" (nothing after it). The socket, or -1 with `err` set.
int HostConnect(const std::string& uds, uint32_t port, uint32_t* host_port, std::string* err, double seconds) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", uds.c_str());
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
    *err = "connect " + uds + ": " + std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return -1;
  }
  const std::string cmd = "CONNECT " + std::to_string(port) + "\n";
  std::string line;
  const auto t0 = Clock::now();
  if (::send(fd, cmd.data(), cmd.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(cmd.size())) {
    *err = std::string("writing the CONNECT line: ") + std::strerror(errno);
  } else {
    while (err->empty() && (line.empty() || line.back() != '\n')) {
      pollfd p{fd, POLLIN, 0};
      if (Since(t0) > seconds) *err = "no answer to CONNECT within " + std::to_string(seconds) + " s";
      if (::poll(&p, 1, 100) <= 0) continue;
      char c;
      const ssize_t n = ::read(fd, &c, 1);  // byte by byte: nothing of the stream is consumed
      if (n == 1) line += c;
      else *err = "the hub closed the socket after '" + line + "' (the guest refused?)";
    }
  }
  unsigned long v = 0;
  if (err->empty() && (std::sscanf(line.c_str(), "OK %lu\n", &v) != 1 || line != "OK " + std::to_string(v) + "\n"))
    *err = "the answer to CONNECT is '" + line + "', not OK <port>";
  if (!err->empty()) {
    ::close(fd);
    return -1;
  }
  *host_port = static_cast<uint32_t>(v);
  return fd;
}

// One connection's host end of a stream exchange (vsock_peer's stream-*):
// sends `send` bytes of stream `sseed` (then shuts its write side) while it
// receives and checks `recv` bytes of stream `rseed`, until the peer's EOF.
struct StreamEnd {
  uint64_t sent = 0, received = 0, sent_sum = 0, recv_sum = 0;
  std::string error;  // "" when exactly the expected bytes came and all were sent
};
StreamEnd ExchangeStream(int fd, uint64_t send, uint64_t sseed, uint64_t recv, uint64_t rseed, double idle,
                         const std::atomic<bool>& stop) {
  StreamEnd r;
  pattern::Checksum64 ss, rs;
  std::vector<uint8_t> out(64 * 1024), in(64 * 1024);
  size_t out_len = 0, out_off = 0;
  bool eof = false, shut = false;
  SetNonblocking(fd);
  auto last = Clock::now();
  while (!(eof && shut) && r.error.empty()) {
    if (r.sent == send && out_off == out_len && !shut) {
      if (::shutdown(fd, SHUT_WR) < 0) r.error = std::string("shutdown: ") + std::strerror(errno);
      shut = true;
      continue;
    }
    if (stop.load()) r.error = "stopped: the guest had finished or failed";
    if (Since(last) > idle) r.error = "no progress for " + std::to_string(idle) + " s";
    pollfd p{fd, static_cast<short>((eof ? 0 : POLLIN) | (shut ? 0 : POLLOUT)), 0};
    if (!r.error.empty() || ::poll(&p, 1, 100) <= 0) continue;
    if (!eof && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
      const ssize_t n = ::read(fd, in.data(), in.size());
      if (n < 0 && errno != EAGAIN && errno != EINTR) r.error = std::string("read: ") + std::strerror(errno);
      if (n == 0) eof = true;
      if (n > 0) {
        const std::span<const uint8_t> got(in.data(), static_cast<size_t>(n));
        const int64_t bad = pattern::FirstMismatch(rseed, r.received, got);
        if (r.received + got.size() > recv) r.error = "more than the " + std::to_string(recv) + " bytes expected";
        else if (bad >= 0) r.error = "received byte " + std::to_string(bad) + " is not the pattern";
        rs.Add(got);
        r.received += got.size();
        last = Clock::now();
      }
    }
    if (!shut && r.error.empty() && (p.revents & POLLOUT)) {
      if (out_off == out_len) {
        out_len = static_cast<size_t>(std::min<uint64_t>(out.size(), send - r.sent));
        pattern::Fill(sseed, r.sent, {out.data(), out_len});
        out_off = 0;
      }
      const ssize_t n = ::send(fd, out.data() + out_off, out_len - out_off, MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EINTR) r.error = std::string("write: ") + std::strerror(errno);
      if (n > 0) {
        ss.Add({out.data() + out_off, static_cast<size_t>(n)});
        out_off += static_cast<size_t>(n);
        r.sent += static_cast<uint64_t>(n);
        last = Clock::now();
      }
    }
  }
  if (r.error.empty() && r.received != recv)
    r.error = "received " + std::to_string(r.received) + " of " + std::to_string(recv) + " bytes";
  if (!r.error.empty())
    r.error += " (sent " + std::to_string(r.sent) + ", received " + std::to_string(r.received) + ")";
  r.sent_sum = ss.Value();
  r.recv_sum = rs.Value();
  return r;
}

// The host end of vsock_peer's seq-connect: each message must be whole (its
// size from kSeqSizes, not truncated) and the pattern at its offset; it is
// echoed back as one message. Ends at the guest's EOF.
struct SeqEnd {
  uint64_t messages = 0, bytes = 0;
  std::string error;
};
SeqEnd SeqEcho(int fd, uint64_t seed, double idle, const std::atomic<bool>& stop) {
  SeqEnd r;
  std::vector<uint8_t> buf(256 * 1024);
  const timeval tv{static_cast<time_t>(idle), 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  auto last = Clock::now();
  while (r.error.empty()) {
    if (stop.load()) r.error = "stopped: the guest had finished or failed";
    if (Since(last) > idle) r.error = "no message for " + std::to_string(idle) + " s";
    pollfd p{fd, POLLIN, 0};
    if (!r.error.empty() || ::poll(&p, 1, 100) <= 0) continue;
    iovec iov{buf.data(), buf.size()};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    const ssize_t n = ::recvmsg(fd, &m, 0);
    if (n == 0) break;  // the guest closed
    const size_t want = kSeqSizes[r.messages % std::size(kSeqSizes)];
    if (n < 0) r.error = std::string("recvmsg: ") + std::strerror(errno);
    else if (m.msg_flags & MSG_TRUNC) r.error = "a message larger than 256 KiB";
    else if (static_cast<size_t>(n) != want)
      r.error = "message " + std::to_string(r.messages) + " has " + std::to_string(n) + " bytes, sent as " +
                std::to_string(want) + " (boundaries lost)";
    else if (const int64_t bad = pattern::FirstMismatch(seed, r.bytes, {buf.data(), static_cast<size_t>(n)}); bad >= 0)
      r.error = "message " + std::to_string(r.messages) + ": byte " + std::to_string(bad - static_cast<int64_t>(r.bytes)) +
                " is wrong";
    else if (::send(fd, buf.data(), static_cast<size_t>(n), MSG_NOSIGNAL) != n)
      r.error = std::string("echo send: ") + std::strerror(errno);
    if (!r.error.empty()) break;
    ++r.messages;
    r.bytes += static_cast<uint64_t>(n);
    last = Clock::now();
  }
  if (!r.error.empty()) r.error += " (after " + std::to_string(r.messages) + " messages)";
  return r;
}

// The host end of vsock_peer's many-connect: accepts `n` connections on
// `lfd` and echoes each; what each sends must be its 4-byte index and then
// `bytes` bytes of stream seed_base+index, and every index must come once.
struct ManyEnd {
  size_t accepted = 0, verified = 0;
  uint64_t bytes = 0;
  std::string error;
};
ManyEnd ManyEcho(int lfd, size_t n, uint64_t bytes, uint64_t seed_base, double idle, const std::atomic<bool>& stop) {
  struct C {
    int fd = -1;
    uint64_t got = 0;
    uint32_t index = 0;
    std::vector<uint8_t> pending;  // received, not yet echoed
    size_t pending_off = 0;
    bool eof = false;
  };
  ManyEnd r;
  std::vector<C> cs;
  std::vector<bool> seen(n, false);
  std::vector<uint8_t> buf(64 * 1024);
  auto last = Clock::now();
  while (r.error.empty() && r.verified < n) {
    if (stop.load()) r.error = "stopped: the guest had finished or failed";
    if (Since(last) > idle) r.error = "no progress for " + std::to_string(idle) + " s";
    if (!r.error.empty()) break;
    std::vector<pollfd> ps{{lfd, static_cast<short>(cs.size() < n ? POLLIN : 0), 0}};
    for (const C& c : cs)
      ps.push_back({c.fd, static_cast<short>((c.eof || c.pending.size() > (1 << 20) ? 0 : POLLIN) |
                                             (c.pending_off < c.pending.size() ? POLLOUT : 0)),
                    0});
    if (::poll(ps.data(), ps.size(), 100) <= 0) continue;
    if (ps[0].revents & POLLIN) {
      const int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd >= 0) {
        cs.emplace_back();
        cs.back().fd = fd;
        ++r.accepted;
        last = Clock::now();
      }
    }
    for (size_t i = 0; i + 1 < ps.size() && r.error.empty(); ++i) {
      C& c = cs[i];
      const short ev = ps[i + 1].revents;
      if (c.fd < 0 || !ev) continue;
      if (!c.eof && (ev & (POLLIN | POLLHUP | POLLERR))) {
        const ssize_t k = ::read(c.fd, buf.data(), buf.size());
        if (k < 0 && errno != EAGAIN && errno != EINTR) r.error = std::string("read: ") + std::strerror(errno);
        if (k == 0) c.eof = true;
        for (ssize_t j = 0; j < k && r.error.empty();) {
          if (c.got < 4) {  // the index, little-endian
            c.index |= static_cast<uint32_t>(buf[static_cast<size_t>(j)]) << (8 * c.got);
            ++c.got;
            ++j;
            if (c.got == 4) {
              if (c.index >= n || seen[c.index]) r.error = "connection index " + std::to_string(c.index) + " twice or out of range";
              else seen[c.index] = true;
            }
            continue;
          }
          const std::span<const uint8_t> d(buf.data() + j, static_cast<size_t>(k - j));
          if (c.got - 4 + d.size() > bytes) r.error = "connection " + std::to_string(c.index) + " sent too much";
          else if (pattern::FirstMismatch(seed_base + c.index, c.got - 4, d) >= 0)
            r.error = "connection " + std::to_string(c.index) + ": wrong bytes";
          c.got += d.size();
          j = k;
        }
        if (k > 0) {
          c.pending.insert(c.pending.end(), buf.begin(), buf.begin() + k);
          r.bytes += static_cast<uint64_t>(k);
          last = Clock::now();
        }
      }
      if (c.pending_off < c.pending.size() && (ev & POLLOUT)) {
        const ssize_t k = ::send(c.fd, c.pending.data() + c.pending_off, c.pending.size() - c.pending_off, MSG_NOSIGNAL);
        if (k < 0 && errno != EAGAIN && errno != EINTR) r.error = std::string("echo: ") + std::strerror(errno);
        if (k > 0) {
          c.pending_off += static_cast<size_t>(k);
          if (c.pending_off == c.pending.size()) c.pending.clear(), c.pending_off = 0;
          last = Clock::now();
        }
      }
      if (c.eof && c.pending.empty()) {
        if (c.got != 4 + bytes)
          r.error = "connection " + std::to_string(c.index) + " ended after " + std::to_string(c.got) + " bytes";
        ::close(c.fd);  // everything echoed: the guest sees EOF
        c.fd = -1;
        ++r.verified;
      }
    }
  }
  for (C& c : cs)
    if (c.fd >= 0) ::close(c.fd);
  if (!r.error.empty())
    r.error += " (" + std::to_string(r.accepted) + " accepted, " + std::to_string(r.verified) + " verified)";
  return r;
}

// "key=value" fields of the guest's "VSOCK-RESULT: <name> OK ..." line ("" if absent).
std::string GuestField(const std::string& serial, const std::string& name, const std::string& key) {
  const std::string head = "VSOCK-RESULT: " + name + " OK ";
  const size_t p = serial.find(head);
  if (p == std::string::npos) return "";
  std::istringstream line(serial.substr(p + head.size(), serial.find_first_of("\r\n", p) - p - head.size()));
  for (std::string kv; line >> kv;)
    if (kv.rfind(key + "=", 0) == 0) return kv.substr(key.size() + 1);
  return "";
}

// Whether the console shows `line` as a whole line (the serial port ends lines with \r\n).
bool HasLine(const std::string& serial, const std::string& line) {
  for (size_t p = serial.find(line); p != std::string::npos; p = serial.find(line, p + 1))
    if ((p == 0 || serial[p - 1] == '\n') && p + line.size() < serial.size() &&
        (serial[p + line.size()] == '\r' || serial[p + line.size()] == '\n'))
      return true;
  return false;
}

std::string Hex16(uint64_t v) {
  char s[17];
  std::snprintf(s, sizeof s, "%016llx", static_cast<unsigned long long>(v));
  return s;
}

class LinuxGuestVsock : public LinuxGuest {
 protected:
  void SetUp() override {
    LinuxGuest::SetUp();
    if (HasFatalFailure()) return;
    peer_ = VSOCK_PEER_BIN;
    ASSERT_TRUE(fs::exists(peer_)) << peer_ << " is not built (target linux_guest_vsock_peer)";
    uds_ = sock_dir_ + "/v.vsock";
    ctl_ = sock_dir_ + "/ctl";
  }
  void TearDown() override {
    stop_.store(true);
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    for (int fd : fds_) ::close(fd);
    LinuxGuest::TearDown();
  }
  // vios with one vsock device (CID `cid`, host side at uds_) on vhost-user at sock_.
  Child& StartVios(uint64_t cid) {
    backends_.push_back(std::make_unique<Child>(
        std::vector<std::string>{backend_bin_, "--device",
                                 "vsock,id=v0,cid=" + std::to_string(cid) + ",uds-path=" + uds_, "--attach",
                                 "v0,transport=vhost-user,socket=" + sock_, "--control", ctl_},
        dir_, "backend"));
    return *backends_.back();
  }
  int Listen(uint32_t port, int type) {
    const int fd = UnixListen(uds_ + "_" + std::to_string(port), type);
    EXPECT_GE(fd, 0) << "listening on " << uds_ << "_" << port << ": " << std::strerror(errno);
    if (fd >= 0) fds_.push_back(fd);
    return fd;
  }
  // Whether the guest's console shows `text` within `seconds` (no waitpid: safe from any thread).
  bool SerialShows(const Child& g, const std::string& text, double seconds) {
    const auto t0 = Clock::now();
    while (Slurp(g.out_path()).find(text) == std::string::npos) {
      if (stop_.load() || Since(t0) > seconds) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  }
  // A vios counter of device v0 ("hub.conns_open"), from the control socket.
  uint64_t Stat(const std::string& name) { return StatOf("v0", name); }
  // A vios counter of device `id`.
  uint64_t StatOf(const std::string& id, const std::string& name) {
    return Counter(Control(ctl_, "stats " + id), id + "." + name);
  }
  // Waits until Stat(name) == want (at most `seconds`); the last value.
  uint64_t WaitStat(const std::string& name, uint64_t want, double seconds) {
    const auto t0 = Clock::now();
    uint64_t v = Stat(name);
    while (v != want && Since(t0) < seconds) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      v = Stat(name);
    }
    return v;
  }
  // Every refusal and loss counter of the device and its hub is zero. Not
  // counted as losses: drop_rx_full (the device's inbox refused a packet
  // from the hub, which keeps it and retries) and drop_no_driver (packets
  // that arrive after the guest powered off, such as the RST ending a
  // connection the guest closed just before).
  void ExpectNoRefusals(const std::string& id = "v0") {
    std::istringstream in(Control(ctl_, "stats " + id));
    const std::string d = id + ".";
    int checked = 0;
    for (std::string line; std::getline(in, line);) {
      std::istringstream f(line);
      std::string k, v;
      f >> k >> v;
      if (k == d + "drop_rx_full" || k == d + "drop_no_driver") continue;
      if (k.rfind(d + "refused_", 0) == 0 || k.rfind(d + "hub.refused_", 0) == 0 || k.rfind(d + "drop_", 0) == 0 ||
          k == d + "hub.bad_connect" || k.rfind(d + "hub.drop_", 0) == 0 || k == d + "rx_buffers_too_small") {
        EXPECT_EQ(v, "0") << k;
        ++checked;
      }
    }
    EXPECT_GT(checked, 20) << "vios's stats of " << id << " lack the refusal counters";
  }
  // Waits until device `id` can take a new guest: vios lists it as waiting
  // (and, over Xen, has unmapped the last guest's pages).
  void WaitGone(const std::string& id, const std::string& transport) {
    std::string list;
    const auto t0 = Clock::now();
    auto waiting = [&] {
      list = Control(ctl_, "list");
      std::istringstream in(list);
      for (std::string line; std::getline(in, line);) {
        std::istringstream f(line);
        std::vector<std::string> w;
        for (std::string x; f >> x;) w.push_back(x);
        if (!w.empty() && w[0] == id) return std::find(w.begin(), w.end(), "waiting") != w.end();
      }
      return false;
    };
    while (!waiting()) {
      ASSERT_LT(Since(t0), 15 * scale_) << id << " still has a guest:\n" << list;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    while (transport == "xen" && StatOf(id, "xen.mapped_pages") != 0) {
      ASSERT_LT(Since(t0), 15 * scale_) << id << ": vios still maps the last guest's pages";
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  std::string peer_, uds_, ctl_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  std::vector<int> fds_;
};

// One boot, every kind of traffic, each checked byte for byte at both ends:
//  - guest-initiated stream: the guest connects to host port 5001 and this
//    test's listener on <uds-path>_5001 takes it: 8 MiB each way;
//  - host-initiated streams: this test connects to uds-path with CONNECT
//    6001 (OK <port> back; the port the guest's accept() reports), and socat,
//    a standard tool, does the same for 6002 from a file: 8 MiB each way;
//  - SEQPACKET: messages of 1 B to 100000 B (several packets each) to a
//    SOCK_SEQPACKET listener on <uds-path>_5002 that checks each message
//    whole and echoes it; the guest checks every echo is one whole message;
//  - 100 connections open at once to <uds-path>_5003, 64 KiB each way on each.
// vios's counters must then add up to exactly the bytes moved, with no
// refusal or drop and no connection left.
TEST_F(LinuxGuestVsock, DataBothWays) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "vsock is served by vios";
  constexpr uint64_t kCid = 5, kBytes = 8 * kMiB, kMessages = 300, kConns = 100, kConnBytes = 64 * 1024;
  Child& v = StartVios(kCid);
  ASSERT_NO_FATAL_FAILURE(WaitListening(v, {sock_, uds_}));
  const int l_stream = Listen(5001, SOCK_STREAM), l_seq = Listen(5002, SOCK_SEQPACKET), l_many = Listen(5003, SOCK_STREAM);
  ASSERT_FALSE(HasFailure());
  // socat's input: the CONNECT line, then the stream.
  {
    std::ofstream f(Path("socat-in"), std::ios::binary);
    f << "CONNECT 6002\n";
  }
  {
    std::vector<uint8_t> d(kBytes);
    pattern::Fill(0x63, 0, d);
    std::ofstream f(Path("socat-in"), std::ios::binary | std::ios::app);
    f.write(reinterpret_cast<const char*>(d.data()), static_cast<std::streamsize>(d.size()));
  }
  const double idle = 90 * scale_;
  const auto t0 = Clock::now();
  Child& g = StartGuest({.workload = "vsock_data",
                         .extra_args = "vioport.cid=" + std::to_string(kCid) + " vioport.bytes=" + std::to_string(kBytes) +
                                       " vioport.messages=" + std::to_string(kMessages) +
                                       " vioport.conns=" + std::to_string(kConns) +
                                       " vioport.connbytes=" + std::to_string(kConnBytes),
                         .vsock = true,
                         .programs = {peer_}});
  StreamEnd g2h, h2g;
  SeqEnd seq;
  ManyEnd many;
  uint32_t h2g_port = 0;
  std::string h2g_connect_error;
  threads_.emplace_back([&] {
    const int fd = AcceptOne(l_stream, 180 * scale_, stop_);
    if (fd < 0) return void(g2h.error = "the guest never connected to 5001");
    g2h = ExchangeStream(fd, kBytes, 0x52, kBytes, 0x51, idle, stop_);
    ::close(fd);
  });
  threads_.emplace_back([&] {
    const int fd = AcceptOne(l_seq, 180 * scale_, stop_);
    if (fd < 0) return void(seq.error = "the guest never connected to 5002");
    seq = SeqEcho(fd, 0x53, idle, stop_);
    ::close(fd);
  });
  threads_.emplace_back([&] { many = ManyEcho(l_many, kConns, kConnBytes, 0x1000, idle, stop_); });
  threads_.emplace_back([&] {
    if (!SerialShows(g, "VSOCK-LISTENING: h2g 6001", 180 * scale_)) return void(h2g.error = "the guest never listened on 6001");
    const int fd = HostConnect(uds_, 6001, &h2g_port, &h2g_connect_error, 30 * scale_);
    if (fd < 0) return void(h2g.error = "CONNECT 6001: " + h2g_connect_error);
    h2g = ExchangeStream(fd, kBytes, 0x61, kBytes, 0x62, idle, stop_);
    ::close(fd);
  });
  // socat, once the guest listens on 6002: the file in, what comes back to a file.
  std::unique_ptr<Child> socat;
  if (WaitSerial(g, "VSOCK-LISTENING: socat 6002", 180)) {
    socat = std::make_unique<Child>(
        std::vector<std::string>{"/bin/sh", "-c",
                                 "exec socat -t 120 - UNIX-CONNECT:" + uds_ + " <" + Path("socat-in") + " >" +
                                     Path("socat-out")},
        dir_, "socat");
  } else {
    ADD_FAILURE() << "the guest never listened on 6002";
  }
  ExpectGuestPasses(g, v, "vsock_data", 300);
  Log("[ timing   ] boot + vsock workload %.1f s\n", Since(t0));
  const std::string serial = Slurp(g.out_path());
  // The host's ends finish on their own (the guest waited for every echo and EOF).
  if (HasFailure()) stop_.store(true);
  for (auto& t : threads_) t.join();
  threads_.clear();
  const int socat_status = socat ? socat->Wait(30 * scale_) : -1;

  // a) guest-initiated stream, both ends' bytes and checksums.
  EXPECT_EQ(g2h.error, "") << "guest->host stream on 5001 (host end)";
  EXPECT_EQ(g2h.received, kBytes);
  EXPECT_EQ(GuestField(serial, "g2h", "recv_sum"), Hex16(g2h.sent_sum)) << "the guest's checksum of what the host sent";
  EXPECT_EQ(GuestField(serial, "g2h", "sent_sum"), Hex16(g2h.recv_sum)) << "what the guest sent, as the host received it";
  // b) host-initiated, this test's end: OK <port>, the port the guest saw.
  EXPECT_EQ(h2g.error, "") << "host->guest stream on 6001 (host end)";
  EXPECT_GE(h2g_port, 1u << 30) << "host ports are allocated from 2^30";
  EXPECT_TRUE(HasLine(serial, "VSOCK-ACCEPTED: h2g from cid 2 port " + std::to_string(h2g_port)))
      << "the guest's accept() must report the port OK named (" << h2g_port << ")";
  EXPECT_EQ(GuestField(serial, "h2g", "recv_sum"), Hex16(h2g.sent_sum));
  EXPECT_EQ(GuestField(serial, "h2g", "sent_sum"), Hex16(h2g.recv_sum));
  // b) with socat: OK <port>, then exactly the guest's 8 MiB.
  EXPECT_EQ(socat_status, 0) << "socat's exit status:\n" << (socat ? Slurp(socat->err_path()) : "");
  {
    const std::string out = Slurp(Path("socat-out"));
    const size_t nl = out.find('\n');
    ASSERT_NE(nl, std::string::npos) << "socat received no OK line: '" << out.substr(0, 64) << "'";
    const std::string ok = out.substr(0, nl);
    unsigned long port = 0;
    EXPECT_EQ(std::sscanf(ok.c_str(), "OK %lu", &port), 1) << ok;
    EXPECT_GE(port, 1ul << 30) << ok;
    EXPECT_TRUE(HasLine(serial, "VSOCK-ACCEPTED: socat from cid 2 port " + std::to_string(port)))
        << "the guest's accept() must report the port socat was told (" << ok << ")";
    ASSERT_EQ(out.size() - nl - 1, kBytes) << "socat received the wrong number of bytes after the OK line";
    const std::span<const uint8_t> data(reinterpret_cast<const uint8_t*>(out.data()) + nl + 1, kBytes);
    EXPECT_EQ(pattern::FirstMismatch(0x64, 0, data), -1) << "what socat received is not the guest's stream";
    pattern::Checksum64 sent;
    std::vector<uint8_t> d(kBytes);
    pattern::Fill(0x63, 0, d);
    sent.Add(d);
    EXPECT_EQ(GuestField(serial, "socat", "recv_sum"), Hex16(sent.Value())) << "the guest's checksum of socat's stream";
  }
  // c) SEQPACKET: the device offered it, every message came whole both ways.
  EXPECT_EQ(serial.find("VSOCK-RESULT: seq SKIPPED"), std::string::npos) << "SEQPACKET was not negotiated";
  EXPECT_EQ(seq.error, "") << "SEQPACKET echo on 5002 (host end)";
  EXPECT_EQ(seq.messages, kMessages);
  EXPECT_EQ(GuestField(serial, "seq", "messages"), std::to_string(kMessages));
  EXPECT_EQ(GuestField(serial, "seq", "bytes"), std::to_string(seq.bytes));
  // d) 100 connections at once, each verified both ways.
  EXPECT_EQ(many.error, "") << "100 connections on 5003 (host end)";
  EXPECT_EQ(many.verified, kConns);
  EXPECT_EQ(GuestField(serial, "many", "connections"), std::to_string(kConns));
  Log("[ vsock    ] 5001 %s; 6001 %s; socat %d; seq %llu messages %llu bytes; %zu connections verified\n",
      g2h.error.empty() ? "ok" : g2h.error.c_str(), h2g.error.empty() ? "ok" : h2g.error.c_str(), socat_status,
      static_cast<unsigned long long>(seq.messages), static_cast<unsigned long long>(seq.bytes), many.verified);
  // vios: every byte counted once, every connection gone, nothing refused.
  const uint64_t moved = 3 * kBytes + seq.bytes + kConns * (4 + kConnBytes);
  EXPECT_EQ(WaitStat("hub.conns_open", 0, 10 * scale_), 0u) << "host connections left in vios";
  EXPECT_EQ(Stat("hub.conns_total"), 4 + kConns);
  EXPECT_EQ(Stat("hub.to_host_bytes"), moved);
  EXPECT_EQ(Stat("hub.from_host_bytes"), moved);
  ExpectNoRefusals();
  const std::string stats = Control(ctl_, "stats");
  Log("[ vios     ] %s", stats.c_str());
  StopBackend(v);
}

// The guest is killed (SIGKILL to QEMU) in the middle of five streams, three
// it opened to <uds-path>_5101 and two the host opened with CONNECT: every
// host socket must be closed by vios (EOF or an error) within seconds, and
// vios must hold no connection afterwards. What the host received until then
// must be the guest's pattern, byte for byte. Then a new guest on the same
// vios device moves a verified stream each way.
TEST_F(LinuxGuestVsock, GuestKilledMidStream) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "vsock is served by vios";
  constexpr uint64_t kCid = 6, kBefore = 256 * 1024;
  Child& v = StartVios(kCid);
  ASSERT_NO_FATAL_FAILURE(WaitListening(v, {sock_, uds_}));
  const int l = Listen(5101, SOCK_STREAM);
  ASSERT_GE(l, 0);
  Child& g = StartGuest({.workload = "vsock_flood",
                         .extra_args = "vioport.cid=" + std::to_string(kCid),
                         .vsock = true,
                         .programs = {peer_}});
  struct Flood {
    std::string name;
    int fd = -1;
    uint64_t send_seed = 0, recv_seed = 0, sent = 0, received = 0;
    std::string closed{};  // how it ended ("" while open)
    std::string error{};   // wrong bytes
  };
  std::vector<Flood> fl;
  for (int i = 0; i < 3; ++i) {
    const int fd = AcceptOne(l, 180 * scale_, stop_);
    ASSERT_GE(fd, 0) << "the guest's connection " << i + 1 << " to 5101 never came";
    fds_.push_back(fd);
    fl.push_back({.name = "guest-initiated " + std::to_string(i + 1), .fd = fd, .send_seed = 0x72, .recv_seed = 0x71});
  }
  for (const char* name : {"in1 6101", "in2 6102"}) {
    ASSERT_TRUE(WaitSerial(g, std::string("VSOCK-LISTENING: ") + name, 120)) << "the guest never listened: " << name;
    uint32_t port = 0;
    std::string err;
    const int fd = HostConnect(uds_, static_cast<uint32_t>(std::stoul(std::string(name).substr(4))), &port, &err,
                               30 * scale_);
    ASSERT_GE(fd, 0) << err;
    fds_.push_back(fd);
    fl.push_back({.name = std::string("host-initiated ") + name, .fd = fd, .send_seed = 0x74, .recv_seed = 0x73});
  }
  for (Flood& f : fl) SetNonblocking(f.fd);
  // Moves data on every open connection for up to `seconds`, until `done`.
  std::vector<uint8_t> buf(64 * 1024);
  auto pump = [&](double seconds, const std::function<bool()>& done) {
    const auto t0 = Clock::now();
    while (!done() && Since(t0) < seconds) {
      std::vector<pollfd> ps;
      for (const Flood& f : fl) ps.push_back({f.closed.empty() ? f.fd : -1, POLLIN | POLLOUT, 0});
      if (::poll(ps.data(), ps.size(), 50) <= 0) continue;
      for (size_t i = 0; i < fl.size(); ++i) {
        Flood& f = fl[i];
        if (!f.closed.empty() || !ps[i].revents) continue;
        if (ps[i].revents & (POLLIN | POLLHUP | POLLERR)) {
          const ssize_t n = ::read(f.fd, buf.data(), buf.size());
          if (n == 0) f.closed = "EOF";
          if (n < 0 && errno != EAGAIN && errno != EINTR) f.closed = std::string("read error: ") + std::strerror(errno);
          if (n > 0) {
            if (f.error.empty() &&
                pattern::FirstMismatch(f.recv_seed, f.received, {buf.data(), static_cast<size_t>(n)}) >= 0)
              f.error = "wrong bytes after " + std::to_string(f.received);
            f.received += static_cast<uint64_t>(n);
          }
        }
        if (f.closed.empty() && (ps[i].revents & POLLOUT)) {
          pattern::Fill(f.send_seed, f.sent, {buf.data(), 16384});
          const ssize_t n = ::send(f.fd, buf.data(), 16384, MSG_NOSIGNAL);
          if (n < 0 && errno != EAGAIN && errno != EINTR) f.closed = std::string("write error: ") + std::strerror(errno);
          if (n > 0) f.sent += static_cast<uint64_t>(n);
        }
      }
    }
  };
  pump(120 * scale_, [&] {
    return std::all_of(fl.begin(), fl.end(), [&](const Flood& f) {
      return (f.received >= kBefore && f.sent >= kBefore) || !f.closed.empty();
    });
  });
  for (const Flood& f : fl) {
    ASSERT_EQ(f.closed, "") << f.name << " ended before the guest was killed";
    ASSERT_GE(f.received, kBefore) << f.name << ": too little data before the kill";
    ASSERT_GE(f.sent, kBefore) << f.name << ": too little data before the kill";
  }
  EXPECT_EQ(Slurp(g.out_path()).find(" FAIL "), std::string::npos) << "a guest stream failed before the kill";
  EXPECT_EQ(Stat("hub.conns_open"), 5u) << "vios should hold the five connections now";
  const auto tk = Clock::now();
  g.Signal(SIGKILL);
  EXPECT_EQ(g.Wait(10), 128 + SIGKILL);
  pump(15 * scale_, [&] { return std::all_of(fl.begin(), fl.end(), [](const Flood& f) { return !f.closed.empty(); }); });
  const double closed_after = Since(tk);
  for (const Flood& f : fl) {
    EXPECT_NE(f.closed, "") << f.name << ": still open " << 15 * scale_ << " s after the guest was killed";
    EXPECT_EQ(f.error, "") << f.name;
    Log("[ vsock    ] %s: host sent %llu, received %llu verified; then %s\n", f.name.c_str(),
        static_cast<unsigned long long>(f.sent), static_cast<unsigned long long>(f.received),
        f.closed.empty() ? "still open" : f.closed.c_str());
  }
  Log("[ vsock    ] %s %.2f s after the kill\n",
      std::all_of(fl.begin(), fl.end(), [](const Flood& f) { return !f.closed.empty(); }) ? "every host socket closed"
                                                                                        : "gave up waiting",
      closed_after);
  EXPECT_EQ(WaitStat("hub.conns_open", 0, 10 * scale_), 0u) << "vios still holds connections of the dead guest";
  EXPECT_EQ(Stat("hub.conns_total"), 5u);
  EXPECT_NE(Slurp(v.err_path()).find("front-end disconnected"), std::string::npos);
  if (HasFailure()) return;
  // The same device serves the next guest: a new QEMU, one stream of 1 MiB
  // each way to the same listener, verified at both ends.
  constexpr uint64_t kAgain = kMiB;
  Child& g2 = StartGuest({.workload = "vsock_again",
                          .extra_args = "vioport.cid=" + std::to_string(kCid) + " vioport.bytes=" + std::to_string(kAgain),
                          .vsock = true,
                          .programs = {peer_}});
  StreamEnd again;
  threads_.emplace_back([&] {
    const int fd = AcceptOne(l, 180 * scale_, stop_);
    if (fd < 0) return void(again.error = "the new guest never connected to 5101");
    again = ExchangeStream(fd, kAgain, 0x76, kAgain, 0x75, 90 * scale_, stop_);
    ::close(fd);
  });
  ExpectGuestPasses(g2, v, "vsock_again");
  if (HasFailure()) stop_.store(true);
  for (auto& t : threads_) t.join();
  threads_.clear();
  EXPECT_EQ(again.error, "") << "the new guest's stream (host end)";
  EXPECT_EQ(WaitStat("hub.conns_open", 0, 10 * scale_), 0u);
  EXPECT_EQ(Stat("hub.conns_total"), 6u);
  StopBackend(v);
}

// Checksum64 of `len` bytes of stream `seed`, as the tools print it.
std::string PatternSum(uint64_t seed, uint64_t len) {
  std::vector<uint8_t> d(len);
  pattern::Fill(seed, 0, d);
  pattern::Checksum64 c;
  c.Add(d);
  return Hex16(c.Value());
}

// One vios, four transports, one hub group (group=g on every device): the
// Linux guest (vhost-user, CID 3) and vioguest processes over shm (CID 4),
// crq through crqd (CID 5) and Xen through xenemud (CID 6) reach each other
// by CID, device to device through the hub (no host endpoint in between).
// In one boot, all at once: the guest connects to a `vioguest vsock listen`
// on each transport (port 7000), and, as each of those ends, a `vioguest
// vsock connect` on the same device (a device serves one guest at a time)
// connects to the guest's listener (7001), which takes the three at once.
// 1 MiB each way on each of the six connections, every byte checked at both
// ends (the seeds differ per peer and direction), the guest's checksums
// compared with the pattern's; each vioguest exits 0 with verified=yes; vios
// counts exactly those bytes per device, no host connection, no refusal.
TEST_F(LinuxGuestVsock, ReachesVioguestsOverEveryTransport) {
  if (backend_kind_ != "vios") GTEST_SKIP() << "vsock is served by vios";
#ifndef LINUX_NET_EMULATORS
  GTEST_SKIP() << "built without crqd and xenemud";
#else
  constexpr uint64_t kGuestCid = 3, kBytes = kMiB;
  // Seeds: to the peers' listeners the guest sends 128+CID and the peer
  // 144+CID; to the guest's listener the peer sends 160+CID, the guest
  // 176+CID (init.sh, test_vsock_peers).
  testproc::EmulatedPorts ports([this](const std::string& n) { return sock_dir_ + "/" + n; });
  struct Peer {
    std::string id;
    uint64_t cid;
    testproc::PortAttach at;
    Child* listener = nullptr;   // the guest connects to it
    Child* connector = nullptr;  // it connects to the guest
  };
  std::vector<Peer> peers;
  for (const auto& [transport, cid] : std::vector<std::pair<std::string, uint64_t>>{{"shm", 4}, {"crq", 5}, {"xen", 6}})
    peers.push_back({"v" + transport, cid, ports.Attach("v" + transport, transport)});
  ASSERT_NO_FATAL_FAILURE(StartEmulators(ports));
  std::vector<std::string> argv = {backend_bin_, "--device",
                                   absl::StrCat("vsock,id=v0,cid=", kGuestCid, ",uds-path=", uds_, ",group=g"),
                                   "--attach", "v0,transport=vhost-user,socket=" + sock_, "--control", ctl_};
  for (const Peer& p : peers)
    argv.insert(argv.end(), {"--device", absl::StrCat("vsock,id=", p.id, ",cid=", p.cid, ",group=g"), "--attach",
                             testproc::EmulatedPorts::AttachArg(p.id, p.at)});
  backends_.push_back(std::make_unique<Child>(argv, dir_, "backend"));
  Child& v = *backends_.back();
  ASSERT_NO_FATAL_FAILURE(WaitListening(v, {sock_, ctl_, sock_dir_ + "/vshm.sock"}));
  {
    const auto t0 = Clock::now();
    while (Slurp(v.err_path()).find("vios ready") == std::string::npos) {
      ASSERT_TRUE(v.Running()) << "vios exited with status " << v.status();
      ASSERT_LT(Since(t0), 20 * scale_) << "vios never said it was ready";
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  const std::string len = std::to_string(kBytes), timeout = std::to_string(static_cast<int>(120 * scale_));
  auto vioguest = [&](const Peer& p, const std::string& role, const std::vector<std::string>& args) -> Child& {
    std::vector<std::string> a = {vioguest_bin_, "--transport", p.at.guest, "vsock", role};
    a.insert(a.end(), args.begin(), args.end());
    a.insert(a.end(), {"--length", len, "--expect-length", len, "--timeout", timeout});
    backends_.push_back(std::make_unique<Child>(a, dir_, "vioguest-" + role + "-" + p.at.transport));
    return *backends_.back();
  };
  for (Peer& p : peers)
    p.listener = &vioguest(p, "listen",
                           {"--port", "7000", "--seed", std::to_string(144 + p.cid), "--expect-seed",
                            std::to_string(128 + p.cid)});
  for (Peer& p : peers) {
    const std::string want = absl::StrCat("listening on ", p.cid, ":7000");
    const auto t0 = Clock::now();
    while (Slurp(p.listener->out_path()).find(want) == std::string::npos) {
      ASSERT_TRUE(p.listener->Running()) << "vioguest over " << p.at.transport << " exited (" << p.listener->status()
                                         << "):\n" << Slurp(p.listener->err_path());
      ASSERT_LT(Since(t0), 20 * scale_) << "vioguest over " << p.at.transport << " never listened";
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  const auto t0 = Clock::now();
  Child& g = StartGuest({.workload = "vsock_peers",
                         .extra_args = absl::StrCat("vioport.cid=", kGuestCid, " vioport.bytes=", kBytes,
                                                    " vioport.peers=", peers[0].cid, ",", peers[1].cid, ",", peers[2].cid),
                         .vsock = true,
                         .programs = {peer_}});
  ASSERT_TRUE(WaitSerial(g, "VSOCK-LISTENING: in 7001", 180)) << "the guest never listened on 7001";
  // Each listener ends once its exchange with the guest is done; its device
  // then takes the connector.
  for (Peer& p : peers) {
    SCOPED_TRACE(p.at.transport);
    const int st = p.listener->Wait(180 * scale_);
    const std::string out = Slurp(p.listener->out_path());
    EXPECT_EQ(st, 0) << "vioguest vsock listen over " << p.at.transport << ":\n" << out << Slurp(p.listener->err_path());
    EXPECT_EQ(testproc::Field(out, "verified"), "yes") << out;
    EXPECT_EQ(testproc::Field(out, "sent"), len) << out;
    EXPECT_EQ(testproc::Field(out, "received"), len) << out;
    EXPECT_EQ(testproc::Field(out, "checksum"), PatternSum(128 + p.cid, kBytes)) << "what the guest sent";
    ASSERT_NO_FATAL_FAILURE(WaitGone(p.id, p.at.transport));
    p.connector = &vioguest(p, "connect",
                            {"--cid", std::to_string(kGuestCid), "--port", "7001", "--seed",
                             std::to_string(160 + p.cid), "--expect-seed", std::to_string(176 + p.cid)});
  }
  ExpectGuestPasses(g, v, "vsock_peers", 300);
  Log("[ timing   ] boot + vsock workload %.1f s\n", Since(t0));
  const std::string serial = Slurp(g.out_path());
  for (Peer& p : peers) {
    SCOPED_TRACE(p.at.transport);
    const int st = p.connector->Wait(30 * scale_);
    const std::string out = Slurp(p.connector->out_path());
    EXPECT_EQ(st, 0) << "vioguest vsock connect over " << p.at.transport << ":\n" << out << Slurp(p.connector->err_path());
    EXPECT_EQ(testproc::Field(out, "verified"), "yes") << out;
    EXPECT_EQ(testproc::Field(out, "sent"), len) << out;
    EXPECT_EQ(testproc::Field(out, "received"), len) << out;
    EXPECT_EQ(testproc::Field(out, "checksum"), PatternSum(176 + p.cid, kBytes)) << "what the guest sent";
    // The guest's ends: its checksums of both directions of both connections.
    const std::string out_name = absl::StrCat("out", p.cid), in_name = absl::StrCat("in-cid", p.cid);
    EXPECT_EQ(GuestField(serial, out_name, "sent_sum"), PatternSum(128 + p.cid, kBytes)) << out_name;
    EXPECT_EQ(GuestField(serial, out_name, "recv_sum"), PatternSum(144 + p.cid, kBytes)) << out_name;
    EXPECT_EQ(GuestField(serial, in_name, "sent_sum"), PatternSum(176 + p.cid, kBytes)) << in_name;
    EXPECT_EQ(GuestField(serial, in_name, "recv_sum"), PatternSum(160 + p.cid, kBytes)) << in_name;
    EXPECT_NE(serial.find(absl::StrCat("VSOCK-ACCEPTED: in from cid ", p.cid, " port ")), std::string::npos)
        << "the guest's accept() never reported cid " << p.cid;
    Log("[ vsock    ] %s (cid %llu): guest->%s %s, %s->guest %s\n", p.at.transport.c_str(),
        static_cast<unsigned long long>(p.cid), p.at.transport.c_str(),
        testproc::Field(Slurp(p.listener->out_path()), "verified").c_str(), p.at.transport.c_str(),
        testproc::Field(out, "verified").c_str());
  }
  EXPECT_EQ(GuestField(serial, "in", "connections"), "3");
  // vios: each peer's device moved 1 MiB each way twice, the guest's six
  // times; no connection ever went through a host endpoint; nothing refused.
  for (const std::string& id : {std::string("v0"), peers[0].id, peers[1].id, peers[2].id}) {
    SCOPED_TRACE(id);
    const uint64_t n = (id == "v0" ? 6 : 2) * kBytes;
    EXPECT_EQ(StatOf(id, "tx_bytes"), n) << "payload bytes from the driver";
    EXPECT_EQ(StatOf(id, "rx_bytes"), n) << "payload bytes to the driver";
    EXPECT_EQ(StatOf(id, "hub.conns_open"), 0u);
    EXPECT_EQ(StatOf(id, "hub.conns_total"), 0u) << "sibling connections need no host endpoint";
    ExpectNoRefusals(id);
  }
  for (const Peer& p : peers) {
    EXPECT_EQ(StatOf(p.id, p.at.transport + ".ring_errors"), 0u) << p.id;
    EXPECT_EQ(StatOf(p.id, p.at.transport + ".protocol_errors"), 0u) << p.id;
  }
  EXPECT_EQ(StatOf("vxen", "xen.grant_map_failures"), 0u);
  const std::string stats = Control(ctl_, "stats");
  std::istringstream in(stats);
  for (std::string line; std::getline(in, line);)
    if (line.find("bytes ") != std::string::npos && line.find(".hub.") == std::string::npos &&
        line.rfind("v", 0) == 0 && line.find('.') == line.find_last_of('.'))
      Log("[ vios     ] %s\n", line.c_str());
  StopBackend(v);
#endif
}

}  // namespace
}  // namespace vioport
