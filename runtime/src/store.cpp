#include "gflex/runtime/store.hpp"

#include <fcntl.h>
#include <lmdb.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <csignal>
#include <cstring>
#include <mutex>
#include <set>

#include "gflex/runtime/digest.hpp"

namespace gflex {

namespace {

// Values of at least this size are kept in files beside the LMDB file (dir/blobs/NAME), and
// LMDB holds a reference to them: a large model's checkpoint (over a gigabyte) would
// otherwise be copied into LMDB's dirty pages in the writer's memory at every commit, and
// read back whole by every scan of its prefix.
constexpr size_t blob_threshold = size_t{16} << 20;

// A reference: this marker, then the blob's size (8 bytes, little-endian), then its name. No
// value the core stores begins with it (Cap'n Proto messages begin with a segment count, text
// values with text).
constexpr char blob_marker[16] = {'\0', 'g', 'f', 'l', 'e', 'x', '-', 'b',
                                  'l',  'o', 'b', '-', 'r', 'e', 'f', '\0'};

struct blob_ref {
  uint64_t size = 0;
  std::string name;  // "<digest of the value>-<16 hex of the key's digest>"
};

std::optional<blob_ref> as_blob_ref(std::span<const uint8_t> v) {
  if (v.size() < sizeof blob_marker + 8 || std::memcmp(v.data(), blob_marker, sizeof blob_marker))
    return std::nullopt;
  blob_ref r;
  std::memcpy(&r.size, v.data() + sizeof blob_marker, 8);
  r.name.assign(reinterpret_cast<const char*>(v.data()) + sizeof blob_marker + 8,
                v.size() - sizeof blob_marker - 8);
  return r;
}

std::vector<uint8_t> encode_blob_ref(const blob_ref& r) {
  std::vector<uint8_t> out(sizeof blob_marker + 8 + r.name.size());
  std::memcpy(out.data(), blob_marker, sizeof blob_marker);
  std::memcpy(out.data() + sizeof blob_marker, &r.size, 8);
  std::memcpy(out.data() + sizeof blob_marker + 8, r.name.data(), r.name.size());
  return out;
}

error io_error(const std::string& what) {
  return error(errc::store_error, what + ": " + std::strerror(errno));
}

// Writes a blob durably: a temporary file written and synced, renamed into place, and the
// directory synced, so that the reference LMDB commits next never names a missing file.
expected<void> write_blob(const std::filesystem::path& dir, const std::string& name,
                          std::span<const uint8_t> bytes) {
  const auto file = dir / name;
  const auto tmp = dir / (name + ".tmp");
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return io_error(tmp.string());
  size_t at = 0;
  while (at < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + at, std::min<size_t>(bytes.size() - at, 1u << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      auto e = io_error(tmp.string());
      ::close(fd);
      ::unlink(tmp.c_str());
      return e;
    }
    at += static_cast<size_t>(n);
  }
  // Closed whether or not the sync failed: left open, the unlinked file kept its blocks for
  // the process's life (a disk failing every sync leaked one blob per round).
  const bool synced = ::fsync(fd) == 0;
  const int sync_errno = errno;
  if (::close(fd) != 0 || !synced) {
    if (!synced) errno = sync_errno;
    auto e = io_error(tmp.string());
    ::unlink(tmp.c_str());
    return e;
  }
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    auto e = io_error(file.string());
    ::unlink(tmp.c_str());
    return e;
  }
  // A directory that cannot be synced fails the write: taken for done, the commit that names
  // the file was durable and the rename not, and a power loss then took the round's
  // checkpoint back (the replicated store's chunks fail so already).
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || ::fsync(dfd) != 0) {
    auto e = io_error(dir.string() + ": cannot sync the directory");
    if (dfd >= 0) ::close(dfd);
    return e;
  }
  ::close(dfd);
  return {};
}

// Reads a blob and checks it against its name's digest (a damaged file is an error, never
// wrong bytes).
expected<std::vector<uint8_t>> read_blob(const std::filesystem::path& dir, const blob_ref& r) {
  if (r.name.size() != 81 || !is_digest_hex(r.name.substr(0, 64)))
    return error(errc::store_error, "a blob reference is malformed");
  const auto file = dir / r.name;
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io_error(file.string());
  std::vector<uint8_t> out(r.size);
  size_t at = 0;
  while (at < out.size()) {
    ssize_t n = ::read(fd, out.data() + at, std::min<size_t>(out.size() - at, 1u << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    at += static_cast<size_t>(n);
  }
  ::close(fd);
  if (at != out.size() || digest_hex(out) != r.name.substr(0, 64))
    return error(errc::store_error, file.string() + ": damaged (its size or digest is wrong)");
  return out;
}

error lmdb_error(const std::string& what, int rc) {
  return error(errc::store_error, what + ": " + mdb_strerror(rc));
}

MDB_val as_val(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}

// LMDB 0.9 maps data.mdb without checking that the file holds the pages its trees use: a file
// cut short (a full disk, a partial copy) faults with SIGBUS at the first read past its end,
// and a core restarted on it crashed again at every start without a word. Its size cannot tell
// beforehand: a page freed in the transaction that allocated it ("loose", or an overflow run)
// is counted in the meta page's last page number but never written, so a healthy file may end
// before that page (LMDB's own copy stops at the file's size for this reason). The start-up
// walk reads every page the trees use instead, and turns a fault of its own reads into an
// error.
struct walk_guard {
  sigjmp_buf jump;
};

// The walk on this thread while it reads LMDB's pages, else null. Armed only around LMDB's
// cursor reads and touch_pages, which read nothing but the map (LMDB 0.9 does not say where
// its map lies unless it is fixed, so the fault's address is not checked against it).
thread_local walk_guard* armed_walk = nullptr;

std::mutex bus_handler_mutex;
int bus_walks = 0;              // walks in progress on all threads, under bus_handler_mutex
struct sigaction bus_previous;  // the action before on_bus; written only while bus_walks == 0

void on_bus(int, siginfo_t* info, void*) {
  walk_guard* walk = armed_walk;
  // si_code > 0: raised by a faulting read, not sent by a process.
  if (walk != nullptr && info->si_code > 0) {
    armed_walk = nullptr;
    siglongjmp(walk->jump, 1);
  }
  // Not a read of this thread's walk: the action in force before the walks takes it. A fault
  // returned from faults again under it, with its own address; a signal sent is sent again.
  sigaction(SIGBUS, &bus_previous, nullptr);
  if (info->si_code <= 0) raise(SIGBUS);
}

// Installs on_bus for the life of one walk: the first of several walks at once saves the
// action it replaces, and the last puts it back (unless the action was changed since: on_bus
// gave a foreign signal to it, or another library set its own).
class bus_handler_scope {
 public:
  bus_handler_scope() {
    std::lock_guard lock(bus_handler_mutex);
    if (bus_walks++ > 0) return;
    struct sigaction action {};
    action.sa_sigaction = on_bus;
    // SA_NODEFER: SIGBUS stays unblocked while on_bus runs, so that a signal it raises again
    // reaches the previous action at once, and a jump out of it leaves nothing blocked.
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &bus_previous);
  }
  ~bus_handler_scope() {
    std::lock_guard lock(bus_handler_mutex);
    if (--bus_walks > 0) return;
    struct sigaction current {};
    if (sigaction(SIGBUS, nullptr, &current) == 0 && (current.sa_flags & SA_SIGINFO) != 0 &&
        current.sa_sigaction == on_bus)
      sigaction(SIGBUS, &bus_previous, nullptr);
  }
  bus_handler_scope(const bus_handler_scope&) = delete;
  bus_handler_scope& operator=(const bus_handler_scope&) = delete;
};

// Reads one byte of each page a value spans: LMDB's cursor does not read a large value's
// overflow pages, which a later read would fault on.
void touch_pages(const MDB_val& v, size_t page) {
  const volatile char* bytes = static_cast<const char*>(v.mv_data);
  for (size_t at = 0; at < v.mv_size; at += page) static_cast<void>(bytes[at]);
  if (v.mv_size > 0) static_cast<void>(bytes[v.mv_size - 1]);
}

}  // namespace

struct store::impl {
  MDB_env* env = nullptr;
  MDB_dbi dbi = 0;
  std::string dir;
  std::filesystem::path blobs;
  ~impl() {
    if (env != nullptr) mdb_env_close(env);
  }
};

store::store(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
store::store(store&&) noexcept = default;
store& store::operator=(store&&) noexcept = default;
store::~store() = default;

expected<store> store::open(const std::filesystem::path& dir, size_t map_bytes) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return error(errc::io_error, dir.string() + ": cannot create directory (" + ec.message() + ")");
  auto p = std::make_unique<impl>();
  p->dir = dir.string();
  p->blobs = dir / "blobs";
  std::filesystem::create_directories(p->blobs, ec);
  if (ec)
    return error(errc::io_error, p->blobs.string() + ": cannot create (" + ec.message() + ")");
  // LMDB takes an empty or missing data.mdb for a new store and starts it empty: where a
  // store was there before (its lock file or a blob beside it), the core would lose its
  // accounts and ledger and say nothing.
  const auto data_file = dir / "data.mdb";
  const auto data_size = std::filesystem::file_size(data_file, ec);
  const bool missing = ec == std::errc::no_such_file_or_directory;
  if (missing || (!ec && data_size == 0)) {
    std::string evidence;
    if (std::filesystem::exists(dir / "lock.mdb", ec)) evidence = "lock.mdb";
    if (!std::filesystem::is_empty(p->blobs, ec) && !ec)
      evidence += (evidence.empty() ? "" : ", ") + std::string("files under blobs/");
    if (!evidence.empty())
      return error(errc::bad_format,
                   data_file.string() + (missing ? " is missing" : " is empty") +
                       ", yet a store was there (beside it: " + evidence + "), lost or " +
                       "truncated since: restore data.mdb from a backup, or, to start an " +
                       "empty store, move data.mdb, lock.mdb and blobs/ out of " + p->dir);
  }
  ec.clear();  // a file that cannot be looked at is LMDB's to report
  if (int rc = mdb_env_create(&p->env); rc != 0) return lmdb_error(p->dir, rc);
  mdb_env_set_mapsize(p->env, map_bytes);
  if (int rc = mdb_env_open(p->env, p->dir.c_str(), 0, 0600); rc != 0)
    return lmdb_error(p->dir, rc);
  MDB_txn* txn = nullptr;
  if (int rc = mdb_txn_begin(p->env, nullptr, 0, &txn); rc != 0) return lmdb_error(p->dir, rc);
  if (int rc = mdb_dbi_open(txn, nullptr, 0, &p->dbi); rc != 0) {
    mdb_txn_abort(txn);
    return lmdb_error(p->dir, rc);
  }
  if (int rc = mdb_txn_commit(txn); rc != 0) return lmdb_error(p->dir, rc);
  store s(std::move(p));
  // The sweep reads every page the store's trees use: a file cut short is refused there.
  if (auto swept = s.sweep_blobs(); !swept) return swept.error();
  return s;
}

expected<void> store::sweep_blobs() {
  // A crash between a blob's file and the commit that names it (or between a commit and the
  // removal of the file it replaced) leaves a file no key names: it goes at the next start.
  // Only the core's process opens its store, so no other writer can be between the two steps.
  std::set<std::string> named;
  auto listed = scan_raw([&](std::span<const uint8_t> value) {
    if (auto r = as_blob_ref(value)) named.insert(r->name);
  });
  if (!listed) return listed.error();
  if (!*listed) return {};  // nothing is removed on a doubt
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(impl_->blobs, ec)) {
    const auto name = entry.path().filename().string();
    if (!named.count(name)) std::filesystem::remove(entry.path(), ec);
  }
  return {};
}

expected<bool> store::scan_raw(const std::function<void(std::span<const uint8_t>)>& fn) const {
  MDB_stat stat{};
  if (mdb_env_stat(impl_->env, &stat) != 0) return false;
  MDB_txn* txn = nullptr;
  if (mdb_txn_begin(impl_->env, nullptr, MDB_RDONLY, &txn) != 0) return false;
  // The tree of free pages (LMDB's handle 0, which a read-only transaction may read) is walked
  // too: the first commit reads it, and would fault on a page of it past the end.
  MDB_cursor* cursors[2] = {nullptr, nullptr};
  if (mdb_cursor_open(txn, impl_->dbi, &cursors[0]) != 0 ||
      mdb_cursor_open(txn, 0, &cursors[1]) != 0) {
    if (cursors[0] != nullptr) mdb_cursor_close(cursors[0]);
    mdb_txn_abort(txn);
    return false;
  }
  walk_guard walk;
  bus_handler_scope handler;
  // Everything the jump back needs was set above and is not changed below: only LMDB's frames
  // and touch_pages lie between here and a faulting read, none with anything to destroy.
  if (sigsetjmp(walk.jump, 1) != 0) {
    // A read transaction holds no lock and no page of its own: ending it frees its memory and
    // its reader slot, whatever the cursor was doing when the read faulted. The environment is
    // closed with the store that open() drops.
    mdb_cursor_close(cursors[0]);
    mdb_cursor_close(cursors[1]);
    mdb_txn_abort(txn);
    const auto file = std::filesystem::path(impl_->dir) / "data.mdb";
    std::error_code ec;
    const auto held = std::filesystem::file_size(file, ec);
    // bad_format: a file to restore, not a failure a restart mends (run_core: exit 2).
    return error(errc::bad_format,
                 file.string() + " is truncated: " +
                     (ec ? std::string() : "it holds " + std::to_string(held) + " bytes, and ") +
                     "a page its records use lies past its end (cut short: restore it from a " +
                     "backup)");
  }
  int rc = MDB_NOTFOUND;
  for (MDB_cursor* cursor : cursors) {
    MDB_val k, v;
    armed_walk = &walk;
    rc = mdb_cursor_get(cursor, &k, &v, MDB_FIRST);
    while (rc == 0) {
      touch_pages(v, stat.ms_psize);
      // Disarmed while fn runs: its pages were read, and a jump must skip no C++ frame.
      armed_walk = nullptr;
      if (cursor == cursors[0]) fn({static_cast<const uint8_t*>(v.mv_data), v.mv_size});
      armed_walk = &walk;
      rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT);
    }
    armed_walk = nullptr;
    if (rc != MDB_NOTFOUND) break;
  }
  mdb_cursor_close(cursors[0]);
  mdb_cursor_close(cursors[1]);
  mdb_txn_abort(txn);
  return rc == MDB_NOTFOUND;
}

int64_t store::used_bytes() const {
  MDB_envinfo info{};
  MDB_stat stat{};
  int64_t used = 0;
  if (mdb_env_info(impl_->env, &info) == 0 && mdb_env_stat(impl_->env, &stat) == 0)
    used = static_cast<int64_t>(info.me_last_pgno + 1) * static_cast<int64_t>(stat.ms_psize);
  // Listed at each call rather than counted as blobs come and go: there are few (one per
  // value of 16 MiB or more), and a count kept beside them would drift wherever a removal
  // fails or a damaged copy is written again.
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(impl_->blobs, ec)) {
    std::error_code size_ec;
    const auto size = entry.is_regular_file(size_ec) ? entry.file_size(size_ec) : 0;
    if (!size_ec) used += static_cast<int64_t>(size);
  }
  return used;
}

expected<void> store::commit(std::span<const store_write> writes) {
  // Large values go to their files first (durably); then one LMDB transaction writes the
  // references with everything else. The files a commit replaced go after it.
  std::vector<std::optional<std::vector<uint8_t>>> refs(writes.size());
  std::set<std::string> written;
  auto drop_written = [&] {
    for (const auto& name : written) ::unlink((impl_->blobs / name).c_str());
  };
  for (size_t i = 0; i < writes.size(); ++i) {
    const auto& w = writes[i];
    if (!w.value || w.value->size() < blob_threshold) continue;
    blob_ref r{w.value->size(),
               digest_hex(*w.value) + "-" +
                   digest_hex({reinterpret_cast<const uint8_t*>(w.key.data()), w.key.size()})
                       .substr(0, 16)};
    // A file of that name already there (the same value under the same key, stored again:
    // a data set pushed again) is written again too: it may be the damaged copy that the
    // value is stored again to repair. Being what its name says, it is never dropped.
    std::error_code ec;  // one that cannot be looked at is written (and fails) below
    const bool existed = std::filesystem::exists(impl_->blobs / r.name, ec);
    if (auto ok = write_blob(impl_->blobs, r.name, *w.value); !ok) {
      drop_written();
      if (!existed) ::unlink((impl_->blobs / r.name).c_str());  // renamed, maybe, not synced
      return ok.error();
    }
    if (!existed) written.insert(r.name);
    refs[i] = encode_blob_ref(r);
  }
  std::set<std::string> replaced;
  MDB_txn* txn = nullptr;
  if (int rc = mdb_txn_begin(impl_->env, nullptr, 0, &txn); rc != 0) {
    drop_written();
    return lmdb_error(impl_->dir, rc);
  }
  for (size_t i = 0; i < writes.size(); ++i) {
    const auto& w = writes[i];
    MDB_val key = as_val(w.key);
    MDB_val old;
    if (mdb_get(txn, impl_->dbi, &key, &old) == 0)
      if (auto r = as_blob_ref({static_cast<const uint8_t*>(old.mv_data), old.mv_size}))
        replaced.insert(r->name);
    int rc;
    if (w.value) {
      const auto& bytes = refs[i] ? *refs[i] : *w.value;
      MDB_val val{bytes.size(), const_cast<uint8_t*>(bytes.data())};
      rc = mdb_put(txn, impl_->dbi, &key, &val, 0);
    } else {
      rc = mdb_del(txn, impl_->dbi, &key, nullptr);
      if (rc == MDB_NOTFOUND) rc = 0;
    }
    if (rc != 0) {
      mdb_txn_abort(txn);
      drop_written();
      return lmdb_error(impl_->dir + ": write of key '" + w.key + "'", rc);
    }
  }
  if (int rc = mdb_txn_commit(txn); rc != 0) {
    drop_written();
    return lmdb_error(impl_->dir + ": commit", rc);
  }
  for (size_t i = 0; i < writes.size(); ++i)
    if (refs[i]) replaced.erase(as_blob_ref(*refs[i])->name);
  for (const auto& name : replaced) ::unlink((impl_->blobs / name).c_str());
  return {};
}

expected<void> key_value_store::scan_ending(
    std::string_view prefix, std::string_view suffix,
    const std::function<bool(std::string_view, std::span<const uint8_t>)>& fn) const {
  return scan(prefix, [&](std::string_view key, std::span<const uint8_t> value) {
    return !key.ends_with(suffix) || fn(key, value);
  });
}

expected<void> key_value_store::put(std::string_view key, std::span<const uint8_t> value) {
  store_write w{std::string(key), std::vector<uint8_t>(value.begin(), value.end())};
  return commit({&w, 1});
}

expected<std::optional<std::vector<uint8_t>>> store::get(std::string_view key) const {
  MDB_txn* txn = nullptr;
  if (int rc = mdb_txn_begin(impl_->env, nullptr, MDB_RDONLY, &txn); rc != 0)
    return lmdb_error(impl_->dir, rc);
  MDB_val k = as_val(key);
  MDB_val v;
  int rc = mdb_get(txn, impl_->dbi, &k, &v);
  std::optional<std::vector<uint8_t>> out;
  std::optional<blob_ref> blob;
  if (rc == 0) {
    auto* p = static_cast<const uint8_t*>(v.mv_data);
    blob = as_blob_ref({p, v.mv_size});
    if (!blob) out.emplace(p, p + v.mv_size);
  }
  mdb_txn_abort(txn);
  if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error(impl_->dir, rc);
  if (blob) {
    auto bytes = read_blob(impl_->blobs, *blob);
    if (!bytes) return bytes.error();
    out.emplace(std::move(*bytes));
  }
  return out;
}

namespace {

// Walks the keys starting with `prefix`, in order, in one read transaction: `fn` gets each
// key and its value as LMDB holds it (a blob reference unresolved), and returns whether to go
// on, or an error, which ends the walk with it.
expected<void> walk_keys(
    MDB_env* env, MDB_dbi dbi, const std::string& dir, std::string_view prefix,
    const std::function<expected<bool>(std::string_view, std::span<const uint8_t>)>& fn) {
  MDB_txn* txn = nullptr;
  if (int rc = mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn); rc != 0) return lmdb_error(dir, rc);
  MDB_cursor* cursor = nullptr;
  if (int rc = mdb_cursor_open(txn, dbi, &cursor); rc != 0) {
    mdb_txn_abort(txn);
    return lmdb_error(dir, rc);
  }
  MDB_val k = as_val(prefix);
  MDB_val v;
  expected<void> out;
  int rc = mdb_cursor_get(cursor, &k, &v, prefix.empty() ? MDB_FIRST : MDB_SET_RANGE);
  while (rc == 0) {
    std::string_view key(static_cast<const char*>(k.mv_data), k.mv_size);
    if (key.substr(0, prefix.size()) != prefix) break;
    auto more = fn(key, {static_cast<const uint8_t*>(v.mv_data), v.mv_size});
    if (!more) {
      out = more.error();
      break;
    }
    if (!*more) break;
    rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cursor);
  mdb_txn_abort(txn);
  if (out && rc != 0 && rc != MDB_NOTFOUND) return lmdb_error(dir, rc);
  return out;
}

}  // namespace

expected<std::vector<std::string>> store::keys(std::string_view prefix) const {
  std::vector<std::string> out;
  auto walked = walk_keys(impl_->env, impl_->dbi, impl_->dir, prefix,
                          [&](std::string_view key, std::span<const uint8_t>) -> expected<bool> {
                            out.emplace_back(key);
                            return true;
                          });
  if (!walked) return walked.error();
  return out;
}

expected<void> store::scan(
    std::string_view prefix,
    const std::function<bool(std::string_view, std::span<const uint8_t>)>& fn) const {
  return scan_ending(prefix, "", fn);
}

expected<void> store::scan_ending(
    std::string_view prefix, std::string_view suffix,
    const std::function<bool(std::string_view, std::span<const uint8_t>)>& fn) const {
  return walk_keys(impl_->env, impl_->dbi, impl_->dir, prefix,
                   [&](std::string_view key, std::span<const uint8_t> value) -> expected<bool> {
                     if (!key.ends_with(suffix))
                       return true;  // its value (a large one in a file) is not read
                     std::vector<uint8_t> from_file;
                     if (auto blob = as_blob_ref(value)) {
                       auto bytes = read_blob(impl_->blobs, *blob);
                       if (!bytes) return bytes.error();
                       from_file = std::move(*bytes);
                       value = from_file;
                     }
                     return fn(key, value);
                   });
}

}  // namespace gflex
