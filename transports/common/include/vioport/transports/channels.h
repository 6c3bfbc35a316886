// SPDX-License-Identifier: Apache-2.0
// Channels by name, for a transport that can run over more than one
// implementation of its channel port (real Xen or the emulator; PowerVM's
// hypervisor or crqd). The transport declares the factory type; each
// implementation registers under a name when the program registers its
// transports, so a build without emulators simply has fewer names.
#pragma once

#include <deque>
#include <string>
#include <utility>


namespace vioport {

template <typename Factory>
class Channels {
 public:
  static void Add(std::string name, Factory f) {
    for (auto& [n, existing] : All())
      if (n == name) return;
    All().emplace_back(std::move(name), std::move(f));
  }
  static const Factory* Find(const std::string& name) {
    for (auto& [n, f] : All())
      if (n == name) return &f;
    return nullptr;
  }
  // "emu, xen" for messages; "none" when nothing registered.
  static std::string Names() {
    if (All().empty()) return "none in this build";
    std::string out;
    for (auto& [n, f] : All()) out += (out.empty() ? "" : ", ") + n;
    return out;
  }

 private:
  static std::deque<std::pair<std::string, Factory>>& All() {
    static auto* all = new std::deque<std::pair<std::string, Factory>>;
    return *all;
  }
};

}  // namespace vioport
