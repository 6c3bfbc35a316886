// SPDX-License-Identifier: Apache-2.0
// xen::XenStore: xenstored's request semantics; see xenstore.h.
#include "vioport/emulators/xenstore.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>
#include <utility>

namespace vioport::xen {

namespace {

struct Node {
  std::string value;
  std::vector<XsPerm> perms;  // never empty
  std::vector<std::string> children;  // in creation order, as C xenstored
  uint64_t generation = 0;
};
using NodeMap = std::map<std::string, Node, std::less<>>;

// A change that may fire watches. exact: only watches on exactly `path`
// (the nodes below an RM's root); otherwise the path and its ancestors.
struct Event {
  std::string path;
  bool exact = false;
  std::vector<XsPerm> perms;
  std::vector<XsPerm> old_perms;  // SET_PERMS: who could see it before
};

struct Watch {
  std::string path;  // canonical, or a special "@..." name
  std::string token;
  size_t prefix_len = 0;  // relative watch: strip "/local/domain/<id>/"
};

struct Transaction {
  uint32_t id = 0;
  std::map<std::string, std::optional<Node>, std::less<>> overlay;  // nullopt: deleted
  std::map<std::string, std::optional<uint64_t>, std::less<>> accessed;  // generation seen
  std::map<uint32_t, int64_t> owned_delta;
  std::vector<Event> events;
};

bool IsSpecial(std::string_view p) { return !p.empty() && p[0] == '@'; }

std::string ParentOf(std::string_view p) {
  const size_t k = p.rfind('/');
  if (k == 0 || k == std::string_view::npos) return "/";
  return std::string(p.substr(0, k));
}

std::string Basename(std::string_view p) { return std::string(p.substr(p.rfind('/') + 1)); }

std::string ChildPath(std::string_view parent, std::string_view name) {
  std::string out(parent);
  if (out != "/") out += '/';
  out += name;
  return out;
}

// name is `watch` or lies below it.
bool IsUnder(std::string_view name, std::string_view watch) {
  if (name.size() < watch.size() || name.substr(0, watch.size()) != watch) return false;
  if (name.size() == watch.size()) return true;
  return watch == "/" || name[watch.size()] == '/';
}

bool ValidChars(std::string_view s) {
  for (const char ch : s) {
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                    ch == '-' || ch == '/' || ch == '_' || ch == '@';
    if (!ok) return false;
  }
  return true;
}

size_t NodeSize(const Node& n) {
  size_t size = 24 + 8 * n.perms.size() + n.value.size();  // C xenstored's record: header + perms + data + children
  for (const auto& c : n.children) size += c.size() + 1;
  return size;
}

// A decimal domid: digits only, <= 65535.
std::optional<uint32_t> ParseDomid(std::string_view s) {
  if (s.empty() || s.size() > 5) return std::nullopt;
  uint32_t v = 0;
  for (const char ch : s) {
    if (ch < '0' || ch > '9') return std::nullopt;
    v = v * 10 + static_cast<uint32_t>(ch - '0');
  }
  if (v > 65535) return std::nullopt;
  return v;
}

uint8_t PermFor(uint32_t domid, const std::vector<XsPerm>& perms) {
  if (domid == 0) return kPermBoth;
  if (perms.empty()) return kPermNone;
  if (perms[0].domid == domid) return kPermBoth;
  for (size_t i = 1; i < perms.size(); ++i)
    if (perms[i].domid == domid) return perms[i].perm;
  return perms[0].perm;
}

uint32_t OwnerOf(const Node& n) { return n.perms.empty() ? 0 : n.perms[0].domid; }

}  // namespace

std::optional<XsPerm> ParseXsPerm(std::string_view s) {
  if (s.size() < 2) return std::nullopt;
  XsPerm p;
  switch (s[0]) {
    case 'n': p.perm = kPermNone; break;
    case 'r': p.perm = kPermRead; break;
    case 'w': p.perm = kPermWrite; break;
    case 'b': p.perm = kPermBoth; break;
    default: return std::nullopt;
  }
  const auto id = ParseDomid(s.substr(1));
  if (!id) return std::nullopt;
  p.domid = *id;
  return p;
}

std::string FormatXsPerm(const XsPerm& p) {
  static constexpr char kLetters[] = {'n', 'r', 'w', 'b'};
  return std::string(1, kLetters[p.perm & 3]) + std::to_string(p.domid);
}

struct XenStore::State {
  struct Connection {
    uint32_t domid = 0;
    Sink sink;
    std::vector<Watch> watches;
    std::map<uint32_t, Transaction> txs;
    uint32_t next_tx = 1;
  };

  XenStoreLimits limits;
  NodeMap nodes;
  std::map<uint32_t, int64_t> owned;
  std::map<ConnId, std::unique_ptr<Connection>> conns;
  std::set<uint32_t> introduced;
  uint64_t generation = 0;
  ConnId next_conn = 1;

  void AddOwned(const std::string& path, const Node* old_node, const Node* new_node,
                std::map<uint32_t, int64_t>& counts) {
    if (IsSpecial(path)) return;
    if (old_node) counts[OwnerOf(*old_node)] -= 1;
    if (new_node) counts[OwnerOf(*new_node)] += 1;
  }

  void Send(Connection& c, uint32_t type, uint32_t req_id, uint32_t tx_id, std::string_view payload) {
    if (!c.sink) return;
    c.sink(XsHeader{type, req_id, tx_id, static_cast<uint32_t>(payload.size())}, payload);
  }

  void SendEvent(Connection& c, const Watch& w, std::string_view name) {
    std::string_view shown = name.substr(std::min(w.prefix_len, name.size()));
    std::string payload(shown);
    payload += '\0';
    payload += w.token;
    payload += '\0';
    if (payload.size() > kXsPayloadMax) return;  // as C xenstored: over-long events are dropped
    Send(c, kXsWatchEvent, 0, 0, payload);
  }

  void FireEvents(const std::vector<Event>& events) {
    for (const Event& e : events) {
      const bool special = IsSpecial(e.path);
      const Node* special_node = nullptr;
      if (special) {
        auto it = nodes.find(e.path);
        if (it != nodes.end()) special_node = &it->second;
      }
      for (auto& [id, conn] : conns) {
        Connection& c = *conn;
        bool permitted;
        if (special) {
          permitted = c.domid == 0 || (special_node && (PermFor(c.domid, special_node->perms) & kPermRead));
        } else {
          permitted = (PermFor(c.domid, e.perms) & kPermRead) ||
                      (!e.old_perms.empty() && (PermFor(c.domid, e.old_perms) & kPermRead));
        }
        if (!permitted) continue;
        for (const Watch& w : c.watches) {
          const bool match = (e.exact || special) ? w.path == e.path : IsUnder(e.path, w.path);
          if (match) SendEvent(c, w, e.path);
        }
      }
    }
  }

  // TRANSACTION_END "T": EAGAIN if anything the transaction saw changed.
  int Commit(Connection& c, Transaction& tx) {
    for (const auto& [path, gen] : tx.accessed) {
      auto it = nodes.find(path);
      const std::optional<uint64_t> now =
          it == nodes.end() ? std::nullopt : std::optional<uint64_t>(it->second.generation);
      if (now != gen) return EAGAIN;
    }
    if (c.domid != 0) {
      auto d = tx.owned_delta.find(c.domid);
      if (d != tx.owned_delta.end() && d->second > 0 &&
          owned[c.domid] + d->second > static_cast<int64_t>(limits.nodes_per_domain))
        return ENOSPC;
    }
    for (auto& [path, node] : tx.overlay) {
      if (node) {
        node->generation = ++generation;
        nodes[path] = std::move(*node);
      } else {
        nodes.erase(path);
      }
    }
    for (const auto& [dom, delta] : tx.owned_delta) owned[dom] += delta;
    return 0;
  }
};

namespace {

// One request's view of the store: the live tree, or a transaction's
// copy-on-write overlay over it (recording the generation of every node it
// touches, for the commit-time conflict check).
class Op {
 public:
  using State = XenStore::State;
  using Connection = State::Connection;

  Op(State& s, Connection& c, Transaction* tx) : s_(s), c_(c), tx_(tx) {}

  bool priv() const { return c_.domid == 0; }
  uint32_t domid() const { return c_.domid; }
  std::vector<Event>& events() { return events_; }

  const Node* Get(const std::string& path) {
    if (tx_) {
      auto o = tx_->overlay.find(path);
      if (o != tx_->overlay.end()) return o->second ? &*o->second : nullptr;
    }
    auto it = s_.nodes.find(path);
    const Node* n = it == s_.nodes.end() ? nullptr : &it->second;
    if (tx_ && !tx_->accessed.count(path))
      tx_->accessed[path] = n ? std::optional<uint64_t>(n->generation) : std::nullopt;
    return n;
  }

  void Put(const std::string& path, Node n) {
    const Node* old = Get(path);
    if (tx_) {
      s_.AddOwned(path, old, &n, tx_->owned_delta);
      tx_->overlay[path] = std::move(n);
    } else {
      s_.AddOwned(path, old, &n, s_.owned);
      n.generation = ++s_.generation;
      s_.nodes[path] = std::move(n);
    }
  }

  void Erase(const std::string& path) {
    const Node* old = Get(path);
    if (!old) return;
    if (tx_) {
      s_.AddOwned(path, old, nullptr, tx_->owned_delta);
      tx_->overlay[path] = std::nullopt;
    } else {
      s_.AddOwned(path, old, nullptr, s_.owned);
      s_.nodes.erase(path);
    }
  }

  int64_t Owned(uint32_t dom) {
    int64_t n = s_.owned[dom];
    if (tx_) {
      auto it = tx_->owned_delta.find(dom);
      if (it != tx_->owned_delta.end()) n += it->second;
    }
    return n;
  }

  // Resolves a client path: relative paths are rooted at the domain's home;
  // nullopt (EINVAL) for bad characters, "//", a trailing '/', a special
  // "@" name where none is allowed, or an over-long path.
  std::optional<std::string> Canonical(std::string_view raw, bool allow_special) const {
    if (!ValidChars(raw)) return std::nullopt;
    if (IsSpecial(raw) && !allow_special) return std::nullopt;
    std::string name;
    if (!raw.empty() && (raw[0] == '/' || raw[0] == '@')) {
      name = std::string(raw);
    } else {
      name = XenStore::DomainPath(c_.domid) + "/" + std::string(raw);
    }
    if (name.size() > 1 && name.back() == '/') return std::nullopt;
    if (name.find("//") != std::string::npos) return std::nullopt;
    if (name.size() > kXsAbsPathMax) return std::nullopt;
    size_t local_off = 0;
    static constexpr std::string_view kLocal = "/local/domain/";
    if (name.compare(0, kLocal.size(), kLocal) == 0) {
      size_t i = kLocal.size();
      while (i < name.size() && i - kLocal.size() < 5 && name[i] >= '0' && name[i] <= '9') ++i;
      if (i > kLocal.size() && i < name.size() && name[i] == '/') local_off = i + 1;
    }
    if (!priv() && name.size() - local_off > kXsRelPathMax) return std::nullopt;
    return name;
  }

  // The node if the caller holds `perm` on it; otherwise ENOENT / EACCES,
  // where a missing node's ENOENT becomes EACCES if the caller may not
  // access its nearest existing parent (no information leaks).
  int GetChecked(const std::string& path, uint8_t perm, const Node** out, bool need_owner = false) {
    *out = nullptr;
    const Node* n = Get(path);
    int err = ENOENT;
    if (n) {
      const bool owner_ok = !need_owner || priv() || OwnerOf(*n) == c_.domid;
      if ((PermFor(c_.domid, n->perms) & perm) == perm && owner_ok) {
        *out = n;
        return 0;
      }
      err = EACCES;
    }
    if (IsSpecial(path) || path == "/") return err;
    std::string p = path;
    const Node* parent = nullptr;
    while (p != "/") {
      p = ParentOf(p);
      parent = Get(p);
      if (parent) break;
    }
    if (!parent || (PermFor(c_.domid, parent->perms) & perm)) return err;
    return EACCES;
  }

  // Creates `path` with `value` and any missing parents (which inherit their
  // parent's permissions; an unprivileged creator owns what it creates).
  int Create(const std::string& path, std::string_view value) {
    std::vector<std::string> missing{path};
    std::string p = ParentOf(path);
    const Node* top = Get(p);
    while (!top) {
      missing.push_back(p);
      p = ParentOf(p);
      top = Get(p);
    }
    if (!priv() && Owned(c_.domid) + static_cast<int64_t>(missing.size()) >
                       static_cast<int64_t>(s_.limits.nodes_per_domain))
      return ENOSPC;
    // Build every changed node first, so a quota failure changes nothing.
    std::vector<std::pair<std::string, Node>> writes;
    Node parent = *top;
    std::string parent_path = p;
    for (size_t i = missing.size(); i-- > 0;) {
      parent.children.push_back(Basename(missing[i]));
      Node child;
      child.perms = parent.perms;
      if (!priv()) child.perms[0].domid = c_.domid;
      writes.emplace_back(parent_path, std::move(parent));
      parent = std::move(child);
      parent_path = missing[i];
    }
    parent.value = std::string(value);
    writes.emplace_back(parent_path, std::move(parent));
    if (!priv())
      for (const auto& w : writes)
        if (NodeSize(w.second) > s_.limits.node_size) return ENOSPC;
    for (auto& w : writes) Put(w.first, std::move(w.second));
    return 0;
  }

  void RemoveTree(const std::string& path, const std::string& root) {
    const Node* n = Get(path);
    if (!n) return;
    const std::vector<std::string> children = n->children;
    const std::vector<XsPerm> perms = n->perms;
    for (const auto& child : children) RemoveTree(ChildPath(path, child), root);
    events_.push_back(Event{path, path != root, perms, {}});
    Erase(path);
  }

 private:
  State& s_;
  Connection& c_;
  Transaction* tx_;
  std::vector<Event> events_;
};

bool PrivOnly(uint32_t type) {
  return type == kXsControl || type == kXsIntroduce || type == kXsRelease || type == kXsIsDomainIntroduced ||
         type == kXsResume || type == kXsSetTarget;
}

}  // namespace

XenStore::XenStore(XenStoreLimits limits) : s_(std::make_unique<State>()) {
  s_->limits = limits;
  auto add = [this](const std::string& path, std::vector<std::string> children) {
    Node n;
    n.perms = {XsPerm{0, kPermNone}};
    n.children = std::move(children);
    n.generation = ++s_->generation;
    s_->nodes[path] = std::move(n);
    if (!IsSpecial(path)) s_->owned[0] += 1;
  };
  add("/", {"local", "tool"});
  add("/local", {"domain"});
  add("/local/domain", {});
  add("/tool", {"xenstored"});
  add("/tool/xenstored", {});
  add("@introduceDomain", {});
  add("@releaseDomain", {});
  s_->introduced.insert(0);
}

XenStore::~XenStore() = default;

std::string XenStore::DomainPath(uint32_t domid) { return "/local/domain/" + std::to_string(domid); }

XenStore::ConnId XenStore::Connect(uint32_t domid, Sink sink) {
  auto c = std::make_unique<State::Connection>();
  c->domid = domid;
  c->sink = std::move(sink);
  const ConnId id = s_->next_conn++;
  s_->conns.emplace(id, std::move(c));
  return id;
}

void XenStore::Disconnect(ConnId conn) { s_->conns.erase(conn); }

void XenStore::HandleMessage(ConnId conn_id, const XsHeader& hdr, std::string_view payload) {
  auto cit = s_->conns.find(conn_id);
  if (cit == s_->conns.end()) return;
  State::Connection& c = *cit->second;
  const uint32_t type = hdr.type;
  std::string reply;
  std::vector<std::string> own_events;  // payloads for this connection, after the reply
  std::vector<Event> events;
  Transaction* tx = nullptr;
  std::optional<Op> op_holder;

  auto ok = [&reply] { reply.assign("OK", 3); return 0; };
  const int err = [&]() -> int {
    if (payload.size() > kXsPayloadMax) return EINVAL;
    if (type >= kXsTypeCount || type == kXsWatchEvent || type == kXsError || type == 20) return ENOSYS;
    if (PrivOnly(type) && c.domid != 0) return EACCES;
    if (type != kXsWatch && type != kXsUnwatch && hdr.tx_id != 0) {
      auto t = c.txs.find(hdr.tx_id);
      if (t == c.txs.end()) return ENOENT;
      tx = &t->second;
    }
    Op& op = op_holder.emplace(*s_, c, tx);
    const auto one = XsOneArg(payload);
    switch (type) {
      case kXsDirectory:
      case kXsRead: {
        if (!one) return EINVAL;
        const auto path = op.Canonical(*one, false);
        if (!path) return EINVAL;
        const Node* n;
        if (int e = op.GetChecked(*path, kPermRead, &n)) return e;
        if (type == kXsRead) {
          reply = n->value;
        } else {
          for (const auto& ch : n->children) reply.append(ch).push_back('\0');
        }
        return 0;
      }
      case kXsDirectoryPart: {
        const auto args = XsStrings(payload);
        if (args.size() != 2) return EINVAL;
        const auto path = op.Canonical(args[0], false);
        if (!path) return EINVAL;
        const Node* n;
        if (int e = op.GetChecked(*path, kPermRead, &n)) return e;
        const unsigned off = static_cast<unsigned>(std::strtol(std::string(args[1]).c_str(), nullptr, 10));
        std::string blob;
        for (const auto& ch : n->children) blob.append(ch).push_back('\0');
        reply = std::to_string(n->generation);
        reply.push_back('\0');
        if (off >= blob.size()) {
          reply.push_back('\0');
          return 0;
        }
        // Whole child names from `off` while they fit; a final empty
        // string marks the end of the list.
        const size_t room = kXsPayloadMax - reply.size() - 1;
        size_t end = off;
        while (end < blob.size()) {
          const size_t nul = blob.find('\0', end);
          if (nul + 1 - off > room) break;
          end = nul + 1;
        }
        reply.append(blob, off, end - off);
        if (end == blob.size()) reply.push_back('\0');
        return 0;
      }
      case kXsGetPerms: {
        if (!one) return EINVAL;
        const auto path = op.Canonical(*one, true);
        if (!path) return EINVAL;
        const Node* n;
        if (int e = op.GetChecked(*path, kPermRead, &n)) return e;
        for (const auto& p : n->perms) reply.append(FormatXsPerm(p)).push_back('\0');
        return 0;
      }
      case kXsWrite: {
        const auto args = XsStrings(payload);
        if (args.empty()) return EINVAL;
        const auto path = op.Canonical(args[0], false);
        if (!path) return EINVAL;
        const std::string_view value = payload.substr(args[0].size() + 1);
        const Node* n;
        const int e = op.GetChecked(*path, kPermWrite, &n);
        if (e == 0) {
          Node copy = *n;
          copy.value = std::string(value);
          if (c.domid != 0 && NodeSize(copy) > s_->limits.node_size) return ENOSPC;
          op.Put(*path, std::move(copy));
        } else if (e == ENOENT) {
          if (int ce = op.Create(*path, value)) return ce;
        } else {
          return e;
        }
        op.events().push_back(Event{*path, false, op.Get(*path)->perms, {}});
        return ok();
      }
      case kXsMkdir: {
        if (!one) return EINVAL;
        const auto path = op.Canonical(*one, false);
        if (!path) return EINVAL;
        const Node* n;
        const int e = op.GetChecked(*path, kPermWrite, &n);
        if (e == ENOENT) {
          if (int ce = op.Create(*path, "")) return ce;
          op.events().push_back(Event{*path, false, op.Get(*path)->perms, {}});
        } else if (e) {
          return e;
        }
        return ok();
      }
      case kXsRm: {
        if (!one) return EINVAL;
        const auto path = op.Canonical(*one, false);
        if (!path) return EINVAL;
        const Node* n;
        const int e = op.GetChecked(*path, kPermWrite, &n);
        if (e == ENOENT) return op.Get(ParentOf(*path)) ? ok() : ENOENT;
        if (e) return e;
        if (*path == "/") return EINVAL;
        const std::string parent_path = ParentOf(*path);
        Node parent = *op.Get(parent_path);
        const std::string base = Basename(*path);
        std::erase(parent.children, base);
        op.RemoveTree(*path, *path);
        op.Put(parent_path, std::move(parent));
        return ok();
      }
      case kXsSetPerms: {
        const auto args = XsStrings(payload);
        if (args.size() < 2) return EINVAL;
        const size_t num = args.size() - 1;
        if (c.domid != 0 && num > s_->limits.perms_per_node) return ENOSPC;
        std::vector<XsPerm> perms;
        for (size_t i = 1; i < args.size(); ++i) {
          const auto p = ParseXsPerm(args[i]);
          if (!p) return EINVAL;
          perms.push_back(*p);
        }
        const auto path = op.Canonical(args[0], true);
        if (!path) return EINVAL;
        const Node* n;
        if (int e = op.GetChecked(*path, kPermWrite, &n, /*need_owner=*/true)) return e;
        if (c.domid != 0 && perms[0].domid != OwnerOf(*n)) return EPERM;
        Node copy = *n;
        std::vector<XsPerm> old = std::move(copy.perms);
        copy.perms = perms;
        if (c.domid != 0 && NodeSize(copy) > s_->limits.node_size) return ENOSPC;
        op.Put(*path, std::move(copy));
        op.events().push_back(Event{*path, false, perms, old});
        return ok();
      }
      case kXsWatch: {
        const auto args = XsStrings(payload);
        if (args.size() != 2) return EINVAL;
        const bool relative = !args[0].empty() && args[0][0] != '/' && args[0][0] != '@';
        const auto path = op.Canonical(args[0], true);
        if (!path) return EINVAL;
        for (const auto& w : c.watches)
          if (w.path == *path && w.token == args[1]) return EEXIST;
        if (c.domid != 0 && c.watches.size() >= s_->limits.watches_per_connection) return E2BIG;
        Watch w{*path, std::string(args[1]), relative ? DomainPath(c.domid).size() + 1 : 0};
        c.watches.push_back(w);
        // Fires once up front.
        std::string ev(std::string_view(w.path).substr(std::min(w.prefix_len, w.path.size())));
        ev.push_back('\0');
        ev.append(w.token).push_back('\0');
        if (ev.size() <= kXsPayloadMax) own_events.push_back(std::move(ev));
        return ok();
      }
      case kXsUnwatch: {
        const auto args = XsStrings(payload);
        if (args.size() != 2) return EINVAL;
        const auto path = op.Canonical(args[0], true);
        if (!path) return EINVAL;
        for (auto it = c.watches.begin(); it != c.watches.end(); ++it) {
          if (it->path == *path && it->token == args[1]) {
            c.watches.erase(it);
            return ok();
          }
        }
        return ENOENT;
      }
      case kXsTransactionStart: {
        if (tx) return EBUSY;  // no nesting
        if (c.domid != 0 && c.txs.size() >= s_->limits.transactions_per_connection) return ENOSPC;
        uint32_t id = c.next_tx++;
        while (id == 0 || c.txs.count(id)) id = c.next_tx++;
        c.txs[id].id = id;
        reply = std::to_string(id);
        reply.push_back('\0');
        return 0;
      }
      case kXsTransactionEnd: {
        if (!one || (*one != "T" && *one != "F")) return EINVAL;
        if (!tx) return ENOENT;
        Transaction t = std::move(*tx);
        c.txs.erase(t.id);
        tx = nullptr;
        if (*one == "F") return ok();
        if (int e = s_->Commit(c, t)) return e;
        events = std::move(t.events);
        return ok();
      }
      case kXsGetDomainPath: {
        if (!one) return EINVAL;
        const auto id = ParseDomid(*one);
        if (!id) return EINVAL;
        reply = DomainPath(*id);
        reply.push_back('\0');
        return 0;
      }
      case kXsIntroduce: {
        const auto args = XsStrings(payload);
        if (args.size() < 3) return EINVAL;
        const auto id = ParseDomid(args[0]);
        if (!id || *id == 0) return EINVAL;
        if (s_->introduced.insert(*id).second) events.push_back(Event{"@introduceDomain", true, {}, {}});
        return ok();
      }
      case kXsRelease:
      case kXsResume: {
        if (!one) return EINVAL;
        const auto id = ParseDomid(*one);
        if (!id || *id == 0) return EINVAL;
        if (!s_->introduced.count(*id)) return ENOENT;
        if (type == kXsRelease) {
          s_->introduced.erase(*id);
          events.push_back(Event{"@releaseDomain", true, {}, {}});
        }
        return ok();
      }
      case kXsIsDomainIntroduced: {
        if (!one) return EINVAL;
        const auto id = ParseDomid(*one);
        if (!id) return EINVAL;
        reply = s_->introduced.count(*id) ? std::string("T", 2) : std::string("F", 2);
        return 0;
      }
      case kXsResetWatches:
        c.watches.clear();
        c.txs.clear();
        tx = nullptr;
        return ok();
      case kXsControl:
        return EINVAL;  // no control commands are modelled
      case kXsSetTarget:
        return ENOSYS;  // device-model target domains are not modelled
      default:
        return ENOSYS;
    }
  }();

  if (err) {
    const char* name = XsErrorName(err);
    s_->Send(c, kXsError, hdr.req_id, hdr.tx_id, std::string_view(name, std::strlen(name) + 1));
    return;
  }
  if (reply.size() > kXsPayloadMax) {
    s_->Send(c, kXsError, hdr.req_id, hdr.tx_id, std::string_view("E2BIG", 6));
    return;
  }
  // Node changes fire now, or on commit when made in a transaction.
  if (op_holder && !op_holder->events().empty()) {
    auto& dst = tx ? tx->events : events;
    for (auto& e : op_holder->events()) dst.push_back(std::move(e));
  }
  s_->Send(c, type, hdr.req_id, hdr.tx_id, reply);
  for (const auto& ev : own_events) s_->Send(c, kXsWatchEvent, 0, 0, ev);
  s_->FireEvents(events);
}

void XenStore::IntroduceDomain(uint32_t domid) {
  State::Connection toolstack;  // acts as dom0, receives nothing
  Op op(*s_, toolstack, nullptr);
  const std::string home = DomainPath(domid);
  if (domid != 0 && !op.Get(home)) {
    op.Create(home, "");
    Node n = *op.Get(home);
    n.perms = {XsPerm{domid, kPermNone}};
    op.Put(home, n);
    op.events().push_back(Event{home, false, n.perms, {}});
  }
  if (s_->introduced.insert(domid).second) op.events().push_back(Event{"@introduceDomain", true, {}, {}});
  s_->FireEvents(op.events());
}

void XenStore::ReleaseDomain(uint32_t domid) {
  if (domid == 0 || !s_->introduced.erase(domid)) return;
  State::Connection toolstack;
  Op op(*s_, toolstack, nullptr);
  const std::string home = DomainPath(domid);
  if (op.Get(home)) {
    const std::string parent_path = ParentOf(home);
    Node parent = *op.Get(parent_path);
    std::erase(parent.children, Basename(home));
    op.RemoveTree(home, home);
    op.Put(parent_path, std::move(parent));
  }
  op.events().push_back(Event{"@releaseDomain", true, {}, {}});
  s_->FireEvents(op.events());
}

bool XenStore::IsIntroduced(uint32_t domid) const { return s_->introduced.count(domid) != 0; }

std::optional<std::string> XenStore::Read(std::string_view abs_path) const {
  auto it = s_->nodes.find(abs_path);
  if (it == s_->nodes.end()) return std::nullopt;
  return it->second.value;
}

std::optional<std::vector<XsPerm>> XenStore::Perms(std::string_view abs_path) const {
  auto it = s_->nodes.find(abs_path);
  if (it == s_->nodes.end()) return std::nullopt;
  return it->second.perms;
}

std::optional<std::vector<std::string>> XenStore::Children(std::string_view abs_path) const {
  auto it = s_->nodes.find(abs_path);
  if (it == s_->nodes.end()) return std::nullopt;
  return it->second.children;
}

uint32_t XenStore::NodesOwnedBy(uint32_t domid) const {
  auto it = s_->owned.find(domid);
  return it == s_->owned.end() ? 0 : static_cast<uint32_t>(it->second);
}

size_t XenStore::NodeCount() const {
  size_t n = 0;
  for (const auto& [path, node] : s_->nodes) n += IsSpecial(path) ? 0 : 1;
  return n;
}

size_t XenStore::ConnectionCount() const { return s_->conns.size(); }

size_t XenStore::WatchCount(ConnId conn) const {
  auto it = s_->conns.find(conn);
  return it == s_->conns.end() ? 0 : it->second->watches.size();
}

size_t XenStore::TransactionCount(ConnId conn) const {
  auto it = s_->conns.find(conn);
  return it == s_->conns.end() ? 0 : it->second->txs.size();
}

}  // namespace vioport::xen
