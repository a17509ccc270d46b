#include "gflex/runtime/store.hpp"

#include <lmdb.h>

namespace gflex {

namespace {

error lmdb_error(const std::string& what, int rc) {
  return error(errc::store_error, what + ": " + mdb_strerror(rc));
}

MDB_val as_val(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}

}  // namespace

struct store::impl {
  MDB_env* env = nullptr;
  MDB_dbi dbi = 0;
  std::string dir;
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
  return store(std::move(p));
}

int64_t store::used_bytes() const {
  MDB_envinfo info{};
  MDB_stat stat{};
  if (mdb_env_info(impl_->env, &info) != 0 || mdb_env_stat(impl_->env, &stat) != 0) return 0;
  return static_cast<int64_t>(info.me_last_pgno + 1) * static_cast<int64_t>(stat.ms_psize);
}

expected<void> store::commit(std::span<const store_write> writes) {
  MDB_txn* txn = nullptr;
  if (int rc = mdb_txn_begin(impl_->env, nullptr, 0, &txn); rc != 0)
    return lmdb_error(impl_->dir, rc);
  for (const auto& w : writes) {
    MDB_val key = as_val(w.key);
    int rc;
    if (w.value) {
      MDB_val val{w.value->size(), const_cast<uint8_t*>(w.value->data())};
      rc = mdb_put(txn, impl_->dbi, &key, &val, 0);
    } else {
      rc = mdb_del(txn, impl_->dbi, &key, nullptr);
      if (rc == MDB_NOTFOUND) rc = 0;
    }
    if (rc != 0) {
      mdb_txn_abort(txn);
      return lmdb_error(impl_->dir + ": write of key '" + w.key + "'", rc);
    }
  }
  if (int rc = mdb_txn_commit(txn); rc != 0) return lmdb_error(impl_->dir + ": commit", rc);
  return {};
}

expected<void> store::put(std::string_view key, std::span<const uint8_t> value) {
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
  if (rc == 0) {
    auto* p = static_cast<const uint8_t*>(v.mv_data);
    out.emplace(p, p + v.mv_size);
  }
  mdb_txn_abort(txn);
  if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error(impl_->dir, rc);
  return out;
}

expected<void> store::scan(
    std::string_view prefix,
    const std::function<bool(std::string_view, std::span<const uint8_t>)>& fn) const {
  MDB_txn* txn = nullptr;
  if (int rc = mdb_txn_begin(impl_->env, nullptr, MDB_RDONLY, &txn); rc != 0)
    return lmdb_error(impl_->dir, rc);
  MDB_cursor* cursor = nullptr;
  if (int rc = mdb_cursor_open(txn, impl_->dbi, &cursor); rc != 0) {
    mdb_txn_abort(txn);
    return lmdb_error(impl_->dir, rc);
  }
  MDB_val k = as_val(prefix);
  MDB_val v;
  int rc = mdb_cursor_get(cursor, &k, &v, prefix.empty() ? MDB_FIRST : MDB_SET_RANGE);
  while (rc == 0) {
    std::string_view key(static_cast<const char*>(k.mv_data), k.mv_size);
    if (key.substr(0, prefix.size()) != prefix) break;
    if (!fn(key, {static_cast<const uint8_t*>(v.mv_data), v.mv_size})) break;
    rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cursor);
  mdb_txn_abort(txn);
  if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error(impl_->dir, rc);
  return {};
}

}  // namespace gflex
